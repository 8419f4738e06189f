"""Triton, where it is installed (CUDA builds of torch ship it; CPU builds do not), and whether its CPU
interpreter is on (``TRITON_INTERPRET=1``: the tests without a GPU, ``tests/conftest.py``)."""

from __future__ import annotations

import os

try:
    import triton
except ImportError:
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Triton's CPU interpreter: its ``tl.dot`` misreads bfloat16 operands (Triton 3.6), so there the
attention's products run on float32 copies, and the GEMVs use fewer, larger programs."""


def available() -> bool:
    """Whether Triton is importable (the kernels still need a CUDA device, or ``TRITON_INTERPRET=1``)."""
    return triton is not None
