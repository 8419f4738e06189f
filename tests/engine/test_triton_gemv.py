"""The fused GEMV kernels against torch: on a GPU compiled, elsewhere in Triton's CPU interpreter
(``tests/conftest.py``). Skipped where Triton is not installed."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from refact_lsp.engine import triton_decode, triton_gemv

pytestmark = [
    pytest.mark.skipif(not triton_decode.available(), reason="Triton is not installed"),
    pytest.mark.usefixtures("one_gemv_tile"),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]


def tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 3e-2


def randn(*shape: int, seed: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, device=DEVICE)).to(dtype)


def normed(x: torch.Tensor, gain: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """torch's LayerNorm output in ``x``'s dtype (what the kernels round the input to)."""
    return F.layer_norm(x.float(), (x.numel(),), gain.float(), None, eps).to(x.dtype).float()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "k"), [(100, 64), (2048, 2048), (70, 3000)])
def test_norm_linear_is_layer_norm_then_the_product(n, k, dtype) -> None:
    """Row counts that do not fill the last program; a width of several chunks (3000 > K_CHUNK)
    normalises over all of them."""
    x = randn(k, seed=1, dtype=dtype, scale=3.0) + 1
    gain, w = randn(k, seed=2, dtype=dtype), randn(n, k, seed=3, dtype=dtype, scale=0.05)
    got = triton_gemv.norm_linear(x, gain, 1e-5, w)
    assert got.shape == (n,) and got.dtype == dtype
    want = normed(x, gain) @ w.float().T
    torch.testing.assert_close(got.float(), want, atol=tolerance(dtype), rtol=tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_swiglu_is_silu_of_gate_times_up(dtype) -> None:
    k, n = 256, 360
    x, gain = randn(k, seed=4, dtype=dtype, scale=2.0), randn(k, seed=5, dtype=dtype)
    gate_up = randn(2 * n, k, seed=6, dtype=dtype, scale=0.1)
    got = triton_gemv.norm_swiglu(x, gain, 1e-5, gate_up)
    assert got.shape == (n,) and got.dtype == dtype
    gate, up = (normed(x, gain) @ gate_up.float().T).chunk(2)
    want = F.silu(gate.to(dtype).float()) * up.to(dtype).float()
    torch.testing.assert_close(got.float(), want, atol=tolerance(dtype), rtol=tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_linear_adds_into_the_residual_in_place(dtype) -> None:
    """The down projection's shape: a 5632-wide input in three chunks, the last one partial."""
    n, k = 96, 5632
    residual, x = randn(n, seed=7, dtype=dtype), randn(k, seed=8, dtype=dtype)
    w = randn(n, k, seed=9, dtype=dtype, scale=0.02)
    want = residual.float() + x.float() @ w.float().T
    same = residual.data_ptr()
    triton_gemv.add_linear_(residual, x, w)
    assert residual.data_ptr() == same
    torch.testing.assert_close(residual.float(), want, atol=tolerance(dtype), rtol=tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_qkv_returns_q_and_writes_k_and_v_into_the_cache_slot(dtype) -> None:
    """q comes back; K and V land in slot ``pos`` of their planes and nowhere else."""
    k, n_q, head_dim, capacity, pos = 128, 128, 16, 40, 17
    x, gain = randn(k, seed=10, dtype=dtype, scale=2.0), randn(k, seed=11, dtype=dtype)
    qkv = randn(n_q + 2 * head_dim, k, seed=12, dtype=dtype, scale=0.1)
    cache = torch.full((2, 1, capacity, head_dim), 7.0, dtype=dtype, device=DEVICE)
    q = triton_gemv.norm_qkv_into_cache(x, gain, 1e-5, qkv, cache, torch.tensor([pos], device=DEVICE))
    want = normed(x, gain) @ qkv.float().T
    tol = tolerance(dtype)
    assert q.shape == (n_q,) and q.dtype == dtype
    torch.testing.assert_close(q.float(), want[:n_q], atol=tol, rtol=tol)
    torch.testing.assert_close(cache[0, 0, pos].float(), want[n_q : n_q + head_dim], atol=tol, rtol=tol)
    torch.testing.assert_close(cache[1, 0, pos].float(), want[n_q + head_dim :], atol=tol, rtol=tol)
    untouched = torch.ones(capacity, dtype=torch.bool)
    untouched[pos] = False
    assert bool((cache[:, :, untouched.to(DEVICE)] == 7.0).all())


def normed_rows(x: torch.Tensor, gain: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return torch.stack([normed(row, gain, eps) for row in x])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [2, 3, 8])
def test_a_few_rows_at_once_are_each_what_one_row_gives(m, dtype) -> None:
    """The several-rows kernel (a keystroke's new tokens): every wrapper with ``[m, K]`` rows against
    torch row by row; widths that do not fill the last chunk or the last program (5632 = 22 chunks of
    256, 100 = 6 programs of 16 and a partial one)."""
    tol = tolerance(dtype)
    k, n = 320, 100
    x, gain = randn(m, k, seed=20, dtype=dtype, scale=3.0) + 1, randn(k, seed=21, dtype=dtype)
    w = randn(n, k, seed=22, dtype=dtype, scale=0.05)
    got = triton_gemv.norm_linear(x, gain, 1e-5, w)
    assert got.shape == (m, n) and got.dtype == dtype
    torch.testing.assert_close(got.float(), normed_rows(x, gain) @ w.float().T, atol=tol, rtol=tol)

    gate_up = randn(2 * n, k, seed=23, dtype=dtype, scale=0.1)
    gate, up = (normed_rows(x, gain) @ gate_up.float().T).chunk(2, dim=-1)
    want = F.silu(gate.to(dtype).float()) * up.to(dtype).float()
    got = triton_gemv.norm_swiglu(x, gain, 1e-5, gate_up)
    assert got.shape == (m, n)
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)

    wide = randn(m, 5632, seed=24, dtype=dtype)
    down = randn(n, 5632, seed=25, dtype=dtype, scale=0.02)
    residual = randn(m, n, seed=26, dtype=dtype)
    want = residual.float() + wide.float() @ down.float().T
    triton_gemv.add_linear_(residual, wide, down)
    torch.testing.assert_close(residual.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_few_rows_write_their_keys_and_values_each_into_its_own_slot(dtype) -> None:
    k, n_q, head_dim, capacity, first, m = 128, 128, 16, 40, 17, 3
    x, gain = randn(m, k, seed=27, dtype=dtype, scale=2.0), randn(k, seed=28, dtype=dtype)
    qkv = randn(n_q + 2 * head_dim, k, seed=29, dtype=dtype, scale=0.1)
    cache = torch.full((2, 1, capacity, head_dim), 7.0, dtype=dtype, device=DEVICE)
    pos = torch.arange(first, first + m, device=DEVICE)
    q = triton_gemv.norm_qkv_into_cache(x, gain, 1e-5, qkv, cache, pos)
    want = normed_rows(x, gain) @ qkv.float().T
    tol = tolerance(dtype)
    assert q.shape == (m, n_q) and q.dtype == dtype
    torch.testing.assert_close(q.float(), want[:, :n_q], atol=tol, rtol=tol)
    torch.testing.assert_close(
        cache[0, 0, first : first + m].float(), want[:, n_q : n_q + head_dim], atol=tol, rtol=tol
    )
    torch.testing.assert_close(
        cache[1, 0, first : first + m].float(), want[:, n_q + head_dim :], atol=tol, rtol=tol
    )
    untouched = torch.ones(capacity, dtype=torch.bool)
    untouched[first : first + m] = False
    assert bool((cache[:, :, untouched.to(DEVICE)] == 7.0).all())
    with pytest.raises(ValueError, match="positions"):
        triton_gemv.norm_qkv_into_cache(x, gain, 1e-5, qkv, cache, pos[:2])


def test_shapes_that_do_not_fit_are_refused() -> None:
    w = torch.zeros(8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="GEMV"):
        triton_gemv.norm_linear(torch.zeros(15, device=DEVICE), torch.ones(15, device=DEVICE), 1e-5, w)
    with pytest.raises(ValueError, match="GEMV"):
        triton_gemv.add_linear_(torch.zeros(7, device=DEVICE), torch.zeros(16, device=DEVICE), w)
    with pytest.raises(ValueError, match="GEMV"):
        triton_gemv.norm_linear(torch.zeros(16, device=DEVICE), torch.ones(16, device=DEVICE), 1e-5, w.T)
    too_many = torch.zeros(triton_gemv.TOKENS_AT_ONCE + 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="GEMV"):
        triton_gemv.norm_linear(too_many, torch.ones(16, device=DEVICE), 1e-5, w)


def test_autotuned_tiles_give_the_same_results_and_in_place_outputs_change_once(monkeypatch) -> None:
    """The GPU path: Triton's autotuner runs each tile several times on the real arguments before keeping
    one, so the in-place outputs (the residual, the cache slot) are restored between its timings. Here its
    timer is a CPU clock and the interpreter stands in for the GPU."""
    timings = []

    def cpu_timer(fn, warmup, rep, quantiles):
        start = time.perf_counter()
        for _ in range(2):
            fn()
        timings.append(time.perf_counter() - start)
        return [timings[-1]] * len(quantiles)

    monkeypatch.setattr(triton_gemv, "INTERPRETED", False)
    monkeypatch.setattr(triton_gemv, "AUTOTUNE", True)
    monkeypatch.setattr(triton_gemv, "do_bench", cpu_timer)
    monkeypatch.setattr(triton_gemv._gemv_autotuned, "cache_results", False)  # time them, even on a rerun
    dtype = torch.float32
    n, k, head_dim, capacity, pos = 96, 64, 16, 8, 3
    residual, x = randn(n, seed=13, dtype=dtype), randn(k, seed=14, dtype=dtype)
    w = randn(n, k, seed=15, dtype=dtype, scale=0.1)
    want = residual.float() + x.float() @ w.float().T
    triton_gemv.add_linear_(residual, x, w)
    assert len(timings) == len(triton_gemv.TILES)  # every tile timed once, at the first call of this shape
    torch.testing.assert_close(residual, want, atol=1e-4, rtol=1e-4)  # added once, not once per timing
    gain = randn(k, seed=16, dtype=dtype)
    cache = torch.zeros((2, 1, capacity, head_dim), dtype=dtype, device=DEVICE)
    q = triton_gemv.norm_qkv_into_cache(x, gain, 1e-5, w, cache, torch.tensor([pos], device=DEVICE))
    full = normed(x, gain) @ w.float().T
    torch.testing.assert_close(q, full[: n - 2 * head_dim], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cache[:, 0, pos].reshape(-1), full[n - 2 * head_dim :], atol=1e-4, rtol=1e-4)
    assert int((cache != 0).sum()) == 2 * head_dim  # the slot only, after every tile's timings
    chosen = triton_gemv.chosen_tiles()
    assert f"{n} x {k}, norm False, epilogue {triton_gemv.RESIDUAL}" in chosen
    assert all(tile in triton_gemv.TILES for tile in chosen.values())
