"""Every Triton kernel call of the decode step compiles for an H100 (sm_90) and for a GeForce RTX 30xx
(sm_86, a GPU of the kind users have) with Triton's own ptxas, no GPU needed
(``refact_lsp.dev.hopper_kernels``), without register spills, with 16-byte loads, and on Hopper with the wait
that programmatic dependent launch needs where the step launches that way. Skipped where Triton is not
installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from refact_lsp.engine import triton_env, triton_gemv

pytestmark = pytest.mark.skipif(not triton_env.available(), reason="Triton is not installed")


CAPABILITIES = {90: "H100", 86: "RTX 30xx"}


@pytest.fixture(scope="module", params=CAPABILITIES, ids=CAPABILITIES.values())
def capability(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def compiles() -> Iterator[dict[int, subprocess.Popen]]:
    """The compilations for every capability, started at once (each is one busy core for 30-50 s)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    command = [sys.executable, "-m", "refact_lsp.dev.hopper_kernels", "--json", "--capability"]
    started = {
        capability: subprocess.Popen(
            [*command, str(capability)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for capability in CAPABILITIES
    }
    yield started
    for process in started.values():
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def reports(compiles, capability) -> list[dict]:
    out, err = compiles[capability].communicate(timeout=300)
    assert compiles[capability].returncode == 0, err[-3000:]
    return json.loads(out)


def test_every_kernel_call_compiles(reports) -> None:
    """The default step's kernels, the attention variants, and each GEMV in each tile the autotuner times."""
    calls = {r["call"] for r in reports}
    assert {"layer_norm", "silu_mul", "attention"} <= calls
    gemvs = {c for c in calls if "GEMV" in c}
    assert len(gemvs) == 5 * len(triton_gemv.TILES)
    assert "down GEMV into the residual, 8 rows x 4 warps" in gemvs
    merged = [r for r in reports if r["call"].startswith("attention (merge")]
    assert [r["kernel"] for r in merged] == ["_attention_blocks_kernel"]  # one launch: no merge kernel
    rows = {r["call"].split(" of ")[0] for r in reports if r["kernel"] == "_rows_kernel"}
    assert rows == {"q/kv", "c_proj", "gate/up", "down"}  # a keystroke's few tokens at once
    assert {r["kernel"] for r in reports if r["call"].startswith("attention of")} == {
        "_attention_blocks_kernel",
        "_attention_merge_kernel",
    }


def test_no_kernel_spills_and_all_load_16_bytes_at_a_time(reports) -> None:
    for r in reports:
        assert r["spilled_bytes"] == 0, r
        assert r["vector_loads"], r
        assert 0 < r["registers"] <= 255, r


def test_kernels_launched_with_pdl_wait_for_the_previous_kernel(reports, capability) -> None:
    """On Hopper the GEMVs and the PDL attention variants wait; the default step's kernels have no wait in
    them, and before Hopper (no programmatic dependent launch) none has."""
    for r in reports:
        pdl = capability >= 90 and ("GEMV" in r["call"] or "pdl=True" in r["call"])
        assert r["waits_for_the_previous_kernel"] == pdl, r


def test_pdl_kernels_issue_what_the_step_does_not_write_before_the_wait(reports, capability) -> None:
    """In the machine code, before ``griddepcontrol.wait``: every 16-byte load of the first 2,048 columns of
    a GEMV program's weight rows (gate and up rows for the SwiGLU kernel), and the attention program's
    position and its 128 keys and values (the slots before the position; the one at it is loaded after).
    So these reads overlap the previous kernel. The merge kernel reads only what the step writes."""
    for r in reports:
        match = re.search(r"(\d+) rows x (\d+) warps", r["call"])
        if capability < 90:
            assert r["loads_before_the_wait"] == 0, r  # no wait
        elif r["kernel"] == "_rows_kernel":  # the first chunk of each weight row, 4 warps
            matrices = 2 if "SwiGLU" in r["call"] else 1
            chunk = triton_gemv.WEIGHT_ROWS * triton_gemv.ROWS_CHUNK * 2 // (4 * 32 * 16)
            assert r["loads_before_the_wait"] == matrices * chunk, r
        elif match is None:
            early = r["kernel"] == "_attention_blocks_kernel" and r["waits_for_the_previous_kernel"]
            tokens = r["call"].startswith("attention of")  # 8 warps; the first and the last position
            keys_and_values = 2 * 128 * 64 * 2 // ((8 if tokens else 4) * 32 * 16)  # bf16, 16-byte loads
            positions = 2 if tokens else 1
            assert r["loads_before_the_wait"] == (positions + keys_and_values if early else 0), r
        else:
            rows, warps = map(int, match.groups())
            matrices = 2 if "SwiGLU" in r["call"] else 1
            per_thread = matrices * rows * 2048 * 2 // (warps * 32 * 16)  # bf16, 16-byte loads
            assert r["loads_before_the_wait"] == per_thread, r
