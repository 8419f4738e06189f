"""The decode step captured once as a CUDA graph (gpt-fast style, raw ``torch.cuda.CUDAGraph``).

A decode step of a 1.6B model launches a few hundred small kernels; replaying them as one graph removes
the per-kernel launch cost that otherwise dominates on a fast GPU. The graph records fixed addresses: the
token and position go in through static buffers filled in place, the KV cache buffers must never be
reallocated (drop the graph with the cache), and the logits come back in a static output tensor that the
next replay overwrites.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from refact_lsp.engine.kv_cache import KVCache

WARMUP_STEPS = 2  # on a side stream before capture, as PyTorch's CUDA-graph docs ask


_warm_up_streams: dict[torch.device, torch.cuda.Stream] = {}


def _warm_up_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for every capture's warm-up: cuBLAS keeps a workspace per stream for
    good, so a new stream per capture kept up to ~1 GiB (32 pooled streams) after the graphs were gone."""
    stream = _warm_up_streams.get(device)
    if stream is None:
        stream = _warm_up_streams[device] = torch.cuda.Stream(device)
    return stream


class DecodeGraph:
    """``model.decode_step`` of ``len(tokens)`` tokens for ``cache``, captured on CUDA. Build it at the
    next positions to be written: the warm-up steps write those slots, which the real step then
    overwrites."""

    def __init__(
        self,
        model: torch.nn.Module,
        cache: KVCache,
        tokens: list[int],
        pos: int,
        step: Callable[[torch.Tensor, torch.Tensor, KVCache], torch.Tensor] | None = None,
    ):
        """``step`` defaults to ``model.decode_step`` (the generator passes its Triton or compiled step)."""
        step = step or model.decode_step
        device = cache.k.device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.cache = cache
        self.token = torch.tensor([tokens], dtype=torch.long, device=device)
        self._offsets = torch.arange(len(tokens), dtype=torch.long, device=device)
        self.pos = self._offsets + pos
        side = _warm_up_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(self.token, self.pos, cache)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the server may use CUDA while this one captures
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits = step(self.token, self.pos, cache)
        torch.cuda.synchronize(device)

    def run(self, tokens: list[int], pos: int) -> torch.Tensor:
        """Logits ``[vocab]`` after ``tokens`` (as many as captured) at ``pos, pos + 1, ...`` (valid until
        the next ``run``)."""
        if len(tokens) == 1:
            self.token.fill_(tokens[0])
            self.pos.fill_(pos)
        else:
            self.token.copy_(torch.tensor([tokens], dtype=torch.long), non_blocking=False)
            torch.add(self._offsets, pos, out=self.pos)
        self.graph.replay()
        return self.logits
