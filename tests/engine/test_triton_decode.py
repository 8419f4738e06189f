"""The Triton decode kernels against torch: on a GPU compiled, elsewhere in Triton's CPU interpreter
(``tests/conftest.py``). Skipped where Triton is not installed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refact_lsp.dev.checkpoints import MID_SHAPE, random_model
from refact_lsp.engine import triton_decode
from refact_lsp.engine.generate import GenerationRequest, Generator
from refact_lsp.engine.kv_cache import KVCache
from refact_lsp.engine.loading import LoadedModel, ModelSpec, load_model
from refact_lsp.engine.model import alibi_slopes

pytestmark = [
    pytest.mark.skipif(not triton_decode.available(), reason="Triton is not installed"),
    pytest.mark.usefixtures("one_gemv_tile"),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_attention(q, k, v, pos: int, slopes, scale: float) -> torch.Tensor:
    """Keys and values up to ``pos`` only."""
    h, d = slopes.numel(), k.shape[1]
    keys = torch.arange(pos + 1, device=k.device)
    s = (q.float().view(h, d) @ k[: pos + 1].float().T) * scale - slopes[:, None] * (pos - keys)[None]
    return (torch.softmax(s, -1) @ v[: pos + 1].float()).view(-1)


@pytest.mark.parametrize(
    ("heads", "head_dim", "capacity", "pos"),
    [(32, 64, 4096, 1999), (32, 64, 4096, 0), (4, 16, 256, 255), (8, 64, 300, 130), (8, 64, 300, 299)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("merge_in_last_program", "pdl"), [(False, False), (True, False), (True, True)])
def test_attention_matches_softmax_attention(
    heads, head_dim, capacity, pos, dtype, merge_in_last_program, pdl
) -> None:
    """Any head count (padded to 16 inside), any capacity (a partial last block), the first and the last
    slot; slots after ``pos`` hold garbage that must not leak in. Merged by a second kernel or by the
    last block program (twice: its counter must be back at 0 for the next launch); with ``pdl``, the slots
    before ``pos`` loaded apart from the one at it."""
    g = torch.Generator(device=DEVICE).manual_seed(pos)
    q = torch.randn(heads * head_dim, generator=g, device=DEVICE).to(dtype)
    k = torch.randn(capacity, head_dim, generator=g, device=DEVICE).to(dtype)
    v = torch.randn(capacity, head_dim, generator=g, device=DEVICE).to(dtype)
    k[pos + 1 :], v[pos + 1 :] = 1e4, float("nan")  # beyond the position: masked, never read into the sum
    slopes = alibi_slopes(heads, device=DEVICE)
    scale = 1 / math.sqrt(head_dim)
    want = reference_attention(q, k, v, pos, slopes, scale)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for _ in range(2 if merge_in_last_program else 1):
        got = triton_decode.attention(
            q,
            k,
            v,
            torch.tensor([pos], device=DEVICE),
            slopes,
            scale,
            merge_in_last_program=merge_in_last_program,
            pdl=pdl,
        )
        assert got.dtype == dtype and got.shape == (heads * head_dim,)
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("first", [126, 127, 0, 297])
@pytest.mark.parametrize("tokens", [2, 3])
@pytest.mark.parametrize(("merge_in_last_program", "pdl"), [(False, False), (True, True), (False, True)])
def test_several_tokens_attend_at_once_each_up_to_its_own_position(
    first, tokens, merge_in_last_program, pdl
) -> None:
    """A keystroke's new tokens in one launch: token ``t`` at ``first + t`` sees keys up to there and
    not its successors' slots. Positions astride a block edge (128 keys a program) leave the earlier
    tokens without a key in the last block; with ``pdl``, the step's own slots are loaded after the wait."""
    heads, head_dim, capacity = 8, 64, 300
    g = torch.Generator(device=DEVICE).manual_seed(first)
    q = torch.randn(tokens * heads * head_dim, generator=g, device=DEVICE)
    k = torch.randn(capacity, head_dim, generator=g, device=DEVICE)
    v = torch.randn(capacity, head_dim, generator=g, device=DEVICE)
    last = first + tokens - 1
    k[last + 1 :], v[last + 1 :] = 1e4, float("nan")
    slopes, scale = alibi_slopes(heads, device=DEVICE), 1 / math.sqrt(head_dim)
    rows = q.view(tokens, heads * head_dim)
    want = torch.cat([reference_attention(rows[t], k, v, first + t, slopes, scale) for t in range(tokens)])
    pos = torch.arange(first, last + 1, device=DEVICE)
    for _ in range(2 if merge_in_last_program else 1):
        got = triton_decode.attention(
            q, k, v, pos, slopes, scale, merge_in_last_program=merge_in_last_program, pdl=pdl
        )
        assert got.shape == q.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_and_silu_mul_match_torch(dtype) -> None:
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = (3 * torch.randn(1, 3, 2048, generator=g, device=DEVICE) + 1).to(dtype)  # three rows
    w = torch.randn(2048, generator=g, device=DEVICE).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 4e-2
    want = F.layer_norm(x.float(), (2048,), w.float(), None, 1e-5)
    torch.testing.assert_close(triton_decode.layer_norm(x, w, 1e-5).float(), want, atol=tol, rtol=tol)
    gate_up = torch.randn(1, 3, 2 * 5632, generator=g, device=DEVICE).to(dtype)
    gate, up = gate_up.float().chunk(2, dim=-1)
    got = triton_decode.silu_mul(gate_up)
    assert got.shape == (1, 3, 5632) and got.dtype == dtype
    torch.testing.assert_close(got.float(), F.silu(gate) * up, atol=tol, rtol=tol)


STEP_VARIANTS = {
    "cuBLAS GEMMs": {"FUSED_GEMV": False},
    "fused GEMVs": {"FUSED_GEMV": True, "PDL": False},
    "fused GEMVs, PDL (the default)": {"FUSED_GEMV": True, "PDL": True, "MERGE_IN_LAST_PROGRAM": False},
    "fused GEMVs, one attention launch, PDL": triton_decode.FUSED_STEP,
}


@pytest.mark.parametrize(
    ("shape", "dtype", "variant"),
    [("tiny", torch.float32, variant) for variant in STEP_VARIANTS]
    + [
        ("mid, 2 layers", torch.bfloat16, "cuBLAS GEMMs"),
        ("mid, 2 layers", torch.bfloat16, "fused GEMVs, one attention launch, PDL"),
    ],
)
def test_decode_step_equals_the_models_step(shape, dtype, variant, monkeypatch) -> None:
    """The whole step over a cache filled by a prefill: the same logits and the same cache rows as
    ``model.decode_step`` (float32: to rounding; bf16: within bf16's tolerance), in each of the Triton
    step's variants (in the interpreter ``PDL`` launches the same way, without its waits; the fused GEMVs
    alone in bf16 are ``test_triton_gemv.py``'s)."""
    for name, value in STEP_VARIANTS[variant].items():
        monkeypatch.setattr(triton_decode, name, value)
    # the mid shape's widths with two of its eight layers: the same kernels and a layer-to-layer hand-off, at
    # a quarter of the interpreter's time (the fused variant took over two minutes with all eight)
    shape = {**MID_SHAPE, "n_layer": 2} if shape == "mid, 2 layers" else shape
    model = random_model(shape, dtype=dtype, device=DEVICE, n_positions=256)
    model.fuse_projections()
    cfg = model.config
    ids = torch.randint(19, 40000, (1, 40), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    caches, logits = [], []
    for step in (model.decode_step, lambda *a: triton_decode.decode_step(model, *a)):
        cache = KVCache(cfg.n_layer, cfg.head_dim, 256, device=DEVICE, dtype=dtype)
        with torch.inference_mode():
            model(ids[:, :34], kv_cache=cache, sdpa=True)
            # a keystroke's three new prompt tokens in one step (the fused variants: several rows at
            # once), then single steps as while generating
            out = [step(ids[:, 34:37], torch.arange(34, 37, device=DEVICE), cache).float()]
            cache.commit(ids[0, 34:37].tolist())
            for i in (37, 38, 39):
                out.append(step(ids[:, i : i + 1], torch.tensor([i], device=DEVICE), cache).float())
                cache.commit([int(ids[0, i])])
        caches.append(cache.kv[:, :, :, :40].float())
        logits.append(torch.stack(out))
    assert logits[0].abs().max() > 0.5
    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(logits[1], logits[0], atol=tol, rtol=0)
    torch.testing.assert_close(caches[1], caches[0], atol=tol, rtol=0)


@pytest.fixture(scope="module")
def fp32(random_ckpt) -> LoadedModel:
    return load_model(ModelSpec(str(random_ckpt), device=DEVICE, dtype="float32"))


def test_generator_with_triton_kernels_generates_the_same_tokens(fp32) -> None:
    """Through the generator (static decode, KV reuse on the second request), the same greedy tokens with
    the kernels as without them (float32: the logits agree to rounding)."""
    prompt = torch.randint(19, 40000, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    with_kernels = Generator(fp32, fast_path=True, cuda_graphs=False, triton_kernels=True)
    without = Generator(fp32, fast_path=True, cuda_graphs=False, triton_kernels=False)
    assert with_kernels.triton_kernels and not without.triton_kernels
    for grown in (prompt, prompt + [1000]):  # the second request reuses the first one's cache
        # four tokens: each interpreted step takes seconds on the CPU
        request = GenerationRequest(grown, max_new_tokens=4, temperature=0.0, stop_strings=())
        a, b = with_kernels.generate(request), without.generate(request)
        assert a.token_ids == b.token_ids and len(a.token_ids) == 4
    assert a.reused_tokens == len(prompt)


def test_kernels_are_chosen_only_where_they_run(fp32) -> None:
    """By default only on CUDA with 16-bit weights; never without the fast path or with torch.compile."""
    assert not triton_decode.supports(fp32.model, torch.device("cpu"))
    assert not triton_decode.supports(fp32.model, torch.device("cuda"))  # float32 weights
    assert not Generator(fp32, fast_path=False, triton_kernels=True).triton_kernels
    compiled = Generator(fp32, fast_path=True, compile_decode=True, triton_kernels=True)
    assert not (compiled.compile_decode and compiled.triton_kernels)
    bf16 = random_model("tiny", dtype=torch.bfloat16)
    assert triton_decode.supports(bf16, torch.device("cuda"))
    odd = random_model({"n_embd": 48, "n_head": 4, "n_layer": 1}, dtype=torch.bfloat16)  # head dim 12
    assert not triton_decode.supports(odd, torch.device("cuda")) and not triton_decode.can_run(
        odd, torch.device("cuda")
    )
