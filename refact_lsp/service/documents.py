"""Open documents as lists of lines, with full and incremental LSP sync.

A ``Document`` stores each line without its terminator plus the terminator itself, so an incremental
edit costs in proportion to the edit (one list splice), never a split or join of the whole text, and
``.text`` reproduces the client's text exactly. ``\\n``, ``\\r\\n`` and ``\\r`` all end lines (LSP spec).
The model sees lines joined with ``\\n``; results use the document's dominant line ending ``eol``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, overload

from refact_lsp.service.positions import char_index, check_encoding

Position = tuple[int, int]
"""(line, character) in the negotiated LSP encoding."""
Range = tuple[Position, Position]

_EOL = re.compile(r"\r\n|\r|\n")
_EOL_KINDS = ("\n", "\r\n", "\r")  # tie-break order for the dominant line ending


class LineShift(NamedTuple):
    """What an edit did to the line numbers: old lines ``start..end`` (inclusive) were replaced and the
    document has ``delta`` more lines (fewer if negative); lines after ``end`` moved by ``delta``."""

    start: int
    end: int
    delta: int


class UnknownDocument(KeyError):
    """A request named a document that is not open."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.uri = uri

    def __str__(self) -> str:
        return f"document is not open: {self.uri}"


def split_lines(text: str) -> tuple[list[str], list[str]]:
    """Split ``text`` into lines without terminators and their terminators (the last one is ``""``)."""
    lines = _EOL.split(text)
    ends = _EOL.findall(text)
    ends.append("")
    return lines, ends


class LinesView(Sequence[str]):
    """Read-only view of a document's lines (no copy)."""

    __slots__ = ("_lines",)

    def __init__(self, lines: list[str]):
        self._lines = lines

    def __len__(self) -> int:
        return len(self._lines)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        return self._lines[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)


class Document:
    """One open text document."""

    def __init__(self, uri: str, language_id: str, version: int, text: str):
        self.uri = uri
        self.language_id = language_id
        self.version = version
        self.revision = 0
        """Changes applied since the document was opened (the client's ``version`` need not change)."""
        self._set_text(text)

    def _set_text(self, text: str) -> None:
        self._lines, self._ends = split_lines(text)
        self._eol_counts = {kind: 0 for kind in _EOL_KINDS}
        for end in self._ends[:-1]:
            self._eol_counts[end] += 1
        self._text: str | None = text

    # -- reading ---------------------------------------------------------------------------------

    @property
    def line_count(self) -> int:
        return len(self._lines)

    def line(self, i: int) -> str:
        """Line ``i`` without its terminator; ``""`` past the end of the document."""
        return self._lines[i] if 0 <= i < len(self._lines) else ""

    @property
    def lines(self) -> LinesView:
        """All lines without terminators (a read-only view, valid until the next change)."""
        return LinesView(self._lines)

    @property
    def text(self) -> str:
        """The exact text, original line endings included (joined on demand, then cached)."""
        if self._text is None:
            self._text = "".join(map(str.__add__, self._lines, self._ends))
        return self._text

    @property
    def eol(self) -> str:
        """The dominant line ending (``"\\n"`` for a document without line breaks)."""
        return max(_EOL_KINDS, key=lambda kind: self._eol_counts[kind])

    def clamp(self, line: int, character: int, encoding: str) -> tuple[int, int]:
        """(line, Python index) for an LSP position, clamped into the document. Returns new values."""
        if line < 0:
            return 0, 0
        if line >= len(self._lines):
            last = len(self._lines) - 1
            return last, len(self._lines[last])
        return line, char_index(self._lines[line], character, encoding)

    # -- editing ---------------------------------------------------------------------------------

    def apply_change(self, range_: Range | None, text: str, encoding: str) -> LineShift | None:
        """Apply one ``contentChanges`` entry: ``range_`` None replaces the whole text (returns None).

        Positions past the end of a line or of the document are clamped; a reversed range is swapped.
        Returns which lines were replaced and how the line count changed.
        """
        self.revision += 1
        if range_ is None:
            self._set_text(text)
            return None
        check_encoding(encoding)
        (sl, sc), (el, ec) = range_
        start = self.clamp(sl, sc, encoding)
        end = self.clamp(el, ec, encoding)
        if end < start:
            start, end = end, start
        (sl, si), (el, ei) = start, end

        old_end = self._ends[el]
        chunk = self._lines[sl][:si] + text + self._lines[el][ei:] + old_end
        counts = self._eol_counts
        for kind in self._ends[sl : el + 1]:
            if kind:
                counts[kind] -= 1
        if sl > 0 and chunk.startswith("\n") and self._ends[sl - 1] == "\r":
            # "\r" before the chunk and "\n" starting it now form one "\r\n" terminator
            self._ends[sl - 1] = "\r\n"
            counts["\r"] -= 1
            counts["\r\n"] += 1
            chunk = chunk[1:]
        count_before = len(self._lines)
        new_lines, new_ends = split_lines(chunk)
        if old_end:  # the chunk's final terminator is followed by line el + 1, not by a new empty line
            new_lines.pop()
            new_ends.pop()
        for kind in new_ends:
            if kind:
                counts[kind] += 1
        self._lines[sl : el + 1] = new_lines
        self._ends[sl : el + 1] = new_ends
        self._text = None
        return LineShift(sl, el, len(self._lines) - count_before)

    def __repr__(self) -> str:
        return (
            f"Document({self.uri!r}, {self.language_id!r}, version={self.version}, lines={self.line_count})"
        )


class DocumentStore:
    """The open documents, by URI."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}

    def open(self, uri: str, language_id: str, version: int, text: str) -> Document:
        """``didOpen``: (re)open a document with its full text."""
        doc = Document(uri, language_id, version, text)
        self._docs[uri] = doc
        return doc

    def change(
        self, uri: str, version: int, changes: Iterable[tuple[Range | None, str]], encoding: str
    ) -> list[LineShift | None]:
        """``didChange``: apply ``(range or None, text)`` entries in order, then record ``version``.
        Returns each entry's :class:`LineShift` (None for a whole-text entry)."""
        doc = self.get(uri)
        shifts = [doc.apply_change(range_, text, encoding) for range_, text in changes]
        doc.version = version
        return shifts

    def close(self, uri: str) -> None:
        """``didClose``: forget the document (closing an unknown URI does nothing)."""
        self._docs.pop(uri, None)

    def get(self, uri: str) -> Document:
        """The open document; ``UnknownDocument`` (a ``KeyError``) if it is not open."""
        try:
            return self._docs[uri]
        except KeyError:
            raise UnknownDocument(uri) from None

    def __contains__(self, uri: object) -> bool:
        return uri in self._docs

    def __len__(self) -> int:
        return len(self._docs)

    def uris(self) -> list[str]:
        return list(self._docs)
