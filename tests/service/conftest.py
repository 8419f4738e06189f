from pathlib import Path

import pytest
from tokenizers import Tokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizer.json"


@pytest.fixture(scope="session")
def encode():
    """The real Refact tokenizer's encode, special tokens written in text kept as text."""
    tok = Tokenizer.from_file(str(FIXTURE))
    tok.encode_special_tokens = True

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    return encode
