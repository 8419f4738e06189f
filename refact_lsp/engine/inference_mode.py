"""Inference mode kept on the server's generation thread between its generations.

Entering and leaving ``torch.inference_mode()`` around each generation took about 0.06 ms each way of a
keystroke's time in the server on a 2-core VM, 0.05 ms of it saved this way (code not run for a few
milliseconds is slow again there: see docs/benchmarks.md). The thread that generates for the server stays
in it from its first generation until it loads a model: weights loaded in inference mode would be
inference tensors.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


class _Kept(threading.local):
    context: torch.inference_mode | None = None


_kept = _Kept()


def keep() -> None:
    """Puts this thread in inference mode until :func:`leave` (nothing if it is in it already)."""
    if _kept.context is None and not torch.is_inference_mode_enabled():
        context = torch.inference_mode()
        context.__enter__()
        _kept.context = context


def leave() -> None:
    """Ends what :func:`keep` began on this thread; call it outside any grad or inference mode context
    entered since."""
    context, _kept.context = _kept.context, None
    if context is not None:
        context.__exit__(None, None, None)


def inference(fn: Callable[P, R]) -> Callable[P, R]:
    """``torch.inference_mode()`` around ``fn``, entered only where the thread is not in it already."""

    @functools.wraps(fn)
    def in_inference_mode(*args: P.args, **kwargs: P.kwargs) -> R:
        if torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return in_inference_mode
