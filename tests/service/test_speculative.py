"""The document as if a suggestion were accepted (a view over the real lines)."""

from __future__ import annotations

import pytest

from refact_lsp.service.speculative import SplicedLines, accept, next_line_indent

LINES = ["def f(x):", "    return ", "", "print(f(1))"]


def test_a_single_line_suggestion_moves_the_cursor_to_its_end() -> None:
    after = accept(LINES, 1, 11, 11, "x + 1")
    assert list(after.lines) == ["def f(x):", "    return x + 1", "", "print(f(1))"]
    assert (after.line, after.index, after.line_text) == (1, 16, "    return x + 1")


def test_a_multi_line_suggestion_splices_lines_and_keeps_the_rest_of_the_line() -> None:
    lines = ["foo(", "    a)", "end"]
    after = accept(lines, 1, 0, 5, "    a,\n    b")  # replaces "    a", ")" stays after the cursor
    assert list(after.lines) == ["foo(", "    a,", "    b)", "end"]
    assert (after.line, after.index, after.line_text) == (2, 5, "    b)")
    assert after.lines[-1] == "end" and after.lines[1:3] == ["    a,", "    b)"]
    with pytest.raises(IndexError):
        after.lines[4]


def test_the_view_reads_through_to_the_document() -> None:
    lines = list(LINES)
    view = SplicedLines(lines, 1, ["a", "b"])
    lines[3] = "changed"
    assert len(view) == 5 and view[4] == "changed"


@pytest.mark.parametrize(
    ("line", "language", "expected"),
    [
        ("    x = 1", "python", "    "),
        ("    def f(x):", "python", "        "),
        ("\tif x {", "go", "\t\t"),
        ("    call(", "python", "        "),
        ("        return x", "python", "    "),
        ("    return x", "rust", "    "),  # only Python dedents after return
        ("pass", "python", ""),
        ("x = 1", "python", ""),
    ],
)
def test_next_line_indent(line: str, language: str, expected: str) -> None:
    assert next_line_indent(line, language) == expected
