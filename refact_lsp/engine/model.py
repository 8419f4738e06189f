"""Refact-1.6B-fim (``gpt_refact``) in plain PyTorch, in the style of gpt-fast's model.py.

Pre-norm blocks with LayerNorm without bias, multi-query attention (one fused ``kv`` head) with ALiBi
(scores in float32; in the model's dtype in the fast paths), SwiGLU MLP with a fused ``gate_up_proj``,
top-level ``ln_f`` and an untied ``lm_head``.
Parameter names match the official checkpoint (``transformer.h.{i}.attn.q.weight`` ...).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from refact_lsp.engine.config import GPTRefactConfig
from refact_lsp.engine.registration import register

# transformers renamed the output's cache field from ``past_key_values`` to ``cache`` (5.2x).
_OUTPUT_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def alibi_slopes(n_head: int, device: torch.device | str | None = None) -> torch.Tensor:
    """m_h = 2^(-8(h+1)/n_head), float32, shape ``[n_head]``."""
    h = torch.arange(1, n_head + 1, dtype=torch.float32, device=device)
    return torch.exp2(-8.0 * h / n_head)


def alibi_bias(slopes: torch.Tensor, past: int, t: int) -> torch.Tensor:
    """Float32 ``[H, T, S]`` bias ``-m_h * (i - j)`` for query i (absolute ``past + 0..T-1``), key j <= i;
    ``-inf`` for j > i. S = past + T."""
    i = torch.arange(past, past + t, device=slopes.device, dtype=torch.float32)
    j = torch.arange(past + t, device=slopes.device, dtype=torch.float32)
    rel = j[None, :] - i[:, None]  # j - i <= 0 where allowed
    bias = slopes[:, None, None] * rel[None]
    return bias.masked_fill(rel[None] > 0, float("-inf"))


def alibi_bias_at(slopes: torch.Tensor, pos: torch.Tensor, capacity: int) -> torch.Tensor:
    """Float32 ``[H, T, capacity]`` bias of T queries at positions ``pos`` (a ``[T]`` device tensor) over
    every cache slot: ``-m_h * (pos_t - j)`` for j <= pos_t, ``-inf`` after. Static shape, no host sync."""
    rel = (
        torch.arange(capacity, device=slopes.device, dtype=torch.float32)[None, :]
        - pos.to(torch.float32)[:, None]
    )
    bias = slopes[:, None, None] * rel[None]
    return bias.masked_fill(rel[None] > 0, float("-inf"))


class LayerNorm(nn.Module):
    """LayerNorm with a gain and no bias (biased variance), as in the checkpoint."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, self.eps)


ADD_INTO_GEMM = True
"""Residual adds inside the output GEMMs (:func:`add_linear`); ``bench/engine.py`` times both ways."""


def add_linear(residual: torch.Tensor, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``residual + layer(x)``. For a plain bias-free Linear without autograd, one GEMM that adds into
    ``residual`` in place (``addmm_``: one kernel, where the product and the sum took two); an int8
    (quantized) layer, a forward pass that records gradients, or one under ``torch.compile`` adds
    separately."""
    if (
        not ADD_INTO_GEMM
        or torch.compiler.is_compiling()  # Inductor fuses a separate add with the next norm
        or type(layer) is not nn.Linear
        or layer.bias is not None
        or torch.is_grad_enabled()
    ):
        return residual + layer(x)
    flat = residual.view(-1, residual.shape[-1])
    flat.addmm_(x.reshape(-1, x.shape[-1]), layer.weight.t())
    return residual


class Attention(nn.Module):
    def __init__(self, config: GPTRefactConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.kv = nn.Linear(config.n_embd, 2 * self.head_dim, bias=False)  # rows: K then V
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.qkv_weight: torch.Tensor | None = None
        """``q.weight`` over ``kv.weight`` in one tensor, of which both parameters are views (see
        :meth:`fuse_projections`): one GEMM computes both."""

    def fuse_projections(self) -> None:
        """Moves ``q.weight`` and ``kv.weight`` into one tensor and makes them views of it (same names,
        same values), so that both projections are one GEMM. Call it once the weights are in place:
        ``.to()`` afterwards, or quantization, gives them storage of their own again, which
        :meth:`_project` notices (it goes back to two GEMMs and lets the fused tensor go)."""
        if type(self.q) is not nn.Linear or type(self.kv) is not nn.Linear:
            return
        fused = torch.cat([self.q.weight.detach(), self.kv.weight.detach()])
        n = self.q.weight.shape[0]
        self.q.weight = nn.Parameter(fused[:n], requires_grad=self.q.weight.requires_grad)
        self.kv.weight = nn.Parameter(fused[n:], requires_grad=self.kv.weight.requires_grad)
        self.qkv_weight = fused

    def fused_weight(self) -> torch.Tensor | None:
        """``qkv_weight`` while ``q.weight`` and ``kv.weight`` are still views of it; once they were moved,
        converted or quantized, None (and the fused tensor is let go: two GEMMs from then on)."""
        fused = self.qkv_weight
        if fused is None:
            return None
        n = self.q.out_features
        q, kv = getattr(self.q, "weight", None), getattr(self.kv, "weight", None)
        if (
            isinstance(q, torch.Tensor)
            and isinstance(kv, torch.Tensor)
            and q.data_ptr() == fused.data_ptr()
            and kv.data_ptr() == fused[n:].data_ptr()
            and q.dtype == kv.dtype == fused.dtype
        ):
            return fused
        self.qkv_weight = None
        return None

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q(x), kv(x))``: one GEMM while the fused weight is current (and no gradients are recorded: the
        fused tensor is no parameter). ``torch.compile`` cannot trace the pointer check: a compiled caller
        runs :meth:`GPTRefactForCausalLM.drop_stale_fusions` first."""
        if not torch.is_grad_enabled():
            fused = self.qkv_weight if torch.compiler.is_compiling() else self.fused_weight()
            if fused is not None:
                n = self.q.out_features
                both = F.linear(x, fused)
                return both[..., :n], both[..., n:]
        return self.q(x), self.kv(x)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        cache: Any | None,
        sdpa: bool = False,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``residual + attention(x)``, added into ``residual`` in place without autograd (see
        :func:`add_linear`). The scores are computed in ``bias``'s dtype: float32 for the reference path,
        the model's dtype for the fast decode step."""
        b, t, c = x.shape
        d = self.head_dim
        q, kv = self._project(x)
        q = q.view(b, t, self.n_head, d).transpose(1, 2)  # [B, H, T, D]
        kv = kv.view(b, t, 1, 2 * d).transpose(1, 2)  # [B, 1, T, 2D]: K | V
        if cache is None:
            k, v = kv.split(d, dim=-1)
        elif hasattr(cache, "update_kv"):  # the engine's cache stores K | V rows: one write
            k, v = cache.update_kv(kv, self.layer_idx)  # [B, 1, S, D] each
        else:  # a transformers Cache
            k, v = cache.update(*kv.split(d, dim=-1), self.layer_idx)
        # multi-query: the H query heads of each position are folded into one head of H*T queries, so the
        # single K/V head is read once (no broadcast copy of K per head)
        hq, s = self.n_head * t, k.shape[-2]
        scale = 1.0 / math.sqrt(d)
        if sdpa:  # fused kernel; the ALiBi + causal bias goes in as a float mask in the compute dtype
            y = F.scaled_dot_product_attention(
                q.reshape(b, 1, hq, d), k, v, attn_mask=bias.reshape(1, 1, hq, s).to(q.dtype), scale=scale
            )
        else:  # scale * q.k + bias in one batched GEMM, softmax, then the values
            dtype = bias.dtype
            scores = torch.baddbmm(
                bias.reshape(hq, s),
                q.reshape(b, hq, d).to(dtype),
                k.reshape(b, s, d).to(dtype).transpose(1, 2),
                alpha=scale,
            )
            probs = torch.softmax(scores, dim=-1).to(v.dtype)
            y = torch.bmm(probs, v.reshape(b, s, d))
        y = y.view(b, self.n_head, t, d).transpose(1, 2).reshape(b, t, c)
        return self.c_proj(y) if residual is None else add_linear(residual, self.c_proj, y)


class MLP(nn.Module):
    def __init__(self, config: GPTRefactConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.n_embd, 2 * config.mlp_width, bias=False)  # rows: gate then up
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + mlp(x)``, added into ``residual`` in place without autograd (:func:`add_linear`)."""
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        h = F.silu(gate) * up
        return self.c_proj(h) if residual is None else add_linear(residual, self.c_proj, h)


class Block(nn.Module):
    def __init__(self, config: GPTRefactConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, cache: Any | None, sdpa: bool = False
    ) -> torch.Tensor:
        x = self.attn(self.ln_1(x), bias, cache, sdpa, residual=x)
        return self.mlp(self.ln_2(x), residual=x)


class Transformer(nn.Module):
    """The ``transformer.`` prefix of the checkpoint: embedding and blocks."""

    def __init__(self, config: GPTRefactConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))


AUTO_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
"""transformers' ``device_map`` strategies: one device holds the whole model, so each means the best one."""


def _device_for(device_map: str | int | torch.device | None) -> torch.device:
    """The one device ``from_pretrained``'s ``device_map`` names (``None``: the CPU; ``"auto"``: cuda, then
    mps, then cpu, as the engine chooses). A value torch does not know is a ``ValueError`` naming it."""
    if isinstance(device_map, str) and device_map.strip().lower() in AUTO_DEVICE_MAPS:
        from refact_lsp.engine.loading import resolve_device

        return resolve_device("auto")
    try:
        return torch.device(device_map if device_map is not None else "cpu")
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(
            f"device_map {device_map!r} is not supported: gpt_refact loads on one device; give 'auto', "
            "a device ('cpu', 'cuda', 'cuda:0', 'mps') or {'': device}"
        ) from e


class GPTRefactForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = GPTRefactConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_cache_class = True

    def __init__(self, config: GPTRefactConfig):
        super().__init__(config)
        self.transformer = Transformer(config)
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._slopes: dict[torch.device, torch.Tensor] = {}
        self.post_init()

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *model_args: Any,
        config: GPTRefactConfig | None = None,
        dtype: str | torch.dtype | None = None,
        torch_dtype: str | torch.dtype | None = None,
        device_map: str | torch.device | dict | None = None,
        revision: str | None = None,
        output_loading_info: bool = False,
        use_safetensors: bool | None = None,
        **kwargs: Any,
    ):
        """Load with the engine's strict loader instead of transformers' (which random-inits missing tensors).

        Both layouts load (legacy ``k``/``v``, ``linear_1``/``linear_3`` are fused); a missing, unexpected or
        wrongly shaped tensor raises :class:`~refact_lsp.engine.loading.ModelLoadError`. ``dtype`` ``None`` or
        ``"auto"`` keeps the file's dtype; ``device_map`` may be one device, or ``"auto"`` (also
        ``"balanced"``, ``"sequential"``: the whole model on the best device there is). Other hub options
        are ignored.
        """
        from refact_lsp.engine.loading import ModelSpec, load_weights, locate_checkpoint, read_config

        if model_args:
            raise TypeError("GPTRefactForCausalLM.from_pretrained takes no extra positional arguments")
        folder = locate_checkpoint(
            ModelSpec(
                str(pretrained_model_name_or_path), revision=revision, allow_pickle=use_safetensors is False
            )
        )
        if not isinstance(config, GPTRefactConfig):
            config = read_config(folder)
        want = dtype if dtype is not None else torch_dtype
        if want is None or want == "auto":
            load_dtype = None
        else:
            load_dtype = (
                want if isinstance(want, torch.dtype) else getattr(torch, str(want).removeprefix("torch."))
            )
        if isinstance(device_map, dict):
            if set(device_map) != {""}:
                raise ValueError(
                    "gpt_refact loads on one device: device_map must be a device or {'': device}"
                )
            device_map = device_map[""]
        device = _device_for(device_map)
        model = load_weights(
            folder, config, device=device, dtype=load_dtype, allow_pickle=use_safetensors is False
        )
        if output_loading_info:
            info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
            return model, info
        return model

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def slopes(self, device: torch.device) -> torch.Tensor:
        s = self._slopes.get(device)
        if s is None:
            s = self._slopes[device] = alibi_slopes(self.config.n_head, device)
        return s

    def forward(
        self,
        input_ids: torch.LongTensor,
        kv_cache: Any | None = None,
        logits_to_keep: int = 0,
        *,
        sdpa: bool = False,
        cache: Any | None = None,
        past_key_values: Any | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits for ``input_ids`` ``[B, T]`` following what ``kv_cache`` holds.

        ``kv_cache`` is the engine's :class:`~refact_lsp.engine.kv_cache.KVCache` (batch 1; the tokens are
        committed to it) or, for transformers' ``generate``, a transformers ``Cache`` passed as
        ``cache`` (or the deprecated ``past_key_values``). ``logits_to_keep=n > 0`` computes the head
        for the last n positions only. ``sdpa`` uses ``scaled_dot_product_attention`` (the GPU prefill).
        """
        hf_cache = cache if cache is not None else past_key_values
        cache = kv_cache if kv_cache is not None else hf_cache
        if attention_mask is not None and attention_mask.shape[-1] and not bool(attention_mask.all()):
            raise ValueError("gpt_refact: padded batches are not supported (attention_mask has zeros)")
        past = cache.get_seq_length() if cache is not None else 0
        t = input_ids.shape[1]
        x = self.transformer.wte(input_ids)
        bias = alibi_bias(self.slopes(x.device), past, t)
        if sdpa:
            bias = bias.to(x.dtype)  # once, not per layer
        for block in self.transformer.h:
            x = block(x, bias, cache, sdpa)
        if kv_cache is not None and hasattr(kv_cache, "commit"):
            kv_cache.commit(input_ids[0].tolist())
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.ln_f(x))
        return CausalLMOutputWithPast(logits=logits, **{_OUTPUT_CACHE_FIELD: hf_cache})

    def fuse_projections(self) -> None:
        """Each layer's q and kv projections become one GEMM (:meth:`Attention.fuse_projections`)."""
        for block in self.transformer.h:
            block.attn.fuse_projections()

    def drop_stale_fusions(self) -> None:
        """Lets go of fused q/kv tensors that the parameters no longer view (:meth:`Attention.fused_weight`):
        for a caller that compiles the forward, where the check cannot run."""
        for block in self.transformer.h:
            block.attn.fused_weight()

    def decode_step(self, token: torch.Tensor, pos: torch.Tensor, kv_cache: Any) -> torch.Tensor:
        """Logits ``[vocab]`` after T tokens ``[1, T]`` at consecutive positions ``pos`` (``[T]`` long), both
        on the device: one token per step while generating, a keystroke's few new prompt tokens at once
        (a GPU reads the weights once for all of them).

        Attention here is plain batched GEMMs in the model's dtype (scores + ALiBi in one ``baddbmm``):
        SDPA's kernels parallelise over heads and queries, and the 32 folded queries of one token in one
        K/V head made them ~3x slower than the step itself on an H100. On a GPU a step of this small model
        costs about as much per kernel launched as per weight read, so each layer runs 12 operations
        (``tests/engine/test_fast_path.py`` counts them).

        Static shapes, no host sync (CUDA-graph capturable): keys/values are written into slots ``pos`` of
        the engine's preallocated cache and attention runs over all its slots, each query masked after its
        position. The caller checks bounds and records the tokens (``kv_cache.commit``).
        """
        x = self.transformer.wte(token)
        # attention in the model's dtype, like the SDPA prefill: no float32 copies of the cache per layer
        bias = alibi_bias_at(self.slopes(x.device), pos, kv_cache.capacity).to(x.dtype)
        slot = kv_cache.slot(pos)
        for block in self.transformer.h:
            x = block(x, bias, slot)
        return self.lm_head(self.ln_f(x[:, -1:]))[0, -1]


register()  # completes the registration deferred if transformers was imported mid-way
