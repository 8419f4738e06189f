"""Counting the tensor operations a function runs: the kernels a decode step launches, on any device.

On a GPU a decode step of a small model is bound by how many kernels it launches as much as by the
bytes it reads, so the count is a figure worth keeping down, and one that a CPU can measure. An
operation counts when it writes memory: it mutates a tensor (``index_copy_``) or returns one that does
not share storage with its inputs. Views, reshapes without a copy and ``to`` without a change are free.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        out = func(*args, **(kwargs or {}))
        name = func.__name__
        if name.startswith("detach"):
            return out
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if torch.is_tensor(t)}
        outputs = [t for t in tree_leaves(out) if torch.is_tensor(t)]
        if func._schema.is_mutable or any(t.untyped_storage().data_ptr() not in inputs for t in outputs):
            self.ops[name.split(".")[0]] += 1
        return out


def count_ops(fn: Callable[[], Any]) -> Counter[str]:
    """The operations ``fn()`` runs that write memory, by name (``addmm``, ``softmax``, ...)."""
    counter = _OpCounter()
    with torch.inference_mode(), counter:
        fn()
    return counter.ops


def decode_step_ops(model: torch.nn.Module, capacity: int = 16) -> Counter[str]:
    """The operations of one :meth:`~refact_lsp.engine.model.GPTRefactForCausalLM.decode_step` of
    ``model`` (on its device and in its dtype), after a two-token prompt."""
    from refact_lsp.engine.kv_cache import KVCache

    cfg, weight = model.config, model.lm_head.weight
    cache = KVCache(cfg.n_layer, cfg.head_dim, capacity, device=weight.device, dtype=weight.dtype)
    with torch.inference_mode():
        model(torch.tensor([[5, 6]], device=weight.device), kv_cache=cache)
    token = torch.tensor([[7]], device=weight.device)
    pos = torch.tensor([cache.length], device=weight.device)
    return count_ops(lambda: model.decode_step(token, pos, cache))
