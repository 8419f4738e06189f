"""Compiling the Triton decode kernels for an H100 (sm_90) on a machine without a GPU.

Triton's CPU interpreter checks what the kernels compute, not whether they compile for a GPU, nor how:
the code generator rejects things the interpreter runs, and a kernel that spills registers or loads
without vector instructions computes the right numbers slowly. Triton compiles for a target it is given
with its own ``ptxas``, no GPU needed, so this runs every kernel call of the 1.6B shape's decode step
(all variants: ``triton_decode.FUSED_GEMV``, ``MERGE_IN_LAST_PROGRAM``, ``PDL``; one token and a
keystroke's few) through the same
wrappers the step uses, on ``meta`` tensors, with compilation in place of the launch, and reports what
``ptxas`` made of each kernel::

    python -m refact_lsp.dev.hopper_kernels [--json]

Run it without ``TRITON_INTERPRET`` (the kernels are compiled only when that is off when they are defined).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

HOPPER = 90
TOKENS = 3
"""The new prompt tokens of the several-tokens step compiled here (any count up to 16 compiles the same)."""
SHAPE = {"n_embd": 2048, "head_dim": 64, "n_head": 32, "mlp_width": 5632, "vocab": 49216, "capacity": 4096}


@dataclass
class KernelReport:
    call: str
    kernel: str
    registers: int
    spilled_bytes: int
    """Local memory per thread: register spills (0 for a kernel that fits its registers)."""
    shared_bytes: int
    vector_loads: bool
    """Whether the PTX loads global memory 16 bytes at a time (``ld.global.v4``)."""
    waits_for_the_previous_kernel: bool
    """``griddepcontrol.wait`` in the PTX: what a kernel launched with programmatic dependent launch needs."""
    loads_before_the_wait: int
    """Global loads (``LDG``) that the machine code issues before that wait (``ACQBULK``): what overlaps the
    previous kernel (the GEMVs' first chunk of weights)."""


class _Target:
    """Triton's driver interface as far as compiling needs it: the target, without a device."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, 32)

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("meta")


@contextmanager
def _compiling_instead_of_launching(capability: int, compiled: list[Any]):
    """Every Triton launch in the block compiles for ``capability`` and appends the kernel to ``compiled``.
    Triton's active driver stays the stand-in afterwards (restoring the default one needs a GPU)."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    launch = JITFunction.run

    def compile_only(self, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append(kernel)
        return kernel

    driver.set_active(_Target(capability))
    JITFunction.run = compile_only
    try:
        yield
    finally:
        JITFunction.run = launch


def _cuobjdump(cubin: bytes, option: str) -> str:
    """The output of Triton's own ``cuobjdump`` with ``option`` on ``cubin``."""
    import triton.backends.nvidia as nvidia

    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), option, f.name], capture_output=True, text=True, check=True).stdout


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """``cuobjdump -res-usage``'s REG, LOCAL and SHARED of the one function in ``cubin``."""
    text = _cuobjdump(cubin, "-res-usage")
    return {key: int(re.search(rf"\b{key}:(\d+)", text).group(1)) for key in ("REG", "LOCAL", "SHARED")}


def _loads_before_the_wait(cubin: bytes) -> int:
    """``LDG`` instructions before the first ``ACQBULK`` (``griddepcontrol.wait``) in the SASS, or 0."""
    sass = _cuobjdump(cubin, "-sass").splitlines()
    wait = next((i for i, line in enumerate(sass) if "ACQBULK" in line), 0)
    return sum("LDG" in line for line in sass[:wait])


def _calls(capability: int) -> list[tuple[str, Any]]:
    """(label, thunk) for each kernel call of the decode step's variants, on the 1.6B shape."""
    from refact_lsp.engine import triton_decode, triton_gemv

    s, bf16, meta = SHAPE, torch.bfloat16, torch.device("meta")

    def empty(*shape: int, dtype: torch.dtype = bf16) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=meta)

    c, d, h = s["n_embd"], s["head_dim"], s["n_head"]
    x, gain, pos = empty(c), empty(c), empty(1, dtype=torch.long)
    layer = empty(2, 1, s["capacity"], d)
    slopes = empty(h, dtype=torch.float32)
    scale = 1 / math.sqrt(d)
    pdl = capability >= 90
    calls: list[tuple[str, Any]] = [
        ("layer_norm", lambda: triton_decode.layer_norm(x, gain, 1e-5)),
        ("silu_mul", lambda: triton_decode.silu_mul(empty(2 * s["mlp_width"]))),
        (
            "attention",
            lambda: triton_decode.attention(empty(c), layer[0, 0], layer[1, 0], pos, slopes, scale),
        ),
    ]
    for fused in (False, True):
        calls += [
            (
                f"attention (merge in the last program, pdl={pdl})" if fused else f"attention (pdl={pdl})",
                lambda fused=fused: triton_decode.attention(
                    empty(c),
                    layer[0, 0],
                    layer[1, 0],
                    pos,
                    slopes,
                    scale,
                    merge_in_last_program=fused,
                    pdl=pdl,
                ),
            )
        ]
    calls += [
        (
            "q/kv GEMV into the cache",
            lambda: triton_gemv.norm_qkv_into_cache(x, gain, 1e-5, empty(c + 2 * d, c), layer, pos, pdl),
        ),
        ("c_proj GEMV into the residual", lambda: triton_gemv.add_linear_(x, empty(c), empty(c, c), pdl)),
        (
            "gate/up GEMV, SwiGLU",
            lambda: triton_gemv.norm_swiglu(x, gain, 1e-5, empty(2 * s["mlp_width"], c), pdl),
        ),
        (
            "down GEMV into the residual",
            lambda: triton_gemv.add_linear_(x, empty(s["mlp_width"]), empty(c, s["mlp_width"]), pdl),
        ),
        ("lm_head GEMV", lambda: triton_gemv.norm_linear(x, gain, 1e-5, empty(s["vocab"], c), pdl)),
    ]
    # a keystroke's new prompt tokens in one step: the several-rows kernels and the attention of T tokens
    t = TOKENS
    xs, positions, width = empty(t, c), empty(t, dtype=torch.long), s["mlp_width"]
    calls += [
        *(
            (
                f"attention of {t} tokens (merge in the last program, pdl={pdl})"
                if merge
                else f"attention of {t} tokens (pdl={pdl})",
                lambda merge=merge: triton_decode.attention(
                    empty(t * c),
                    layer[0, 0],
                    layer[1, 0],
                    positions,
                    slopes,
                    scale,
                    merge_in_last_program=merge,
                    pdl=pdl,
                ),  # fmt: skip
            )
            for merge in (False, True)
        ),
        (
            f"q/kv of {t} rows into the cache (pdl={pdl})",
            lambda: triton_gemv.norm_qkv_into_cache(
                xs, gain, 1e-5, empty(c + 2 * d, c), layer, positions, pdl
            ),
        ),
        (
            f"c_proj of {t} rows into the residual (pdl={pdl})",
            lambda: triton_gemv.add_linear_(xs, empty(t, c), empty(c, c), pdl),
        ),
        (
            f"gate/up of {t} rows, SwiGLU (pdl={pdl})",
            lambda: triton_gemv.norm_swiglu(xs, gain, 1e-5, empty(2 * width, c), pdl),
        ),
        (
            f"down of {t} rows into the residual (pdl={pdl})",
            lambda: triton_gemv.add_linear_(xs, empty(t, width), empty(c, width), pdl),
        ),
    ]
    return calls


def compile_decode_kernels(capability: int = HOPPER) -> list[KernelReport]:
    """Compile every kernel call of the decode step's variants for ``capability`` (90: H100), the GEMVs in
    each of the autotuner's tiles (``triton_gemv.TILES``)."""
    from refact_lsp.engine import triton_gemv

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1: the kernels were defined for the interpreter, not compiled")
    saved = triton_gemv.AUTOTUNE, triton_gemv.ROWS_PER_PROGRAM, triton_gemv.GEMV_WARPS
    triton_gemv.AUTOTUNE = False  # the autotuner would time each tile: compile them one by one instead
    reports = []
    try:
        for label, call in _calls(capability):
            tiles = triton_gemv.TILES if "GEMV" in label else [(None, None)]  # one-row GEMVs only
            for rows, warps in tiles:
                if rows is not None:
                    triton_gemv.ROWS_PER_PROGRAM, triton_gemv.GEMV_WARPS = rows, warps
                    label_here = f"{label}, {rows} rows x {warps} warps"
                else:
                    label_here = label
                reports += _compile(label_here, call, capability)
    finally:
        triton_gemv.AUTOTUNE, triton_gemv.ROWS_PER_PROGRAM, triton_gemv.GEMV_WARPS = saved
    return reports


def _compile(label: str, call: Any, capability: int) -> list[KernelReport]:
    compiled: list[Any] = []
    with _compiling_instead_of_launching(capability, compiled):
        call()
    reports = []
    for kernel in compiled:
        ptx = kernel.asm["ptx"]
        usage = _resource_usage(kernel.asm["cubin"])
        reports.append(
            KernelReport(
                call=label,
                kernel=kernel.name,
                registers=usage["REG"],
                spilled_bytes=usage["LOCAL"],
                shared_bytes=usage["SHARED"],
                vector_loads="ld.global.v4" in ptx,
                waits_for_the_previous_kernel="griddepcontrol.wait" in ptx,
                loads_before_the_wait=_loads_before_the_wait(kernel.asm["cubin"]),
            )
        )
    return reports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capability", type=int, default=HOPPER, help="compute capability x 10 (90: H100)")
    ap.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    args = ap.parse_args()
    reports = compile_decode_kernels(args.capability)
    if args.json:
        print(json.dumps([asdict(r) for r in reports]))
        return
    for r in reports:
        print(
            f"{r.call:62} {r.kernel:26} regs {r.registers:3}  spilled {r.spilled_bytes:4} B  "
            f"shared {r.shared_bytes:6} B  16-byte loads {r.vector_loads!s:5}  "
            f"waits {r.waits_for_the_previous_kernel!s:5}  loads before the wait {r.loads_before_the_wait}"
        )


if __name__ == "__main__":
    main()
