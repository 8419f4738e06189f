"""LSP ``character`` offsets (utf-8 / utf-16 / utf-32 code units) <-> Python str indices within one line.

All functions clamp out-of-range values and never raise for any ``int`` input (an unknown encoding
name is a programming error and raises ``ValueError``). A ``character`` that
points inside a multi-unit character (between the two halves of a surrogate pair, or inside a UTF-8
sequence) rounds down to the start of that character.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

Encoding = Literal["utf-8", "utf-16", "utf-32"]
ENCODINGS: tuple[str, ...] = get_args(Encoding)

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_encoding(encoding: str) -> Encoding:
    """Return ``encoding`` if it is one of the three LSP position encodings, else raise ``ValueError``."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown position encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    return encoding  # type: ignore[return-value]


def _units(ch: str, encoding: str) -> int:
    cp = ord(ch)
    if encoding == "utf-16":
        return 2 if cp > 0xFFFF else 1
    if cp < 0x80:
        return 1
    if cp < 0x800:
        return 2
    return 3 if cp < 0x10000 else 4


def char_index(line: str, character: int, encoding: str) -> int:
    """Python index in ``line`` for the LSP ``character`` offset, clamped to ``[0, len(line)]``."""
    check_encoding(encoding)
    if character <= 0:
        return 0
    if encoding == "utf-32" or line.isascii():
        return min(character, len(line))
    if _SURROGATE.search(line):  # lone surrogates (from JSON escapes): count them one by one
        units = 0
        for i, ch in enumerate(line):
            units += _units(ch, encoding)
            if units > character:
                return i
        return len(line)
    if encoding == "utf-16":
        data = line.encode("utf-16-le")
        if character * 2 >= len(data):
            return len(line)
        cut = character
        if 0xDC00 <= int.from_bytes(data[2 * cut : 2 * cut + 2], "little") <= 0xDFFF:
            cut -= 1  # inside a surrogate pair: round to the character start
        return len(data[: 2 * cut].decode("utf-16-le"))
    data = line.encode("utf-8")
    if character >= len(data):
        return len(line)
    cut = character
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # continuation byte: back up to the lead byte
        cut -= 1
    return len(data[:cut].decode("utf-8"))


def lsp_character(line: str, index: int, encoding: str) -> int:
    """LSP ``character`` offset of Python index ``index`` in ``line`` (index clamped to the line)."""
    check_encoding(encoding)
    index = max(0, min(index, len(line)))
    if encoding == "utf-32":
        return index
    head = line[:index]
    if head.isascii():
        return index
    if encoding == "utf-16":
        return len(head.encode("utf-16-le", "surrogatepass")) // 2
    return len(head.encode("utf-8", "surrogatepass"))


def line_length(line: str, encoding: str) -> int:
    """Length of ``line`` in ``encoding`` code units."""
    return lsp_character(line, len(line), encoding)
