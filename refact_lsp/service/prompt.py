"""Refact's fill-in-the-middle prompt: SPM order, a token budget, single- and multi-line modes.

``ids = [FIM_SUFFIX] + encode(suffix) + [FIM_PREFIX] + encode(prefix) + [FIM_MIDDLE]`` (no BOS).
Whole lines are added alternately above and below the cursor, counted in tokens, until the next one
does not fit. Only the lines of the window are ever tokenized. ``encode`` is injected so this module
stays free of the engine; wrap it in a ``CachedEncoder`` (one per tokenizer) to reuse work between
keystrokes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal, TypeVar

Mode = Literal["single", "multi"]
T = TypeVar("T")
Window = tuple[int, int]
"""(first_line, last_line), inclusive: the document lines that the prompt draws on."""

FIM_PREFIX_ID = 1
FIM_MIDDLE_ID = 2
FIM_SUFFIX_ID = 3
SPECIAL_TOKENS = 3

CLOSING_CHARS = frozenset("()[]{}>\"'`;,:.")
"""Characters that may follow the cursor for a mid-line completion in ``midLine: "auto"``: those of the
Refact VS Code client (brackets, quotes, ``,.;:``), with ``[``, ``>`` and a backtick. Opening brackets too:
a call or literal right of the cursor (``x = |()``)."""

WINDOW_HEADROOM = 16
"""A fresh window leaves budget/16 tokens free, so typing keeps it fitting (and its suffix reusable)."""

WHOLE_TEXTS = 4
"""Whole texts (and line lists) a ``CachedEncoder`` remembers besides its pieces."""

MAX_CHARS_PER_TOKEN = 8
"""A line longer than this many characters per remaining token is taken as not fitting, untokenized."""

# Safe points to split a text for encoding: between a printable non-space character and "\n". With a
# GPT-2 style byte-level pre-tokenizer no pre-token crosses such a point, so
# encode(a + b) == encode(a) + encode(b) there (tested against the real tokenizer).
_SAFE_BEFORE_NEWLINE = re.compile(r"[!-~\w]")


def _safe_before_newline(text: str) -> bool:
    """Whether a "\\n" right after ``text`` is a safe point to split at."""
    return bool(text) and (" " < text[-1] < "\x7f" or _SAFE_BEFORE_NEWLINE.match(text[-1]) is not None)


def split_at_safe_points(text: str) -> list[str]:
    """``text`` cut before each "\\n" that follows a printable non-space character (``"".join`` undoes it)."""
    lines = text.split("\n")
    pieces = [lines[0]]
    for line in lines[1:]:
        if _safe_before_newline(pieces[-1]):
            pieces.append("\n" + line)
        else:
            pieces[-1] += "\n" + line
    return pieces


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


MAX_CACHED_PIECE = 4096
"""Longer pieces (a minified line, a probe of ``_fit_tail``) are tokenized each time, not cached."""


class _Recent:
    """The last ``WHOLE_TEXTS`` answers for keys of line lists, found by ``==``: lines unchanged since (the
    same string objects) cost a pointer comparison each. A key is kept: pass lists nothing modifies
    (slices)."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, Any]] = []

    def get(self, key: Any, compute: Callable[[], T]) -> T:
        for known, value in self._items:
            if known == key:
                return value
        value = compute()
        self._items = [(key, value), *self._items[: WHOLE_TEXTS - 1]]
        return value

    def clear(self) -> None:
        self._items.clear()


class CachedEncoder:
    """``encode`` with a bounded cache of line-sized pieces, shared by all documents of one tokenizer.

    ``encoder(text)`` equals ``encode(text)``: the text is cut at safe points and each piece's ids are
    cached, so an unchanged line costs a dict lookup instead of a tokenizer call. The last few whole
    texts, joined line lists and line counts are remembered too: while the user types on one line, the
    window's other lines (the same string objects) cost one pointer comparison each.
    """

    def __init__(
        self, encode: Callable[[str], list[int]], max_entries: int = 100_000, max_chars: int = 4_000_000
    ):
        self._encode = encode
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._chars = 0  # of the cached pieces
        self._pieces: dict[str, list[int]] = {}
        self._texts: dict[str, list[int]] = {}
        self._counts = _Recent()
        self._joins = _Recent()
        self._longest = _Recent()

    def _piece(self, piece: str) -> list[int]:
        ids = self._pieces.get(piece)
        if ids is None:
            # a lone surrogate (a client's broken "\\ud83d" escape) cannot be tokenized: U+FFFD instead
            ids = self._encode(piece if piece.isascii() else _LONE_SURROGATE.sub("\ufffd", piece))
            if len(piece) > MAX_CACHED_PIECE:
                return ids  # a minified line: one per keystroke, never seen again
            if len(self._pieces) >= self._max_entries or self._chars + len(piece) > self._max_chars:
                for key in list(self._pieces)[: max(1, len(self._pieces) // 4)]:  # drop the oldest quarter
                    self._chars -= len(key)
                    del self._pieces[key]
            self._pieces[piece] = ids
            self._chars += len(piece)
        return ids

    def _ids_of(self, pieces: list[str]) -> list[list[int]]:
        """Each piece's ids: one C-level pass of dict lookups, the tokenizer only for new pieces."""
        get = self._pieces.get
        found = [get(piece) for piece in pieces]
        if None in found:
            found = [ids if ids is not None else self._piece(p) for ids, p in zip(found, pieces, strict=True)]
        return found  # type: ignore[return-value]

    def _text_ids(self, text: str) -> list[int]:
        """``encode(text)``, remembered for the last few texts (shared: do not modify)."""
        ids = self._texts.get(text)
        if ids is None:
            ids = list(chain.from_iterable(self._ids_of(split_at_safe_points(text))))
            if len(self._texts) >= WHOLE_TEXTS:
                del self._texts[next(iter(self._texts))]
            self._texts[text] = ids
        return ids

    def __call__(self, text: str) -> list[int]:
        return list(self._text_ids(text)) if text else []

    def joined(self, lines: list[str], end: str = "") -> tuple[str, list[int]]:
        """``text = "\\n".join(lines) + end`` and ``encode(text)`` (shared: do not modify). The last few
        answers are remembered: lines unchanged since (the same string objects) are neither joined nor
        hashed again, a pointer comparison each. ``lines`` is kept: pass a list that nothing modifies
        (a slice), as for :meth:`count_lines` and :meth:`longest`."""

        def join() -> tuple[str, list[int]]:
            text = "\n".join(lines) + end
            return text, self._text_ids(text) if text else []

        return self._joins.get((end, lines), join)

    def join(self, lines: list[str], last: str) -> tuple[str, list[int]]:
        """``text = "\\n".join([*lines, last])`` and ``encode(text)``, for a ``last`` without line breaks;
        ``lines`` unchanged from call to call (the window above the cursor) cost a pointer comparison each."""
        if not lines:
            return last, self(last)
        head, head_ids = self.joined(lines)
        text = f"{head}\n{last}"
        if not _safe_before_newline(head):
            return text, self(text)
        return text, [*head_ids, *self._piece("\n" + last)]

    def count_line(self, line: str) -> int:
        """Tokens that ``line`` adds after a line break (its "\\n" joined to it, as in context)."""
        return len(self._piece("\n" + line))

    def count_lines(self, lines: list[str]) -> int:
        """``sum(count_line(line) for line in lines)``; the last few answers are remembered."""
        return self._counts.get(lines, lambda: sum(map(len, self._ids_of(["\n" + line for line in lines]))))

    def longest(self, lines: list[str]) -> int:
        """The length of the longest of ``lines`` (0 for none); the last few answers are remembered."""
        return self._longest.get(lines, lambda: max(map(len, lines), default=0))

    def clear(self) -> None:
        self._chars = 0
        self._pieces.clear()
        self._texts.clear()
        self._counts.clear()
        self._joins.clear()
        self._longest.clear()


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    mode: Mode
    prefix: str
    suffix: str
    window: Window
    """Keep it per document and pass it back as ``window_hint`` (KV-cache reuse)."""
    prefix_cut: int
    """Index in the cursor line where the prefix ends: the cursor, or 0 in column-0 multi-line mode."""

    @property
    def text(self) -> str:
        """The exact prompt with the special tokens written out."""
        return f"<fim_suffix>{self.suffix}<fim_prefix>{self.prefix}<fim_middle>"


def completion_mode(
    line_text: str, index: int, multiline: str = "auto", mid_line: str = "auto"
) -> Mode | None:
    """Which completion to run at ``index`` in ``line_text``; None means no completion here.

    Mid-line (non-whitespace right of the cursor): ``mid_line`` "never" -> None, "auto" -> only when
    that text is ``CLOSING_CHARS`` (brackets, quotes, punctuation) and whitespace, "always" -> allowed.
    Then ``multiline``: "always" -> "multi", "never" -> "single", "auto" -> "multi" when only
    whitespace is left of the cursor and the cursor is not mid-line, else "single".
    """
    index = max(0, min(index, len(line_text)))
    right = line_text[index:]
    mid = bool(right.strip())
    if mid:
        if mid_line == "never":
            return None
        if mid_line == "auto" and not all(ch in CLOSING_CHARS or ch.isspace() for ch in right):
            return None
    if multiline == "always":
        return "multi"
    if multiline == "never":
        return "single"
    return "multi" if not mid and not line_text[:index].strip() else "single"


def prefix_cut(line_text: str, index: int, mode: Mode) -> int:
    """Where the prompt's prefix ends in the cursor line: column 0 in multi-line mode on a line with only
    whitespace (Refact's clients send column 0 there: the model writes whole lines, indentation
    included, and the suggestion replaces the indentation typed), else the cursor. A line with text
    right of the cursor keeps the cursor: whole lines written before that text would be glued to it."""
    return 0 if mode == "multi" and not line_text.strip() else index


def _resolve_mode(mode_setting: str, line_text: str, index: int) -> Mode:
    if mode_setting in ("single", "multi"):
        return mode_setting  # type: ignore[return-value]
    if mode_setting in ("auto", "always", "never"):
        mode = completion_mode(line_text, index, mode_setting, "always")
        assert mode is not None
        return mode
    raise ValueError(f"mode must be single|multi or a multiline setting, not {mode_setting!r}")


def _fit_tail(text: str, max_tokens: int, encode: Callable[[str], list[int]]) -> str:
    """The longest tail of ``text`` that encodes to at most ``max_tokens`` tokens."""
    if max_tokens <= 0:
        return ""
    text = text[-max_tokens * MAX_CHARS_PER_TOKEN :]
    if len(encode(text)) <= max_tokens:
        return text
    lo, hi = 0, len(text)  # keep text[hi:]... search the smallest cut that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if len(encode(text[mid:])) <= max_tokens:
            hi = mid
        else:
            lo = mid + 1
    return text[lo:]


def _fit_head(text: str, max_tokens: int, encode: Callable[[str], list[int]]) -> str:
    """The longest head of ``text`` that encodes to at most ``max_tokens`` tokens."""
    if max_tokens <= 0:
        return ""
    text = text[: max_tokens * MAX_CHARS_PER_TOKEN]
    if len(encode(text)) <= max_tokens:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(text[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


class _Window:
    """Lines chosen around the cursor and the strings they make."""

    def __init__(self, doc_lines: Sequence[str], line: int, left: str, right: str, mode: Mode):
        self.doc_lines = doc_lines
        self.line = line
        self.left = left  # cursor-line text that ends the prefix
        self.right = right  # cursor-line text that starts the suffix (multi-line mode only)
        self.mode = mode
        self.first = line
        self.last = line

    def prefix(self, encoder: CachedEncoder) -> tuple[str, list[int]]:
        """The lines above the cursor line and its left part: the text and its ids."""
        return encoder.join(self.doc_lines[self.first : self.line], self.left)

    def suffix(self, encoder: CachedEncoder) -> tuple[str, list[int]]:
        """The cursor line's right part (multi-line mode) and the lines below it: the text and its ids
        (shared: do not modify)."""
        below = self.doc_lines[self.line + 1 : self.last + 1]
        parts = [self.right, *below] if self.mode == "multi" else below
        # each document line but the last is followed by a line break
        return encoder.joined(parts, "\n" if parts and self.last < len(self.doc_lines) - 1 else "")


def build_prompt(
    doc_lines: Sequence[str],
    line: int,
    index: int,
    encode: Callable[[str], list[int]],
    budget_tokens: int,
    mode_setting: str,
    window_hint: Window | None = None,
) -> Prompt:
    """The Refact SPM prompt for the cursor at (``line``, ``index``) (a Python index in the line).

    ``mode_setting`` is the mode from ``completion_mode`` ("single"/"multi"), or a ``multiline`` setting
    value resolved here with mid-line allowed. ``budget_tokens`` counts all prompt ids, the three
    special tokens included (context tokens minus max new tokens). ``window_hint`` is the previous
    ``Prompt.window`` for this document: while the cursor stays inside it, it still fits and leaves
    context on both sides, its boundaries are kept so the suffix (first in SPM) stays identical. A
    fresh window fills the budget minus 1/16 headroom, so that typing does not push it out at once.
    """
    if not doc_lines:
        doc_lines = [""]
    line = max(0, min(line, len(doc_lines) - 1))
    line_text = doc_lines[line]
    index = max(0, min(index, len(line_text)))
    mode = _resolve_mode(mode_setting, line_text, index)
    encoder = encode if isinstance(encode, CachedEncoder) else CachedEncoder(encode)
    budget = budget_tokens - SPECIAL_TOKENS
    n = len(doc_lines)

    # cursor line: single-line mode leaves the rest of the line out; column-0 multi-line mode puts the
    # whole (blank) line in the suffix
    cut = prefix_cut(line_text, index, mode)
    left = line_text[:cut]
    right = line_text[cut:] if mode == "multi" else ""
    cap = max(budget, 0) * MAX_CHARS_PER_TOKEN  # never tokenize more of a huge line than could fit
    left, right = left[len(left) - cap :] if len(left) > cap else left, right[:cap]
    # counted as after a line break, as the prefix's last piece mostly is: one tokenizer call per keystroke
    left_tokens = encoder.count_line(left) if left else 0
    # in multi-line mode a line break follows the right part in the suffix (a line below the cursor line)
    end = "\n" if mode == "multi" and line < n - 1 else ""
    right_tokens = len(encoder(right + end))
    if left_tokens + right_tokens > budget:  # a huge cursor line: keep its parts next to the cursor
        right_share = min(right_tokens, budget // 4)
        left = _fit_tail(left, budget - right_share, encoder)
        right = _fit_head(right, budget - len(encoder(left)), lambda text: encoder(text + end))
        left_tokens, right_tokens = len(encoder(left)), len(encoder(right + end))
    used = left_tokens + right_tokens

    win = _Window(doc_lines, line, left, right, mode)
    counts: dict[int, int] = {}

    def count(i: int, remaining: int) -> int | None:
        """Tokens of line ``i``, or None when it certainly does not fit in ``remaining``."""
        if i not in counts:
            text = doc_lines[i]
            if len(text) > max(remaining, 0) * MAX_CHARS_PER_TOKEN:
                return None
            counts[i] = encoder.count_line(text)
        return counts[i]

    hinted = _hinted_window(window_hint, doc_lines, line, used, budget, encoder)
    if hinted is not None:
        win.first, win.last = hinted
    else:
        _grow_alternately(win, n, used, budget - budget // WINDOW_HEADROOM, count)

    while True:
        (prefix, prefix_ids), (suffix, suffix_ids) = win.prefix(encoder), win.suffix(encoder)
        total = len(prefix_ids) + len(suffix_ids)
        if total <= budget or (win.first == line and win.last == line):
            break
        # the BPE of the joined text differs from the sum of the lines: drop the outermost line
        if line - win.first >= win.last - line:
            win.first += 1
        else:
            win.last -= 1

    ids = [FIM_SUFFIX_ID, *suffix_ids, FIM_PREFIX_ID, *prefix_ids, FIM_MIDDLE_ID]
    return Prompt(ids, mode, prefix, suffix, (win.first, win.last), cut)


def _grow_alternately(
    win: _Window, n: int, used: int, budget: int, count: Callable[[int, int], int | None]
) -> None:
    """Add whole lines above, then below, alternately; a side stops at its first line that does not fit
    (a window holds no gaps), and the other side goes on into the budget left."""
    above, below = win.line - 1, win.line + 1
    up, down = above >= 0, below < n
    while up or down:
        if up:
            tokens = count(above, budget - used)
            if tokens is None or used + tokens > budget:
                up = False
            else:
                used += tokens
                win.first = above
                above -= 1
                up = above >= 0
        if down:
            tokens = count(below, budget - used)
            if tokens is None or used + tokens > budget:
                down = False
            else:
                used += tokens
                win.last = below
                below += 1
                down = below < n


def _hinted_window(
    hint: Window | None,
    doc_lines: Sequence[str],
    line: int,
    used: int,
    budget: int,
    encoder: CachedEncoder,
) -> Window | None:
    """The previous window if it still suits the cursor, else None (choose a fresh one)."""
    if hint is None:
        return None
    n = len(doc_lines)
    first, last = hint[0], min(hint[1], n - 1)
    if not 0 <= first <= line <= last:
        return None
    above_lines, below_lines = doc_lines[first:line], doc_lines[line + 1 : last + 1]
    longest = max(encoder.longest(above_lines), encoder.longest(below_lines))
    if longest > max(budget - used, 0) * MAX_CHARS_PER_TOKEN:
        return None  # a line that certainly does not fit
    above, below = encoder.count_lines(above_lines), encoder.count_lines(below_lines)
    total = used + above + below
    if total > budget:
        return None
    margin = budget // 8
    if (first > 0 and above < margin) or (last < n - 1 and below < margin):
        return None  # the cursor came close to an edge that has more lines beyond it
    if (first > 0 or last < n - 1) and total < budget * 3 // 4:
        return None  # the document changed and a fresh window would hold much more
    return first, last


def shift_window(window: Window, start: int, end: int, delta: int) -> Window:
    """``window`` after an edit replaced lines ``start..end`` and added ``delta`` lines: the same lines
    of text (those after the edit moved by ``delta``), so the prompt's suffix survives a new line."""

    def moved(i: int, inside: int) -> int:
        return i if i < start else i + delta if i > end else inside

    first = moved(window[0], start)
    return first, max(first, moved(window[1], end + delta))


def shorter_prompt_ids(ids: Sequence[int]) -> list[int]:
    """The same FIM prompt with half the suffix and half the prefix, keeping the tokens nearest the cursor
    (the retry after the device ran out of memory)."""
    ids = list(ids)
    split = ids.index(FIM_PREFIX_ID)
    suffix, prefix = ids[1:split], ids[split + 1 : -1]
    kept_suffix, kept_prefix = suffix[: len(suffix) // 2], prefix[len(prefix) // 2 :]
    return [FIM_SUFFIX_ID, *kept_suffix, FIM_PREFIX_ID, *kept_prefix, FIM_MIDDLE_ID]
