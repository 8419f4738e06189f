"""The decode step over static buffers, captured once as a CUDA graph (gpt-fast style, raw
``torch.cuda.CUDAGraph``) or run eagerly over the same buffers.

A decode step of a 1.6B model launches a few hundred small kernels; replaying them as one graph removes
the per-kernel launch cost that otherwise dominates on a fast GPU. The graph records fixed addresses: the
token and position go in through static buffers filled in place, the KV cache buffers must never be
reallocated (drop the graph with the cache), and the logits come back in a static output tensor that the
next replay overwrites.

A one-token step also picks its greedy token on the device and makes it, at the next position, its own
next input: greedy decoding can then queue the next step before the host has read this one's token
(:meth:`DecodeGraph.run_on`), so the device never waits for the host between steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from refact_lsp.engine.kv_cache import KVCache
from refact_lsp.engine.tokenizer import FIRST_PADDING_ID

WARMUP_STEPS = 2  # on a side stream before capture, as PyTorch's CUDA-graph docs ask
Step = Callable[[torch.Tensor, torch.Tensor, KVCache], torch.Tensor]


_warm_up_streams: dict[torch.device, torch.cuda.Stream] = {}


def _warm_up_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for every capture's warm-up: cuBLAS keeps a workspace per stream for
    good, so a new stream per capture kept up to ~1 GiB (32 pooled streams) after the graphs were gone."""
    stream = _warm_up_streams.get(device)
    if stream is None:
        stream = _warm_up_streams[device] = torch.cuda.Stream(device)
    return stream


def greedy_pick(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The greedy token of ``[vocab]`` logits on their device, without reading it back: ``out`` (``[2]``
    float32) gets its index and its logit (NaN when the logits are). Padding ids are masked in place
    (as :func:`~refact_lsp.engine.generate.sample_next` masks them); ties go to the first index."""
    if logits.shape[-1] > FIRST_PADDING_ID:
        logits[FIRST_PADDING_ID:] = float("-inf")
    at = torch.argmax(logits).view(1)  # NaN counts as the largest: a NaN logit is found, not skipped
    return torch.cat([at.to(out.dtype), logits.gather(0, at).to(out.dtype)], out=out)


def picked_token(index: float, value: float) -> int:
    """The token of a greedy pick read back (its index and its logit); ``ValueError`` when the logit is
    NaN: the logits are, and there is no token (as when sampling)."""
    if math.isnan(value):
        raise ValueError("cannot pick a token: the logits are NaN")
    return int(index)


class DecodeGraph:
    """``step`` (default ``model.decode_step``) of ``len(tokens)`` tokens for ``cache`` over static
    buffers: captured as a CUDA graph, or with ``capture=False`` run eagerly (no CUDA graphs: the
    device is not CUDA, or capture failed). Build it at the next positions to be written: the warm-up
    steps write those slots, which the real step then overwrites.

    A one-token step ends with :func:`greedy_pick` into ``picked``, then writes that token into its own
    input and advances its position by one (see :meth:`run_on`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        cache: KVCache,
        tokens: list[int],
        pos: int,
        step: Step | None = None,
        *,
        capture: bool = True,
    ):
        self._step = step or model.decode_step
        device = cache.k.device
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.cache = cache
        self.captured = capture
        self.token = torch.tensor([tokens], dtype=torch.long, device=device)
        self._offsets = torch.arange(len(tokens), dtype=torch.long, device=device)
        self.pos = self._offsets + pos
        self.picked = torch.zeros(2, dtype=torch.float32, device=device)
        self.logits = torch.empty(0, device=device)
        if not capture:
            return
        side = _warm_up_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._fill(tokens, pos)  # a one-token step moved its own input on
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream(device)
        try:
            # thread_local: other threads of the server may use CUDA while this one captures
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.logits = self._run()
        except BaseException:
            # a capture that fails at its end (capture_end raising) leaves this thread on the capture
            # stream: the eager steps that follow would no longer be ordered with the default stream's work
            torch.cuda.set_stream(stream)
            raise
        torch.cuda.synchronize(device)

    def _run(self) -> torch.Tensor:
        """The step on the buffers (what the graph records); a one-token step picks and moves on."""
        logits = self._step(self.token, self.pos, self.cache)
        if self.token.shape[-1] == 1:
            greedy_pick(logits, self.picked)
            self.token.view(1).copy_(self.picked[0])  # an index below 2**24: exact in float32
            self.pos.add_(1)
        return logits

    def _replay(self) -> torch.Tensor:
        if self.captured:
            self.graph.replay()
        else:
            self.logits = self._run()
        return self.logits

    def _fill(self, tokens: list[int], pos: int) -> None:
        if len(tokens) == 1:
            self.token.fill_(tokens[0])
            self.pos.fill_(pos)
        else:
            self.token.copy_(torch.tensor([tokens], dtype=torch.long), non_blocking=False)
            torch.add(self._offsets, pos, out=self.pos)

    def run(self, tokens: list[int], pos: int) -> torch.Tensor:
        """Logits ``[vocab]`` after ``tokens`` (as many as captured) at ``pos, pos + 1, ...`` (valid until
        the next run)."""
        self._fill(tokens, pos)
        return self._replay()

    def run_after(self, picked: torch.Tensor, pos: int) -> None:
        """One-token step: queue the step of the token that ``picked`` (a :func:`greedy_pick` output on the
        device) holds, at ``pos``, without reading it back. Its own pick lands in ``picked``."""
        self.token.view(1).copy_(picked[0])
        self.pos.fill_(pos)
        self._replay()

    def run_on(self) -> None:
        """One-token step: queue the step of the token the last step picked, at the position after it."""
        self._replay()
