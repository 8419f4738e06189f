"""``gpt_refact`` configuration, reading the hub's config.json field names."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from refact_lsp.engine.registration import register


def mlp_width_for(n_embd: int, n_inner: int | None = None) -> int:
    """SwiGLU hidden width: ``n_inner`` if set, else round_up(int(2 * 4 * n_embd / 3), 256)."""
    if n_inner:
        return int(n_inner)
    hidden = int(2 * 4 * n_embd / 3)
    return 256 * ((hidden + 255) // 256)


@strict
class GPTRefactConfig(PretrainedConfig):
    """Refact-1.6B-fim's config. Unknown keys (``auto_map`` ...) are accepted and ignored."""

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
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
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
        self.num_key_value_heads = 1
        if isinstance(self.bos_token_id, int) and self.bos_token_id < 0:  # the hub config says -1: no BOS
            self.bos_token_id = None
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return mlp_width_for(self.n_embd, self.n_inner)


register()  # completes the registration deferred if transformers was imported mid-way
