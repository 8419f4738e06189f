"""Prompts and requests the engine tests share: Refact's SPM prompt of a prefix and a suffix, and a greedy
request without stop strings unless given."""

from __future__ import annotations

from refact_lsp.engine.generate import GenerationRequest
from refact_lsp.engine.tokenizer import FIM_MIDDLE_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID


def fim(tok, prefix: str, suffix: str) -> list[int]:
    return [FIM_SUFFIX_ID, *tok.encode_text(suffix), FIM_PREFIX_ID, *tok.encode_text(prefix), FIM_MIDDLE_ID]


def greedy(prompt: list[int], **kw) -> GenerationRequest:
    kw.setdefault("stop_strings", ())
    return GenerationRequest(prompt, temperature=0.0, **kw)
