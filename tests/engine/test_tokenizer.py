"""The committed tokenizer fixture reproduces llama.cpp's 47 reference tokenizations of Refact's vocab."""

from __future__ import annotations

from pathlib import Path

import pytest

from refact_lsp.engine.tokenizer import (
    EOT_ID,
    FIM_MIDDLE_ID,
    FIM_PREFIX_ID,
    FIM_SUFFIX_ID,
    RefactTokenizer,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _cases() -> list[tuple[str, list[int]]]:
    texts = (
        (FIXTURES / "ggml-vocab-refact.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    )
    expected = (FIXTURES / "ggml-vocab-refact.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == 47
    return [(t, [int(x) for x in e.split()]) for t, e in zip(texts, expected[: len(texts)], strict=True)]


CASES = _cases()


@pytest.fixture(scope="module")
def tok() -> RefactTokenizer:
    return RefactTokenizer.from_file(FIXTURES / "tokenizer.json")


@pytest.mark.parametrize(("text", "ids"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_reference_tokenization(tok: RefactTokenizer, text: str, ids: list[int]) -> None:
    assert tok.encode_text(text) == ids
    assert tok.decode(ids) == text


def test_special_ids_and_no_bos(tok: RefactTokenizer) -> None:
    assert tok.token_to_id("<|endoftext|>") == EOT_ID
    assert tok.token_to_id("<fim_prefix>") == FIM_PREFIX_ID
    assert tok.token_to_id("<fim_middle>") == FIM_MIDDLE_ID
    assert tok.token_to_id("<fim_suffix>") == FIM_SUFFIX_ID
    assert tok.vocab_size == 49216
    assert tok.encode_text("") == []


@pytest.mark.parametrize("literal", ["<fim_prefix>", "<|endoftext|>", "<fim_middle>", "a<fim_suffix>b"])
def test_special_tokens_in_text_stay_plain(tok: RefactTokenizer, literal: str) -> None:
    ids = tok.encode_text(literal)
    assert all(i > 18 for i in ids)
    assert tok.decode(ids) == literal


def test_token_bytes_concatenate_to_utf8(tok: RefactTokenizer) -> None:
    text = "héllo 世界 🙂 x = 12345\n\tdef f():"
    ids = tok.encode_text(text)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert tok.token_bytes(FIM_MIDDLE_ID) == b"<fim_middle>"
    # a multi-byte character can be split across byte-level tokens
    assert any(not _is_utf8(tok.token_bytes(i)) for i in tok.encode_text("🙂"))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_truncation_and_padding_in_tokenizer_json_are_ignored() -> None:
    """A tokenizer.json may carry ``truncation`` and ``padding``: document text is never cut nor padded."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(FIXTURES / "tokenizer.json"))
    raw.enable_truncation(max_length=4)
    raw.enable_padding(length=64, pad_id=EOT_ID)
    text = "def add(a, b):\n    return a + b\n"
    tok = RefactTokenizer(raw)
    plain = RefactTokenizer.from_file(FIXTURES / "tokenizer.json")
    assert tok.encode_text(text) == plain.encode_text(text)
    assert len(tok.encode_text(text)) > 4 and EOT_ID not in tok.encode_text("x = 1")
