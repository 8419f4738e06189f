"""The GPU fast path's math on CPU (SDPA prefill, static-shape decode), int8 weights, and OOM recovery.

CUDA-graph capture itself needs a GPU (bench/engine.py exercises it); everything it replays is the
static decode step checked here.
"""

from __future__ import annotations

import pytest
import torch
from fim_requests import fim, greedy

from refact_lsp.dev import faults
from refact_lsp.dev.checkpoints import random_model
from refact_lsp.dev.op_count import decode_step_ops
from refact_lsp.engine.generate import GenerationOutOfMemory, Generator
from refact_lsp.engine.kv_cache import KVCache
from refact_lsp.engine.loading import LoadedModel, ModelSpec, load_model
from refact_lsp.engine.tokenizer import FIRST_PADDING_ID

REAL = slice(0, FIRST_PADDING_ID)


@pytest.fixture(scope="module")
def fp32(random_ckpt) -> LoadedModel:
    return load_model(ModelSpec(str(random_ckpt), device="cpu"))


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    """Typing at the cursor: the SPM prompts share long prefixes (the suffix comes first)."""
    prefix = "def add(a, b):\n    total = a + b\n    return tot"
    return [fim(tokenizer, prefix[:n], "\n\nprint(add(1, 2))\n") for n in (20, 27, 28, 35, 46, 30)]


def test_sdpa_prefill_equals_matmul_prefill(fp32, prompts) -> None:
    model, ids = fp32.model, torch.tensor([prompts[-2]])
    cfg = model.config
    with torch.no_grad():
        full = model(ids).logits[0]
        fused = model(ids, sdpa=True).logits[0]
        # in two chunks over the engine's cache: the second chunk's bias has a past
        cache = KVCache(cfg.n_layer, cfg.head_dim, 128)
        first = model(ids[:, :17], kv_cache=cache, sdpa=True).logits[0]
        second = model(ids[:, 17:], kv_cache=cache, sdpa=True).logits[0]
    assert full.abs().max() > 1.0
    torch.testing.assert_close(fused, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([first, second]), full, atol=1e-5, rtol=0)


def test_static_decode_step_equals_dynamic_decode(fp32, prompts) -> None:
    model, ids = fp32.model, prompts[0]
    cfg = model.config
    dynamic = KVCache(cfg.n_layer, cfg.head_dim, 64)
    static = KVCache(cfg.n_layer, cfg.head_dim, 64)
    with torch.no_grad():
        model(torch.tensor([ids[:6]]), kv_cache=dynamic)
        model(torch.tensor([ids[:6]]), kv_cache=static)
        static.k[:, :, :, 6:] = float("1e4")  # stale entries past the position must not matter
        for pos, tok in enumerate(ids[6:], start=6):
            want = model(torch.tensor([[tok]]), kv_cache=dynamic, logits_to_keep=1).logits[0, -1]
            got = model.decode_step(torch.tensor([[tok]]), torch.tensor([pos]), static)
            static.commit([tok])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(static.k[:, :, :, : len(ids)], dynamic.k[:, :, :, : len(ids)])


def test_a_step_of_several_tokens_equals_one_step_each(fp32, prompts) -> None:
    """A keystroke's few new prompt tokens go through one static step: the last one's logits and every
    cache row as when they go one step each (each query masked after its own position)."""
    model, ids = fp32.model, prompts[-1]
    cfg = model.config
    one_each, together = (KVCache(cfg.n_layer, cfg.head_dim, 64) for _ in range(2))
    with torch.no_grad():
        for cache in (one_each, together):
            model(torch.tensor([ids[:-3]]), kv_cache=cache)
            cache.k[:, :, :, len(ids) - 3 :] = float("1e4")  # stale entries past the position
        for pos in range(len(ids) - 3, len(ids)):
            want = model.decode_step(torch.tensor([[ids[pos]]]), torch.tensor([pos]), one_each)
        positions = torch.arange(len(ids) - 3, len(ids))
        got = model.decode_step(torch.tensor([ids[-3:]]), positions, together)
    assert got.shape == want.shape == (cfg.vocab_size,)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(together.kv[:, :, :, : len(ids)], one_each.kv[:, :, :, : len(ids)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_step_runs_12_operations_per_layer(dtype: torch.dtype) -> None:
    """What a GPU's decode step launches (a kernel per operation, give or take) bounds a small model's
    speed there as much as its weights' bytes: each layer is two norms, one GEMM for q and kv, one K|V
    write, scores + bias in one batched GEMM, softmax, values, gate_up, SiLU, product, and two GEMMs that
    add into the residual. (It was 21: q and kv apart, float32 copies of q, K and the probabilities,
    scale and bias apart, K and V written apart, the residual adds apart.)"""
    totals = {}
    for n_layer in (2, 3):
        model = random_model({"n_embd": 64, "n_head": 4, "n_layer": n_layer}, dtype=dtype)
        model.fuse_projections()  # as load_model does
        totals[n_layer] = sum(decode_step_ops(model).values())
    per_layer = totals[3] - totals[2]
    assert per_layer == 12
    assert totals[2] - 2 * per_layer <= 10  # embedding, the step's ALiBi row, ln_f, lm_head


@pytest.mark.parametrize("kv_reuse", [True, False])
def test_fast_path_generates_the_same_tokens(fp32, prompts, kv_reuse: bool) -> None:
    plain, fast = Generator(fp32), Generator(fp32, fast_path=True)
    assert not plain.fast_path and fast.fast_path and not fast.cuda_graphs  # graphs only on CUDA
    for p in prompts:
        a = plain.generate(greedy(p, max_new_tokens=10, kv_reuse=kv_reuse))
        b = fast.generate(greedy(p, max_new_tokens=10, kv_reuse=kv_reuse))
        assert b.token_ids == a.token_ids and len(a.token_ids) == 10
        assert b.reused_tokens == a.reused_tokens
    assert fast.cache.tokens == plain.cache.tokens
    if kv_reuse:  # the last prompt shares its prefix with the cached one (prompt + generated tokens)
        assert a.reused_tokens > len(prompts[-1]) // 2


def test_fast_path_spells_the_scripted_text(scripted_ckpt, tokenizer, script_text) -> None:
    gen = Generator(load_model(ModelSpec(str(scripted_ckpt), device="cpu")), fast_path=True)
    for _ in range(2):  # the second time from the reused cache
        res = gen.generate(greedy(fim(tokenizer, "x = 1\n", "\nfoo()"), max_new_tokens=100))
        assert (res.text, res.stop_reason) == (script_text, "eot")
    assert res.reused_tokens > 0


def test_int8_loads_generates_and_stays_close(random_ckpt, fp32, prompts) -> None:
    int8 = load_model(ModelSpec(str(random_ckpt), device="cpu", dtype="int8"))
    assert int8.quantization == "int8" and int8.dtype == torch.float32
    assert int8.model.transformer.h[0].attn.q.weight().dtype == torch.qint8
    assert int8.model.lm_head.weight().dtype == torch.qint8
    ids = torch.tensor([prompts[-2]])
    with torch.no_grad():
        ref = fp32.model(ids).logits[0, :, REAL]
        low = int8.model(ids).logits[0, :, REAL]
    drift = (ref - low).abs()
    assert 0 < drift.max() < 1.0 and drift.mean() < 0.1 * ref.std()
    assert (ref.argmax(-1) == low.argmax(-1)).float().mean() >= 0.75
    res = Generator(int8).generate(greedy(prompts[0], max_new_tokens=6))
    assert len(res.token_ids) == 6


def test_int8_keeps_a_peaked_model_exact(scripted_ckpt, tokenizer, script_text) -> None:
    gen = Generator(load_model(ModelSpec(str(scripted_ckpt), device="cpu", dtype="int8")))
    res = gen.generate(greedy(fim(tokenizer, "a", "b"), max_new_tokens=100))
    assert res.text == script_text


@pytest.fixture
def oom_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(faults.ENV_VAR, "oom-once")
    faults.reset()  # reads the environment
    yield
    faults.reset("")


@pytest.mark.parametrize("fast_path", [False, True])
def test_out_of_memory_drops_the_cache_and_recovers(oom_once, fp32, prompts, fast_path: bool) -> None:
    gen = Generator(fp32, fast_path=fast_path)
    tokens: list[str] = []
    with pytest.raises(GenerationOutOfMemory, match="out of memory on cpu .*oom-once"):
        gen.generate(greedy(prompts[0], max_new_tokens=5), on_token=tokens.append)
    assert gen._caches == [] and tokens == []  # raised in the decode loop, after the prefill
    again = gen.generate(greedy(prompts[0], max_new_tokens=5))  # one-shot: this one runs
    fresh = Generator(fp32, fast_path=fast_path).generate(greedy(prompts[0], max_new_tokens=5))
    assert again.token_ids == fresh.token_ids and len(again.token_ids) == 5
    assert again.reused_tokens == 0


def test_running_out_of_cpu_memory_is_out_of_memory(fp32, prompts, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch raises a plain RuntimeError when a CPU allocation fails: the same GenerationOutOfMemory (the
    service retries with half the prompt), and other RuntimeErrors go through as they are."""
    from refact_lsp.engine import loading

    gen = Generator(fp32)

    def fail(message: str):
        def _generate(*_args, **_kwargs):
            raise RuntimeError(message)

        return _generate

    monkeypatch.setattr(
        gen, "_generate", fail(f"[enforce fail at alloc_cpu.cpp:118] . {loading.CPU_OUT_OF_MEMORY}")
    )
    with pytest.raises(GenerationOutOfMemory, match="out of memory on cpu"):
        gen.generate(greedy(prompts[0], max_new_tokens=2))
    monkeypatch.setattr(gen, "_generate", fail("something else"))
    with pytest.raises(RuntimeError, match="something else"):
        gen.generate(greedy(prompts[0], max_new_tokens=2))


def test_fault_injection_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV_VAR, raising=False)
    faults.reset()
    faults.maybe_inject("decode")  # nothing
    faults.reset("oom-once")
    faults.maybe_inject("prefill")  # another point: nothing
    with pytest.raises(torch.OutOfMemoryError):
        faults.maybe_inject("decode")
    faults.maybe_inject("decode")  # once only
    faults.reset("")


def test_generator_uses_no_fast_path_on_cpu_by_default(fp32) -> None:
    gen = Generator(fp32)
    assert (gen.fast_path, gen.cuda_graphs, gen.triton_kernels) == (False, False, False)
    gen.warm_up()  # nothing to compile or capture on the CPU: no cache is even made
    assert gen._caches == []
