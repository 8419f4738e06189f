"""Typed-ahead cache: answer with the rest of a shown suggestion while the user types it.

Entries are keyed on prefix AND suffix (a prefix-only key serves stale suggestions after the text
after the cursor changed). Use cursor-relative keys (``cursor_keys``): ``prefix`` = the text before
the cursor, ``suffix`` = the text after the cursor line that typing at the cursor does not change,
and ``completion`` = the text inserted at the cursor (``cursor_relative``; ``prompt_relative`` turns a
hit back into what ``edits`` expects). A lookup finds the candidates by the suffix (one dict lookup)
and compares each candidate's prefix with one ``startswith`` (a memcmp); a bucket holds at most
``per_suffix`` entries. The keys leave out a little of a multi-line prompt (so that typing along its
suggestion still hits in single-line mode) and of what post-processing reads: ``exact_key`` is that
little, and an entry answers a request with nothing typed since only for the same, that is for the very
prompt and post-processing it was computed for.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from refact_lsp.service.postprocess import PostContext
from refact_lsp.service.prompt import Prompt


def cursor_keys(prompt: Prompt, line_text: str, index: int) -> tuple[str, str]:
    """Cursor-relative cache keys for a prompt built at ``index`` in ``line_text``.

    prefix = the window's text before the cursor; suffix = the window's lines after the cursor line, and
    in multi-line mode the text right of the cursor before them when it is not blank (that prompt holds it;
    a single-line prompt leaves it out). They are the same in both modes at column 0, so typing the first
    character of a column-0 multi-line suggestion (which switches to single-line mode) still hits.
    """
    prefix = prompt.prefix + line_text[prompt.prefix_cut : index]
    if prompt.mode == "single":
        return prefix, prompt.suffix
    suffix = prompt.suffix.partition("\n")[2]
    right = line_text[index:]
    return prefix, right + "\x00" + suffix if right.strip() else suffix


def exact_key(prompt: Prompt, post: PostContext) -> str:
    """What a request's answer depends on beyond its ``cursor_keys``: the prompt's mode, where its prefix
    ends, and in multi-line mode the start of its suffix that the suffix key leaves out (the text right of
    the cursor when it is blank, and whether a line break follows the cursor line), with the lines below
    the cursor that post-processing reads (``post.next_lines``, which may go past the prompt's window).
    With the keys, it makes the prompt and what post-processing reads, but the text right of the cursor
    in single-line mode, which a hit checks again (``only_repeats``)."""
    if prompt.mode == "single":
        return "single"  # the keys are the prompt's prefix and suffix
    head, newline, _ = prompt.suffix.partition("\n")
    below = "\n".join(post.next_lines)
    return f"multi\0{len(prompt.prefix)}\0{head}{newline}\0{below}"


def cursor_relative(completion: str, line_text: str, index: int, prefix_cut: int) -> str | None:
    """The part of a post-processed completion that goes after the cursor (None if it retypes
    differently what is between the prompt's prefix end and the cursor, e.g. other indentation)."""
    typed = line_text[prefix_cut:index]
    return completion[len(typed) :] if completion.startswith(typed) else None


def prompt_relative(rest: str, line_text: str, index: int, prefix_cut: int) -> str:
    """A cached cursor-relative completion in the form ``edits`` expects for the current prompt."""
    return line_text[prefix_cut:index] + rest


class Hit(NamedTuple):
    rest: str
    """What is left of the cached completion after the typed text."""
    tag: str
    """The tag the entry was put with (e.g. "speculative")."""


class TypedAheadCache:
    """Bounded (LRU) map of (prefix, suffix) -> completion, with typed-ahead lookups."""

    def __init__(self, max_entries: int = 256, per_suffix: int = 16):
        if max_entries < 1 or per_suffix < 1:
            raise ValueError("max_entries and per_suffix must be at least 1")
        self.max_entries = max_entries
        self.per_suffix = per_suffix
        # -> (completion, tag, exact key, shown)
        self._entries: OrderedDict[tuple[str, str], tuple[str, str, str, bool]] = OrderedDict()
        self._by_suffix: dict[str, list[str]] = {}  # suffix -> prefixes, most recent last

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._by_suffix.clear()

    def put(
        self, prefix: str, suffix: str, completion: str, tag: str = "", exact: str = "", shown: bool = True
    ) -> None:
        """Remember ``completion`` for the cursor between ``prefix`` and ``suffix`` (not an empty one),
        computed for the prompt whose ``exact_key`` is ``exact``. ``shown`` False: computed ahead (a
        speculation), not shown yet: until :meth:`show`, only a request at its own place gets it (typing
        along a suggestion never shown gets what the model answers there)."""
        if not completion:
            return
        key = (prefix, suffix)
        if key in self._entries:
            self._entries.move_to_end(key)
            self._entries[key] = (completion, tag, exact, shown)
            bucket = self._by_suffix[suffix]
            bucket.remove(prefix)
            bucket.append(prefix)
            return
        self._entries[key] = (completion, tag, exact, shown)
        bucket = self._by_suffix.setdefault(suffix, [])
        bucket.append(prefix)
        if len(bucket) > self.per_suffix:
            self._forget(bucket[0], suffix)
        while len(self._entries) > self.max_entries:
            old_prefix, old_suffix = next(iter(self._entries))
            self._forget(old_prefix, old_suffix)

    def _forget(self, prefix: str, suffix: str) -> None:
        del self._entries[(prefix, suffix)]
        bucket = self._by_suffix[suffix]
        bucket.remove(prefix)
        if not bucket:
            del self._by_suffix[suffix]

    def show(self, prefix: str, suffix: str, exact: str = "") -> None:
        """The entry put at exactly this place (and ``exact``) was shown: typing along it may hit now."""
        entry = self._entries.get((prefix, suffix))
        if entry is not None and entry[2] == exact and not entry[3]:
            self._entries[(prefix, suffix)] = (*entry[:3], True)

    def get(self, prefix: str, suffix: str, exact: str = "") -> str | None:
        """The rest of a cached suggestion, or None (see :meth:`lookup`)."""
        hit = self.lookup(prefix, suffix, exact)
        return None if hit is None else hit.rest

    def lookup(self, prefix: str, suffix: str, exact: str = "") -> Hit | None:
        """The rest of a cached suggestion and its entry's tag, or None.

        Hits when ``prefix`` = a cached prefix + typed text, the typed text starts the cached completion
        (and leaves some of it), and ``suffix`` is unchanged; with nothing typed, only an entry put with
        the same ``exact`` (key) hits, with something typed only one shown. The longest matching cached
        prefix wins.
        """
        bucket = self._by_suffix.get(suffix)
        if not bucket:
            return None
        best: tuple[str, Hit] | None = None
        for cached_prefix in bucket:
            if len(cached_prefix) > len(prefix) or (best is not None and len(cached_prefix) <= len(best[0])):
                continue
            if not prefix.startswith(cached_prefix):
                continue
            completion, tag, cached_exact, shown = self._entries[(cached_prefix, suffix)]
            typed_len = len(prefix) - len(cached_prefix)
            if typed_len == 0 and cached_exact != exact:
                continue  # the same keys, another prompt: its answer is not this one's
            if typed_len and not shown:
                continue  # typing along a suggestion never shown is typing, not typing along
            if len(completion) > typed_len and completion.startswith(prefix[len(cached_prefix) :]):
                best = (cached_prefix, Hit(completion[typed_len:], tag))
        if best is None:
            return None
        self._entries.move_to_end((best[0], suffix))
        return best[1]
