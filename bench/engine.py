"""Engine benchmarks with random weights (nothing downloaded), through the real ``Generator``.

    PYTHONPATH=. python bench/engine.py --report speed --shapes tiny,mid --prompt-len 64 --steps 8
    PYTHONPATH=. python bench/engine.py --report gpu      # CUDA: 1.6B bf16 fast path, ~2k-token prompt
    PYTHONPATH=. python bench/engine.py --report int8 --shapes mid,real --prompt-len 64 --steps 8   # CPU
    PYTHONPATH=. python bench/engine.py --report decode --profile   # CUDA: the decode step's variants

Reports (default: ``gpu`` on CUDA, ``speed`` elsewhere):

- ``speed``: prefill tokens/s (time to first token) and decode ms/token per shape, float32 (and bf16 on
  CUDA, fast path on), against the memory-bandwidth floor; ``--hf-generate`` adds transformers' ``generate``.
- ``gpu``: the 1.6B shape in float32 as the reference, then the same weights in bf16 with the fast path
  (SDPA prefill, static-shape decode replayed as a CUDA graph): logit drift and top-1 agreement of the
  prefill and of the graph-replayed decode, prefill tokens/s, decode ms/token with and without CUDA graphs,
  one keystroke with KV reuse, and transformers' ``generate`` on the same model. Each section catches its
  own errors and the run goes on; a summary closes it.
- ``decode``: ways of running the bf16 decode step (torch's kernels, the Triton kernels, the fused GEMVs
  (tiles autotuned, or fixed) with and without one-launch attention and programmatic dependent launch;
  ``--compile``: torch.compile) against each other: ms/token, logit drift, and with ``--profile`` the kernel
  time per kernel of each captured step and each weight's GEMV alone, cuBLAS against the fused kernel.
- ``int8``: CPU dynamic int8 (Linear weights) against float32 on the same weights: logit drift, top-1
  agreement, prefill tokens/s and decode ms/token.

Shapes: tiny (64 x 2 layers), mid (512 x 8), real (2048 x 32 = Refact-1.6B, float32 needs 6.3 GB).
The token ``<|endoftext|>`` is given a zero head row so that random weights never stop a run early.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

import refact_lsp.engine.model as model_module
from refact_lsp.dev.checkpoints import fixture_tokenizer_path, random_model
from refact_lsp.dev.op_count import decode_step_ops
from refact_lsp.engine import triton_decode, triton_gemv
from refact_lsp.engine.generate import GenerationRequest, Generator, sample_next
from refact_lsp.engine.loading import LoadedModel, resolve_device
from refact_lsp.engine.quantize import quantize_int8
from refact_lsp.engine.readback import PickReadback
from refact_lsp.engine.tokenizer import FIRST_PADDING_ID, RefactTokenizer

REAL = slice(0, FIRST_PADDING_ID)  # the tokenizer's ids; the rest is padding, never sampled
SUMMARY: list[str] = []


@contextmanager
def section(title: str) -> Iterator[None]:
    """Print a header; report (and survive) any error inside; print the time the section took."""
    print(f"\n== {title}")
    t = time.perf_counter()
    try:
        yield
    except Exception as e:
        print(f"   FAILED: {type(e).__name__}: {e}")
        traceback.print_exc(limit=4, file=sys.stdout)
        SUMMARY.append(f"{title}: FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    finally:
        print(f"   ({time.perf_counter() - t:.1f} s)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def memory_bandwidth_gbs(device: torch.device) -> float:
    """Read bandwidth of a 1 GiB float32 reduction (best of 3)."""
    x = torch.ones(256 * 1024 * 1024, device=device)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        x.sum().item()
        best = min(best, time.perf_counter() - t)
    del x
    return 2**30 / best / 1e9


def make_loaded(shape: str, dtype: torch.dtype, device: torch.device, tok: RefactTokenizer) -> LoadedModel:
    model = random_model(shape, dtype=dtype, device=device)
    model.fuse_projections()  # as load_model does
    with torch.no_grad():
        model.lm_head.weight[0].zero_()  # logits ~N(0,1): <|endoftext|> at 0 never wins, runs go full length
    return LoadedModel(model, tok, device, dtype, model.config.n_positions, fixture_tokenizer_path().parent)


@contextmanager
def preferred_blas(name: str | None) -> Iterator[None]:
    """CUDA's preferred BLAS library set to ``name`` (``"cublaslt"``) for the block; None: unchanged."""
    if name is None:
        yield
        return
    default = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(default)


def decode_floor_ms(loaded: LoadedModel, bandwidth_gbs: float) -> tuple[float, float]:
    """(GB read per decode step, ms at ``bandwidth_gbs``): every weight once except the embedding."""
    model = loaded.model
    n_read = sum(p.numel() for p in model.parameters()) - model.transformer.wte.weight.numel()
    gb = n_read * model.transformer.wte.weight.element_size() / 1e9
    return gb, 1000 * gb / bandwidth_gbs


def bench_generator(
    loaded: LoadedModel,
    prompt: list[int],
    steps: int,
    repeats: int,
    temperature: float = 0.0,
    **generator_options: bool,
) -> tuple[float, float, list[int]]:
    """(prefill tokens/s, decode ms/token, tokens): best of ``repeats``, no KV reuse; greedy unless
    ``temperature`` > 0 (then seeded)."""
    gen = Generator(loaded, **generator_options)
    result = time_generator(gen, prompt, steps, repeats, temperature)
    del gen
    free(loaded.device)
    return result


def time_generator(
    gen: Generator, prompt: list[int], steps: int, repeats: int, temperature: float = 0.0
) -> tuple[float, float, list[int]]:
    """:func:`bench_generator` on a generator at hand."""
    req = GenerationRequest(
        prompt, max_new_tokens=steps, temperature=temperature, seed=0, stop_strings=(), kv_reuse=False
    )
    gen.generate(GenerationRequest(prompt[:8], max_new_tokens=3, temperature=0.0, kv_reuse=False))  # warm-up
    prefill, decode, tokens = [], [], []
    for _ in range(repeats):
        r = gen.generate(req)
        prefill.append(r.prefill_s)
        if r.steps > 1:
            decode.append(r.decode_s / (r.steps - 1))
        tokens = r.token_ids
    return len(prompt) / min(prefill), 1000 * min(decode) if decode else float("nan"), tokens


def bench_hf_generate(model, prompt: list[int], steps: int, device: torch.device) -> tuple[float, list[int]]:
    """Seconds for transformers' greedy ``generate`` of ``steps`` tokens after ``prompt``, and its tokens."""
    ids = torch.tensor([prompt], device=device)
    kw = dict(
        do_sample=False,
        max_new_tokens=steps,
        min_new_tokens=steps,
        suppress_tokens=list(range(FIRST_PADDING_ID, model.config.vocab_size)),
        pad_token_id=0,
    )
    model.generate(ids[:, :8], **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    sync(device)
    t = time.perf_counter()
    out = model.generate(ids, **kw)
    sync(device)
    return time.perf_counter() - t, out[0, len(prompt) :].tolist()


@torch.inference_mode()
def all_logits(model, ids: list[int], device: torch.device, sdpa: bool = False) -> torch.Tensor:
    """Float32 ``[T, n_real_tokens]`` logits of every position, one forward pass without cache."""
    return model(torch.tensor([ids], device=device), sdpa=sdpa).logits[0, :, REAL].float()


def drift(ref: torch.Tensor, other: torch.Tensor) -> tuple[float, float, float, float]:
    """(max abs diff, mean abs diff, top-1 agreement %, % of other's top-1 in ref's top 5), ``[T, V]`` logits.

    Random weights give flat logits (many near ties), so top-1 agreement understates how close they are."""
    diff = (ref - other).abs()
    top1 = other.argmax(-1, keepdim=True)
    agree = (ref.argmax(-1, keepdim=True) == top1).float().mean().item()
    in_top5 = (ref.topk(5, dim=-1).indices == top1).any(-1).float().mean().item()
    return diff.max().item(), diff.mean().item(), 100 * agree, 100 * in_top5


def ops_line(model) -> str:
    """Tensor operations (about the kernels a GPU launches) in one static decode step."""
    ops = decode_step_ops(model)
    n_layer = model.config.n_layer
    top = ", ".join(f"{name} {n}" for name, n in ops.most_common(6))
    return f"decode step: {sum(ops.values())} tensor operations for {n_layer} layers ({top}, ...)"


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy runs share (after a divergence the rest differs by construction)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def random_prompt(n: int) -> list[int]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(19, FIRST_PADDING_ID, (n,), generator=g).tolist()


# --- reports ------------------------------------------------------------------------------------


MATMUL_KERNEL = ("gemv", "gemm", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::addmm", "aten::bmm")


def kernel_times_us(
    activity_fn: Callable[[], object], device: torch.device, calls: int
) -> dict[str, tuple[float, float]]:
    """{kernel name: (microseconds per call, launches per call)} of ``activity_fn`` run ``calls`` times under
    torch.profiler: CUDA kernels on a GPU, CPU operators elsewhere (a dry run of the report)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activity_fn()  # warm: no first-call setup in the profile
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            activity_fn()
        sync(device)
    times = {}
    for e in prof.key_averages():
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        if t > 0 and (cuda or e.key.startswith("aten::")):
            times[e.key] = (t / calls, e.count / calls)
    return times


def prefill(gen: Generator, prompt: list[int]) -> None:
    """``prompt`` into the generator's current cache, in chunks of 512 (no sampling)."""
    with torch.inference_mode():
        for start in range(0, len(prompt), 512):
            gen._forward(prompt[start : start + 512])


def profile_step(gen: Generator, prompt: list[int], device: torch.device, label: str) -> None:
    """Kernel time of one decode step by kernel (torch.profiler), against the step's wall time: the
    captured graph's replay when ``gen`` has one, else the eager step."""
    prefill(gen, prompt)
    with torch.inference_mode():
        token, pos = prompt[-1], gen.cache.length
        gen._decode([token])  # captures the slot's graph (when graphs are on)
        graph = gen._graphs.get((gen.cache, 1))
        step = (
            functools.partial(graph.run, [token], pos) if graph else functools.partial(gen._decode, [token])
        )
        kernels = kernel_times_us(step, device, 20)
        sync(device)
        t = time.perf_counter()
        for _ in range(50):
            step()
        sync(device)
        wall = (time.perf_counter() - t) * 1e6 / 50
    total = sum(us for us, _ in kernels.values())
    mm = sum(us for name, (us, _) in kernels.items() if any(k in name.lower() for k in MATMUL_KERNEL))
    launches = sum(n for _, n in kernels.values())
    line = (
        f"{label} ({'graph replay' if graph else 'eager'}): {wall:.0f} us wall; kernels {total:.0f} us "
        f"({launches:.0f} launches): matmul {mm:.0f} us, the rest {total - mm:.0f} us; "
        f"outside kernels {wall - total:.0f} us"
    )
    print(f"   {line}")
    SUMMARY.append(f"decode step, {line}")
    for name, (us, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:14]:
        print(f"   {us:8.1f} us {n:5.0f}x  {name[:150]}")


def profile_decode_step(loaded: LoadedModel, prompt: list[int], device: torch.device) -> None:
    """:func:`profile_step` of the captured decode step and of the same step eager, then each Linear
    shape's read bandwidth alone: where the step misses its floor."""
    for label, graphs in (("CUDA graph", True), ("static eager", False)):
        if graphs and device.type != "cuda":
            continue
        gen = Generator(loaded, fast_path=True, cuda_graphs=graphs)
        profile_step(gen, prompt, device, label)
        del gen
        free(device)
    weight_gemvs(loaded, device)


def weight_gemvs(loaded: LoadedModel, device: torch.device) -> None:
    """Each weight's one-row product alone, kernel time and read bandwidth: cuBLAS (``F.linear``), and on
    CUDA with Triton the fused GEMV the step would run instead (LayerNorm in for q+kv, gate_up and the head,
    SwiGLU out for gate_up, the residual add for the two c_proj)."""
    model = loaded.model
    layer, cfg = model.transformer.h[0], model.config
    eps = cfg.layer_norm_epsilon
    weights = {"attn q+kv": layer.attn.qkv_weight, "attn c_proj": layer.attn.c_proj.weight}
    weights |= {"mlp gate_up": layer.mlp.gate_up_proj.weight, "mlp c_proj": layer.mlp.c_proj.weight}
    weights["lm_head"] = model.lm_head.weight
    fused = {
        "attn q+kv": lambda x, w: triton_gemv.norm_linear(x, layer.ln_1.weight, eps, w),
        "attn c_proj": lambda x, w: triton_gemv.add_linear_(torch.zeros_like(x[: w.shape[0]]), x, w),
        "mlp gate_up": lambda x, w: triton_gemv.norm_swiglu(x, layer.ln_2.weight, eps, w),
        "mlp c_proj": lambda x, w: triton_gemv.add_linear_(x.new_zeros(w.shape[0]), x, w),
        "lm_head": lambda x, w: triton_gemv.norm_linear(x, model.ln_f.weight, eps, w),
    }
    with_triton = triton_decode.can_run(model, device)  # CUDA, or the interpreter (a dry run)
    with torch.inference_mode():
        for label, w in weights.items():
            if w is None:
                continue
            x = torch.randn(w.shape[1], device=device, dtype=w.dtype)
            kinds = {"cuBLAS": functools.partial(torch.nn.functional.linear, x[None], w)}
            if with_triton:
                kinds["fused GEMV"] = functools.partial(fused[label], x, w)
            parts = []
            for kind, gemv in kinds.items():
                us = sum(t for t, _ in kernel_times_us(gemv, device, 20).values())
                parts.append(f"{kind} {us:.1f} us, {w.numel() * w.element_size() / us / 1e3:.0f} GB/s")
            line = f"{label} {tuple(w.shape)} alone: " + "; ".join(parts)
            print(f"   {line}")
            SUMMARY.append(line)


FUSED = {"FUSED_GEMV": True}
ONE_LAUNCH_PDL = triton_decode.FUSED_STEP
DECODE_VARIANTS: list[tuple[str, dict[str, bool], dict[str, object]]] = [
    # (label, Generator options, module constants set for the run: see ``patched``). Earlier runs also
    # compared 64 and 256 keys per attention program and residual adds apart (docs/benchmarks.md).
    ("CUDA graph, torch's kernels", {"triton_kernels": False}, {}),
    ("CUDA graph, Triton kernels, cuBLAS GEMMs", {"triton_kernels": True}, {"FUSED_GEMV": False}),
    ("CUDA graph, Triton kernels, fused GEMVs", {"triton_kernels": True}, FUSED | {"PDL": False}),
    (
        "CUDA graph, Triton kernels, fused GEMVs, PDL, host a step behind (the default)",
        {"triton_kernels": True},
        {},
    ),
    (
        "... fused GEMVs, PDL, host in lockstep (the default before)",
        {"triton_kernels": True, "run_ahead": False},
        {},
    ),
    (
        "CUDA graph, Triton kernels, fused GEMVs, one attention launch, PDL",
        {"triton_kernels": True},
        ONE_LAUNCH_PDL,
    ),
    (
        "... fused GEMVs, PDL, every GEMV in 4 rows x 4 warps (not autotuned)",
        {"triton_kernels": True},
        FUSED | {"PDL": True, "AUTOTUNE": False},
    ),
]
COMPILE_VARIANT = ("torch.compile, then a CUDA graph (adds apart)", {"compile_decode": True}, {})


@contextmanager
def patched(constants: dict[str, object]) -> Iterator[None]:
    """The model's, the Triton step's or the GEMV kernels' module constants (``ADD_INTO_GEMM``,
    ``KEYS_PER_PROGRAM``, ``FUSED_GEMV``, ``ROWS_PER_PROGRAM``...) set for the block: what the bench
    compares, without a setting in the product."""
    saved = []
    for name, value in constants.items():
        module = next(m for m in (model_module, triton_decode, triton_gemv) if hasattr(m, name))
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)
    try:
        yield
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


def decode_report(args: argparse.Namespace, device: torch.device, tok: RefactTokenizer) -> None:
    """Ways of running the bf16 decode step, each against the first on the same weights: logits of the
    same teacher-forced tokens, decode ms/token (fast path, no KV reuse), and a kernel profile."""
    loaded = make_loaded(args.shapes, torch.bfloat16, device, tok)
    prompt = random_prompt(args.prompt_len)
    forced = random_prompt(args.prompt_len + 16)[-16:]
    bw = memory_bandwidth_gbs(device)
    _, floor = decode_floor_ms(loaded, bw)
    print(f"   bandwidth {bw:.0f} GB/s: floor {floor:.2f} ms/token")
    ref = None
    for label, options, constants in DECODE_VARIANTS + ([COMPILE_VARIANT] if args.compile else []):
        with section(label), patched(constants):
            gen = Generator(loaded, fast_path=True, **options)
            t = time.perf_counter()
            prefill(gen, prompt)
            with torch.inference_mode():
                logits = torch.stack([gen._decode([token]).float()[REAL] for token in forced])
            first = time.perf_counter() - t
            if ref is None:
                ref = logits
            mx, mean, agree, _ = drift(ref, logits)
            _, dec, _ = time_generator(gen, prompt, args.steps, args.repeats)
            line = (
                f"{label}: decode {dec:.2f} ms/token (x{dec / floor:.2f} the floor); against the first: "
                f"max abs logit diff {mx:.4f}, top-1 {agree:.0f}%; graph captured {bool(gen._graphs)}, "
                f"Triton kernels {gen.triton_kernels}; "
                f"first prefill + 16 steps {first:.1f} s (capture, compile)"
            )
            print(f"   {line}")
            SUMMARY.append(line)
            if args.profile:
                profile_step(gen, prompt, device, label)
            del gen
            free(device)
    chosen = triton_gemv.chosen_tiles().items()
    if chosen:
        line = "GEMV tiles the autotuner chose: " + "; ".join(
            f"{k}: {r} rows x {w} warps" for k, (r, w) in chosen
        )
        print(f"   {line}")
        SUMMARY.append(line)
    if args.profile:
        with section("each weight's GEMV alone"):
            weight_gemvs(loaded, device)


def speed_report(args: argparse.Namespace, device: torch.device, tok: RefactTokenizer) -> None:
    prompt = random_prompt(args.prompt_len)
    dtypes = (
        [getattr(torch, name) for name in args.dtypes.split(",")]
        if args.dtypes
        else [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    )
    bw = memory_bandwidth_gbs(device)
    print(f"measured read bandwidth {bw:.1f} GB/s")
    for shape in args.shapes.split(","):
        for dtype in dtypes:
            with section(f"{shape} {str(dtype).removeprefix('torch.')}"):
                loaded = make_loaded(shape, dtype, device, tok)
                gb, floor = decode_floor_ms(loaded, bw)
                pf, dec, ours = bench_generator(loaded, prompt, args.steps, args.repeats, args.temperature)
                print(
                    f"   prefill {pf:9.1f} tok/s  decode {dec:8.2f} ms/token  "
                    f"(reads {gb:.2f} GB/token: bandwidth floor {floor:.2f} ms/token, x{dec / floor:.2f})"
                )
                print(f"   {ops_line(loaded.model)}")
                SUMMARY.append(f"{shape} {dtype}: prefill {pf:.1f} tok/s, decode {dec:.2f} ms/token")
                if args.hf_generate:
                    gen_s, theirs = bench_hf_generate(loaded.model, prompt, args.steps, device)
                    ours_total = args.prompt_len / pf + (args.steps - 1) * dec / 1000
                    print(
                        f"   transformers generate: {gen_s * 1000:.1f} ms for prefill + {args.steps} tokens "
                        f"vs ours {ours_total * 1000:.1f} ms (x{gen_s / ours_total:.2f}); "
                        + (f"greedy tokens agree: {theirs == ours}" if not args.temperature else "(sampled)")
                    )
                del loaded
                free(device)


def gpu_report(args: argparse.Namespace, device: torch.device, tok: RefactTokenizer) -> None:
    shape = args.shapes  # "real"; "tiny" for a dry run of the report on the CPU
    torch.backends.cuda.matmul.allow_tf32 = False  # a true float32 reference
    torch.backends.cudnn.allow_tf32 = False
    prompt = random_prompt(args.prompt_len)
    n, steps, repeats = len(prompt), args.steps, args.repeats
    bw = memory_bandwidth_gbs(device)
    print(f"measured read bandwidth {bw:.0f} GB/s; prompt {n} tokens, {steps} steps, best of {repeats}")
    st: dict = {}

    with section(f"float32 reference: {shape} shape (real = 1.6B), random weights, matmul attention"):
        loaded = make_loaded(shape, torch.float32, device, tok)
        pf, dec, tokens = bench_generator(loaded, prompt, steps, repeats, fast_path=False)
        st["ref_tokens"] = tokens
        st["ref"] = all_logits(loaded.model, prompt + tokens, device)  # [n + steps, V] on the GPU
        _, floor32 = decode_floor_ms(loaded, bw)
        print(f"   prefill {pf:.0f} tok/s, decode {dec:.2f} ms/token (floor {floor32:.2f})")
        SUMMARY.append(f"float32 reference (no fast path): prefill {pf:.0f} tok/s, decode {dec:.2f} ms/token")

    with section("bf16 weights (same random weights, converted in place)"):
        loaded.model.to(torch.bfloat16)
        loaded.model.fuse_projections()  # the conversion gave q and kv storage of their own again
        loaded = dataclasses.replace(loaded, dtype=torch.bfloat16)
        free(device)
        gb, floor = decode_floor_ms(loaded, bw)
        st["floor"] = floor
        print(f"   a decode step reads {gb:.2f} GB: bandwidth floor {floor:.2f} ms/token at {bw:.0f} GB/s")
        line = ops_line(loaded.model)
        print(f"   {line}")
        SUMMARY.append(line)

    with section("bf16 vs float32 logits: prefill of the whole prompt"):
        ref = st["ref"]
        for label, sdpa in (("SDPA, bf16 mask (fast path)", True), ("matmul, float32 scores", False)):
            mx, mean, agree, top5 = drift(ref[:n], all_logits(loaded.model, prompt, device, sdpa=sdpa))
            line = (
                f"prefill {label}: max abs diff {mx:.4f}, mean {mean:.5f}, top-1 agreement {agree:.1f}% "
                f"(in fp32 top-5: {top5:.1f}%)"
            )
            print(f"   {line} over {n} positions (logit std {ref[:n].std().item():.3f})")
            SUMMARY.append(f"bf16 vs fp32 {line} ({n} positions)")
            free(device)

    with section("bf16 vs float32 logits: decode steps, teacher-forced with the float32 tokens"):
        ref, ref_tokens = st["ref"], st["ref_tokens"]
        per_mode = {}
        for label, graphs in (("CUDA graph", True), ("static eager", False)):
            gen = Generator(loaded, fast_path=True, cuda_graphs=graphs)
            prefill(gen, prompt)
            with torch.inference_mode():
                got = [gen._decode([t]).float()[REAL].clone() for t in ref_tokens[:-1]]
            per_mode[label] = torch.stack(got)
            captured = bool(gen._graphs)
            if graphs:
                print(f"   CUDA graph captured: {captured} (False: not CUDA or capture failed, see log)")
                SUMMARY.append(f"CUDA graph captured: {captured}")
            mx, mean, agree, top5 = drift(ref[n : n + len(got)], per_mode[label])
            line = (
                f"decode {label}: max abs diff {mx:.4f}, mean {mean:.5f}, top-1 agreement {agree:.1f}% "
                f"(in fp32 top-5: {top5:.1f}%)"
            )
            print(f"   {line} over {len(got)} steps")
            SUMMARY.append(f"bf16 vs fp32 {line} ({len(got)} steps)")
            del gen
            free(device)
        same = (per_mode["CUDA graph"] - per_mode["static eager"]).abs().max().item()
        print(f"   graph replay vs eager static step: max abs diff {same:.6f}")
        SUMMARY.append(f"graph replay vs eager static decode: max abs diff {same:.6f}")

    with section("bf16 speed: prefill and decode, with and without the fast path"):
        floor = st.get("floor", float("nan"))
        modes: list[tuple[str, dict[str, bool], str | None]] = [
            ("fast path: SDPA prefill, CUDA-graph decode (Triton kernels)", {"fast_path": True}, None),
            (
                "fast path, static eager decode (no CUDA graphs)",
                {"fast_path": True, "cuda_graphs": False},
                None,
            ),
            (
                "fast path with torch's kernels in the decode step",
                {"fast_path": True, "triton_kernels": False},
                None,
            ),
            ("no fast path: matmul prefill, dynamic eager decode", {"fast_path": False}, None),
        ]
        if device.type == "cuda":  # does cuBLASLt choose better kernels for the decode's GEMVs?
            modes.append(("fast path with cuBLASLt preferred", {"fast_path": True}, "cublaslt"))
        for label, options, blas in modes:
            with preferred_blas(blas):
                pf, dec, tokens = bench_generator(loaded, prompt, steps, repeats, **options)
            st.setdefault("fast", (pf, dec, tokens))
            line = f"prefill {pf:8.0f} tok/s, decode {dec:6.2f} ms/token (x{dec / floor:.2f} the floor)"
            print(f"   {label}: {line}")
            SUMMARY.append(f"bf16 {label}: {line}")
        same = same_prefix(st["fast"][2], st.get("ref_tokens", []))
        print(f"   same greedy tokens as float32 for the first {same}/{steps} (random weights: near ties)")

    with section("the host's share of a decode step: graph replays alone, whole greedy steps, steps ahead"):
        gen = Generator(loaded, fast_path=True)
        prefill(gen, prompt)
        with torch.inference_mode():
            token, pos = prompt[-1], gen.cache.length
            gen._decode([token])  # captures the slot's graph
            graph = gen._graphs.get((gen.cache, 1))
            if graph is None:
                print("   no CUDA graph (not CUDA): nothing to compare")
            else:
                times = {}
                readback = PickReadback(device)
                for label in ("replays alone", "whole steps", "steps a step ahead of the host"):
                    sync(device)
                    t = time.perf_counter()
                    graph.run([token], pos)
                    for n in range(50):  # the same slot again and again: only the timing matters
                        if label == "steps a step ahead of the host":  # queue the next, then read this one
                            readback.start(n, graph.picked)
                            graph.run_after(graph.picked, pos)
                            readback.take(n)
                        else:
                            logits = graph.run([token], pos)
                            if label == "whole steps":  # choose the token on the host, then go on
                                sample_next(logits, 0.0, 1.0, None)
                    sync(device)
                    times[label] = (time.perf_counter() - t) * 1000 / 51
                replay, step = times["replays alone"], times["whole steps"]
                ahead = times["steps a step ahead of the host"]
                line = (
                    f"graph replay {replay:.3f} ms, whole step {step:.3f} ms: "
                    f"the host's share {step - replay:.3f} ms ({100 * (step - replay) / step:.0f} %); "
                    f"a step ahead of the host {ahead:.3f} ms"
                )
                print(f"   {line}")
                SUMMARY.append(f"decode step: {line}")
        del gen
        free(device)

    with section("where a decode step's device time goes (torch.profiler)"):
        profile_decode_step(loaded, prompt, device)

    with section(f"one keystroke: the {n}-token prompt grown by one token, KV reuse, 16 new tokens"):
        gen = Generator(loaded)
        grown = list(prompt)
        gen.generate(GenerationRequest(grown, max_new_tokens=16, temperature=0.0, stop_strings=()))
        times, reused = [], []
        for i in range(10):
            grown = grown + [1000 + i]  # typing: the prompt gains a token, the cached prefix stays valid
            r = gen.generate(GenerationRequest(grown, max_new_tokens=16, temperature=0.0, stop_strings=()))
            times.append(1000 * (r.prefill_s + r.decode_s))
            reused.append(r.reused_tokens)
        line = f"p50 {statistics.median(times):.1f} ms, max {max(times):.1f} ms, {min(reused)}+ tokens reused"
        print(f"   {line}")
        SUMMARY.append(f"keystroke (kv reuse, 16 tokens, {n}-token context): {line}")
        del gen
        free(device)

    with section("a keystroke's new prompt tokens: one decode step each vs one step of them all"):
        for t in (2, 3, 4):
            p50 = {}
            for together in (False, True):
                gen = Generator(loaded)
                gen.multi_token_steps = together
                grown = list(prompt)
                times = []
                for i in range(12):  # the first two capture the graphs
                    grown = grown + [1000 + i * t + j for j in range(t)]
                    request = GenerationRequest(grown, max_new_tokens=1, temperature=0.0, stop_strings=())
                    times.append(1000 * gen.generate(request).prefill_s)
                p50[together] = statistics.median(times[2:])
                del gen
                free(device)
            line = (
                f"{t} new tokens: {p50[False]:.2f} ms in {t} steps, {p50[True]:.2f} ms in one "
                f"(x{p50[True] / p50[False]:.2f})"
            )
            print(f"   {line}")
            SUMMARY.append(f"keystroke prefill, {line}")

    with section("transformers generate on the same bf16 model (greedy, same prompt)"):
        gen_s, theirs = bench_hf_generate(loaded.model, prompt, steps, device)
        if "fast" in st:
            pf, dec, ours = st["fast"]
            ours_s = n / pf + (steps - 1) * dec / 1000
            line = (
                f"transformers {gen_s * 1000:.1f} ms for prefill + {steps} tokens vs ours "
                f"{ours_s * 1000:.1f} ms (x{gen_s / ours_s:.2f}); same greedy tokens for the first "
                f"{same_prefix(theirs, ours)}/{steps}"
            )
        else:
            line = f"transformers {gen_s * 1000:.1f} ms for prefill + {steps} tokens"
        print(f"   {line}")
        SUMMARY.append(line)


def int8_report(args: argparse.Namespace, device: torch.device, tok: RefactTokenizer) -> None:
    prompt = random_prompt(args.prompt_len)
    for shape in args.shapes.split(","):
        with section(f"int8 vs float32, {shape} shape, same random weights"):
            loaded = make_loaded(shape, torch.float32, device, tok)
            ref = all_logits(loaded.model, prompt, device)
            pf32, dec32, tok32 = bench_generator(loaded, prompt, args.steps, args.repeats)
            quantize_int8(loaded.model)  # in place: the float32 Linear weights are freed (the fused q/kv
            # copy at the first forward, which notices it is stale)
            loaded = dataclasses.replace(loaded, quantization="int8")
            mx, mean, agree, top5 = drift(ref, all_logits(loaded.model, prompt, device))
            pf8, dec8, tok8 = bench_generator(loaded, prompt, args.steps, args.repeats)
            same = same_prefix(tok32, tok8)
            lines = [
                f"float32: prefill {pf32:.1f} tok/s, decode {dec32:.2f} ms/token",
                f"int8:    prefill {pf8:.1f} tok/s, decode {dec8:.2f} ms/token "
                f"(decode x{dec32 / dec8:.2f} faster, prefill x{pf8 / pf32:.2f})",
                f"logits over {len(prompt)} positions: max abs diff {mx:.4f}, mean {mean:.5f} "
                f"(logit std {ref.std().item():.3f}), top-1 agreement {agree:.1f}% "
                f"(in fp32 top-5: {top5:.1f}%); "
                f"same greedy tokens for the first {same}/{args.steps}",
            ]
            for line in lines:
                print(f"   {line}")
                SUMMARY.append(f"{shape} {line}")
            del loaded, ref
            free(device)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", choices=("speed", "gpu", "int8", "decode"), default=None)
    ap.add_argument("--profile", action="store_true", help="decode: a kernel profile of each variant")
    ap.add_argument("--compile", action="store_true", help="decode: also torch.compile (about 40 s more)")
    ap.add_argument("--shapes", default=None, help="speed: tiny,real; int8: mid")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--dtypes", default=None, help="speed: e.g. float32,bfloat16 (default: float32, and bfloat16 on CUDA)"
    )
    ap.add_argument("--prompt-len", type=int, default=None, help="gpu: 2000; others: 256")
    ap.add_argument("--steps", type=int, default=None, help="decode steps per run (gpu: 64; others: 32)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--hf-generate", action="store_true", help="speed: also time transformers' generate")
    ap.add_argument(
        "--temperature", type=float, default=0.0, help="speed: sampling temperature (server default 0.2)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    report = args.report or ("gpu" if device.type == "cuda" else "speed")
    if report == "gpu" and device.type != "cuda" and args.shapes in (None, "real"):
        raise SystemExit("--report gpu needs a CUDA device (or, as a dry run on the CPU, --shapes tiny)")
    if report == "int8" and device.type != "cpu":
        raise SystemExit("--report int8 runs on the CPU (--device cpu)")
    args.shapes = (
        args.shapes or {"speed": "tiny,real", "int8": "mid", "gpu": "real", "decode": "real"}[report]
    )
    args.prompt_len = args.prompt_len or (2000 if report in ("gpu", "decode") else 256)
    args.steps = args.steps or (64 if report in ("gpu", "decode") else 32)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    print(f"report {report}; device {device} ({name}); torch {torch.__version__}")
    print(f"prompt {args.prompt_len} tokens, {args.steps} decode steps, best of {args.repeats}")
    tok = RefactTokenizer.from_file(fixture_tokenizer_path())
    t = time.perf_counter()
    reports = {"speed": speed_report, "gpu": gpu_report, "int8": int8_report, "decode": decode_report}
    reports[report](args, device, tok)
    print(f"\n== summary ({report}, {name}, torch {torch.__version__}, {time.perf_counter() - t:.0f} s)")
    for line in SUMMARY:
        print(f" - {line}")
    if report == "gpu":
        print(" - goals (issue 5, H100): decode <= 1.5 ms/token, keystroke p50 <= 25 ms")


if __name__ == "__main__":
    main()
