from hypothesis import given
from hypothesis import strategies as st

from refact_lsp.token_ids import common_prefix_len


def reference(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_small_cases() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2]) == 2
    assert common_prefix_len([1, 2, 3], [1, 2]) == 2
    assert common_prefix_len([1, 2, 3] * 100, tuple([1, 2, 3] * 100)) == 300  # a list never equals a tuple


@given(
    shared=st.lists(st.integers(0, 5), max_size=700),
    a=st.lists(st.integers(0, 5), max_size=300),
    b=st.lists(st.integers(0, 5), max_size=300),
)
def test_matches_a_plain_loop_on_long_sequences(shared: list[int], a: list[int], b: list[int]) -> None:
    # long shared prefixes exercise the bisection, short alphabets make later matches likely
    x, y = shared + a, shared + b
    assert common_prefix_len(x, y) == reference(x, y)
    assert common_prefix_len(y, x) == reference(x, y)


@given(
    length=st.integers(0, 400),
    other=st.integers(0, 400),
    differ_at=st.integers(0, 400),
)
def test_a_difference_anywhere_in_a_long_sequence(length: int, other: int, differ_at: int) -> None:
    # one differing item near the head, in the middle or within the last probe; or none (equal prefixes)
    x = list(range(1000, 1000 + length))
    y = list(range(1000, 1000 + other))
    if differ_at < min(length, other):
        y[differ_at] = -1
    assert common_prefix_len(x, y) == reference(x, y)
    assert common_prefix_len(tuple(y), tuple(x)) == reference(x, y)
