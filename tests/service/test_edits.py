"""Inline edits: auto-closed characters, column-0 multi-line placement, line endings, completion items."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refact_lsp.service.documents import Document
from refact_lsp.service.edits import Edit, completion_item_edit, covered_closers, line_edit, word_start


def apply(line_text: str, edit: Edit) -> str:
    return line_text[: edit.start_index] + edit.new_text + line_text[edit.end_index :]


@pytest.mark.parametrize(
    ("line_text", "index", "completion", "result"),
    [
        ("foo()", 4, "a, b)", "foo(a, b)"),  # the ")" typed again covers the auto-closed one
        ("foo()", 4, "a, b", "foo(a, b)"),  # not typed again: kept
        ("print()", 6, "f(x)", "print(f(x))"),  # balanced inside the completion: not covered
        ("print()", 6, "f(x))", "print(f(x))"),
        ("x = [];", 5, "1, 2];", "x = [1, 2];"),
        ("x = [];", 5, "1, 2]", "x = [1, 2];"),
        ('s = ""', 5, 'hello"', 's = "hello"'),
        ('s = ""', 5, "hello", 's = "hello"'),
        ('s = ""', 5, 'a" + "b"', 's = "a" + "b"'),  # odd quotes: the last one closes the string
        ("f(g())", 4, "x))", "f(g(x))"),
        ("f(g())", 4, "x)", "f(g(x))"),
        ("call(})", 5, "a}", "call(a})"),  # "}" without an unmatched "{" before: not covered
        ("f()", 2, 'a, ")")', 'f(a, ")")'),  # a ")" inside a string literal is not a closer
        ("x = ", 4, "1", "x = 1"),
        ("if x {}", 6, "return 1; }", "if x {return 1; }"),
        # the completion types the closer and goes on (single-line prompts leave the ")" out)
        ("def f()", 6, "x):", "def f(x):"),
        ("if ()", 4, "x) {", "if (x) {"),
        ('foo("")', 5, 'a", 1)', 'foo("a", 1)'),
        ("f(g())", 4, "x), y)", "f(g(x), y)"),
        ("f()", 2, "a) + g(b)", "f(a) + g(b)"),
        ("f()", 2, "g(a) + 1", "f(g(a) + 1)"),  # every ")" of it is matched: the auto-closed one stays
        # a ";" or a quote inside what the completion opens is not the one right of the cursor
        ("    auto twice = ;", 17, "[]() { return 42; }", "    auto twice = []() { return 42; };"),
        ("  return ;", 9, "new Promise(cb => { wait(); })", "  return new Promise(cb => { wait(); });"),
        ('print("")', 7, 'He said \\"hi', 'print("He said \\"hi")'),
        ('print("")', 7, 'a", "b', 'print("a", "b")'),  # ends inside its own string: the '"' closes it
        ('printf("");', 8, '%d\\n", x', 'printf("%d\\n", x);'),
        ('foo("")', 5, '(", b)', 'foo("(", b)'),  # the "(" is inside the string the cursor is in
        ("x = [];", 5, "1, 2];", "x = [1, 2];"),
        ("foo()", 4, "x)  # don't", "foo(x)  # don't"),  # the comment's apostrophe opens no string
        # the cursor in code inside a string (an f-string's or a template literal's interpolation): its
        # closers close the "{", then the quote ends the string, then the call
        ('print(f"{}")', 9, 'name}")', 'print(f"{name}")'),
        ('print(f"{}")', 9, "name}", 'print(f"{name}")'),
        ('print(f"{}")', 9, "name", 'print(f"{name}")'),
        ('x = (f"{}")', 8, "a}", 'x = (f"{a}")'),
        ("console.log(`${}`);", 15, "name}`);", "console.log(`${name}`);"),
        ('print(f"{d[""]}")', 12, 'k"]}")', 'print(f"{d["k"]}")'),
        # fewer closers typed than are open: the rest of the line is not taken as typed again
        ("print(len())", 10, "items())", "print(len(items()))"),
        ("foo(bar())", 8, "baz())", "foo(bar(baz()))"),
    ],
)
def test_single_line_edits(line_text, index, completion, result):
    edit = line_edit(line_text, 3, index, completion, "single")
    assert edit.line == 3
    assert edit.start_index == index
    assert apply(line_text, edit) == result


@pytest.mark.parametrize(
    ("line_text", "index", "completion", "result"),
    [
        # the model wrote the closer and the rest of the line (a single-line prompt leaves it out)
        ("def area():", 9, "w, h):", "def area(w, h):"),
        ("    if check():", 13, "x):", "    if check(x):"),
        ("    return foo(),", 15, "a, b),", "    return foo(a, b),"),
        ("x = f().y  ", 6, "a).y", "x = f(a).y  "),  # trailing blanks are not the line's rest
        # no closer covered, or the completion does not end with the whole rest: the rest stays
        ("print()", 6, "f(x)", "print(f(x))"),
        ("print():", 6, "f(x):", "print(f(x):):"),  # its ")" closes its own "(": the ":" is not ours
        ("x = f() + 1", 6, "a)", "x = f(a) + 1"),
        # the model wrote the closer and the rest of the line, then went on: the rest is not left behind
        ("for x in range():", 15, "10): print(x)", "for x in range(10): print(x)"),
        ("if () {", 4, "x) { return; }", "if (x) { return; }"),
        ("f() + g()", 2, "x) + g() + 1", "f(x) + g() + 1"),
        # the rest written only after another closing character, or never: it stays
        ("print():", 6, "f(x): y", "print(f(x): y):"),
        ("x = f() + 1", 6, "a) + 2", "x = f(a) + 2 + 1"),
        ("f():", 2, "'):' + x):", "f('):' + x):"),
    ],
)
def test_the_rest_of_the_line_is_covered_when_the_completion_types_it(line_text, index, completion, result):
    edit = line_edit(line_text, 0, index, completion, "single")
    assert edit.start_index == index
    assert apply(line_text, edit) == result


@pytest.mark.parametrize(
    ("language_id", "completion", "result"),
    [
        ("javascript", "x); // it's fine", "console.log(x); // it's fine"),  # a comment's quote is prose
        ("javascript", "a); // see f()", "console.log(a); // see f()"),
        ("python", "a // 2)", "console.log(a // 2)"),  # floor division, not a comment
        ("python", "a // 2", "console.log(a // 2)"),
    ],
)
def test_line_comments_are_the_languages(language_id, completion, result):
    line_text = "console.log()"
    edit = line_edit(line_text, 0, 12, completion, "single", language_id=language_id)
    assert apply(line_text, edit) == result


def test_column0_multi_line_replaces_typed_indentation():
    doc = Document("u", "python", 1, "def f():\n    \nx = 1\n")
    edit = line_edit(doc.line(1), 1, 4, "    a = 1\n    return a", "multi")
    assert (edit.start_index, edit.end_index) == (0, 4)
    assert edit.new_text.startswith(doc.line(1)[:4])  # VS Code filters on the typed text
    assert apply(doc.line(1), edit) == "    a = 1\n    return a"


@pytest.mark.parametrize("cursor", [0, 4, 8])
def test_column0_multi_line_covers_the_blank_line_right_of_the_cursor(cursor):
    """The cursor inside a whitespace-only line (moved onto it, not at its end): the whitespace right of it
    would otherwise trail the suggestion's last line after accepting it."""
    line_text = " " * 8
    edit = line_edit(line_text, 1, cursor, "    a = 1\n    return a", "multi")
    assert (edit.start_index, edit.end_index) == (0, 8)
    assert apply(line_text, edit) == "    a = 1\n    return a"


def test_column0_with_empty_line():
    edit = line_edit("", 0, 0, "x = 1\ny = 2", "multi")
    assert (edit.start_index, edit.end_index, edit.new_text) == (0, 0, "x = 1\ny = 2")


def test_multi_line_text_uses_the_document_line_ending():
    doc = Document("u", "c", 1, "int f() {\r\n    \r\n}\r\n")
    edit = line_edit(doc.line(1), 1, 4, "    int a = 1;\n    return a;", "multi", doc.eol)
    assert edit.new_text == "    int a = 1;\r\n    return a;"


def test_multi_mode_continuing_a_line_covers_closers():
    edit = line_edit("foo()", 0, 4, "\n    a,\n    b)", "multi")
    assert (edit.start_index, edit.end_index) == (4, 5)


def test_empty_completion_has_no_edit():
    assert line_edit("x", 0, 1, "", "single") is None


def test_lsp_range_converts_indices():
    line_text = "s = '😀'"
    edit = line_edit(line_text, 2, 6, "x'", "single")
    assert apply(line_text, edit) == "s = '😀x'"
    assert edit.lsp_range(line_text, "utf-16") == ((2, 7), (2, 8))
    assert edit.lsp_range(line_text, "utf-8") == ((2, 9), (2, 10))
    assert edit.lsp_range(line_text, "utf-32") == ((2, 6), (2, 7))


def test_covered_closers_only_counts_leading_auto_closed_run():
    assert covered_closers("a)", " )") == 0
    assert covered_closers("a);", ");") == 2
    assert covered_closers("a", "") == 0


CODE = st.text(alphabet="abc xyz+,=.0123456789_", max_size=12)  # no bracket, quote or ";"


@given(before=CODE, opened=st.sampled_from(["", "(", "[", "{", '"', "g("]), after=CODE)
def test_covering_never_takes_what_the_completion_does_not_close(before: str, opened: str, after: str):
    """Closers the completion opens and closes itself, or never types, are not covered; the leading run
    of the auto-closed characters that it does type to close what was open at the cursor is."""
    right = ");"  # `f(|);`
    closes = {"": "", "(": "()", "[": "[]", "{": "{}", '"': '""', "g(": "g()"}[opened]
    assert covered_closers(before + closes + after, right) == 0
    assert covered_closers(before + closes + after + ")", right) == 1
    assert covered_closers(before + closes + ")" + after + ";", right) == 2
    if opened in ("(", "[", "{", '"'):  # it ends inside what it opened: the ")" is not its to close
        assert covered_closers(before + opened + after + ";", right) == 0


def test_completion_item_edit():
    line = "    "
    multi = line_edit(line, 1, 4, "    total = 0\n    return total", "multi")
    item = completion_item_edit(line, multi)
    assert (item.label, item.filter_text, item.edit) == ("total = 0", "    total = 0", multi)
    single = completion_item_edit("foo()", line_edit("foo()", 0, 4, "a, b)", "single"))
    assert (single.label, single.edit.start_index, single.edit.end_index) == ("a, b)", 4, 5)
    crlf = completion_item_edit("  x", line_edit("  x", 0, 3, "s = 1\ny", "multi", "\r\n"), "\r\n")
    assert (crlf.label, crlf.filter_text, crlf.edit.new_text) == ("xs = 1", "xs = 1", "xs = 1\r\ny")


@pytest.mark.parametrize(
    "line, index, start",
    [
        ("x = foo", 7, 4),
        ("x = foo", 5, 4),
        ("print(", 6, 6),
        ("", 0, 0),
        ("  $el_2", 7, 2),
        ("été", 3, 0),
        ('h = "' + "0f" * 50_000 + '"', 100_005, 5),  # a long word: a backwards scan, not a regex search
    ],
)
def test_a_completion_item_starts_at_the_word_before_the_cursor(line, index, start):
    """Clients filter completion items by the word at the cursor: an item starts with it."""
    assert word_start(line, index) == start
    item = completion_item_edit(line, line_edit(line, 0, index, "a + b", "single"))
    assert item.edit.start_index == start
    assert item.edit.new_text == line[start:index] + "a + b" == item.filter_text


@pytest.mark.parametrize(
    "language, line, start",
    [
        ("css", "  background-co", 2),
        ("scss", "  $gap-sm", 2),
        ("emacs-lisp", "  (my-fu", 3),
        ("lisp-data", "((my-fu", 2),  # .dir-locals.el in Emacs
        ("less-css", "  @brand-co", 3),
        ("clojure", "(swap! *state*", 7),
        ("python", "x = a-b", 6),  # a minus sign
        ("css", "a { color: re", 11),
    ],
)
def test_where_names_hold_dashes_the_item_starts_at_the_whole_name(language, line, start):
    """eglot filters by the symbol at point, Neovim by ``iskeyword``: in CSS and Lisp they take in ``-``."""
    item = completion_item_edit(line, line_edit(line, 0, len(line), "x", "single"), "\n", language)
    assert item.edit.start_index == start
    assert item.filter_text == line[start:] + "x"
