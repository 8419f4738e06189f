"""Speculative next completion: the document as it will be once the shown suggestion is accepted.

After a suggestion is answered and the model is idle, the service completes at the end of the
suggestion in this virtual document (a view over the real one, nothing copied) and puts the result in
the typed-ahead cache under that position's keys. Accepting the suggestion (the client sends the edit,
then asks at the new cursor) builds the very same prompt, so the answer comes from the cache and is the
one the model would have given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

SPECULATIVE_TAG = "speculative"
"""The typed-ahead cache tag of speculative entries (for the ``speculative.hits`` counter)."""


class SplicedLines(Sequence[str]):
    """``lines`` with line ``at`` replaced by ``new_lines`` (a view: reads through to ``lines``)."""

    def __init__(self, lines: Sequence[str], at: int, new_lines: list[str]):
        self._lines, self._at, self._new = lines, at, new_lines
        self._len = len(lines) - 1 + len(new_lines)

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        if i < self._at:
            return self._lines[i]
        if i < self._at + len(self._new):
            return self._new[i - self._at]
        return self._lines[i - len(self._new) + 1]


@dataclass(frozen=True)
class Accepted:
    """The document after accepting a suggestion, and the cursor at the end of the inserted text."""

    lines: Sequence[str]
    line: int
    index: int
    """Python index in ``line_text``."""
    line_text: str


def accept(lines: Sequence[str], line: int, start: int, end: int, text: str) -> Accepted:
    """Replace ``lines[line][start:end]`` with ``text`` (``"\\n"`` line breaks), cursor after ``text``."""
    line_text = lines[line]
    after = line_text[end:]
    new_lines = (line_text[:start] + text + after).split("\n")
    cursor_line = line + len(new_lines) - 1
    cursor_text = new_lines[-1]
    return Accepted(
        SplicedLines(lines, line, new_lines), cursor_line, len(cursor_text) - len(after), cursor_text
    )


_OPENERS = (":", "{", "(", "[")
_PYTHON_DEDENT = ("return", "pass", "break", "continue", "raise")


def indent_unit(lines: Sequence[str], line: int, radius: int = 60) -> str:
    """The document's indentation step around ``line``: a tab where tabs indent, else the most common
    difference in leading spaces between neighbouring non-blank lines (two for much JavaScript, four
    for most Python); four spaces when the lines say nothing."""
    votes: Counter[str] = Counter()
    previous: str | None = None
    for i in range(max(0, line - radius), min(len(lines), line + radius)):
        text = lines[i]
        if not text.strip():
            continue
        indent = text[: len(text) - len(text.lstrip())]
        if previous is not None:
            if indent.startswith("\t") or previous.startswith("\t"):
                votes["\t"] += indent != previous
            elif 0 < (step := abs(len(indent) - len(previous))) <= 8:
                votes[" " * step] += 1
        previous = indent
    if not votes:
        return "    "
    return max(votes, key=lambda unit: (votes[unit], -len(unit)))  # a tie goes to the smaller step


def next_line_indent(line_text: str, language_id: str = "", unit: str | None = None) -> str:
    """The indentation an editor gives the new line when Enter is pressed at the end of ``line_text``:
    the same, one level more after an opening ``:``/``{``/``(``/``[``, one less after Python's
    ``return``/``pass``/``break``/``continue``/``raise`` (VS Code's and Neovim's usual rules). ``unit``
    is one level (:func:`indent_unit`); by default a tab on a tab-indented line, else four spaces."""
    indent = line_text[: len(line_text) - len(line_text.lstrip())]
    if unit is None or indent.startswith("\t"):
        unit = "\t" if indent.startswith("\t") else "    "
    code = line_text.strip()
    if code.endswith(_OPENERS):
        return indent + unit
    if language_id == "python" and code.split(" ", 1)[0] in _PYTHON_DEDENT:
        return indent[: -len(unit)] if indent.endswith(unit) else indent
    return indent
