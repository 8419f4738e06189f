"""Refact SPM prompt: exact layout, modes, budget, window hysteresis, cached encoding."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refact_lsp.service.prompt import CachedEncoder, build_prompt, completion_mode, shift_window
from refact_lsp.token_ids import common_prefix_len

DOC = ["def add(a, b):", "    return a + b", "", "def mul(a, b):", "    ", "", "print(add(1, 2))"]


def spm(encode, suffix, prefix):
    return [3, *encode(suffix), 1, *encode(prefix), 2]


@pytest.mark.parametrize(
    ("line_text", "index", "multiline", "mid_line", "expected"),
    [
        ("    ", 4, "auto", "auto", "multi"),
        ("", 0, "auto", "auto", "multi"),
        ("    x = ", 8, "auto", "auto", "single"),
        ("    x = ", 2, "auto", "auto", None),  # "  x = " right of the cursor is code
        ("foo(", 4, "auto", "auto", "single"),
        ("foo()", 4, "auto", "auto", "single"),  # closing punctuation right of the cursor
        ('s = ""', 5, "auto", "auto", "single"),
        ("foo(])};", 4, "auto", "auto", "single"),
        ("foo(bar)", 4, "auto", "auto", None),
        ("x = ()", 4, "auto", "auto", "single"),  # opening brackets too, as Refact's own client
        ("x = {}", 4, "auto", "auto", "single"),
        ("foo(bar)", 4, "auto", "always", "single"),
        ("foo()", 4, "auto", "never", None),
        ("foo   ", 3, "auto", "never", "single"),  # whitespace right is not mid-line
        ("    ", 4, "never", "auto", "single"),
        ("x = ", 4, "always", "auto", "multi"),
        ("    )", 4, "auto", "auto", "single"),  # mid-line completions are single-line in auto
        ("abc", 99, "auto", "auto", "single"),  # index clamped
    ],
)
def test_completion_mode(line_text, index, multiline, mid_line, expected):
    assert completion_mode(line_text, index, multiline, mid_line) == expected


def test_single_line_prompt_is_exact(encode):
    # cursor after "    return a" in line 1: the rest of the line is left out, the suffix starts at line 2
    p = build_prompt(DOC, 1, 12, encode, 4000, "single")
    assert p.mode == "single"
    assert p.prefix == "def add(a, b):\n    return a"
    assert p.suffix == "\ndef mul(a, b):\n    \n\nprint(add(1, 2))"
    assert p.text == "<fim_suffix>" + p.suffix + "<fim_prefix>" + p.prefix + "<fim_middle>"
    assert p.ids == spm(encode, p.suffix, p.prefix)
    assert p.window == (0, 6)
    assert p.prefix_cut == 12


def test_multi_line_prompt_starts_suffix_with_the_whole_cursor_line(encode):
    p = build_prompt(DOC, 4, 4, encode, 4000, "multi")
    assert p.prefix == "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n"
    assert p.suffix == "    \n\nprint(add(1, 2))"
    assert p.ids == spm(encode, p.suffix, p.prefix)
    assert p.prefix_cut == 0


def test_mode_setting_may_be_a_multiline_setting(encode):
    assert build_prompt(DOC, 4, 4, encode, 4000, "auto").mode == "multi"
    assert build_prompt(DOC, 4, 4, encode, 4000, "never").mode == "single"
    with pytest.raises(ValueError, match="bogus"):
        build_prompt(DOC, 4, 4, encode, 4000, "bogus")


def test_multi_with_text_left_of_cursor_cuts_at_the_cursor(encode):
    p = build_prompt(["x = foo(", "y"], 0, 8, encode, 4000, "multi")
    assert (p.prefix, p.suffix, p.prefix_cut) == ("x = foo(", "\ny", 8)


def test_multi_with_text_right_of_the_indentation_cuts_at_the_cursor(encode):
    """``multiline: always`` in the indentation before ``}``: whole lines from column 0 would go before the
    ``}`` and be glued to it; the prompt ends at the cursor, so the model writes what goes there."""
    p = build_prompt(["function f(a) {", "    }"], 1, 4, encode, 4000, "multi")
    assert (p.prefix, p.suffix, p.prefix_cut) == ("function f(a) {\n    ", "}", 4)


def test_literal_special_tokens_in_the_file_stay_text(encode):
    p = build_prompt(["a = '<fim_prefix><|endoftext|>'", "b"], 1, 1, encode, 4000, "single")
    assert p.ids.count(1) == 1 and p.ids.count(3) == 1 and p.ids.count(2) == 1
    assert 0 not in p.ids


def lines_of_code(n):
    return [f"    value_{i} = compute(value_{i - 1}, {i % 7})  # step {i}" for i in range(n)]


def test_budget_counts_tokens_and_alternates(encode):
    lines = lines_of_code(2000)
    budget = 1000
    p = build_prompt(lines, 1000, 10, encode, budget, "single")
    assert len(p.ids) <= budget
    first, last = p.window
    above, below = 1000 - first, last - 1000
    assert abs(above - below) <= 1  # alternately above and below
    # one more line on either side would not have fitted in the budget less the 1/16 headroom
    bigger = build_prompt(lines, 1000, 10, encode, 10_000, "single", window_hint=(first - 1, last + 1))
    assert len(bigger.ids) > budget - budget // 16 >= len(p.ids) - 3


def test_a_line_too_long_stops_only_its_own_side(encode):
    lines = [*lines_of_code(40), "    DATA = " + repr(list(range(3000))), *lines_of_code(5)]
    p = build_prompt(lines, 39, 4, encode, 2048, "multi")
    assert p.window == (0, 39)  # every line above; below, the data line does not fit
    assert len(p.ids) <= 2048


def test_small_budget_keeps_only_the_cursor_line(encode):
    p = build_prompt(lines_of_code(50), 25, 20, encode, 40, "single")
    assert len(p.ids) <= 40
    assert p.window[0] <= 25 <= p.window[1]


class CountingEncode:
    def __init__(self, encode):
        self.encode = encode
        self.chars = 0

    def __call__(self, text):
        self.chars += len(text)
        return self.encode(text)


def test_ten_megabyte_file_is_not_tokenized_whole(encode):
    lines = lines_of_code(200_000)  # ~11 MB
    assert sum(map(len, lines)) > 10_000_000
    counting = CountingEncode(encode)
    p = build_prompt(lines, 100_000, 30, counting, 4046, "single")
    assert len(p.ids) <= 4046
    assert counting.chars < 200_000


def test_huge_single_line_is_cut_around_the_cursor(encode):
    line = "x = [" + ", ".join(str(i) for i in range(2_000_000)) + "]"  # ~16 MB on one line
    counting = CountingEncode(encode)
    p = build_prompt([line], 0, len(line) // 2, counting, 2000, "single")
    assert 1500 < len(p.ids) <= 2000
    assert line[: len(line) // 2].endswith(p.prefix)
    assert counting.chars < 2_000_000
    m = build_prompt(["", line], 1, 0, encode, 2000, "multi")
    assert len(m.ids) <= 2000 and line.startswith(m.suffix)


HUGE_LINE = "x = [" + ", ".join(str(i) for i in range(10_000)) + "]"  # ~59,000 characters on one line


@pytest.mark.parametrize("budget", [2000, 4046])
@pytest.mark.parametrize("index", [len(HUGE_LINE) // 2, len(HUGE_LINE) - 1, len(HUGE_LINE)])
def test_a_huge_cursor_line_in_multi_line_mode_keeps_its_line_break_within_the_budget(encode, budget, index):
    """The suffix of a window of the cursor line alone is its right part and the line break before the next
    line: that line break counts too (it made the prompt one token over the budget)."""
    p = build_prompt(["a = 1", HUGE_LINE, "b = 2"], 1, index, encode, budget, "multi")
    assert p.window == (1, 1) and p.suffix.endswith("\n")
    assert HUGE_LINE[index:].startswith(p.suffix[:-1])
    assert len(p.ids) <= budget


def test_hysteresis_keeps_suffix_tokens_while_typing(encode):
    lines = lines_of_code(3000)
    lines[1500] = "    result = "
    cached = CachedEncoder(encode)
    first = build_prompt(lines, 1500, len(lines[1500]), cached, 1500, "single")
    hint = first.window
    for ch in "compute(value_1499, 3) + compute(value_1498, 2) + compute(value_7, 1)":
        lines[1500] += ch
        p = build_prompt(lines, 1500, len(lines[1500]), cached, 1500, "single", window_hint=hint)
        assert len(p.ids) <= 1500
        assert p.window == hint
        assert p.ids[: p.ids.index(1)] == first.ids[: first.ids.index(1)]  # the same suffix tokens
    # without the hint the window moves as the cursor line grows (the reason hysteresis exists)
    fresh = build_prompt(lines, 1500, len(lines[1500]), cached, 1500, "single")
    assert fresh.window != hint


@pytest.mark.parametrize(
    ("start", "end", "delta", "expected"),
    [
        (2, 2, 1, (11, 21)),  # a new line above: the window moves with its lines
        (15, 15, 1, (10, 21)),  # Enter inside: one more line, the same last line of text
        (20, 20, 1, (10, 21)),  # Enter on the last line: both halves stay in
        (25, 25, 3, (10, 20)),  # below: nothing moves
        (15, 17, -2, (10, 18)),  # lines joined inside
        (8, 12, -4, (8, 16)),  # a deletion that took the first lines: the window starts where it was
        (5, 25, -20, (5, 5)),  # everything deleted: one line
    ],
)
def test_shift_window_follows_the_lines(start, end, delta, expected):
    assert shift_window((10, 20), start, end, delta) == expected


@pytest.mark.parametrize("multiline", ["never", "auto"])
def test_enter_then_typing_keeps_the_prompt_before_enter(encode, multiline):
    """The window follows an inserted line, so the prompt after Enter and a first character shares
    all of its suffix and the prefix up to the old line's end with the prompt before Enter."""
    lines = lines_of_code(3000)
    cached = CachedEncoder(encode)
    before = build_prompt(lines, 1500, len(lines[1500]), cached, 1500, multiline)
    lines.insert(1501, "    x")  # Enter, indentation, "x"
    window = shift_window(before.window, 1500, 1500, 1)
    after = build_prompt(lines, 1501, 5, cached, 1500, multiline, window_hint=window)
    assert after.window == window and after.mode == "single"
    assert after.suffix == before.suffix
    new_tokens = len(encode("\n    x")) + 1  # and <fim_middle>
    assert common_prefix_len(before.ids, after.ids) >= len(after.ids) - new_tokens - 1


def test_hint_is_dropped_when_the_cursor_leaves_it_or_nears_an_edge(encode):
    lines = lines_of_code(3000)
    p = build_prompt(lines, 1500, 5, encode, 1500, "single")
    first, last = p.window
    # outside the window
    q = build_prompt(lines, last + 5, 5, encode, 1500, "single", window_hint=p.window)
    assert q.window[0] <= last + 5 <= q.window[1] and q.window != p.window
    # inside, one line from the top edge with lines above it: recentred
    r = build_prompt(lines, first + 1, 5, encode, 1500, "single", window_hint=p.window)
    assert r.window != p.window and r.window[0] < first
    # inside, near the middle: kept
    s = build_prompt(lines, 1502, 5, encode, 1500, "single", window_hint=p.window)
    assert s.window == p.window


def test_hint_past_the_end_of_a_shrunk_document_is_safe(encode):
    p = build_prompt(DOC[:3], 1, 4, encode, 4000, "single", window_hint=(0, 50))
    assert p.window == (0, 2)


def test_joined_text_over_budget_drops_a_line_and_retries():
    """Per-line counts that underestimate the joined text (possible with BPE) still end within budget."""

    def encode(text):  # a line break after a space costs 10 extra tokens when joined
        return [7] * (len(text) + 10 * text.count(" \n"))

    lines = ["ab "] * 40
    p = build_prompt(lines, 20, 1, encode, 100, "single")
    assert len(p.ids) <= 100
    assert p.ids == [3, *encode(p.suffix), 1, *encode(p.prefix), 2]


def test_empty_document(encode):
    p = build_prompt([], 0, 0, encode, 100, "multi")
    assert p.ids == [3, 1, 2] and p.text == "<fim_suffix><fim_prefix><fim_middle>"


TOKENS = list("ab_Z09 (){}:;'\".,\t\n\r") + [
    "    ",
    "\n    ",
    "é",
    "😀",
    "\xa0",
    "\x1c",
    "'s",
    "<fim_prefix>",
]
code_text = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code_text)
def test_cached_encoder_equals_whole_encode(encode, text):
    cached = CachedEncoder(encode, max_entries=8)
    assert cached(text) == encode(text)
    assert cached(text) == encode(text)  # from the cache


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(code_text.map(lambda t: t.replace("\r", "").replace("\n", "")), max_size=8), code_text)
def test_cached_encoder_join_and_count_lines(encode, lines, last):
    cached = CachedEncoder(encode, max_entries=8)
    last = last.replace("\r", "").replace("\n", "")
    for _ in range(2):  # the second time from what the encoder remembers
        text = "\n".join([*lines, last])
        assert cached.join(lines, last) == (text, encode(text))
        assert cached.count_lines(lines) == sum(len(encode("\n" + line)) for line in lines)
        assert cached.joined(lines, "\n") == ("\n".join(lines) + "\n", encode("\n".join(lines) + "\n"))
        assert cached.longest(lines) == max(map(len, lines), default=0)
    changed = [*lines[:-1], lines[-1] + "x"] if lines else ["x"]
    assert cached.count_lines(changed) == sum(len(encode("\n" + line)) for line in changed)
    assert cached.joined(changed) == ("\n".join(changed), encode("\n".join(changed)))
    assert cached.longest(changed) == max(map(len, changed))


def test_cached_encoder_keeps_no_minified_lines_and_a_bounded_total(encode):
    """Typing at the end of a 200,000-character line cached a new piece of up to 32,000 characters per
    keystroke (3.7 MB each): long pieces are tokenized each time, and the total is bounded."""
    from refact_lsp.service.prompt import MAX_CACHED_PIECE

    encoder = CachedEncoder(encode, max_chars=10_000)
    long_line = "x=[" + ",".join(str(i) for i in range(2000))
    assert encoder(long_line) == encode(long_line)
    assert not any(len(piece) > MAX_CACHED_PIECE for piece in encoder._pieces)
    for i in range(2000):
        encoder.count_line(f"line {i} = {i * 7}")  # about 20 characters each
    assert sum(map(len, encoder._pieces)) <= 10_000
    assert encoder.count_line("line 1999 = 13993") == len(encode("\nline 1999 = 13993"))


def test_cached_encoder_on_real_source(encode):
    source = Path(__file__).read_text("utf-8")
    cached = CachedEncoder(encode)
    assert cached(source) == encode(source)
