"""Test-wide setup: without a GPU, Triton kernels run in Triton's CPU interpreter (read when the kernels
are defined, so before any test module imports them), with float32 -> bfloat16 rounded to nearest even as
on a GPU."""

from __future__ import annotations

import os

import numpy as np
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _round_bf16_to_nearest_in_the_interpreter() -> None:
    """Triton's interpreter (3.6 to 3.9 at least) truncates float32 to bfloat16 (``cast_impl`` passes no
    rounding mode), where the GPU rounds to nearest even: a bias of half a bf16 ulp on every rounding, which
    made a whole bf16 decode step drift about twice as far from float32 as on a GPU. Its conversions go
    through torch's (nearest even) here."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    truncating = interpreter._convert_float

    def convert(values, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            floats = np.ascontiguousarray(values).view(np.float32)
            return torch.from_numpy(floats.copy()).to(torch.bfloat16).view(torch.uint16).numpy()
        return truncating(values, input_dtype, output_dtype, rounding_mode)

    interpreter._convert_float = convert


if os.environ.get("TRITON_INTERPRET") == "1":
    _round_bf16_to_nearest_in_the_interpreter()


def pytest_unconfigure(config) -> None:
    """Models loaded through ``ModelRunner`` were frozen out of the cyclic GC: unfrozen, the interpreter's
    last collection frees them (else Triton's bindings print "leaked" lines at exit)."""
    import gc

    gc.unfreeze()
