"""The document as if a suggestion were accepted (a view over the real lines)."""

from __future__ import annotations

import pytest

from refact_lsp.service.speculative import SplicedLines, accept, indent_unit, next_line_indent

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


JS = """function f(a) {
  if (a) {
    return 1;
  }
  return 2;
}"""
PY = "class A:\n    def f(self):\n        return 1\n\n    x = 2"
GO = "func f() {\n\tif x {\n\t\treturn\n\t}\n}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [(JS, "  "), (PY, "    "), (GO, "\t"), ("x = 1\ny = 2", "    "), ("", "    ")],
)
def test_indent_unit_is_read_from_the_neighbouring_lines(text: str, expected: str) -> None:
    lines = text.split("\n")
    assert indent_unit(lines, len(lines) // 2) == expected


def test_enter_after_an_opener_indents_by_the_documents_unit() -> None:
    """A two-space file gets two more spaces after ``{`` (the Enter speculation's guess must match what
    the editor inserts, or its answer is never used); a tab-indented line keeps tabs."""
    lines = JS.split("\n")
    assert next_line_indent("  if (b) {", "javascript", indent_unit(lines, 1)) == "    "
    assert next_line_indent("\tif x {", "go", "  ") == "\t\t"
    assert next_line_indent("    return x", "python", "  ") == "  "
