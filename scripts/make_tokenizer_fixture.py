"""Rebuild ``tests/fixtures/tokenizer.json`` from llama.cpp's Refact vocab (GGUF).

The GGUF (``/work/shared/fixtures/ggml-vocab-refact.gguf`` or any path given) holds the real
Refact-1.6B vocabulary (49216 tokens with types) and its 48891 BPE merges. The Hugging Face
tokenizer is rebuilt as described in ``refact-model.md``: byte-level BPE, pre-tokenizer
``Digits(individual)`` + ``ByteLevel(no prefix space)``, ByteLevel decoder, and the
``token_type == 3`` (control) tokens as special added tokens. The llama.cpp test pair
(``.inp``/``.out``) is copied next to the fixture so the test runs without ``/work/shared``.

Usage: ``python scripts/make_tokenizer_fixture.py [GGUF] [OUT_DIR]``
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GGUF = Path("/work/shared/fixtures/ggml-vocab-refact.gguf")
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures"
CONTROL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


def _strings(field: gguf.ReaderField) -> list[str]:
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _ints(field: gguf.ReaderField) -> list[int]:
    return [int(field.parts[i][0]) for i in field.data]


def build_tokenizer(gguf_path: Path) -> Tokenizer:
    """Build the Refact byte-level BPE tokenizer from a llama.cpp vocab GGUF."""
    reader = gguf.GGUFReader(str(gguf_path))
    tokens = _strings(reader.fields["tokenizer.ggml.tokens"])
    types = _ints(reader.fields["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader.fields["tokenizer.ggml.merges"])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in the GGUF vocabulary")

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = [tok for tok, ty in zip(tokens, types, strict=True) if ty == CONTROL_TOKEN_TYPE]
    tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials])
    for tok in specials:  # added tokens must keep their GGUF ids
        if tokenizer.token_to_id(tok) != vocab[tok]:
            raise ValueError(f"special token {tok!r} changed id")
    return tokenizer


def main(argv: list[str]) -> int:
    gguf_path = Path(argv[1]) if len(argv) > 1 else DEFAULT_GGUF
    out_dir = Path(argv[2]) if len(argv) > 2 else DEFAULT_OUT
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(gguf_path)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    for suffix in (".inp", ".out"):
        src = gguf_path.with_name(gguf_path.name + suffix)
        if src.exists():
            shutil.copyfile(src, out_dir / src.name)
    print(f"wrote {out_dir / 'tokenizer.json'} ({tokenizer.get_vocab_size()} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
