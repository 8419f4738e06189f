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


if triton is not None:
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _INTERPRETED = tl.constexpr(INTERPRETED)

    @triton.jit
    def wait_for_the_previous_kernel(PDL: tl.constexpr):
        """For a kernel launched with programmatic dependent launch (``PDL``): wait until the previous kernel
        has finished and its writes are visible, then let the next kernel start. Nothing in the interpreter,
        which runs kernels one after another (and has no ``griddepcontrol``)."""
        if PDL and not _INTERPRETED:
            gdc_wait()
            gdc_launch_dependents()
else:
    wait_for_the_previous_kernel = None
