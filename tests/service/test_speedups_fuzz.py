"""Differential fuzz: the speed-ups never change what is suggested.

A seeded random editing session (edits anywhere, multi-line ones too, small ones right of the cursor and
on the next lines, typing at the cursor, typing along the suggestion shown, accepting it, Enter at the end
of a line with the editor's indentation, typing on before asking, typing what the model would say unasked,
a keystroke while a request runs, moving the cursor, switching between two documents, changing
``multiline``/``midLine``, and idle time in which the speculation runs or is cut short) drives, in
lockstep:

- ``on``: a :class:`CompletionService` with every speed-up on (the defaults: KV reuse, the typed-ahead
  cache, speculation, with the prompt window's hysteresis and the cached encoding that are always on);
- ``off``: one with ``kvReuse``, ``completionCache`` and ``speculative`` off;
- ``fresh``: a new service for each request (no history at all: no window hint, no encoder cache, nothing
  in the engine's KV slots), where the prompt is the same as for the others: in the profile whose
  documents fit in the context (with a smaller context the window's position depends on the history, by
  design).

Only public methods of the service are used, but for the fresh services (and the "what the model would
say" guesses), which are handed the loaded model runner (``_runner``, ``_model_state``) instead of loading
it again. Each runs the real model class with tiny random weights (the official checkpoint layout, see
``checkpoint``) and the real Refact tokenizer, with greedy decoding. Every request must get the same
suggestion (text, range and completion item) from all of them. The one difference allowed is the
typed-ahead cache's purpose: after the user typed part of a suggestion shown by ``on``, ``on`` shows the
rest of that very suggestion (the model would not always continue the same way); such an answer is
checked to be exactly that rest.

A failure prints the seed and the events so that the session can be replayed (``REFACT_FUZZ_SEED``) and
minimised. Knobs (environment variables):

- ``REFACT_FUZZ_SEED``: the first seed (default: the fixed CI seeds), ``REFACT_FUZZ_CASES``: how many seeds
  from it;
- ``REFACT_FUZZ_REQUESTS``: requests per case (default 40);
- ``REFACT_FUZZ_PROFILE``: ``whole`` or ``window`` (default: alternating with the seed);
- ``REFACT_FUZZ_FRESH``: the share of requests also asked of a fresh service (default 0.5);
- ``REFACT_FUZZ_DTYPE``: the model's dtype on the CPU (default float32; in bfloat16 KV reuse changes the
  rounding of the logits, and a near tie may go the other way: seed 3002);
- ``REFACT_FUZZ_VERBOSE``: print each case's events (with ``-s``).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from refact_lsp.service.completion import CompletionService, Suggestion
from refact_lsp.service.speculative import indent_unit, next_line_indent

SOURCE_A = '''"""Inventory of a small shop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0
    tags: list[str] = field(default_factory=list)

    def total(self) -> float:
        return self.price * self.quantity


class Inventory:
    def __init__(self, path: Path):
        self.path = path
        self.items: dict[str, Item] = {}

    def load(self) -> None:
        data = json.loads(self.path.read_text())
        for row in data:
            item = Item(row["name"], float(row["price"]), int(row.get("quantity", 0)))
            self.items[item.name] = item

    def add(self, item: Item) -> None:
        if item.name in self.items:
            self.items[item.name].quantity += item.quantity
        else:
            self.items[item.name] = item

    def value(self) -> float:
        return sum(item.total() for item in self.items.values())

    def cheapest(self, n: int = 3) -> list[Item]:
        return sorted(self.items.values(), key=lambda item: item.price)[:n]


def main() -> None:
    inventory = Inventory(Path("stock.json"))
    inventory.load()
    print(f"{len(inventory.items)} items worth {inventory.value():.2f}")
'''

SOURCE_B = """import re


def slugify(title: str, limit: int = 40) -> str:
    words = re.findall(r"[a-z0-9]+", title.lower())
    slug = "-".join(words)
    return slug[:limit].rstrip("-")


def parse_pairs(text):
    pairs = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        pairs[key.strip()] = value.strip()
    return pairs
"""

BASE = {
    "device": "cpu",
    "dtype": os.environ.get("REFACT_FUZZ_DTYPE", "float32"),
    "temperature": 0,
    "debounceMs": 0,
    "maxNewTokens": 16,
}
OFF = {"kvReuse": False, "completionCache": False, "speculative": False}
PROFILES = {
    "whole": {"contextTokens": 2048},  # both documents fit: the prompt holds the whole document
    "window": {"contextTokens": 140},  # a window that moves, with its hysteresis
}
CI_SEEDS = (106, 3)  # both fail with the fix of ffdb058 (typing along an unshown speculation) reverted
REQUESTS = int(os.environ.get("REFACT_FUZZ_REQUESTS", "40"))
FRESH_SHARE = float(os.environ.get("REFACT_FUZZ_FRESH", "0.5"))
VERBOSE = bool(os.environ.get("REFACT_FUZZ_VERBOSE"))
SNIPPETS = (
    "x",
    "e",
    "_",
    "s",
    "t",
    "1",
    " ",
    "(",
    ")",
    ":",
    ",",
    ".",
    '"',
    "[",
    "]",
    "=",
    "self.",
    "return ",
)
WAIT_S = 60.0


def _seeds() -> list[int]:
    if "REFACT_FUZZ_SEED" not in os.environ and "REFACT_FUZZ_CASES" not in os.environ:
        return list(CI_SEEDS)
    first = int(os.environ.get("REFACT_FUZZ_SEED", "1000"))
    return list(range(first, first + int(os.environ.get("REFACT_FUZZ_CASES", "1"))))


class _Events:
    """Model events: the fuzz only needs the service's state (``stats_snapshot``)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset)
    return line, offset - (text.rfind("\n", 0, offset) + 1)


def _offset(text: str, line: int, character: int) -> int:
    start = 0
    for _ in range(line):
        start = text.index("\n", start) + 1
    return start + character


@dataclass
class _Doc:
    uri: str
    text: str
    cursor: int
    version: int = 1


@dataclass
class _Shown:
    """A suggestion ``on`` showed: the text up to its inserted end, the cursor, the cursor line's start."""

    uri: str
    upto: str
    cursor: int
    line_start: int


@dataclass
class _Session:
    seed: int
    profile: str
    on: CompletionService
    off: CompletionService
    runner: Any  # a loaded model runner for the fresh services
    docs: list[_Doc]
    rng: random.Random
    client: dict[str, Any] = field(default_factory=dict)  # the client's settings section
    current: int = 0
    events: list[str] = field(default_factory=list)
    shown: list[_Shown] = field(default_factory=list)
    last: tuple[int, int, str] | None = None
    """What ``on`` shows now in the current document: replace [start, end) (offsets) with the text."""
    requests: int = 0
    fresh_requests: int = 0
    typed_ahead: int = 0  # answers of ``on`` that were the rest of a suggestion shown

    @property
    def doc(self) -> _Doc:
        return self.docs[self.current]

    def fail(self, message: str) -> None:
        events = "\n".join(f"  {i:3d} {event}" for i, event in enumerate(self.events))
        pytest.fail(
            f"seed {self.seed} (REFACT_FUZZ_SEED={self.seed} REFACT_FUZZ_PROFILE={self.profile}), "
            f"request {self.requests}: {message}\nevents:\n{events}",
            pytrace=False,
        )

    # What the client does ------------------------------------------------------------------------

    def edit(self, start: int, end: int, new_text: str, why: str, keep_cursor: bool = False) -> None:
        """Sends the edit to the services; the cursor follows it (``keep_cursor``: stays before an
        insertion at the cursor, text inserted right of it)."""
        doc = self.doc
        (sl, sc), (el, ec) = _position(doc.text, start), _position(doc.text, end)
        doc.version += 1
        self.events.append(f"{why}: edit {doc.uri} [{start}, {end}) {doc.text[start:end]!r} -> {new_text!r}")
        for service in (self.on, self.off):
            service.change(doc.uri, doc.version, [((sl, sc, el, ec), new_text)])
        doc.text = doc.text[:start] + new_text + doc.text[end:]
        if doc.cursor >= end and not (keep_cursor and doc.cursor == start):
            doc.cursor += len(new_text) - (end - start)
        elif doc.cursor > start:
            doc.cursor = start + len(new_text)
        if why == "type along" and self.last is not None:  # the editor shows the rest of it meanwhile
            self.last = (self.last[0], self.last[1] + len(new_text), self.last[2])
        else:
            self.last = None

    def configure(self, values: dict[str, Any]) -> None:
        self.client = {**self.client, **values}
        self.events.append(f"settings {self.client}")
        for service in (self.on, self.off):
            assert service.configure(dict(self.client), reload=False) == []
        self.last = None

    async def idle(self, seconds: float | None) -> None:
        """Time for the idle model: until the speculation is done (None), or cut short after ``seconds``."""
        self.events.append("idle" if seconds is None else f"idle {seconds * 1000:.0f} ms")
        await asyncio.sleep(0.02 if seconds is None else seconds)
        if seconds is None:
            deadline = time.monotonic() + WAIT_S
            while self.on.stats_snapshot()["speculating"]:
                assert time.monotonic() < deadline, "the speculation did not finish"
                await asyncio.sleep(0.005)

    async def request(self) -> None:
        doc = self.doc
        line, character = _position(doc.text, doc.cursor)
        self.events.append(f"request {doc.uri} {doc.cursor} ({line}:{character})")
        self.requests += 1
        hits = self.on.stats.cache_hits
        mine = await self.on.complete(doc.uri, line, character)
        hit = self.on.stats.cache_hits > hits
        plain = await self.off.complete(doc.uri, line, character)
        if self.profile == "whole" and self.rng.random() < FRESH_SHARE:
            fresh = await self._fresh(doc, line, character)
            self.fresh_requests += 1
            if fresh != plain:
                self.fail(f"a fresh service answers {fresh}, one with a history {plain}")
        if mine != plain:
            if not (hit and self._typed_along(mine)):
                kind = "a cache hit" if hit else "a model run"
                self.fail(f"with the speed-ups {mine} ({kind}), without them {plain}")
            self.typed_ahead += 1
        self.last = None
        if mine is not None:
            self.events[-1] += f" -> {mine.text!r} [{mine.start}, {mine.end})"
            start = _offset(doc.text, mine.line, mine.start)
            self.shown.append(
                _Shown(doc.uri, doc.text[:start] + mine.text, doc.cursor, doc.text.rfind("\n", 0, start) + 1)
            )
            self.last = (start, _offset(doc.text, mine.line, mine.end), mine.text)

    def _typed_along(self, mine: Suggestion | None) -> bool:
        """Whether ``mine`` is the rest of a suggestion shown before, part of which was typed since."""
        if mine is None:
            return False
        doc = self.doc
        upto = doc.text[: _offset(doc.text, mine.line, mine.start)] + mine.text
        rest = len(upto) - doc.cursor
        for shown in self.shown:
            if shown.uri != doc.uri or rest >= len(shown.upto) - shown.cursor:
                continue
            # the whole text before it with the whole document in the prompt; else the window's, which may
            # start below an edit: from the start of the line it was shown on
            if (
                upto == shown.upto
                if self.profile == "whole"
                else upto.endswith(shown.upto[shown.line_start :])
            ):
                return True
        return False

    async def _fresh(self, doc: _Doc, line: int, character: int) -> Suggestion | None:
        """The answer of a new service with the speed-ups off and the same model (it changes nothing in the
        services compared)."""
        service = CompletionService(
            asyncio.get_running_loop(),
            _Events(),
            base_settings={**self.on.settings.to_lsp(), **OFF},
            encoding="utf-32",
        )
        # (private: a fresh service uses the loaded model instead of loading it again, 1 s each)
        service._runner, service._model_state = self.runner, "ready"
        service.open(doc.uri, "python", 1, doc.text)
        try:
            return await service.complete(doc.uri, line, character)
        finally:
            service.close()

    async def ask_and_type(self) -> None:
        """A request, and a character typed while it runs (or before it is answered), then the request for
        that: the first is superseded, or answered (then it counts as shown)."""
        doc, rng = self.doc, self.rng
        line, character = _position(doc.text, doc.cursor)
        self.events.append(f"request {doc.uri} {doc.cursor} ({line}:{character}), not waited for")
        text, cursor = doc.text, doc.cursor

        def shown(request: asyncio.Future[Suggestion | None]) -> None:
            mine = None if request.cancelled() or request.exception() else request.result()
            if mine is not None:
                start = _offset(text, mine.line, mine.start)
                self.shown.append(
                    _Shown(doc.uri, text[:start] + mine.text, cursor, text.rfind("\n", 0, start) + 1)
                )

        first = [
            asyncio.ensure_future(service.complete(doc.uri, line, character))
            for service in (self.on, self.off)
        ]
        first[0].add_done_callback(shown)
        await asyncio.sleep(rng.choice((0.0, 0.002, 0.01, 0.03)))
        self.edit(doc.cursor, doc.cursor, rng.choice(SNIPPETS), "type")
        await self.request()
        await asyncio.gather(*first)

    async def guess(self) -> None:
        """The user types what the model would suggest (unasked): the start of it, or all of it."""
        doc = self.doc
        line, character = _position(doc.text, doc.cursor)
        guess = await self._fresh(doc, line, character)
        if guess is not None and guess.start == guess.end == character:
            text = guess.text[: self.rng.choice((1, 1, 2, 4, len(guess.text)))]
            self.edit(doc.cursor, doc.cursor, text, "type what the model says")

    # The events ----------------------------------------------------------------------------------

    async def step(self) -> None:
        rng, doc = self.rng, self.doc
        along = None
        if self.last is not None:
            start, _, text = self.last
            typed = doc.text[start : doc.cursor]
            if text.startswith(typed) and len(text) > len(typed):
                along = text[len(typed)]
        choice = rng.choices(
            ("type", "along", "accept", "enter", "guess", "echo", "near", "insert", "delete", "move")
            + ("switch", "settings", "idle", "burst"),
            weights=(10, 14 if along else 0, 7 if self.last else 0, 6, 6, 3 if self.last else 0)
            + (6, 5, 6, 6, 3, 2, 10, 4),
        )[0]
        if choice == "type":
            self.edit(doc.cursor, doc.cursor, rng.choice(SNIPPETS), "type")
        elif choice == "along":
            self.edit(doc.cursor, doc.cursor, along, "type along")
        elif choice in ("accept", "enter"):
            if rng.random() < 0.6:
                await self.idle(None)  # reading the suggestion: the speculation has time to run
            if choice == "accept":
                start, end, text = self.last
                self.edit(start, end, text, "accept")
                doc.cursor = start + len(text)
            else:
                line, _ = _position(doc.text, doc.cursor)
                lines = doc.text.split("\n")
                doc.cursor = _offset(doc.text, line, len(lines[line]))
                indent = next_line_indent(lines[line], "python", indent_unit(lines, line))
                self.edit(doc.cursor, doc.cursor, "\n" + indent, "enter")
            if rng.random() < 0.35:  # and typed on before asking
                if rng.random() < 0.7:
                    await self.guess()
                else:
                    self.edit(doc.cursor, doc.cursor, rng.choice(SNIPPETS), "type")
        elif choice == "guess":
            await self.guess()
        elif choice == "burst":
            await self.ask_and_type()
            return
        elif choice == "echo":  # the shown suggestion's first line written again a few lines below
            start, _, text = self.last
            line, _ = _position(doc.text, start)
            lines = doc.text.split("\n")
            below = min(len(lines) - 1, line + rng.choice((1, 2, 3, 5, 8)))
            indent = lines[line][: len(lines[line]) - len(lines[line].lstrip())]
            first = text.strip().split("\n")[0]
            self.edit(*[_offset(doc.text, below, 0)] * 2, indent + first + "\n", "echo")
        elif choice == "near":  # a small change right of the cursor or on the next lines
            line, _ = _position(doc.text, doc.cursor)
            end = _offset(doc.text, line + 1, 0) - 1 if doc.text.count("\n") > line else len(doc.text)
            at = rng.choice((doc.cursor, end, rng.randrange(doc.cursor, min(len(doc.text), end + 60) + 1)))
            if rng.random() < 0.4 and at < len(doc.text):
                self.edit(at, at + 1, "", "near")
            else:
                self.edit(at, at, rng.choice(("\n", "\n\n", " ", "  ", "x", ")")), "near", keep_cursor=True)
        elif choice == "insert":  # text from the documents, anywhere, of one or several lines
            source = rng.choice((SOURCE_A, SOURCE_B))
            a = rng.randrange(len(source))
            piece = source[a : a + rng.choice((1, 3, 8, 20, 60))]
            at = doc.cursor if rng.random() < 0.3 else rng.randrange(len(doc.text) + 1)
            self.edit(at, at, piece, "insert")
        elif choice == "delete":
            if rng.random() < 0.5:
                start = max(0, doc.cursor - rng.choice((1, 1, 2, 5)))  # backspace
                end = doc.cursor
            else:
                start = rng.randrange(len(doc.text) + 1)
                end = min(len(doc.text), start + rng.choice((1, 4, 15, 50)))
            self.edit(start, end, "", "delete")
        elif choice == "move":
            lines = doc.text.split("\n")
            line = rng.randrange(len(lines))
            text = lines[line]
            column = rng.choice((len(text), len(text) - len(text.lstrip()), rng.randrange(len(text) + 1)))
            doc.cursor = _offset(doc.text, line, column)
            self.events.append(f"move {doc.uri} {doc.cursor} ({line}:{column})")
            self.last = None
        elif choice == "switch":
            self.current = 1 - self.current
            self.events.append(f"switch to {self.doc.uri}")
            self.last = None
        elif choice == "settings":
            self.configure(
                {
                    "multiline": rng.choice(("auto", "auto", "always", "never")),
                    "midLine": rng.choice(("auto", "auto", "always", "never")),
                }
            )
        else:
            await self.idle(None if rng.random() < 0.7 else rng.choice((0.0, 0.005, 0.01, 0.03)))
            return
        if choice not in ("move", "switch", "settings") and rng.random() < 0.25:
            return  # no request for this edit: typed on before asking (a client that debounces)
        await self.request()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random weights in the official layout, ``lm_head`` rows of the sources' tokens scaled up (twice
    again for those with a line break): the answers are made of code tokens and often of several lines, so
    that multi-line prompts, post-processing and edits are exercised, not only single-line noise."""
    from refact_lsp.dev.checkpoints import (
        fixture_tokenizer_path,
        hub_config,
        random_state_dict,
        write_checkpoint,
    )
    from refact_lsp.engine.tokenizer import RefactTokenizer

    tokenizer = RefactTokenizer.from_file(fixture_tokenizer_path())
    tensors = random_state_dict(64, 4, 2, seed=1)
    code = sorted(set(tokenizer.encode_text(SOURCE_A + SOURCE_B)))
    lines = [token for token in code if "\n" in tokenizer.decode([token])]
    tensors["lm_head.weight"][code] *= 2.0
    tensors["lm_head.weight"][lines] *= 2.0
    config = hub_config(64, 4, 2, torch_dtype="float32")
    return write_checkpoint(tmp_path_factory.mktemp("fuzz") / "tiny", config, tensors)


async def _loaded(settings: dict[str, Any]) -> CompletionService:
    service = CompletionService(
        asyncio.get_running_loop(), _Events(), base_settings=settings, encoding="utf-32"
    )
    service.start()
    deadline = time.monotonic() + WAIT_S
    while (state := service.stats_snapshot()["model"])["state"] != "ready":
        assert state["state"] != "error" and time.monotonic() < deadline, state
        await asyncio.sleep(0.01)
    return service


@pytest.mark.parametrize("seed", _seeds())
async def test_the_speed_ups_never_change_what_is_suggested(checkpoint: Path, seed: int) -> None:
    profile = os.environ.get("REFACT_FUZZ_PROFILE") or ("whole", "window")[seed % 2]
    settings = {**BASE, **PROFILES[profile], "model": str(checkpoint)}
    on, off = await asyncio.gather(_loaded(settings), _loaded({**settings, **OFF}))
    assert on.settings.kvReuse and on.settings.completionCache and on.settings.speculative
    docs = [
        _Doc("file:///fuzz/inventory.py", SOURCE_A, SOURCE_A.index("    def value")),
        _Doc("file:///fuzz/text.py", SOURCE_B, SOURCE_B.index("    return pairs")),
    ]
    session = _Session(
        seed, profile, on, off, off._runner, docs, random.Random(seed)
    )  # (private: see _fresh)
    try:
        for doc in docs:
            for service in (on, off):
                service.open(doc.uri, "python", doc.version, doc.text)
        while session.requests < REQUESTS:
            await session.step()
        print(
            f"seed {seed} ({profile}): {session.requests} requests, {session.fresh_requests} also fresh, "
            f"{session.typed_ahead} typed ahead, {on.stats.cache_hits} cache hits, "
            f"{on.stats.speculative_hits} speculative hits, {on.stats.speculative_runs} speculations"
        )
        if VERBOSE:
            print("\n".join(session.events))
    finally:
        on.close()
        off.close()
