"""Dev-only fault injection, so tests can run the real recovery paths.

``REFACT_LSP_FAULT`` (read once, at the first check) names the fault:

- ``oom-once``: the first generation that reaches its decode loop raises ``torch.OutOfMemoryError``
  there (after the prefill), once per process.
- ``stdout-noise``: the server writes a line to standard output on ``initialized``, with ``print`` and to
  file descriptor 1 (as a library or a native library might).

Unset (the normal case), :func:`maybe_inject` costs one comparison.
"""

from __future__ import annotations

import os
import threading

ENV_VAR = "REFACT_LSP_FAULT"

_lock = threading.Lock()
_fault: str | None = None  # None: not read yet
_fired: set[str] = set()


def reset(value: str | None = None) -> None:
    """Re-read the fault from ``value`` (or the environment when ``None``) and re-arm one-shot faults."""
    global _fault
    with _lock:
        _fault = (value if value is not None else os.environ.get(ENV_VAR, "")).strip().lower()
        _fired.clear()


def maybe_inject(point: str) -> None:
    """Raise (or do) the configured fault if it belongs at ``point`` (``"decode"``, ``"initialized"``)."""
    if _fault is None:
        reset()
    if not _fault:
        return
    if _fault == "stdout-noise" and point == "initialized":
        print("stdout noise from print")
        os.write(1, b"stdout noise from file descriptor 1\n")
    with _lock:
        if _fault == "oom-once" and point == "decode" and "oom-once" not in _fired:
            _fired.add("oom-once")
            import torch

            raise torch.OutOfMemoryError(f"injected by {ENV_VAR}=oom-once at {point}")
