"""The GPU decode step with Triton kernels where the torch step launches many small ones (on an H100, 1.6B
shape: 1.56 ms/token with the fused GEMVs and PDL, 2.10 with cuBLAS's GEMMs, 2.63 for the torch step;
``docs/benchmarks.md``).

An H100 profile of the CUDA-graph decode step (``bench/engine.py --report gpu``, 1.6B shape, 2k-token cache)
found, besides the GEMVs, about 310 us per token in 65 LayerNorm launches of one 2048-wide row each and about
460 us in the five kernels of each layer's attention (scores + ALiBi, a copy of the bias, softmax, the
values, a split-K reduction). Here:

- :func:`layer_norm`: one row, one program (LayerNorm without bias, float32 statistics);
- :func:`silu_mul`: ``silu(gate) * up`` of the fused ``gate_up`` output in one pass;
- :func:`attention`: one query's multi-query attention over the static cache, split along the cache
  (flash-decoding): each program scores a block of keys for all heads at once (the heads share the one
  K/V head), adds ALiBi and the causal mask from ``pos`` on the device, keeps an online softmax, and a
  second kernel merges the blocks.

Written by hand: torch has no fused kernel for one ALiBi query over a multi-query cache (FlexAttention
under ``torch.compile`` took 140 us per layer on the H100, ``torch.compile`` of the whole step was slower
than the eager graph), and flash-attn, which has one, is not a dependency. The kernels need CUDA and
Triton (shipped with CUDA builds of torch); with ``TRITON_INTERPRET=1`` they run on the CPU, which is how
the tests check them against the torch step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from refact_lsp.engine import triton_gemv
from refact_lsp.engine.model import add_linear
from refact_lsp.engine.triton_env import INTERPRETED, available, triton, wait_for_the_previous_kernel

if triton is not None:
    import triton.language as tl

KEYS_PER_PROGRAM = 128
"""Cache positions one attention program covers (a 4096-token cache: 32 programs)."""
KEY_BLOCK = 64
"""Keys scored per inner step: one ``[heads, 64] @ [64, KEY_BLOCK]`` product."""
TOKENS_PADDED = 8
"""The attention of 2 to this many query tokens (a keystroke's new prompt tokens, up to
``generate.SHORT_TAIL``) is one compiled kernel, its rows padded to this many tokens' (the generator's warm-up
compiles it with its 3-token prompt, so a user's first keystrokes do not)."""
FUSED_GEMV = True
"""The step's projections as :mod:`triton_gemv`'s GEMVs with the LayerNorms, the activation, the residual
adds and the KV write fused in (6 launches a layer instead of 11). On an H100: 1.83 ms/token against 2.10
with cuBLAS's GEMMs, 1.56 with ``PDL`` (``docs/benchmarks.md``)."""
MERGE_IN_LAST_PROGRAM = False
"""With ``FUSED_GEMV``: attention in one launch (the last block program merges). Off: slower (2.00 ms/token
with ``PDL`` on an H100 against 1.56 with the merge kernel; one program reads every block's results)."""
PDL = True
"""With ``FUSED_GEMV``, on Hopper or later: programmatic dependent launch (each GEMV loads its weights, each
attention program the keys and values before the position, while the kernel before it finishes)."""
FUSED_STEP = {"FUSED_GEMV": True, "MERGE_IN_LAST_PROGRAM": True, "PDL": True}
"""The three constants above all on (what the tests and benches also check: one-launch attention)."""


def can_run(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether :func:`decode_step` takes ``model`` on ``device``: Triton is installed, the device is CUDA (or
    Triton's CPU interpreter is on: the tests), and the head dim is what ``tl.dot`` takes (a power of two,
    at least 16)."""
    d = model.config.head_dim
    return available() and (device.type == "cuda" or INTERPRETED) and d >= 16 and d & (d - 1) == 0


def supports(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether :func:`decode_step` is the default for ``model`` on ``device``: CUDA and 16-bit weights."""
    dtype = model.transformer.wte.weight.dtype
    return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and can_run(model, device)


if triton is not None:

    @triton.jit
    def _layer_norm_kernel(x_ptr, w_ptr, out_ptr, n, eps, BLOCK: tl.constexpr):
        """Program ``r``: row ``r``."""
        row = tl.program_id(0) * n
        x_ptr += row
        out_ptr += row
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / n
        d = tl.where(mask, x - mean, 0.0)
        var = tl.sum(d * d, axis=0) / n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = d * (1.0 / tl.sqrt(var + eps)) * w
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_mul_kernel(gate_up_ptr, out_ptr, n, BLOCK: tl.constexpr):
        """Program ``(i, r)``: block ``i`` of row ``r``."""
        row = tl.program_id(1)
        gate_up_ptr += row * 2 * n
        out_ptr += row * n
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        gate = tl.load(gate_up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_up_ptr + n + offs, mask=mask, other=0.0).to(tl.float32)
        y = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _attention_blocks_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        pos_ptr,
        slopes_ptr,
        acc_ptr,
        max_ptr,
        sum_ptr,
        counter_ptr,
        out_ptr,
        scale,
        N_BLOCKS: tl.constexpr,
        H: tl.constexpr,
        T,
        HP: tl.constexpr,
        D: tl.constexpr,
        KEYS: tl.constexpr,
        BLOCK: tl.constexpr,
        UPCAST: tl.constexpr,
        PRECISION: tl.constexpr,
        MERGE: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """Program ``i``: keys ``[i * KEYS, (i + 1) * KEYS)`` for ``T`` query tokens at once (row ``r`` of
        the ``T * H`` rows, at most ``HP``: token ``r // H`` at ``pos[r // H]``, head ``r % H``), each up to
        its own position; ``T`` is no compile-time constant: one kernel serves every count up to ``HP / H``.
        Unnormalised output, row max and row sum per row into the workspace (max -inf and sum 0 for a row
        without a key in the block). With MERGE, the program that finishes last (``counter_ptr`` counts
        them) merges the blocks into ``out_ptr`` and sets the counter back to 0. With PDL (and one block a
        program), the keys and values before ``pos[0]`` load before the wait: only the step's own slots are
        the previous kernel's to write."""
        i = tl.program_id(0)
        dims = tl.arange(0, D)
        first = tl.load(pos_ptr)  # pos and the slots before it were written before the step
        last = tl.load(pos_ptr + T - 1)
        if PDL:
            early = i * KEYS + tl.arange(0, BLOCK)
            before = (first > early)[:, None]
            k_before = tl.load(k_ptr + early[:, None] * D + dims[None, :], mask=before, other=0.0)
            v_before = tl.load(v_ptr + early[:, None] * D + dims[None, :], mask=before, other=0.0)
        wait_for_the_previous_kernel(PDL)
        rows = tl.arange(0, HP)  # padded to what tl.dot takes (16 rows at least); the padding is zeros
        real = rows < T * H
        row_pos = tl.load(pos_ptr + rows // H, mask=real, other=0)
        q = tl.load(q_ptr + rows[:, None] * D + dims[None, :], mask=real[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        slopes = tl.load(slopes_ptr + rows % H, mask=real, other=0.0)
        row_max = tl.full([HP], float("-inf"), tl.float32)
        row_sum = tl.zeros([HP], tl.float32)
        acc = tl.zeros([HP, D], tl.float32)
        for offset in range(0, KEYS, BLOCK):
            start = i * KEYS + offset
            if start <= last:  # (last < capacity) slots after it may hold anything, NaN too: not read
                keys = start + tl.arange(0, BLOCK)
                if PDL:  # the step's own slots: zeros elsewhere, as the early tiles are zero there
                    now = ((keys >= first) & (keys <= last))[:, None]
                    k = k_before + tl.load(k_ptr + keys[:, None] * D + dims[None, :], mask=now, other=0.0)
                    v = v_before + tl.load(v_ptr + keys[:, None] * D + dims[None, :], mask=now, other=0.0)
                else:
                    held = (keys <= last)[:, None]
                    k = tl.load(k_ptr + keys[:, None] * D + dims[None, :], mask=held, other=0.0)
                    v = tl.load(v_ptr + keys[:, None] * D + dims[None, :], mask=held, other=0.0)
                if UPCAST:
                    k, v = k.to(tl.float32), v.to(tl.float32)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                s = s - slopes[:, None] * (row_pos[:, None] - keys[None, :]).to(tl.float32)
                s = tl.where(keys[None, :] <= row_pos[:, None], s, float("-inf"))
                new_max = tl.maximum(row_max, tl.max(s, axis=1))
                # a row with no key yet (an earlier token, a later block) keeps max -inf: no exp(-inf + inf)
                shift = tl.where(new_max == float("-inf"), 0.0, new_max)
                p = tl.exp(s - shift[:, None])
                rescale = tl.exp(row_max - shift)
                row_sum = row_sum * rescale + tl.sum(p, axis=1)
                acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                row_max = new_max
        out = i * T * H * D + rows[:, None] * D + dims[None, :]
        tl.store(acc_ptr + out, acc, mask=real[:, None])
        tl.store(max_ptr + i * T * H + rows, row_max, mask=real)
        tl.store(sum_ptr + i * T * H + rows, row_sum, mask=real)
        if MERGE:
            tl.debug_barrier()  # all of this program's stores happen before its release below
            if tl.atomic_add(counter_ptr, 1, sem="acq_rel") == N_BLOCKS - 1:
                nbp: tl.constexpr = triton.next_power_of_2(N_BLOCKS)
                # [group, rows, D] float32 a step: 4 blocks for one token's 32 heads, fewer for more rows
                group: tl.constexpr = max(1, min(4, nbp, 128 // HP))
                _merge_blocks(
                    acc_ptr, max_ptr, sum_ptr, out_ptr, last, KEYS, nbp, group, rows, real, dims, T * H, D,
                )  # fmt: skip
                tl.store(counter_ptr, 0)  # ready for the next launch

    @triton.jit
    def _merge_blocks(
        acc_ptr,
        max_ptr,
        sum_ptr,
        out_ptr,
        pos,
        KEYS,
        NBP: tl.constexpr,
        GROUP: tl.constexpr,
        heads,
        real,
        dims,
        H,
        D,
    ):
        """All rows' outputs (``heads``: the row indices, ``H`` of them) from the partial results of the
        blocks that hold keys up to ``pos`` (``.cg``: read from L2, where the other programs' stores are):
        the maxima and sums as one ``[blocks, rows]`` tile, the outputs ``GROUP`` blocks at a time
        (``[GROUP, rows, D]``: 32 KB of loads in flight an iteration for 32 rows)."""
        used = pos // KEYS + 1
        blocks = tl.arange(0, NBP)
        live = (blocks < used)[:, None] & real[None, :]
        cell = blocks[:, None] * H + heads[None, :]
        maxima = tl.load(max_ptr + cell, mask=live, other=float("-inf"), cache_modifier=".cg")
        top = tl.where(real, tl.max(maxima, axis=0), 0.0)  # finite: block 0 holds key 0
        sums = tl.load(sum_ptr + cell, mask=live, other=0.0, cache_modifier=".cg")
        # a block without keys has max -inf: weight exp(-inf) = 0
        denominator = tl.sum(tl.exp(maxima - top[None, :]) * sums, axis=0)
        numerator = tl.zeros([heads.shape[0], dims.shape[0]], tl.float32)
        for first in range(0, NBP, GROUP):
            group = first + tl.arange(0, GROUP)
            group_live = (group < used)[:, None] & real[None, :]
            group_cell = group[:, None] * H + heads[None, :]
            m = tl.load(max_ptr + group_cell, mask=group_live, other=float("-inf"), cache_modifier=".cg")
            weight = tl.exp(m - top[None, :])
            block = tl.load(
                acc_ptr + group_cell[:, :, None] * D + dims[None, None, :],
                mask=group_live[:, :, None],
                other=0.0,
                cache_modifier=".cg",
            )
            numerator += tl.sum(block * weight[:, :, None], axis=0)
        y = numerator / tl.where(real, denominator, 1.0)[:, None]
        tl.store(
            out_ptr + heads[:, None] * D + dims[None, :], y.to(out_ptr.dtype.element_ty), mask=real[:, None]
        )

    @triton.jit
    def _attention_merge_kernel(
        acc_ptr,
        max_ptr,
        sum_ptr,
        out_ptr,
        n_blocks,
        H,
        D: tl.constexpr,
        NB: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """Program ``h``: row ``h``'s output (of ``H`` rows: heads, or tokens x heads) from the blocks'
        partial results."""
        wait_for_the_previous_kernel(PDL)
        h = tl.program_id(0)
        blocks = tl.arange(0, NB)
        dims = tl.arange(0, D)
        used = blocks < n_blocks
        block_max = tl.load(max_ptr + blocks * H + h, mask=used, other=float("-inf"))
        block_sum = tl.load(sum_ptr + blocks * H + h, mask=used, other=0.0)
        top = tl.max(block_max, axis=0)  # finite: block 0 always holds key 0
        weight = tl.where(block_max > float("-inf"), tl.exp(block_max - top), 0.0)
        acc = tl.load(
            acc_ptr + blocks[:, None] * H * D + h * D + dims[None, :], mask=used[:, None], other=0.0
        )
        y = tl.sum(acc * weight[:, None], axis=0) / tl.sum(block_sum * weight, axis=0)
        tl.store(out_ptr + h * D + dims, y.to(out_ptr.dtype.element_ty))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without bias of each row (``x`` contiguous, rows of ``weight.numel()`` values)."""
    n = weight.numel()
    out = torch.empty_like(x)
    rows = x.numel() // n
    _layer_norm_kernel[(rows,)](x, weight, out, n, eps, BLOCK=triton.next_power_of_2(n), num_warps=8)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for each row ``[..., 2n]`` (contiguous) holding gate then up; ``[..., n]``."""
    n = gate_up.shape[-1] // 2
    out = gate_up.new_empty((*gate_up.shape[:-1], n))
    block = 1024
    rows = gate_up.numel() // (2 * n)
    _silu_mul_kernel[(triton.cdiv(n, block), rows)](gate_up, out, n, BLOCK=block, num_warps=4)
    return out


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    slopes: torch.Tensor,
    scale: float,
    *,
    merge_in_last_program: bool = False,
    pdl: bool = False,
) -> torch.Tensor:
    """The attention of ``T = pos.numel()`` query tokens at consecutive positions ``pos``, all heads over
    the one K/V head: ``q`` ``[T * H * D]`` contiguous, ``k``/``v`` ``[capacity, D]`` contiguous, each
    token's keys after its position masked, ALiBi ``-slopes[h] * (pos - j)``. Returns ``[T * H * D]`` in
    ``q``'s dtype.

    The blocks' partial results are merged by a second kernel, or with ``merge_in_last_program`` by the
    block program that finishes last (one launch instead of two). ``pdl``: launched with programmatic
    dependent launch (see :mod:`triton_gemv`), each program one block of keys whose slots before
    ``pos[0]`` it reads before waiting for the previous kernel: that kernel may write ``q`` and the
    step's slots, not ``pos`` itself or the slots before it."""
    capacity, d = k.shape
    h, t = slopes.numel(), pos.numel()
    rows = t * h
    n_blocks = triton.cdiv(capacity, KEYS_PER_PROGRAM)
    acc = torch.empty((n_blocks, rows, d), dtype=torch.float32, device=q.device)
    row_max = torch.empty((n_blocks, rows), dtype=torch.float32, device=q.device)
    row_sum = torch.empty((n_blocks, rows), dtype=torch.float32, device=q.device)
    # the rows padded to what tl.dot takes; a few tokens to TOKENS_PADDED's rows: one kernel for all of them
    padded = max(16, triton.next_power_of_2(h if t == 1 else max(t, TOKENS_PADDED) * h))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # tf32: Triton's default (16-bit inputs)
    out = torch.empty(rows * d, dtype=q.dtype, device=q.device)
    options = {"launch_pdl": True} if pdl else {}
    _attention_blocks_kernel[(n_blocks,)](
        q, k, v, pos, slopes, acc, row_max, row_sum, _merge_counter(q.device), out, scale, N_BLOCKS=n_blocks,
        H=h, T=t, HP=padded, D=d, KEYS=KEYS_PER_PROGRAM, BLOCK=KEYS_PER_PROGRAM if pdl else KEY_BLOCK,
        UPCAST=INTERPRETED, PRECISION=precision, MERGE=merge_in_last_program, PDL=pdl,
        num_warps=4 if padded <= 64 else 8, **options,
    )  # fmt: skip
    if not merge_in_last_program:
        nb = triton.next_power_of_2(n_blocks)
        _attention_merge_kernel[(rows,)](
            acc, row_max, row_sum, out, n_blocks, rows, D=d, NB=nb, PDL=pdl, num_warps=4, **options
        )
    return out


_merge_counters: dict[torch.device, torch.Tensor] = {}


def _merge_counter(device: torch.device) -> torch.Tensor:
    """The attention programs' finish counter on ``device``: 0 between launches (the merging program
    sets it back), shared by the launches one after another on the device (the generator runs one request
    at a time), and kept for good (a captured graph holds its address)."""
    counter = _merge_counters.get(device)
    if counter is None:
        counter = _merge_counters[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return counter


def decode_step(model: Any, token: torch.Tensor, pos: torch.Tensor, kv_cache: Any) -> torch.Tensor:
    """``model.decode_step`` (same arguments, T tokens ``[1, T]`` at positions ``pos`` ``[T]``, same result
    within rounding) with the kernels above for the norms, the attention (one launch for the T tokens)
    and the MLP activation; the GEMMs stay cuBLAS's (``add_linear``), or with ``FUSED_GEMV`` become
    :mod:`triton_gemv`'s (one-row GEMVs, or for a few tokens its several-rows kernel)."""
    t = token.shape[-1]
    if FUSED_GEMV and t <= triton_gemv.TOKENS_AT_ONCE and _fusable(model):
        return _fused_decode_step(model, token, pos, kv_cache)
    cfg = model.config
    n_embd, head_dim, eps = cfg.n_embd, cfg.head_dim, cfg.layer_norm_epsilon
    scale = 1.0 / math.sqrt(head_dim)
    x = model.transformer.wte(token)  # [1, T, C]
    slopes = model.slopes(x.device)
    slot = kv_cache.slot(pos)
    for block in model.transformer.h:
        attn, mlp = block.attn, block.mlp
        q, kv = attn._project(layer_norm(x, block.ln_1.weight, eps))
        k, v = slot.update_kv(kv.view(1, 1, t, 2 * head_dim), attn.layer_idx)  # [1, 1, capacity, D] each
        y = attention(q.reshape(-1), k[0, 0], v[0, 0], pos, slopes, scale)
        x = add_linear(x, attn.c_proj, y.view(1, t, n_embd))
        h = silu_mul(mlp.gate_up_proj(layer_norm(x, block.ln_2.weight, eps)))
        x = add_linear(x, mlp.c_proj, h)
    return model.lm_head(layer_norm(x[:, -1:], model.ln_f.weight, eps))[0, -1]


def _fusable(model: Any) -> bool:
    """Whether every projection is a plain Linear with contiguous weights and each layer's q and kv are
    one tensor (what :func:`_fused_decode_step` reads): not after quantization or a ``.to()``."""
    linears = [model.lm_head]
    for block in model.transformer.h:
        if block.attn.fused_weight() is None:
            return False
        linears += [block.attn.c_proj, block.mlp.gate_up_proj, block.mlp.c_proj]
    return all(type(m) is torch.nn.Linear and m.weight.is_contiguous() for m in linears)


def _fused_decode_step(model: Any, token: torch.Tensor, pos: torch.Tensor, kv_cache: Any) -> torch.Tensor:
    """:func:`decode_step` as five or six kernels a layer: the q/kv GEMV (LayerNorm in, K and V into the
    cache), attention (one launch with ``MERGE_IN_LAST_PROGRAM``, else two), the output GEMV adding into the
    residual, the gate/up GEMV (LayerNorm in, SwiGLU out) and the down GEMV adding into the residual; for
    T tokens the same kernels take T rows (the head only the last)."""
    cfg = model.config
    eps, scale = cfg.layer_norm_epsilon, 1.0 / math.sqrt(cfg.head_dim)
    t = token.shape[-1]
    x = model.transformer.wte(token).view(t, cfg.n_embd)  # the residual stream, updated in place
    slopes = model.slopes(x.device)
    # Hopper or later; in the interpreter the same launches run, without griddepcontrol (the tests)
    pdl = PDL and (
        INTERPRETED or x.device.type == "cuda" and torch.cuda.get_device_capability(x.device)[0] >= 9
    )
    merge = MERGE_IN_LAST_PROGRAM
    for block in model.transformer.h:
        attn, mlp = block.attn, block.mlp
        layer = kv_cache.kv[attn.layer_idx]  # [2, 1, capacity, D]: the K plane, then the V plane
        q = triton_gemv.norm_qkv_into_cache(x, block.ln_1.weight, eps, attn.qkv_weight, layer, pos, pdl)
        y = attention(
            q.view(-1), layer[0, 0], layer[1, 0], pos, slopes, scale, merge_in_last_program=merge, pdl=pdl
        )
        triton_gemv.add_linear_(x, y.view(t, cfg.n_embd), attn.c_proj.weight, pdl)
        h = triton_gemv.norm_swiglu(x, block.ln_2.weight, eps, mlp.gate_up_proj.weight, pdl)
        triton_gemv.add_linear_(x, h, mlp.c_proj.weight, pdl)
    return triton_gemv.norm_linear(x[-1], model.ln_f.weight, eps, model.lm_head.weight, pdl)
