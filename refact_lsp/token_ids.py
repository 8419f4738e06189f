"""Token-id sequence helpers shared by the service and the engine (pure Python, no dependencies)."""

from __future__ import annotations

from collections.abc import Sequence

_LINEAR_BELOW = 64
"""Below this many items a plain loop beats slicing."""

_PROBE = 64
"""The first and the last this many items are probed on their own (see :func:`common_prefix_len`)."""


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items ``a`` and ``b`` share.

    A bisection over slice comparisons (each a C-level loop), so a 4k-token prompt costs tens of
    microseconds instead of a Python loop over every token. Copying the slices is what costs, so the two
    usual answers are probed first: under ``_PROBE`` (another document's prompt) and within the last
    ``_PROBE`` (a keystroke's prompt against the last one): either copies each item about once, where a
    bisection over the whole length copies it about twice.
    """
    if type(a) is not type(b):  # a list never equals a tuple: compare like with like
        a, b = list(a), list(b)
    n = min(len(a), len(b))
    lo, hi = 0, n  # a[:lo] == b[:lo], and the answer is at most hi
    head = min(n, _PROBE)
    if a[:head] != b[:head]:
        hi = head
    else:
        lo = head
        tail = max(lo, n - _PROBE)
        if a[lo:tail] == b[lo:tail]:
            lo = tail
        else:
            hi = tail
    while hi - lo > _LINEAR_BELOW:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return lo
