"""The fast path on a real CUDA device: CUDA-graph decode per KV slot, bf16 against float32.

Skipped without CUDA (CI has none); ``bench/gpu.sh`` runs it on a lent GPU. ``test_fast_path.py``
checks the same math on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from refact_lsp.engine import triton_decode
from refact_lsp.engine.generate import KV_SLOTS, GenerationRequest, Generator
from refact_lsp.engine.loading import LoadedModel, ModelSpec, load_model
from refact_lsp.engine.tokenizer import FIRST_PADDING_ID

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def greedy(prompt: list[int], n: int = 12) -> GenerationRequest:
    return GenerationRequest(prompt, max_new_tokens=n, temperature=0.0, stop_strings=())


def random_prompts(count: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(19, FIRST_PADDING_ID, (length,), generator=g).tolist() for _ in range(count)]


@pytest.fixture(scope="module")
def bf16(random_ckpt) -> LoadedModel:
    return load_model(ModelSpec(str(random_ckpt), device="cuda", dtype="bfloat16"))


def test_cuda_graphs_generate_what_the_eager_step_generates(bf16) -> None:
    """More prompts than KV slots, each typed on once: every slot gets its own graph, and a replay
    computes what the same step computes eagerly, with and without a reused prefix."""
    graphs, eager = Generator(bf16), Generator(bf16, cuda_graphs=False)
    assert graphs.fast_path and graphs.cuda_graphs and eager.fast_path and not eager.cuda_graphs
    prompts = random_prompts(KV_SLOTS + 1, 40)
    for round_ in range(2):
        for prompt in prompts:
            prompt = prompt + [1000] * round_  # the second round grows each prompt by one token
            a, b = eager.generate(greedy(prompt)), graphs.generate(greedy(prompt))
            assert b.token_ids == a.token_ids and len(a.token_ids) == 12
            assert b.reused_tokens == a.reused_tokens
    assert graphs.cuda_graphs, "a capture failed and the generator fell back to eager decoding"
    assert len({cache for cache, _ in graphs._graphs}) == KV_SLOTS


def test_a_keystrokes_new_tokens_run_as_one_captured_step(bf16) -> None:
    """A prompt grown by three tokens (typing) prefills them as one captured three-token step, and
    generates what the same steps generate eagerly."""
    graphs, eager = Generator(bf16), Generator(bf16, cuda_graphs=False)
    prompt = random_prompts(1, 40)[0]
    for grown in (prompt, prompt + [1000, 1001, 1002]):
        a, b = eager.generate(greedy(grown)), graphs.generate(greedy(grown))
        assert b.token_ids == a.token_ids and b.reused_tokens == a.reused_tokens
    assert b.reused_tokens == len(prompt)
    assert graphs.multi_token_steps and (graphs.cache, 3) in graphs._graphs


def test_captured_steps_run_ahead_of_the_host_and_generate_the_same(bf16, monkeypatch) -> None:
    """Greedy decoding with the steps queued a step ahead of the host (the default) generates what the
    host in lockstep generates, stop rules and the cache it leaves included; the picks come back through
    pinned memory."""
    from refact_lsp.engine.cuda_graph import DecodeGraph

    queued = []
    run_on = DecodeGraph.run_on
    monkeypatch.setattr(DecodeGraph, "run_on", lambda self: (queued.append(self.captured), run_on(self))[1])
    ahead, lockstep = Generator(bf16), Generator(bf16, run_ahead=False)
    assert ahead.run_ahead and not lockstep.run_ahead
    prompt = random_prompts(1, 40)[0]
    for grown, n in ((prompt, 12), (prompt + [1000], 1), (prompt + [1000, 1001], 2), (prompt + [7], 12)):
        a, b = lockstep.generate(greedy(grown, n)), ahead.generate(greedy(grown, n))
        assert (b.token_ids, b.reused_tokens, b.stop_reason) == (a.token_ids, a.reused_tokens, a.stop_reason)
        assert ahead.cache.tokens == lockstep.cache.tokens
    text = ahead.generate(greedy(prompt, 12)).text
    stops = (text[3:5],) if len(text) > 5 else ("\n",)
    a = lockstep.generate(GenerationRequest(prompt, max_new_tokens=12, temperature=0.0, stop_strings=stops))
    b = ahead.generate(GenerationRequest(prompt, max_new_tokens=12, temperature=0.0, stop_strings=stops))
    assert (b.text, b.stop_reason, b.token_ids) == (a.text, a.stop_reason, a.token_ids)
    assert ahead.cache.tokens == lockstep.cache.tokens
    assert queued and all(queued), "no captured step was queued ahead of the host"


def test_bf16_decode_stays_close_to_float32(random_ckpt, bf16) -> None:
    """Teacher-forced with float32's tokens, the bf16 graph-replayed decode (attention scores in bf16)
    stays within the bf16 forward pass's tolerance of float32."""
    fp32 = load_model(ModelSpec(str(random_ckpt), device="cuda", dtype="float32"))
    prompt = random_prompts(1, 60)[0]
    tokens = Generator(fp32, fast_path=False).generate(greedy(prompt, 16)).token_ids
    with torch.inference_mode():
        ids = torch.tensor([prompt + tokens], device="cuda")
        ref = fp32.model(ids).logits[0, len(prompt) - 1 : -1, :FIRST_PADDING_ID].float()
        gen = Generator(bf16)
        got = [gen._forward(prompt)] + [gen._decode([t]).clone() for t in tokens[:-1]]
        low = torch.stack(got)[:, :FIRST_PADDING_ID].float()
    assert gen._graphs, "the decode steps were not replayed from a CUDA graph"
    diff = (ref - low).abs()
    assert 0 < diff.max() < 0.25
    assert (ref.argmax(-1) == low.argmax(-1)).float().mean() >= 0.75


TRITON_VARIANTS = {
    "default (fused GEMVs, PDL)": {},
    "cuBLAS GEMMs": {"FUSED_GEMV": False},
    "fused GEMVs, one attention launch, PDL": triton_decode.FUSED_STEP,
}


@pytest.mark.parametrize("variant", TRITON_VARIANTS)
def test_triton_kernels_are_the_default_and_agree_with_torchs_step(bf16, variant, monkeypatch) -> None:
    """With 16-bit weights on CUDA the captured decode step runs the Triton kernels; teacher-forced, its
    logits stay within bf16 rounding of the torch step's, and the graph replays generate what the same
    step generates eagerly (with PDL: launches captured into the graph as eager ones)."""
    for name, value in TRITON_VARIANTS[variant].items():
        monkeypatch.setattr(triton_decode, name, value)
    kernels, plain = Generator(bf16), Generator(bf16, triton_kernels=False)
    assert kernels.triton_kernels and not plain.triton_kernels
    prompt = random_prompts(1, 50)[0]
    tokens = plain.generate(greedy(prompt, 12)).token_ids
    logits = []
    with torch.inference_mode():
        for gen in (kernels, plain):
            gen.reset_cache()
            got = [gen._forward(prompt).float()] + [gen._decode([t]).float() for t in tokens[:-1]]
            logits.append(torch.stack(got)[:, :FIRST_PADDING_ID])
    assert kernels._graphs and kernels.triton_kernels, "the kernels failed and the generator fell back"
    diff = (logits[0] - logits[1]).abs()
    assert diff.max() < 0.15
    assert (logits[0].argmax(-1) == logits[1].argmax(-1)).float().mean() >= 0.9
    eager = Generator(bf16, cuda_graphs=False)
    assert eager.triton_kernels
    kernels.reset_cache()
    for grown in (prompt, prompt + [1000]):  # the second request reuses the first one's cache
        assert kernels.generate(greedy(grown)).token_ids == eager.generate(greedy(grown)).token_ids
    assert kernels._graphs and kernels.triton_kernels


def test_failing_triton_kernels_fall_back_to_torchs_step(bf16, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(triton_decode, "decode_step", broken)
    gen = Generator(bf16)
    assert gen.triton_kernels
    prompt = random_prompts(1, 30)[0]
    got = gen.generate(greedy(prompt)).token_ids
    assert not gen.triton_kernels and gen.cuda_graphs and gen._graphs  # torch's step, still captured
    assert got == Generator(bf16, triton_kernels=False).generate(greedy(prompt)).token_ids


def test_warm_up_compiles_and_captures_before_the_first_request(bf16) -> None:
    gen = Generator(bf16)
    gen.warm_up()
    assert gen._graphs and gen.cache.length == 0  # a graph for the first slot, no tokens left behind
    prompt = random_prompts(1, 30)[0]
    assert gen.generate(greedy(prompt)).token_ids == Generator(bf16).generate(greedy(prompt)).token_ids
