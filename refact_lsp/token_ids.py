"""Token-id sequence helpers shared by the service and the engine (pure Python, no dependencies)."""

from __future__ import annotations

from collections.abc import Sequence

_LINEAR_BELOW = 64
"""Below this many items a plain loop beats slicing."""


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items ``a`` and ``b`` share.

    A bisection over slice comparisons (each a C-level loop), so a 4k-token prompt costs tens of
    microseconds instead of a Python loop over every token.
    """
    if type(a) is not type(b):  # a list never equals a tuple: compare like with like
        a, b = list(a), list(b)
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > _LINEAR_BELOW:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return lo
