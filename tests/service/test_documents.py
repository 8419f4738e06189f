"""Document sync: full and incremental changes, clamping, line endings."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refact_lsp.service.documents import Document, DocumentStore, UnknownDocument, split_lines
from refact_lsp.service.positions import lsp_character

ENCODINGS = ["utf-8", "utf-16", "utf-32"]


def reference_apply(text: str, range_, new: str, encoding: str) -> str:
    """Apply an LSP change to a flat string, the slow obvious way."""
    starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
    lines = split_lines(text)[0]

    def offset(pos):
        line, character = pos
        if line >= len(lines):
            return len(text)
        if line < 0:
            return 0
        units = 0
        for i, ch in enumerate(lines[line]):
            units += lsp_character(ch, 1, encoding)
            if units > character:
                return starts[line] + i
        return starts[line] + len(lines[line])

    a, b = sorted((offset(range_[0]), offset(range_[1])))
    return text[:a] + new + text[b:]


def test_lines_and_terminators():
    doc = Document("file:///a.py", "python", 1, "a\r\nb\rc\nd")
    assert [doc.line(i) for i in range(doc.line_count)] == ["a", "b", "c", "d"]
    assert doc.text == "a\r\nb\rc\nd"
    assert doc.line(99) == ""
    assert list(doc.lines) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("text", "eol"),
    [("", "\n"), ("abc", "\n"), ("a\r\nb\r\nc\n", "\r\n"), ("a\rb\rc", "\r"), ("a\nb\r\n", "\n")],
)
def test_dominant_eol(text, eol):
    assert Document("u", "txt", 0, text).eol == eol


def test_eol_follows_edits():
    doc = Document("u", "txt", 0, "a\nb")
    assert doc.apply_change(((1, 1), (1, 1)), "\r\nc\r\nd", "utf-16") == (1, 1, 2)
    assert doc.eol == "\r\n"
    assert doc.apply_change(((0, 0), (3, 0)), "", "utf-16") == (0, 3, -3)
    assert doc.text == "d"
    assert doc.eol == "\n"


def test_incremental_edit_with_astral_and_clamping():
    doc = Document("u", "python", 1, "x = '😀'\nprint(x)\n")
    # utf-16: the emoji is 2 units; insert after it
    doc.apply_change(((0, 7), (0, 7)), "!", "utf-16")
    assert doc.line(0) == "x = '😀!'"
    # past the end of a line clamps to its end, past the end of the document to the document end
    doc.apply_change(((1, 100), (1, 200)), ";", "utf-8")
    assert doc.line(1) == "print(x);"
    doc.apply_change(((50, 0), (60, 3)), "# end", "utf-32")
    assert doc.text == "x = '😀!'\nprint(x);\n# end"


def test_reversed_range_is_swapped():
    doc = Document("u", "txt", 1, "hello world")
    doc.apply_change(((0, 11), (0, 6)), "there", "utf-8")
    assert doc.text == "hello there"


def test_cr_then_lf_merge_into_one_line_break():
    doc = Document("u", "txt", 1, "a\rX\nb")
    shift = doc.apply_change(((1, 0), (1, 1)), "", "utf-16")  # delete X: "\r" and "\n" become "\r\n"
    assert shift == (1, 1, -1)
    assert doc.text == "a\r\nb"
    assert [doc.line(i) for i in range(doc.line_count)] == ["a", "b"]
    assert doc.eol == "\r\n"


def test_full_sync_replaces_everything():
    doc = Document("u", "txt", 1, "one\ntwo")
    doc.apply_change(None, "three\r\n", "utf-16")
    assert doc.line_count == 2
    assert doc.eol == "\r\n"


def test_clamp_returns_new_values_and_rounds_inside_characters():
    doc = Document("u", "txt", 1, "a😀b\nlast")
    assert doc.clamp(0, 2, "utf-16") == (0, 1)
    assert doc.clamp(0, 99, "utf-8") == (0, 3)
    assert doc.clamp(7, 0, "utf-8") == (1, 4)
    assert doc.clamp(-1, 5, "utf-8") == (0, 0)


def test_edit_cost_does_not_depend_on_document_size():
    """An edit touches only the edited lines: the other line objects are the very same objects."""
    text = "\n".join(f"line {i} = {i * 7}" for i in range(10_000))
    doc = Document("u", "python", 1, text)
    before = doc.lines[9_000]
    doc.apply_change(((5_000, 4), (5_000, 4)), "X", "utf-8")
    assert doc.lines[9_000] is before
    assert doc.line(5_000) == "lineX 5000 = 35000"
    assert doc._text is None  # the whole text is only joined on demand


def test_store_open_change_close():
    store = DocumentStore()
    store.open("file:///a", "python", 1, "abc")
    shifts = store.change("file:///a", 2, [(((0, 3), (0, 3)), "d"), (None, "new")], "utf-8")
    assert shifts == [(0, 0, 0), None]
    doc = store.get("file:///a")
    assert doc.version == 2
    assert doc.text == "new"
    assert "file:///a" in store
    store.close("file:///a")
    store.close("file:///a")  # closing twice is harmless
    with pytest.raises(UnknownDocument, match="document is not open: file:///a") as info:
        store.get("file:///a")
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        store.change("file:///a", 3, [(None, "x")], "utf-8")


ALPHABET = "ab é😀\r\n\t"
piece = st.text(alphabet=st.sampled_from(ALPHABET), max_size=8)
position = st.tuples(st.integers(-1, 6), st.integers(-1, 12))
edit = st.tuples(st.one_of(st.none(), st.tuples(position, position)), piece)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(ALPHABET), max_size=30),
    st.lists(edit, max_size=12),
    st.sampled_from(ENCODINGS),
)
def test_random_edits_match_flat_reference(initial, edits, encoding):
    doc = Document("u", "txt", 0, initial)
    reference = initial
    for range_, new in edits:
        if range_ is None and len(new) % 3:  # full syncs are rarer than incremental edits
            range_ = ((0, 0), (0, 0))
        doc.apply_change(range_, new, encoding)
        reference = new if range_ is None else reference_apply(reference, range_, new, encoding)
        assert doc.text == reference
        lines = split_lines(reference)[0]
        assert list(doc.lines) == lines
        counts = {k: reference.replace("\r\n", "").count(k) for k in "\r\n"}
        counts["\r\n"] = reference.count("\r\n")
        best = max(("\n", "\r\n", "\r"), key=lambda k: counts[k])
        assert doc.eol == best
