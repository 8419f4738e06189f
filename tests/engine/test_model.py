"""The model against an independent reference computed from the raw safetensors tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refact_lsp.engine.kv_cache import KVCache
from refact_lsp.engine.loading import ModelSpec, load_model

IDS = [3, 1234, 56, 789, 1, 4321, 99, 17, 2, 5000, 6001, 42]


def reference_logits(folder: Path, ids: list[int], n_head: int, n_layer: int) -> torch.Tensor:
    """refact-model.md's forward pass written out in float64 with explicit loops over heads and positions."""
    w = {k: v.double() for k, v in load_file(str(folder / "model.safetensors")).items()}

    def norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * gain

    x = w["transformer.wte.weight"][ids]  # [T, C]
    t, c = x.shape
    d = c // n_head
    for layer in range(n_layer):
        p = f"transformer.h.{layer}."
        h = norm(x, w[p + "ln_1.weight"])
        q = h @ w[p + "attn.q.weight"].T
        kv = h @ w[p + "attn.kv.weight"].T
        k, v = kv[:, :d], kv[:, d:]
        out = torch.zeros(t, c, dtype=torch.float64)
        for head in range(n_head):
            slope = 2.0 ** (-8.0 * (head + 1) / n_head)
            qh = q[:, head * d : (head + 1) * d]
            for i in range(t):
                scores = torch.tensor(
                    [float(qh[i] @ k[j]) / math.sqrt(d) - slope * (i - j) for j in range(i + 1)],
                    dtype=torch.float64,
                )
                probs = torch.softmax(scores, dim=0)
                out[i, head * d : (head + 1) * d] = probs @ v[: i + 1]
        x = x + out @ w[p + "attn.c_proj.weight"].T
        h = norm(x, w[p + "ln_2.weight"])
        gate_up = h @ w[p + "mlp.gate_up_proj.weight"].T
        gate, up = gate_up.chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.c_proj.weight"].T
    return norm(x, w["ln_f.weight"]) @ w["lm_head.weight"].T


@pytest.fixture(scope="module")
def fused(random_ckpt):
    return load_model(ModelSpec(str(random_ckpt), device="cpu"))


def test_logits_match_reference(fused, random_ckpt) -> None:
    ref = reference_logits(random_ckpt, IDS, n_head=4, n_layer=2)
    with torch.no_grad():
        logits = fused.model(torch.tensor([IDS])).logits[0].double()
    assert logits.shape == (len(IDS), 49216)
    assert ref.abs().max() > 1.0  # the check is not vacuous
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


def test_inference_adds_into_the_residual_in_place_with_the_same_result(fused) -> None:
    """Without autograd the residual adds go into the GEMMs (``addmm_``); with it, apart (an in-place
    add would break the backward pass). Both compute the reference's logits, and gradients flow."""
    model = fused.model
    with torch.no_grad():
        fast = model(torch.tensor([IDS])).logits
    with torch.enable_grad():
        model.requires_grad_(True)
        try:
            slow = model(torch.tensor([IDS])).logits
            slow.logsumexp(-1).sum().backward()
            grad = model.transformer.h[0].attn.q.weight.grad
            assert grad is not None and grad.abs().sum() > 0
        finally:
            model.requires_grad_(False)
            model.zero_grad(set_to_none=True)
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=0)


def test_fused_projections_keep_names_and_logits_and_undo_themselves_when_moved(random_ckpt) -> None:
    """load_model fuses q and kv into one GEMM: the parameters keep their checkpoint names and values and
    the logits stay the same; a conversion afterwards gives them storage of their own again, and the
    layer goes back to two GEMMs (still the same logits) instead of using a stale fused copy."""
    from refact_lsp.engine.loading import load_weights, read_config

    plain = load_weights(random_ckpt, read_config(random_ckpt), device=torch.device("cpu"), dtype=None)
    fused = load_model(ModelSpec(str(random_ckpt), device="cpu")).model
    attn = fused.transformer.h[0].attn
    assert plain.transformer.h[0].attn.qkv_weight is None and attn.qkv_weight is not None
    assert attn.q.weight.data_ptr() == attn.qkv_weight.data_ptr()
    assert list(fused.state_dict()) == list(plain.state_dict())
    ids = torch.tensor([IDS])
    with torch.no_grad():
        want = plain(ids).logits
        torch.testing.assert_close(fused(ids).logits, want, atol=1e-5, rtol=0)
        fused.to(torch.float64)
        assert attn.q.weight.dtype == torch.float64
        torch.testing.assert_close(fused(ids).logits.float(), want, atol=1e-5, rtol=0)
    assert attn.qkv_weight is None


def test_legacy_layout_gives_identical_logits(fused, legacy_ckpt) -> None:
    legacy = load_model(ModelSpec(str(legacy_ckpt), device="cpu"))
    assert "transformer.h.0.attn.k.weight" in load_file(str(legacy_ckpt / "model.safetensors"))
    with torch.no_grad():
        a = fused.model(torch.tensor([IDS])).logits
        b = legacy.model(torch.tensor([IDS])).logits
    assert torch.equal(a, b)


def test_logits_to_keep_computes_the_last_positions(fused) -> None:
    with torch.no_grad():
        full = fused.model(torch.tensor([IDS])).logits
        last = fused.model(torch.tensor([IDS]), logits_to_keep=1).logits
    assert last.shape == (1, 1, 49216)
    torch.testing.assert_close(last[0, 0], full[0, -1], atol=1e-5, rtol=0)


def test_cached_decode_equals_full_recomputation(fused) -> None:
    model = fused.model
    cfg = model.config
    cache = KVCache(cfg.n_layer, cfg.head_dim, 64)
    with torch.no_grad():
        full = model(torch.tensor([IDS])).logits[0]
        steps = [model(torch.tensor([IDS[:5]]), kv_cache=cache).logits[0]]
        for tok in IDS[5:]:
            steps.append(model(torch.tensor([[tok]]), kv_cache=cache, logits_to_keep=1).logits[0])
    assert cache.tokens == IDS
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-5, rtol=0)


def test_cache_truncate_and_continue_matches_fresh_prefill(fused) -> None:
    """ALiBi: keys cached for a prefix stay valid whatever followed them before."""
    model = fused.model
    cfg = model.config
    cache = KVCache(cfg.n_layer, cfg.head_dim, 64)
    other = [7, 8, 9, 10, 11]
    with torch.no_grad():
        model(torch.tensor([IDS[:6] + other]), kv_cache=cache)
        assert cache.common_prefix_len(IDS) == 6
        cache.truncate(6)
        cont = model(torch.tensor([IDS[6:]]), kv_cache=cache).logits[0]
        full = model(torch.tensor([IDS])).logits[0, 6:]
    torch.testing.assert_close(cont, full, atol=1e-5, rtol=0)


def test_bfloat16_forward_is_close_to_float32(random_ckpt, fused) -> None:
    bf16 = load_model(ModelSpec(str(random_ckpt), device="cpu", dtype="bfloat16"))
    assert bf16.model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        a = fused.model(torch.tensor([IDS])).logits[0]
        b = bf16.model(torch.tensor([IDS])).logits[0].float()
    assert (a - b).abs().max() < 0.25
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75
