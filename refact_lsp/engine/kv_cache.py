"""The engine's own key/value cache: one preallocated buffer per layer, reusable across requests.

ALiBi adds its position bias to the attention scores, never to the keys, so a cached key/value does
not depend on its absolute position: a later prompt sharing a token prefix keeps those entries and
only the rest is prefilled (``common_prefix_len`` + ``truncate``).

The buffers never move or change shape, so the decode step can also run with static shapes
(:meth:`KVCache.slot`: write one position in place, attend over every slot with a mask), which is what
CUDA graphs need. Both ways share the same buffers and ``tokens``, so prefix reuse works for both.
"""

from __future__ import annotations

import torch

from refact_lsp.token_ids import common_prefix_len


class KVCache:
    """Per layer K and V of shape ``[1, n_kv_heads, capacity, head_dim]``; the first ``length`` are valid.

    One buffer ``[n_layer, 2, n_kv_heads, capacity, head_dim]`` holds both, so that a step writes the
    ``K | V`` row of the ``kv`` projection with one copy, while each layer's K and V stay contiguous
    (what attention kernels read best); ``k`` and ``v`` are views of it. Batch 1. ``tokens`` lists the
    token ids whose keys/values are stored, in order (``len(tokens) == length``).
    """

    def __init__(
        self,
        n_layer: int,
        head_dim: int,
        capacity: int,
        *,
        n_kv_heads: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.kv = torch.zeros((n_layer, 2, n_kv_heads, capacity, head_dim), device=device, dtype=dtype)
        self.head_dim = head_dim
        self.capacity = capacity
        self.tokens: list[int] = []

    @property
    def k(self) -> torch.Tensor:
        """All keys, ``[n_layer, 1, n_kv_heads, capacity, head_dim]`` (a view)."""
        return self.kv[:, 0:1]

    @property
    def v(self) -> torch.Tensor:
        """All values, like :attr:`k`."""
        return self.kv[:, 1:2]

    @property
    def length(self) -> int:
        return len(self.tokens)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update_kv(self, kv: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``[1, n_kv, T, 2D]`` new ``K | V`` rows after the valid ones; return all valid K, V of the
        layer (views). The new entries become part of ``length`` only when :meth:`commit` records their
        tokens."""
        start = self.length
        end = start + kv.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.capacity}")
        layer = self.kv[layer_idx]
        layer[:, :, start:end] = _planes(kv, self.head_dim)
        return layer[0:1, :, :end], layer[1:2, :, :end]

    def slot(self, pos: torch.Tensor) -> _Slot:
        """A cache view for one decode step at position ``pos`` (``[1]`` long device tensor)."""
        return _Slot(self, pos)

    def commit(self, token_ids: list[int]) -> None:
        """Record the tokens whose entries the last forward pass stored."""
        if self.length + len(token_ids) > self.capacity:
            raise ValueError("KV cache overflow")
        self.tokens.extend(token_ids)

    def common_prefix_len(self, ids: list[int]) -> int:
        """Number of leading ``ids`` whose keys/values are already cached."""
        return common_prefix_len(ids, self.tokens)

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` cached tokens (the buffers are overwritten later, not cleared)."""
        del self.tokens[max(n, 0) :]

    def reset(self) -> None:
        self.tokens.clear()


def _planes(kv: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[1, n_kv, T, 2D]`` rows of ``K | V`` as ``[2, n_kv, T, D]`` (a view): K's plane, then V's."""
    _, n_kv, t, _ = kv.shape
    return kv.view(n_kv, t, 2, head_dim).permute(2, 0, 1, 3)


class _Slot:
    """Static-shape ``update_kv``: writes the step's ``K | V`` at ``pos``, returns the layer's whole
    buffers."""

    def __init__(self, cache: KVCache, pos: torch.Tensor):
        self.cache = cache
        self.pos = pos

    def update_kv(self, kv: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.cache.kv[layer_idx]
        layer.index_copy_(2, self.pos, _planes(kv, self.cache.head_dim))
        return layer[0:1], layer[1:2]
