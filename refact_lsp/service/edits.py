"""Where a suggestion goes: the inline edit (and completion item) for a post-processed completion.

The range stays on the cursor line, in Python str indices (convert with ``Edit.lsp_range``):
- auto-closed characters right of the cursor that the completion types again are covered by the range
  end, so nothing is doubled (``foo(|)`` + ``a, b)`` -> ``foo(a, b)``), and so is the rest of the line
  when the completion ends with it (``def f(|):`` + ``x):`` -> ``def f(x):``);
- auto-closed characters are read as the contexts the cursor is in, so that the closers of an f-string's
  or template literal's interpolation count (``f"{|}"`` + ``name}"`` -> ``f"{name}"``), and quotes and
  brackets in the completion's line comments do not (``#``, and ``//`` where it is no operator);
- in column-0 multi-line mode (a blank cursor line) the model wrote whole lines, indentation included, so
  the range covers the whole blank line: the indentation already typed, and any whitespace right of the
  cursor (left there, it would trail the suggestion's last line). VS Code shows an inline item
  only when its insert text starts with the document text between the range start and the cursor; a
  model line indented at least as deep as what was typed satisfies that.
"""

from __future__ import annotations

from dataclasses import dataclass

from refact_lsp.service.positions import lsp_character
from refact_lsp.service.prompt import Mode, prefix_cut

AUTO_CLOSED = ")]}\"'`;"
_OPENERS = {")": "(", "]": "[", "}": "{"}


@dataclass(frozen=True)
class Edit:
    """Replace ``line[start_index:end_index]`` with ``new_text`` (line endings already the document's)."""

    start_index: int
    end_index: int
    new_text: str
    line: int

    def lsp_range(self, line_text: str, encoding: str) -> tuple[tuple[int, int], tuple[int, int]]:
        """((line, start character), (line, end character)) in the negotiated position encoding."""
        return (
            (self.line, lsp_character(line_text, self.start_index, encoding)),
            (self.line, lsp_character(line_text, self.end_index, encoding)),
        )


@dataclass(frozen=True)
class CompletionItemEdit:
    """A ``textDocument/completion`` item offering the same suggestion."""

    label: str
    """The first non-blank line of the inserted text, without its indentation."""
    filter_text: str
    """The first line of the inserted text (it starts with what is typed between range start and cursor)."""
    edit: Edit


QUOTES = "\"'`"
SLASH_OPERATOR_LANGUAGES = frozenset({"python", "perl", "lua"})
"""Languages where `` // `` is an operator (floor division, defined-or), not a line comment."""


def _line_comments(language_id: str) -> tuple[str, ...]:
    """What starts a line comment in the completion's code (with a space on each side, as written)."""
    return (" # ",) if language_id in SLASH_OPERATOR_LANGUAGES else (" # ", " // ")


def _closing_events(completion: str, run: str, language_id: str = "") -> str | None:
    """The characters of ``completion`` that close what was opened before it, in order.

    ``run`` is the auto-closed text right of the cursor: its brackets and quotes are the contexts the
    cursor is in, innermost first (``}")`` in ``print(f"{|}")``: code in an interpolation, in a string, in
    a call). A closing bracket without its opener in the completion, the quote that ends a string the
    cursor is in, and a ``;`` outside the brackets and strings the completion opens are such events. In
    a string begun before the cursor the completion's characters are text up to its quote; escaped
    characters, the completion's own strings and its line comments do not count. None when the
    completion ends inside a string it opened (the characters right of the cursor then close that one)."""
    events: list[str] = []
    outer = [ch for ch in run if ch in QUOTES or ch in _OPENERS]  # begun before the cursor, innermost first
    stack: list[str] = []  # brackets the completion opened
    string: str | None = None  # a string the completion opened
    escaped = False
    comments = _line_comments(language_id)
    for i, ch in enumerate(completion):
        in_outer = string is None and not stack and bool(outer) and outer[0] in QUOTES
        if string is not None or in_outer:
            quote = string if string is not None else outer[0]
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or (ch == "\n" and quote != "`"):  # (such a string ends with its line)
                if string is None:
                    if ch == quote:
                        events.append(ch)
                    outer.pop(0)
                string = None
        elif ch in QUOTES:
            string = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in _OPENERS:
            if stack and stack[-1] == _OPENERS[ch]:
                stack.pop()
            elif not stack:
                events.append(ch)
                if outer and outer[0] == ch:
                    outer.pop(0)
        elif ch == ";" and not stack:
            events.append(ch)
        elif i and any(completion.startswith(comment, i - 1) for comment in comments if comment[1] == ch):
            break  # a comment (`x)  # don't`): its quotes and brackets are prose
    return None if string is not None else "".join(events)


def _auto_closed_run(right: str) -> int:
    """How many characters at the start of ``right`` are auto-closed ones (``AUTO_CLOSED``)."""
    return len(right) - len(right.lstrip(AUTO_CLOSED))


def covered_closers(completion: str, right: str, language_id: str = "") -> int:
    """How many auto-closed characters at the start of ``right`` the completion types again: they are
    the first of its closing characters (``_closing_events``), at its end or before more text
    (``def f(|)`` + ``x):``: single-line prompts leave the rest of the line out, so the model writes
    the closer itself and goes on). A ``;`` or a bracket inside what the completion opens is not one.
    """
    run = _auto_closed_run(right)
    if not run:
        return 0
    events = _closing_events(completion, right[:run], language_id)
    if events is None:
        return 0
    for k in range(run, 0, -1):
        tail = right[:k]
        if "".join(ch for ch in events if ch in tail)[:k] == tail:
            return k
    return 0


def covered_end(completion: str, right: str, language_id: str = "") -> int:
    """How many characters of ``right`` (the cursor line right of the cursor) the edit replaces: the
    ``covered_closers``, or the whole non-blank rest of the line when the completion covers all the
    auto-closed characters and ends with exactly that rest (``def f(|):`` + ``x):``: a single-line
    prompt leaves the ``:`` out, so the model wrote the line's end itself). ``print(|)`` + ``f(x)``
    covers nothing; ``print(len(|))`` + ``items())`` covers one ``)``, not both. The rest is covered too when
    the completion types it where its first closing character is and goes on after it
    (``for x in range(|):`` + ``10): print(x)``: a single-line prompt leaves the ``:`` out, so the model
    wrote it itself, and the line's own ``:`` would be left behind the suggestion).
    """
    covered = covered_closers(completion, right, language_id)
    run = _auto_closed_run(right)
    rest = right.rstrip()
    if covered == run and len(rest) > covered > 0:
        if completion.rstrip().endswith(rest):
            return len(rest)
        at = completion.find(rest)
        while at >= 0:
            if _closing_events(completion[:at], right[:run], language_id) == "":
                return len(rest)  # the rest's first closer is the completion's first closing character
            at = completion.find(rest, at + 1)
    return covered


def line_edit(
    line_text: str,
    line: int,
    index: int,
    completion: str,
    mode: Mode,
    eol: str = "\n",
    language_id: str = "",
) -> Edit | None:
    """The edit for ``completion`` at ``index`` in ``line_text`` (which starts where the prompt's prefix
    ended, :func:`prefix_cut`); None for an empty completion."""
    if not completion:
        return None
    index = max(0, min(index, len(line_text)))
    start = prefix_cut(line_text, index, mode)
    if start == 0 and mode == "multi" and not line_text.strip():
        end = len(line_text)  # column-0 multi-line: the model wrote whole lines, the blank line goes whole
    else:
        end = index + covered_end(completion, line_text[index:], language_id)
    new_text = completion.replace("\n", eol) if eol != "\n" else completion
    return Edit(start, end, new_text, line)


_LISP_SYMBOL_CHARS = "-+*/<>=!?%&~^:"
SYMBOL_CHARS: dict[str, str] = {
    **dict.fromkeys(("css", "scss", "sass", "less", "less-css"), "-"),
    **dict.fromkeys(
        (
            *("lisp", "commonlisp", "emacs-lisp", "elisp", "lisp-data", "lisp-interaction"),
            *("scheme", "racket", "clojure", "clojurescript", "clojurec", "fennel", "janet", "hy"),
        ),
        _LISP_SYMBOL_CHARS,
    ),
}
"""Characters besides letters, digits, ``_`` and ``$`` that names contain, by LSP language id: the
symbol at point that editors filter completion items by (Emacs' syntax tables, Vim's ``iskeyword``). The
ids include what Emacs sends for a mode it serves through the catch-all (``less-css-mode``: ``less-css``)."""


def word_start(line_text: str, index: int, symbol_chars: str = "") -> int:
    """Where the word (letters, digits, ``_``, ``$`` and ``symbol_chars``) that ends at ``index`` of
    ``line_text`` starts."""
    start = max(0, min(index, len(line_text)))
    chars = "_$" + symbol_chars
    while start and (line_text[start - 1].isalnum() or line_text[start - 1] in chars):
        start -= 1
    return start


def completion_item_edit(
    line_text: str, edit: Edit, eol: str = "\n", language_id: str = ""
) -> CompletionItemEdit:
    """The completion item of an inline ``edit`` of ``line_text``: the same edit, its range widened to the
    start of the word that ends where it starts, that word written in front of its new text. Clients
    filter completion items by the word at the cursor (eglot's completion-at-point, and company or corfu
    through it, by the symbol at point: an item must start with it to be inserted); an item whose range
    starts at the cursor in the middle of a word would be filtered out. What a word is depends on the
    language (``SYMBOL_CHARS``): ``background-co`` in CSS, ``my-fu`` in Lisp."""
    start = word_start(line_text, edit.start_index, SYMBOL_CHARS.get(language_id, ""))
    new_text = line_text[start : edit.start_index] + edit.new_text
    lines = new_text.split(eol)
    label = next((text.strip() for text in lines if text.strip()), new_text.strip())
    return CompletionItemEdit(label, lines[0], Edit(start, edit.end_index, new_text, edit.line))
