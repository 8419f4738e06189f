"""Refact's byte-level BPE tokenizer, loaded from a checkpoint's ``tokenizer.json``.

Document text is always encoded with special tokens treated as plain text: a literal
``<fim_prefix>`` in the user's file must never become the control id 1. The prompt builder
inserts the special ids itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

EOT_ID = 0  # <|endoftext|>
FIM_PREFIX_ID = 1
FIM_MIDDLE_ID = 2
FIM_SUFFIX_ID = 3
FIRST_PADDING_ID = 49152  # ids 49152..49215 are padding rows, never sampled


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level alphabet: printable character -> byte.

    ``tokenizers`` only decodes whole sequences (with U+FFFD for split characters); streaming needs
    each token's raw bytes, so the standard 256-entry table is rebuilt here.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class RefactTokenizer:
    """Thin wrapper over ``tokenizers.Tokenizer`` with Refact's conventions."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._tok.encode_special_tokens = True  # specials written in text stay text
        self._tok.no_truncation()  # a tokenizer.json may carry either: document text is never cut
        self._tok.no_padding()  # nor padded (with pad id 0 that would be <|endoftext|>)
        self._special_ids = {
            self._tok.token_to_id(t.content)
            for t in self._tok.get_added_tokens_decoder().values()
            if t.special
        }
        self._bytes_cache: dict[int, bytes] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> RefactTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    @property
    def special_ids(self) -> frozenset[int]:
        """The control tokens' ids (``<|endoftext|>``, ``<fim_*>``, ``<filename>``, ...)."""
        return frozenset(self._special_ids)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode_text(self, text: str) -> list[int]:
        """Encode document text; ``<fim_*>``/``<|endoftext|>`` in it are plain characters."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Decode ids to text (special tokens written out, invalid UTF-8 replaced)."""
        return self.token_bytes_of(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (a special token's own name for control ids)."""
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            raise ValueError(f"token id {token_id} is outside the vocabulary")
        if token_id in self._special_ids:
            data = piece.encode("utf-8")
        else:
            table = _byte_decoder()
            try:
                data = bytes(table[c] for c in piece)
            except KeyError:  # not a byte-level piece (e.g. [PAD49152]): its own name
                data = piece.encode("utf-8")
        self._bytes_cache[token_id] = data
        return data

    def token_bytes_of(self, ids: list[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


__all__ = [
    "EOT_ID",
    "FIM_MIDDLE_ID",
    "FIM_PREFIX_ID",
    "FIM_SUFFIX_ID",
    "FIRST_PADDING_ID",
    "RefactTokenizer",
]
