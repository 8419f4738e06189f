"""Tiny ``gpt_refact`` checkpoints in the official layout, for tests and benchmarks.

Each folder holds ``config.json`` (with the hub's ``auto_map`` to remote code, which we never run),
``model.safetensors`` with the official tensor names and ``tokenizer.json`` (the committed fixture
rebuilt from Refact's real vocabulary, see ``scripts/make_tokenizer_fixture.py``).

- :func:`write_random_checkpoint`: random weights, fused or legacy layout.
- :func:`write_scripted_checkpoint`: weights that make greedy decoding after ``<fim_middle>`` spell a text.
- :func:`random_model`: a model with random weights built in memory (the real 1.6B shape for benchmarks).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

VOCAB_SIZE = 49216
TINY_SHAPE: dict[str, int] = {"n_embd": 64, "n_head": 4, "n_layer": 2}
MID_SHAPE: dict[str, int] = {"n_embd": 512, "n_head": 8, "n_layer": 8}
REAL_SHAPE: dict[str, int] = {"n_embd": 2048, "n_head": 32, "n_layer": 32}

HUB_AUTO_MAP = {
    "AutoConfig": "configuration_gpt_refact.GPTRefactConfig",
    "AutoModelForCausalLM": "modeling_gpt_refact.GPTRefactForCausalLM",
}


def fixture_tokenizer_path() -> Path:
    """``tests/fixtures/tokenizer.json`` of this repository (found from the package's parent directory)."""
    path = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer fixture not found at {path}; rebuild it with scripts/make_tokenizer_fixture.py"
        )
    return path


def hub_config(n_embd: int, n_head: int, n_layer: int, n_positions: int = 4096, **extra: Any) -> dict:
    """A config.json dict with the hub's field names (as in smallcloudai/Refact-1_6B-fim)."""
    return {
        "activation_function": "gelu",
        "architectures": ["GPTRefactForCausalLM"],
        "attention_bias_in_fp32": True,
        "attention_softmax_in_fp32": True,
        "auto_map": dict(HUB_AUTO_MAP),
        "bos_token_id": -1,
        "do_sample": True,
        "eos_token_id": 0,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt_refact",
        "multi_query": True,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_inner": None,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "scale_attention_softmax_in_fp32": True,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
        **extra,
    }


def _mlp_width(n_embd: int) -> int:
    from refact_lsp.engine.config import mlp_width_for

    return mlp_width_for(n_embd)


def random_state_dict(
    n_embd: int, n_head: int, n_layer: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random fused-layout tensors.

    Linear weights ~ N(0, 1/in), embeddings ~ N(0, 1), norm gains ~ 1 + N(0, 0.1).
    """
    g = torch.Generator().manual_seed(seed)
    head_dim, width = n_embd // n_head, _mlp_width(n_embd)

    def linear(out_f: int, in_f: int) -> torch.Tensor:
        return torch.randn(out_f, in_f, generator=g) / in_f**0.5

    def gain() -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n_embd, generator=g)

    sd = {"transformer.wte.weight": torch.randn(VOCAB_SIZE, n_embd, generator=g)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = gain()
        sd[p + "attn.q.weight"] = linear(n_embd, n_embd)
        sd[p + "attn.kv.weight"] = linear(2 * head_dim, n_embd)
        sd[p + "attn.c_proj.weight"] = linear(n_embd, n_embd)
        sd[p + "ln_2.weight"] = gain()
        sd[p + "mlp.gate_up_proj.weight"] = linear(2 * width, n_embd)
        sd[p + "mlp.c_proj.weight"] = linear(n_embd, width)
    sd["ln_f.weight"] = gain()
    sd["lm_head.weight"] = linear(VOCAB_SIZE, n_embd)
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def to_legacy_layout(sd: dict[str, torch.Tensor], head_dim: int) -> dict[str, torch.Tensor]:
    """Split fused ``kv``/``gate_up_proj`` into the older ``k``/``v`` and ``linear_1``/``linear_3``."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name.endswith(".attn.kv.weight"):
            base = name[: -len("kv.weight")]
            out[base + "k.weight"] = t[:head_dim].contiguous()
            out[base + "v.weight"] = t[head_dim:].contiguous()
        elif name.endswith(".mlp.gate_up_proj.weight"):
            base = name[: -len("gate_up_proj.weight")]
            half = t.shape[0] // 2
            out[base + "linear_1.weight"] = t[:half].contiguous()
            out[base + "linear_3.weight"] = t[half:].contiguous()
        else:
            out[name] = t
    return out


def write_checkpoint(
    folder: str | Path, config: dict, tensors: dict[str, torch.Tensor], *, tokenizer: bool = True
) -> Path:
    """Write config.json, model.safetensors and (optionally) the fixture tokenizer.json into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer:
        shutil.copyfile(fixture_tokenizer_path(), folder / "tokenizer.json")
    return folder


def write_random_checkpoint(
    folder: str | Path,
    *,
    n_embd: int = 64,
    n_head: int = 4,
    n_layer: int = 2,
    layout: Literal["fused", "legacy"] = "fused",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    n_positions: int = 4096,
) -> Path:
    """A random-weight checkpoint in the official layout; same seed -> same weights in either layout."""
    if layout not in ("fused", "legacy"):
        raise ValueError(f"layout must be 'fused' or 'legacy', not {layout!r}")
    sd = random_state_dict(n_embd, n_head, n_layer, seed=seed, dtype=dtype)
    if layout == "legacy":
        sd = to_legacy_layout(sd, n_embd // n_head)
    dtype_name = str(dtype).removeprefix("torch.")
    cfg = hub_config(n_embd, n_head, n_layer, n_positions, torch_dtype=dtype_name)
    return write_checkpoint(folder, cfg, sd)


def scripted_state_dict(
    text_ids: list[int], *, loop: bool = False, n_layer: int = 1, n_head: int = 4
) -> tuple[dict[str, torch.Tensor], int]:
    """Tensors whose greedy continuation of ``<fim_middle>`` is ``text_ids`` then ``<|endoftext|>``.

    Returns ``(state_dict, n_embd)``. Every ``c_proj`` is zero, so the residual stream of a position
    is its own ``wte`` row: a one-hot dimension per distinct token; ``lm_head`` maps that dimension
    to the successor token. LayerNorm without bias keeps the argmax.
    """
    from refact_lsp.engine.tokenizer import EOT_ID, FIM_MIDDLE_ID

    successor: dict[int, int] = {}
    chain = [FIM_MIDDLE_ID, *text_ids]
    end = (text_ids[0] if text_ids else EOT_ID) if loop else EOT_ID
    for cur, nxt in zip(chain, [*chain[1:], end], strict=True):
        if successor.setdefault(cur, nxt) != nxt:
            raise ValueError(
                f"token {cur} is followed by both {successor[cur]} and {nxt}: greedy decoding cannot "
                "spell this text with one token of context; choose a text without such repeats"
            )
    dims = {tok: d for d, tok in enumerate(successor)}
    n_embd = max(n_head, -(-len(dims) // n_head) * n_head)
    head_dim, width = n_embd // n_head, _mlp_width(n_embd)
    g = torch.Generator().manual_seed(0)

    wte = torch.zeros(VOCAB_SIZE, n_embd)
    lm_head = torch.zeros(VOCAB_SIZE, n_embd)
    for tok, d in dims.items():
        wte[tok, d] = 1.0
        lm_head[successor[tok], d] = 10.0
    sd = {"transformer.wte.weight": wte}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = torch.ones(n_embd)
        sd[p + "attn.q.weight"] = torch.randn(n_embd, n_embd, generator=g) / n_embd**0.5
        sd[p + "attn.kv.weight"] = torch.randn(2 * head_dim, n_embd, generator=g) / n_embd**0.5
        sd[p + "attn.c_proj.weight"] = torch.zeros(n_embd, n_embd)
        sd[p + "ln_2.weight"] = torch.ones(n_embd)
        sd[p + "mlp.gate_up_proj.weight"] = torch.randn(2 * width, n_embd, generator=g) / n_embd**0.5
        sd[p + "mlp.c_proj.weight"] = torch.zeros(n_embd, width)
    sd["ln_f.weight"] = torch.ones(n_embd)
    sd["lm_head.weight"] = lm_head
    return sd, n_embd


def write_scripted_checkpoint(
    folder: str | Path, text: str, *, loop: bool = False, n_layer: int = 1, n_head: int = 4
) -> Path:
    """A checkpoint whose greedy answer to any prompt ending in ``<fim_middle>`` is ``text``.

    After the text it writes ``<|endoftext|>``, or starts the text again when ``loop=True``.
    Raises ValueError if a token of the text repeats with a different successor.
    """
    from refact_lsp.engine.tokenizer import RefactTokenizer

    ids = RefactTokenizer.from_file(fixture_tokenizer_path()).encode_text(text)
    sd, n_embd = scripted_state_dict(ids, loop=loop, n_layer=n_layer, n_head=n_head)
    return write_checkpoint(folder, hub_config(n_embd, n_head, n_layer), sd)


def random_model(
    shape: dict[str, int] | Literal["tiny", "mid", "real"] = "real",
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    n_positions: int = 4096,
):
    """A :class:`GPTRefactForCausalLM` with random weights, built directly on ``device`` (no disk).

    ``"real"`` is the 1.6B shape (float32: 6.3 GB); ``"mid"`` 512 wide x 8 layers; ``"tiny"`` 64 x 2.
    """
    from refact_lsp.engine.config import GPTRefactConfig
    from refact_lsp.engine.model import GPTRefactForCausalLM

    dims = (
        {"tiny": TINY_SHAPE, "mid": MID_SHAPE, "real": REAL_SHAPE}[shape] if isinstance(shape, str) else shape
    )
    config = GPTRefactConfig(**hub_config(**dims, n_positions=n_positions))
    with torch.device("meta"):
        model = GPTRefactForCausalLM(config)
    model = model.to_empty(device=device).to(dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.1, generator=g)
            elif name == "transformer.wte.weight":
                p.normal_(0.0, 1.0, generator=g)
            else:
                p.normal_(0.0, p.shape[1] ** -0.5, generator=g)
    return model.eval()
