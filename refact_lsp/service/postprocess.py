"""Clean a raw model answer into the suggestion shown to the user ("" means no suggestion).

Refact's cuts (``<|endoftext|>``, ``\\n\\n``, and ``\\n`` in single-line mode), trailing whitespace,
suggestions that only repeat the text after the cursor or the next lines, and multi-line suggestions
that run out of the cursor's indentation block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from refact_lsp.service.prompt import Mode

STOP_TEXTS = ("<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<empty_output>")
TAB_WIDTH = 4


@dataclass(frozen=True)
class PostContext:
    """What post-processing needs to know about the cursor."""

    mode: Mode
    line_prefix: str
    """Cursor-line text before the point where the completion is inserted (``""`` when the prompt's
    prefix ended at column 0 in multi-line mode: the model then writes whole lines)."""
    line_suffix: str
    """Cursor-line text right of the cursor."""
    next_lines: Sequence[str] = ()
    """A few document lines below the cursor line."""

    @classmethod
    def from_lines(
        cls,
        lines: Sequence[str],
        line: int,
        index: int,
        mode: Mode,
        prefix_cut: int | None = None,
        lookahead: int = 8,
    ) -> PostContext:
        """Build from document lines; ``prefix_cut`` is ``Prompt.prefix_cut`` (defaults to ``index``)."""
        text = lines[line] if 0 <= line < len(lines) else ""
        cut = index if prefix_cut is None else prefix_cut
        return cls(mode, text[:cut], text[index:], list(lines[line + 1 : line + 1 + lookahead]))


def _indentation(text: str) -> str:
    """The leading spaces and tabs of ``text``."""
    return text[: len(text) - len(text.lstrip(" \t"))]


def _indent(text: str) -> int:
    """Width of the leading whitespace, tabs counted as TAB_WIDTH columns."""
    return len(_indentation(text).expandtabs(TAB_WIDTH))


def _cut(raw: str) -> tuple[str, bool]:
    """``raw`` up to its first stop text or blank line, line ends as ``\\n``; and whether it was cut."""
    text, cut_at_stop = raw, False
    for stop in STOP_TEXTS:
        cut = text.find(stop)
        if cut >= 0:
            text, cut_at_stop = text[:cut], True
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    cut = text.find("\n\n")
    if cut >= 0:
        return text[: cut + 1], True  # with the line break that ends its last line
    return text, cut_at_stop


def postprocess(raw: str, ctx: PostContext) -> str:
    """The suggestion to show for ``raw`` model output, or ``""``."""
    text, _ = _cut(raw)
    if ctx.mode == "single":
        text = text.split("\n", 1)[0]
    lines = [line.rstrip() for line in text.split("\n")]
    if ctx.mode == "multi" and not ctx.line_prefix:
        while lines and not lines[0]:  # whole lines from column 0: start on the cursor line
            lines.pop(0)
    written = len(lines)
    if ctx.mode == "multi":
        lines = _keep_in_block(lines, ctx)
        lines = _drop_repeated_tail(lines, ctx.next_lines)
    while lines and not lines[-1]:
        lines.pop()
    text = "\n".join(lines)
    if not text.strip() or only_repeats(text, ctx):
        return ""
    if ctx.mode == "multi" and len(lines) < written and ctx.line_suffix.strip():
        # the model ended its last line before the text right of the cursor: that text goes on a line of
        # its own, at the cursor line's indentation (``foo(|)`` + "\n  a,\n  b\n" -> "foo(\n  a,\n  b\n)")
        text += "\n" + _indentation(ctx.line_prefix)
    return text


def decided(raw: str, ctx: PostContext) -> bool:
    """Whether the suggestion for ``raw`` is settled: ``postprocess(raw + more, ctx)`` is
    ``postprocess(raw, ctx)`` whatever ``more`` is, so a generation may stop here. So it is after a stop
    text or a blank line, after a line break in single-line mode, and in multi-line mode once a line has
    begun (its first non-blank character is in) that runs out of the cursor's block."""
    text, cut = _cut(raw)
    if cut or (ctx.mode == "single" and "\n" in text):
        return True
    return ctx.mode == "multi" and _block_end(text.split("\n"), ctx) is not None


def _keep_in_block(lines: list[str], ctx: PostContext) -> list[str]:
    """Stop before the first line dedented below the block the completion starts in."""
    end = _block_end(lines, ctx)
    return lines if end is None else lines[:end]


def _block_end(lines: list[str], ctx: PostContext) -> int | None:
    """The first line dedented below the block the completion starts in (None: none is); a line's
    indentation counts from its first non-blank character on, whatever follows it."""
    if ctx.line_prefix:  # the completion continues the cursor line: that line's indentation
        block = _indent(ctx.line_prefix)
        first = 0
    else:  # whole lines from column 0: the first non-blank line sets the block
        first = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
        if first == len(lines):
            return None
        block = _indent(lines[first])
    for i in range(first + 1, len(lines)):
        if lines[i].strip() and _indent(lines[i]) < block:
            return i
    return None


def _drop_repeated_tail(lines: list[str], next_lines: Sequence[str]) -> list[str]:
    """Drop the last lines of a suggestion when they repeat the lines that follow the cursor line (blank
    lines aside, on both sides)."""
    following = [line.strip() for line in next_lines if line.strip()]
    filled = [i for i, line in enumerate(lines) if line.strip()]
    for k in range(min(len(filled) - 1, len(following)), 0, -1):
        if [lines[i].strip() for i in filled[-k:]] == following[:k]:
            return lines[: filled[-k]]
    return lines


def only_repeats(text: str, ctx: PostContext) -> bool:
    """True when the suggestion adds nothing: it is the text after the cursor or the next line(s)."""
    if text.strip() == ctx.line_suffix.strip():
        return True
    completed = [line.strip() for line in (ctx.line_prefix + text).split("\n") if line.strip()]
    following = [line.strip() for line in ctx.next_lines if line.strip()]
    return bool(following) and completed == following[: len(completed)]
