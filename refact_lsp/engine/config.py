"""``gpt_refact`` configuration, reading the hub's config.json field names."""

# No ``from __future__ import annotations`` here: ``@strict`` checks a field's type only when its annotation
# is a real type, not a string, and a wrong type must fail here rather than in every forward pass.

import math

from huggingface_hub.dataclasses import as_validated_field, strict
from transformers import PretrainedConfig

from refact_lsp.engine.registration import register

DERIVED_KEYS = ("head_dim", "mlp_width")
"""Read-only properties computed from the sizes: a config.json may carry them only with the same value."""


def mlp_width_for(n_embd: int, n_inner: int | None = None) -> int:
    """SwiGLU hidden width: ``n_inner`` if set, else round_up(int(2 * 4 * n_embd / 3), 256)."""
    if n_inner:
        return int(n_inner)
    hidden = int(2 * 4 * n_embd / 3)
    return 256 * ((hidden + 255) // 256)


@as_validated_field
def _positive_finite(value: float) -> None:
    """A finite number above 0 (the type itself is checked first)."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"expected a finite number above 0, got {value!r}")


@as_validated_field
def _positive_or_none(value: int | None) -> None:
    """None or an integer above 0 (the type itself is checked first)."""
    if value is not None and value <= 0:
        raise ValueError(f"expected null or an integer above 0, got {value!r}")


@strict
class GPTRefactConfig(PretrainedConfig):
    """Refact-1.6B-fim's config. Unknown keys (``auto_map`` ...) are accepted and ignored; a value of the
    wrong type (``"layer_norm_epsilon": "1e-5"``) is a ``StrictDataclassFieldValidationError``."""

    model_type = "gpt_refact"
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    vocab_size: int = 49216
    n_embd: int = 2048
    n_head: int = 32
    n_layer: int = 32
    n_positions: int = 4096
    n_inner: int | None = _positive_or_none(default=None)
    layer_norm_epsilon: float = _positive_finite(default=1e-5)
    multi_query: bool = True
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 0
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if not self.multi_query:
            raise ValueError("gpt_refact has one key/value head: multi_query must be true")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        for key in DERIVED_KEYS:  # properties here: transformers would fail to set them
            if key in kwargs and kwargs.pop(key) != getattr(self, key):
                raise ValueError(f"{key} must be {getattr(self, key)} for these sizes (or left out)")
        self._check_dtype(self.dtype if self.dtype is not None else kwargs.get("torch_dtype"))
        self.num_key_value_heads = 1
        if isinstance(self.bos_token_id, int) and self.bos_token_id < 0:  # the hub config says -1: no BOS
            self.bos_token_id = None
        super().__post_init__(**kwargs)

    @staticmethod
    def _check_dtype(name: object) -> None:
        """A dtype given by name must be one of torch's (transformers looks it up on ``torch``)."""
        import torch

        if isinstance(name, str) and not isinstance(getattr(torch, name, None), torch.dtype):
            raise ValueError(f"dtype {name!r} is not a torch dtype (e.g. float32, bfloat16, float16)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return mlp_width_for(self.n_embd, self.n_inner)


register()  # completes the registration deferred if transformers was imported mid-way
