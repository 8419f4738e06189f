"""Typed-ahead cache: hits while typing a suggestion, keyed on prefix and suffix, bounded."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refact_lsp.service.typed_ahead import TypedAheadCache


def test_typing_the_suggestion_returns_the_rest():
    cache = TypedAheadCache()
    cache.put("def f():\n    ret", "\n\nx = 1", "urn total")
    assert cache.get("def f():\n    ret", "\n\nx = 1") == "urn total"  # same place again
    assert cache.get("def f():\n    retu", "\n\nx = 1") == "rn total"
    assert cache.get("def f():\n    return tot", "\n\nx = 1") == "al"


def test_misses():
    cache = TypedAheadCache()
    cache.put("a = ", "\nb", "foo(1)")
    assert cache.get("a = fox", "\nb") is None  # typed something else
    assert cache.get("a = f", "\nc") is None  # the suffix changed (prefix-only keys would hit)
    assert cache.get("a = foo(1)", "\nb") is None  # typed all of it: ask the model for more
    assert cache.get("a =", "\nb") is None  # deleted back past the cached point
    assert cache.get("x", "never seen") is None


def test_longest_cached_prefix_wins():
    cache = TypedAheadCache()
    cache.put("x = ", "S", "alpha")
    cache.put("x = al", "S", "gorithm")
    assert cache.get("x = algo", "S") == "rithm"
    assert cache.get("x = alp", "S") == "ha"  # only the first entry matches


def test_put_replaces_the_same_key_and_ignores_empty():
    cache = TypedAheadCache()
    cache.put("p", "s", "one")
    cache.put("p", "s", "two")
    cache.put("q", "s", "")
    assert len(cache) == 1
    assert cache.get("p", "s") == "two"


def test_bounded_lru():
    cache = TypedAheadCache(max_entries=3)
    for i in range(3):
        cache.put(f"p{i}", f"s{i}", "xyz")
    assert cache.get("p0", "s0") == "xyz"  # p0 is now the most recently used
    cache.put("p3", "s3", "xyz")
    assert len(cache) == 3
    assert cache.get("p1", "s1") is None  # evicted
    assert cache.get("p0", "s0") == "xyz"
    assert cache._by_suffix.keys() == {"s0", "s2", "s3"}  # the index is pruned too


def test_bucket_per_suffix_is_bounded():
    cache = TypedAheadCache(max_entries=100, per_suffix=2)
    for i in range(5):
        cache.put(f"p{i}", "S", "done")
    assert len(cache) == 2
    assert cache.get("p4", "S") == "done" and cache.get("p0", "S") is None


def test_bad_sizes():
    with pytest.raises(ValueError):
        TypedAheadCache(max_entries=0)


def test_clear():
    cache = TypedAheadCache()
    cache.put("a", "b", "c")
    cache.clear()
    assert len(cache) == 0 and cache.get("a", "b") is None


@given(st.text(max_size=30), st.text(max_size=10), st.text(min_size=1, max_size=20), st.integers(0, 25))
def test_typed_prefix_of_completion_always_hits(prefix, suffix, completion, typed):
    cache = TypedAheadCache(max_entries=4)
    cache.put(prefix, suffix, completion)
    typed = min(typed, len(completion))
    expected = completion[typed:] or None
    assert cache.get(prefix + completion[:typed], suffix) == expected


def test_column0_suggestion_hits_after_typing_its_first_character(encode):
    """A multi-line suggestion on an indented empty line is still served once typing switches modes."""
    from refact_lsp.service.edits import line_edit
    from refact_lsp.service.prompt import build_prompt, completion_mode
    from refact_lsp.service.typed_ahead import cursor_keys, cursor_relative, prompt_relative

    lines = ["def f(items):", "    ", "", "print(f([1]))"]
    cache = TypedAheadCache()
    mode = completion_mode(lines[1], 4)
    first = build_prompt(lines, 1, 4, encode, 500, mode)
    assert first.mode == "multi"
    completion = "    return sum(items)"
    cache.put(*cursor_keys(first, lines[1], 4), cursor_relative(completion, lines[1], 4, first.prefix_cut))

    lines[1] = "    re"
    mode = completion_mode(lines[1], 6)
    second = build_prompt(lines, 1, 6, encode, 500, mode, window_hint=first.window)
    assert second.mode == "single"
    rest = cache.get(*cursor_keys(second, lines[1], 6))
    assert rest == "turn sum(items)"
    edit = line_edit(lines[1], 1, 6, prompt_relative(rest, lines[1], 6, second.prefix_cut), second.mode)
    assert lines[1][: edit.start_index] + edit.new_text == "    return sum(items)"
    # the same place again, still in column-0 mode: the whole line comes back
    again = build_prompt(["def f(items):", "    ", "", "print(f([1]))"], 1, 4, encode, 500, "multi")
    hit = cache.get(*cursor_keys(again, "    ", 4))
    assert prompt_relative(hit, "    ", 4, again.prefix_cut) == completion


def test_cursor_relative_rejects_other_indentation():
    from refact_lsp.service.typed_ahead import cursor_relative

    assert cursor_relative("  x = 1", "    ", 4, 0) is None
    assert cursor_relative("foo", "x = ", 4, 4) == "foo"


def test_multi_line_keys_hold_the_text_right_of_the_cursor(encode):
    """A multi-line prompt holds the text right of the cursor: deleting it is a miss, not a stale hit."""
    from refact_lsp.service.prompt import build_prompt
    from refact_lsp.service.typed_ahead import cursor_keys

    lines = ["import os", "x = foo()", "print(x)"]
    cache = TypedAheadCache()
    first = build_prompt(lines, 1, 8, encode, 500, "multi")
    cache.put(*cursor_keys(first, lines[1], 8), "a, b")  # written knowing the ")" is there
    assert cache.get(*cursor_keys(first, lines[1], 8)) == "a, b"

    lines[1] = "x = foo("
    second = build_prompt(lines, 1, 8, encode, 500, "multi", window_hint=first.window)
    assert second.text != first.text
    assert cache.get(*cursor_keys(second, lines[1], 8)) is None


def test_with_nothing_typed_an_entry_answers_only_its_own_prompt(encode):
    """The suffix key leaves out whether a line break follows the cursor line of a multi-line prompt (and
    blank text right of the cursor): at the entry's own place only the same prompt (``exact_key``) hits,
    while typing along its suggestion still does."""
    from refact_lsp.service.postprocess import PostContext
    from refact_lsp.service.prompt import build_prompt
    from refact_lsp.service.typed_ahead import cursor_keys, exact_key

    def keys(lines: list[str], index: int) -> tuple[str, str, str]:
        prompt = build_prompt(lines, 1, index, encode, 500, "multi")
        post = PostContext.from_lines(lines, 1, index, prompt.mode, prompt.prefix_cut)
        return (*cursor_keys(prompt, lines[1], index), exact_key(prompt, post))

    cache = TypedAheadCache()
    last = keys(["def f():", ""], 0)  # on the last line
    before_last = keys(["def f():", "", ""], 0)  # a line break follows: another prompt
    assert last[:2] == before_last[:2] and last[2] != before_last[2]
    cache.put(*last[:2], "    return 1", exact=last[2])
    assert cache.get(*last) == "    return 1"
    assert cache.get(*before_last) is None
    assert cache.get(*keys(["def f():", "  ", ""], 2)) == "  return 1"  # typed along


def test_an_entry_never_shown_answers_only_its_own_place():
    """A speculation's answer, computed ahead and not shown: typing along it is no typing along a
    suggestion, until a request at its place got it (``show``)."""
    cache = TypedAheadCache()
    cache.put("x = ", "", "foo(1)", tag="speculative", shown=False)
    assert cache.get("x = f", "") is None
    assert cache.get("x = ", "") == "foo(1)"
    cache.show("x = ", "")
    assert cache.get("x = f", "") == "oo(1)"
