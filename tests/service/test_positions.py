"""Conversions between LSP character offsets and Python indices."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refact_lsp.service.positions import char_index, line_length, lsp_character

LINE = "a😀bé€"  # 1-byte, astral (4 utf-8 bytes, 2 utf-16 units), 1, 2-byte, 3-byte

# (encoding, character, expected index)
CASES = [
    ("utf-32", 0, 0),
    ("utf-32", 2, 2),
    ("utf-32", 99, 5),
    ("utf-16", 1, 1),
    ("utf-16", 2, 1),  # between the surrogate halves: rounds to the character start
    ("utf-16", 3, 2),
    ("utf-16", 4, 3),
    ("utf-16", 5, 4),
    ("utf-16", 6, 5),
    ("utf-16", 7, 5),
    ("utf-8", 1, 1),
    ("utf-8", 2, 1),
    ("utf-8", 4, 1),
    ("utf-8", 5, 2),
    ("utf-8", 6, 3),
    ("utf-8", 7, 3),  # inside é
    ("utf-8", 8, 4),
    ("utf-8", 9, 4),
    ("utf-8", 10, 4),
    ("utf-8", 11, 5),
    ("utf-8", 1000, 5),
]


@pytest.mark.parametrize(("encoding", "character", "index"), CASES)
def test_char_index(encoding, character, index):
    assert char_index(LINE, character, encoding) == index


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_negative_and_empty_clamp(encoding):
    assert char_index(LINE, -5, encoding) == 0
    assert char_index("", 3, encoding) == 0
    assert lsp_character(LINE, -1, encoding) == 0
    assert lsp_character("abc", 10, encoding) == 3


def test_lsp_character_units():
    assert [lsp_character(LINE, i, "utf-16") for i in range(6)] == [0, 1, 3, 4, 5, 6]
    assert [lsp_character(LINE, i, "utf-8") for i in range(6)] == [0, 1, 5, 6, 8, 11]
    assert [lsp_character(LINE, i, "utf-32") for i in range(6)] == [0, 1, 2, 3, 4, 5]
    assert line_length(LINE, "utf-16") == 6


def test_lone_surrogate_counts_as_one_bmp_unit():
    line = "a\ud800b"
    assert lsp_character(line, 3, "utf-16") == 3
    assert char_index(line, 2, "utf-16") == 2
    assert lsp_character(line, 3, "utf-8") == 5
    assert char_index(line, 3, "utf-8") == 1  # inside the 3-byte surrogate
    assert char_index(line, 4, "utf-8") == 2


def test_unknown_encoding_raises_value_error():
    with pytest.raises(ValueError, match="utf-7"):
        char_index("abc", 1, "utf-7")


text = st.text(alphabet=st.sampled_from("ab é€😀𝄞\t\ud800"), max_size=20)


@given(text, st.integers(-3, 60), st.sampled_from(["utf-8", "utf-16", "utf-32"]))
def test_round_trip_and_rounding(line, character, encoding):
    index = char_index(line, character, encoding)
    assert 0 <= index <= len(line)
    units = lsp_character(line, index, encoding)
    # rounds down to a character start, and the next character starts past ``character``
    assert units <= max(character, 0)
    if index < len(line):
        assert lsp_character(line, index + 1, encoding) > character
    assert char_index(line, units, encoding) == index


@given(text, st.sampled_from(["utf-8", "utf-16", "utf-32"]))
def test_every_index_round_trips(line, encoding):
    for i in range(len(line) + 1):
        assert char_index(line, lsp_character(line, i, encoding), encoding) == i
