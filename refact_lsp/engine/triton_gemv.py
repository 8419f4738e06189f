"""One-row GEMV kernels (``y = x @ W.T`` for a decode step) with the work around them fused in: the
LayerNorm before, and after, the SwiGLU activation, the residual add or the write of the new keys and
values into the KV cache.

Why: on an H100 the default decode step of the 1.6B shape (cuBLAS GEMMs, :mod:`triton_decode`'s
norms, attention and SiLU) spent 151 us per token between kernels and 209 us in the LayerNorm, SiLU and
KV-write kernels around its GEMMs (``bench/engine.py --report decode --profile``, ``docs/benchmarks.md``).
Here each layer's four projections are four kernels and nothing else:

- ``qkv``: ``LN1(x) @ [Wq; Wkv].T``; q to a buffer, K and V straight into cache slot ``pos``;
- ``c_proj``: ``x += y @ Wo.T`` in place (the residual add);
- ``gate_up``: ``silu(LN2(x) @ Wg.T) * (LN2(x) @ Wu.T)``: a program reads matching gate and up rows;
- ``down``: ``x += h @ Wd.T`` in place;

and the head is ``LN_f(x) @ W_head.T``. Every program recomputes the LayerNorm of the one input row (2048
values, read from L2) instead of a kernel of its own writing it out for the next one.

Each program reads ``ROWS_PER_PROGRAM`` weight rows, ``K_CHUNK`` columns at a time, and sums their
products with the input in float32 (the input rounded to the weights' dtype first, as torch's LayerNorm
output is). With ``pdl`` (programmatic dependent launch, Hopper and later) a kernel starts while the one
before it finishes: it loads its first weight chunk, which no kernel of the step writes, then waits
(``gdc_wait``) before it reads anything the step computes, and lets the next kernel start in turn.

Written by hand: torch has no GEMV with a LayerNorm prologue or these epilogues (``torch.compile``'s
was slower than cuBLAS on the H100, ``docs/benchmarks.md``).
"""

from __future__ import annotations

import torch

from refact_lsp.engine.triton_env import INTERPRETED, triton, wait_for_the_previous_kernel

if triton is not None:
    import triton.language as tl
    from triton.testing import do_bench

AUTOTUNE = True
"""On a GPU, each weight shape's tile (``TILES``) is chosen at its first call by timing them all (Triton's
autotuner, ``triton.testing.do_bench`` with the L2 cache flushed: about 30 ms a tile, after compiling each),
and the choice is kept in Triton's cache folder for the next start. The generator's warm-up makes that first
call before any graph is captured."""
TILES = [(rows, warps) for rows in (2, 4, 8) for warps in (4, 8)]
"""(weight rows per program, warps per program) that the autotuner times."""
ROWS_PER_PROGRAM = 4
"""Weight rows per program without ``AUTOTUNE`` (in the interpreter, which runs programs one after another,
at most ``INTERPRETED_PROGRAMS`` larger ones)."""
GEMV_WARPS = 4
"""Warps per program without ``AUTOTUNE``."""
INTERPRETED_PROGRAMS = 32
K_CHUNK = 2048
"""Columns per load: a whole 2048-wide row at once, the 5632-wide down projection in three."""
TOKENS_AT_ONCE = 16
"""Input rows the several-rows kernel takes (``tl.dot``'s least M; padded with zero rows): a keystroke's
new prompt tokens, up to ``generate.SHORT_TAIL``."""
WEIGHT_ROWS = 16
"""Weight rows per program of the several-rows kernel (``tl.dot``'s least N: 128 programs for 2,048 rows)."""
ROWS_CHUNK = 256
"""Columns per ``tl.dot`` of the several-rows kernel."""
PLAIN, SWIGLU, RESIDUAL, QKV = 0, 1, 2, 3
"""What a program does with its sums (the kernel's ``EPILOGUE``)."""
if triton is not None:  # the same for the kernel: Triton reads only constexpr globals
    _SWIGLU, _RESIDUAL, _QKV = tl.constexpr(SWIGLU), tl.constexpr(RESIDUAL), tl.constexpr(QKV)


if triton is not None:

    @triton.jit
    def _input_chunk(x_ptr, norm_ptr, at, K: tl.constexpr, mean, rstd, NORM: tl.constexpr):
        """Input columns ``at`` in float32 (0 past ``K``): LayerNormed and rounded to the input's dtype,
        as torch's LayerNorm output is, when NORM."""
        inside = at < K
        xs = tl.load(x_ptr + at, mask=inside, other=0.0)
        if NORM:
            gain = tl.load(norm_ptr + at, mask=inside, other=0.0).to(tl.float32)
            xs = ((xs.to(tl.float32) - mean) * rstd * gain).to(x_ptr.dtype.element_ty)
        return tl.where(inside, xs.to(tl.float32), 0.0)

    @triton.jit
    def _gemv_kernel(
        x_ptr,
        norm_ptr,
        w_ptr,
        out_ptr,
        cache_ptr,
        pos_ptr,
        n_rows,
        eps,
        q_rows,
        capacity,
        K: tl.constexpr,
        NORM: tl.constexpr,
        EPILOGUE: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        ROWS: tl.constexpr,
        CHUNK: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """Rows ``[i * ROWS, (i + 1) * ROWS)`` of ``W`` (``[n_rows, K]``, or ``[2 * n_rows, K]`` gate over up
        for SWIGLU) times ``x`` (``[K]``, LayerNormed with ``norm_ptr``'s gain when NORM)."""
        i = tl.program_id(0)
        rows = i * ROWS + tl.arange(0, ROWS)
        live = rows < n_rows
        cols = tl.arange(0, CHUNK)
        # the first chunk of weights: no kernel of the step writes them, so they load before the wait
        first = live[:, None] & (cols < K)[None, :]
        w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=first, other=0.0)
        if EPILOGUE == _SWIGLU:
            up_rows = rows + n_rows
            w_up = tl.load(w_ptr + up_rows[:, None] * K + cols[None, :], mask=first, other=0.0)
        # the previous kernel's writes (x, the cache) are visible from here on
        wait_for_the_previous_kernel(PDL)
        mean = 0.0
        rstd = 1.0
        if NORM:  # biased variance in float32, as torch's LayerNorm
            total = tl.zeros([CHUNK], tl.float32)
            for start in tl.static_range(0, K, CHUNK):
                at = start + cols
                total += tl.load(x_ptr + at, mask=at < K, other=0.0).to(tl.float32)
            mean = tl.sum(total, axis=0) / K
            squares = tl.zeros([CHUNK], tl.float32)
            for start in tl.static_range(0, K, CHUNK):
                at = start + cols
                d = tl.load(x_ptr + at, mask=at < K, other=0.0).to(tl.float32) - mean
                squares += tl.where(at < K, d * d, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / K + eps)
        xs = _input_chunk(x_ptr, norm_ptr, cols, K, mean, rstd, NORM)
        acc = tl.sum(w.to(tl.float32) * xs[None, :], axis=1)
        if EPILOGUE == _SWIGLU:
            acc_up = tl.sum(w_up.to(tl.float32) * xs[None, :], axis=1)
        for start in tl.static_range(CHUNK, K, CHUNK):  # the down projection's further chunks (unrolled)
            at = start + cols
            mask = live[:, None] & (at < K)[None, :]
            xs = _input_chunk(x_ptr, norm_ptr, at, K, mean, rstd, NORM)
            w = tl.load(w_ptr + rows[:, None] * K + at[None, :], mask=mask, other=0.0)
            acc += tl.sum(w.to(tl.float32) * xs[None, :], axis=1)
            if EPILOGUE == _SWIGLU:
                w_up = tl.load(w_ptr + up_rows[:, None] * K + at[None, :], mask=mask, other=0.0)
                acc_up += tl.sum(w_up.to(tl.float32) * xs[None, :], axis=1)
        dtype = out_ptr.dtype.element_ty
        if EPILOGUE == _SWIGLU:  # gate and up rounded as torch's GEMM output is, then silu(gate) * up
            gate = acc.to(dtype).to(tl.float32)
            up = acc_up.to(dtype).to(tl.float32)
            tl.store(out_ptr + rows, (gate / (1.0 + tl.exp(-gate)) * up).to(dtype), mask=live)
        elif EPILOGUE == _RESIDUAL:  # out += the product, rounded once (as addmm_)
            old = tl.load(out_ptr + rows, mask=live, other=0.0).to(tl.float32)
            tl.store(out_ptr + rows, (old + acc).to(dtype), mask=live)
        elif EPILOGUE == _QKV:  # rows past q are K then V: into the cache's K and V planes at pos
            tl.store(out_ptr + rows, acc.to(dtype), mask=live & (rows < q_rows))
            pos = tl.load(pos_ptr)
            j = rows - q_rows
            plane = j // HEAD_DIM
            slot = cache_ptr + plane * capacity * HEAD_DIM + pos * HEAD_DIM + j % HEAD_DIM
            tl.store(slot, acc.to(cache_ptr.dtype.element_ty), mask=live & (rows >= q_rows))
        else:
            tl.store(out_ptr + rows, acc.to(dtype), mask=live)


if triton is not None:

    @triton.jit
    def _rows_input(x_ptr, norm_ptr, toks, m, at, K: tl.constexpr, mean, rstd, NORM: tl.constexpr):
        """Columns ``at`` of the ``m`` input rows (``[MP, len(at)]``, zeros past ``m`` and ``K``), LayerNormed
        and rounded to the input's dtype, as torch's LayerNorm output is, when NORM."""
        inside = (toks < m)[:, None] & (at < K)[None, :]
        xs = tl.load(x_ptr + toks[:, None] * K + at[None, :], mask=inside, other=0.0)
        if NORM:
            gain = tl.load(norm_ptr + at, mask=at < K, other=0.0).to(tl.float32)
            xs = (xs.to(tl.float32) - mean[:, None]) * rstd[:, None] * gain[None, :]
        return tl.where(inside, xs.to(x_ptr.dtype.element_ty), 0.0).to(x_ptr.dtype.element_ty)

    @triton.jit
    def _times_rows(xs, w, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
        """``xs @ w.T`` in float32 (``[MP, CHUNK]`` by ``[ROWS, CHUNK]``); the interpreter's ``tl.dot``
        misreads 16-bit operands (UPCAST: float32 copies)."""
        if UPCAST:
            xs, w = xs.to(tl.float32), w.to(tl.float32)
        return tl.dot(xs, tl.trans(w), input_precision=PRECISION)

    @triton.jit
    def _rows_kernel(
        x_ptr,
        norm_ptr,
        w_ptr,
        out_ptr,
        cache_ptr,
        pos_ptr,
        m,
        n_rows,
        eps,
        q_rows,
        capacity,
        K: tl.constexpr,
        NORM: tl.constexpr,
        EPILOGUE: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        MP: tl.constexpr,
        ROWS: tl.constexpr,
        CHUNK: tl.constexpr,
        UPCAST: tl.constexpr,
        PRECISION: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """:func:`_gemv_kernel` for ``m`` (at most ``MP``) input rows at once: ``x`` ``[m, K]``, the output
        and the epilogues row by row (QKV: token ``t``'s K and V into slot ``pos[t]``). Each program reads
        ``ROWS`` weight rows once, ``CHUNK`` columns at a time, for all the input rows: one ``tl.dot`` of the
        ``[MP, CHUNK]`` inputs (padded with zero rows) by the ``[CHUNK, ROWS]`` weights a chunk."""
        i = tl.program_id(0)
        rows = i * ROWS + tl.arange(0, ROWS)
        live = rows < n_rows
        toks = tl.arange(0, MP)
        cols = tl.arange(0, CHUNK)
        # the first chunk of weights: no kernel of the step writes them, so they load before the wait
        first = live[:, None] & (cols < K)[None, :]
        w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=first, other=0.0)
        if EPILOGUE == _SWIGLU:
            up_rows = rows + n_rows
            w_up = tl.load(w_ptr + up_rows[:, None] * K + cols[None, :], mask=first, other=0.0)
        wait_for_the_previous_kernel(PDL)
        mean = tl.zeros([MP], tl.float32)
        rstd = tl.full([MP], 1.0, tl.float32)
        if NORM:  # biased variance in float32 per input row, as torch's LayerNorm
            total = tl.zeros([MP, CHUNK], tl.float32)
            for start in range(0, K, CHUNK):
                at = start + cols
                inside = (toks < m)[:, None] & (at < K)[None, :]
                total += tl.load(x_ptr + toks[:, None] * K + at[None, :], mask=inside, other=0.0).to(
                    tl.float32
                )
            mean = tl.sum(total, axis=1) / K
            squares = tl.zeros([MP, CHUNK], tl.float32)
            for start in range(0, K, CHUNK):
                at = start + cols
                inside = (toks < m)[:, None] & (at < K)[None, :]
                xs = tl.load(x_ptr + toks[:, None] * K + at[None, :], mask=inside, other=0.0)
                d = xs.to(tl.float32) - mean[:, None]
                squares += tl.where(inside, d * d, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(squares, axis=1) / K + eps)
        acc = tl.zeros([MP, ROWS], tl.float32)
        acc_up = tl.zeros([MP, ROWS], tl.float32)
        for start in range(0, K, CHUNK):
            at = start + cols
            if start > 0:  # the first chunk was loaded before the wait
                mask = live[:, None] & (at < K)[None, :]
                w = tl.load(w_ptr + rows[:, None] * K + at[None, :], mask=mask, other=0.0)
                if EPILOGUE == _SWIGLU:
                    w_up = tl.load(w_ptr + up_rows[:, None] * K + at[None, :], mask=mask, other=0.0)
            xs = _rows_input(x_ptr, norm_ptr, toks, m, at, K, mean, rstd, NORM)
            acc += _times_rows(xs, w, UPCAST, PRECISION)
            if EPILOGUE == _SWIGLU:
                acc_up += _times_rows(xs, w_up, UPCAST, PRECISION)
        dtype = out_ptr.dtype.element_ty
        both = (toks < m)[:, None] & live[None, :]
        cell = toks[:, None] * n_rows + rows[None, :]
        if EPILOGUE == _SWIGLU:  # gate and up rounded as torch's GEMM output is, then silu(gate) * up
            gate = acc.to(dtype).to(tl.float32)
            up = acc_up.to(dtype).to(tl.float32)
            tl.store(out_ptr + cell, (gate / (1.0 + tl.exp(-gate)) * up).to(dtype), mask=both)
        elif EPILOGUE == _RESIDUAL:  # out += the product, rounded once (as addmm_)
            old = tl.load(out_ptr + cell, mask=both, other=0.0).to(tl.float32)
            tl.store(out_ptr + cell, (old + acc).to(dtype), mask=both)
        elif EPILOGUE == _QKV:  # rows past q are K then V: into the cache's K and V planes at pos[t]
            q_cell = toks[:, None] * q_rows + rows[None, :]
            tl.store(out_ptr + q_cell, acc.to(dtype), mask=both & (rows < q_rows)[None, :])
            pos = tl.load(pos_ptr + toks, mask=toks < m, other=0)
            j = rows - q_rows
            plane = j // HEAD_DIM
            slot = plane * capacity * HEAD_DIM + j % HEAD_DIM
            at_pos = cache_ptr + pos[:, None] * HEAD_DIM + slot[None, :]
            tl.store(at_pos, acc.to(cache_ptr.dtype.element_ty), mask=both & (rows >= q_rows)[None, :])
        else:
            tl.store(out_ptr + cell, acc.to(dtype), mask=both)


if triton is not None:
    _gemv_autotuned = triton.autotune(
        configs=[triton.Config({"ROWS": rows}, num_warps=warps) for rows, warps in TILES],
        key=["n_rows", "K", "NORM", "EPILOGUE"],
        restore_value=["out_ptr", "cache_ptr"],  # the in-place epilogues: each timing starts from the same x
        do_bench=lambda fn, quantiles: do_bench(fn, warmup=5, rep=25, quantiles=quantiles),
        cache_results=True,  # on disk with Triton's compiled kernels: the next start skips the timings
    )(_gemv_kernel)


def chosen_tiles() -> dict[str, tuple[int, int]]:
    """What the autotuner chose so far: {"n_rows x K, NORM, EPILOGUE": (rows, warps)}."""
    if triton is None:
        return {}
    chosen = {}
    for key, config in _gemv_autotuned.cache.items():
        n_rows, k, norm, epilogue = key[:4]
        chosen[f"{n_rows} x {k}, norm {norm}, epilogue {epilogue}"] = (
            config.kwargs["ROWS"],
            config.num_warps,
        )
    return chosen


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    n_rows: int,
    *,
    norm: torch.Tensor | None = None,
    eps: float = 0.0,
    epilogue: int = PLAIN,
    cache: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    head_dim: int = 1,
    pdl: bool = False,
) -> None:
    """One launch over ``n_rows`` output rows: for one input row (``x`` ``[K]`` or ``[1, K]``) the GEMV
    kernel, autotuned on a GPU (``AUTOTUNE``), else ``ROWS_PER_PROGRAM`` x ``GEMV_WARPS``; for up to
    ``TOKENS_AT_ONCE`` rows (``[m, K]``) the several-rows kernel. A shape it cannot take raises
    ``ValueError``."""
    k = weight.shape[1]
    m = x.shape[0] if x.dim() == 2 else 1
    if x.numel() != m * k or not (x.is_contiguous() and weight.is_contiguous()) or m > TOKENS_AT_ONCE:
        raise ValueError(f"GEMV: x {tuple(x.shape)} against weight {tuple(weight.shape)} (both contiguous)")
    capacity = cache.shape[-2] if cache is not None else 0
    tensors = (
        x, norm if norm is not None else weight, weight, out,
        cache if cache is not None else out, pos if pos is not None else out,
    )  # fmt: skip
    scalars = (n_rows, eps, out.shape[-1], capacity)
    options = {"K": k, "NORM": norm is not None, "EPILOGUE": epilogue, "HEAD_DIM": head_dim, "PDL": pdl}
    if pdl:
        options["launch_pdl"] = True
    if m > 1:
        precision = "ieee" if weight.dtype == torch.float32 else "tf32"  # tf32: the default (16-bit inputs)
        _rows_kernel[(triton.cdiv(n_rows, WEIGHT_ROWS),)](
            *tensors, m, *scalars, MP=TOKENS_AT_ONCE, ROWS=WEIGHT_ROWS,
            CHUNK=min(ROWS_CHUNK, triton.next_power_of_2(k)), UPCAST=INTERPRETED, PRECISION=precision,
            num_warps=4, **options,
        )  # fmt: skip
        return
    options["CHUNK"] = min(K_CHUNK, triton.next_power_of_2(k))
    if AUTOTUNE and not INTERPRETED:
        _gemv_autotuned[lambda meta: (triton.cdiv(n_rows, meta["ROWS"]),)](*tensors, *scalars, **options)
        return
    rows = ROWS_PER_PROGRAM
    if INTERPRETED:
        rows = max(rows, triton.next_power_of_2(triton.cdiv(n_rows, INTERPRETED_PROGRAMS)))
    _gemv_kernel[(triton.cdiv(n_rows, rows),)](*tensors, *scalars, ROWS=rows, num_warps=GEMV_WARPS, **options)


def _out(x: torch.Tensor, width: int) -> torch.Tensor:
    """An output for ``x``'s rows: ``[width]`` for one row ``[K]``, else ``[m, width]``."""
    return x.new_empty((*x.shape[:-1], width))


def norm_linear(
    x: torch.Tensor, norm: torch.Tensor, eps: float, weight: torch.Tensor, pdl: bool = False
) -> torch.Tensor:
    """``layer_norm(x) @ weight.T`` (LayerNorm without bias, gain ``norm``) for one row ``[K]`` or a few
    rows ``[m, K]``: ``[n_out]`` or ``[m, n_out]``."""
    out = _out(x, weight.shape[0])
    _launch(x, weight, out, weight.shape[0], norm=norm, eps=eps, pdl=pdl)
    return out


def norm_swiglu(
    x: torch.Tensor, norm: torch.Tensor, eps: float, gate_up: torch.Tensor, pdl: bool = False
) -> torch.Tensor:
    """``silu(g) * u`` where ``g | u = layer_norm(x) @ gate_up.T`` (``gate_up``: gate rows over up rows),
    for one row or a few, as :func:`norm_linear`."""
    n = gate_up.shape[0] // 2
    out = _out(x, n)
    _launch(x, gate_up, out, n, norm=norm, eps=eps, epilogue=SWIGLU, pdl=pdl)
    return out


def add_linear_(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, pdl: bool = False) -> None:
    """``residual += x @ weight.T`` in place (``residual`` contiguous, a row per row of ``x``)."""
    if residual.shape != (*x.shape[:-1], weight.shape[0]) or not residual.is_contiguous():
        raise ValueError(f"GEMV: residual {tuple(residual.shape)} against weight {tuple(weight.shape)}")
    _launch(x, weight, residual, weight.shape[0], epilogue=RESIDUAL, pdl=pdl)


def norm_qkv_into_cache(
    x: torch.Tensor,
    norm: torch.Tensor,
    eps: float,
    qkv: torch.Tensor,
    cache_layer: torch.Tensor,
    pos: torch.Tensor,
    pdl: bool = False,
) -> torch.Tensor:
    """``layer_norm(x) @ qkv.T`` where ``qkv`` holds q's rows over one head's K then V rows: returns q
    (``[n_q]``, or ``[m, n_q]`` for ``m`` rows) and writes row ``t``'s K and V into slot ``pos[t]`` of
    ``cache_layer`` (``[2, 1, capacity, head_dim]`` contiguous: the K plane, then the V plane)."""
    head_dim = cache_layer.shape[-1]
    n_q = qkv.shape[0] - 2 * head_dim
    rows = x.shape[0] if x.dim() == 2 else 1
    if cache_layer.shape[:2] != (2, 1) or not cache_layer.is_contiguous() or n_q <= 0 or pos.numel() != rows:
        raise ValueError(
            f"GEMV: qkv {tuple(qkv.shape)} against cache {tuple(cache_layer.shape)}, {pos.numel()} positions"
        )
    q = _out(x, n_q)
    _launch(
        x, qkv, q, qkv.shape[0], norm=norm, eps=eps, epilogue=QKV, cache=cache_layer, pos=pos,
        head_dim=head_dim, pdl=pdl,
    )  # fmt: skip
    return q
