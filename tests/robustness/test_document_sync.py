"""Document sync as a property: random incremental edits in utf-8, utf-16 and utf-32 (CRLF, lone CR,
astral characters) leave the server with exactly the text a reference applied in the test.

The server's text is read back through ``refact.prompt`` at the end of the document, where the prompt's
prefix plus suffix is the whole document (lines joined with ``\\n``, as the model sees them). The
reference below is written independently of the server's code: a plain ``str`` edited at offsets
computed from each character's width in the negotiated encoding. Positions are valid ones, as real
clients send them (never inside a character); invalid ones are the fuzzer's business.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .rpc import RawServer

ENCODINGS = ["utf-8", "utf-16", "utf-32"]
EXAMPLES = 70
SETTINGS = {"temperature": 0, "debounceMs": 0}
END = 10**6  # a position past the end of the document: clamped to its last character
_EOL = re.compile(r"\r\n|\r|\n")
_PROMPT = re.compile(r"<fim_suffix>(.*)<fim_prefix>(.*)<fim_middle>", re.DOTALL)

pieces = st.sampled_from(
    ["a", "b", "xy", " ", "\t", "é", "€", "😀", "𝔘", "\u2028", "\r\n", "\n", "\r", "\r\r\n", "\n\r"]
)
texts = st.lists(pieces, max_size=8).map("".join)
# a change: (start seed, length seed, new text); a notification: 1 to 3 changes applied in order
changes = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), texts)
notifications = st.lists(changes, min_size=1, max_size=3)


def width(ch: str, encoding: str) -> int:
    """Code units of one character in an LSP position encoding."""
    if encoding == "utf-8":
        return len(ch.encode("utf-8"))
    if encoding == "utf-16":
        return 2 if ord(ch) > 0xFFFF else 1
    return 1


class Reference:
    """The client's copy of a document: a plain string edited at LSP positions."""

    def __init__(self, text: str, encoding: str):
        self.text = text
        self.encoding = encoding

    def _lines(self) -> list[tuple[int, str]]:
        """(start offset, content without terminator) per line."""
        starts = [0] + [m.end() for m in _EOL.finditer(self.text)]
        return list(zip(starts, _EOL.split(self.text), strict=True))

    def positions(self) -> list[tuple[int, int, int]]:
        """Every valid position in document order: (line, character in code units, str offset)."""
        out = []
        for number, (start, content) in enumerate(self._lines()):
            units = 0
            out.append((number, 0, start))
            for i, ch in enumerate(content):
                units += width(ch, self.encoding)
                out.append((number, units, start + i + 1))
        return out

    def change(self, start_seed: int, length_seed: int, new_text: str) -> dict[str, Any]:
        """Applies one edit chosen by the seeds; returns it as an LSP content change."""
        positions = self.positions()
        first = start_seed % len(positions)
        last = first + length_seed % (len(positions) - first)
        (sl, sc, so), (el, ec, eo) = positions[first], positions[last]
        self.text = self.text[:so] + new_text + self.text[eo:]
        return {
            "range": {"start": {"line": sl, "character": sc}, "end": {"line": el, "character": ec}},
            "text": new_text,
        }

    def as_model_sees_it(self) -> str:
        return _EOL.sub("\n", self.text)


@pytest.fixture(scope="module")
def servers(scripted_checkpoint: Path) -> Iterator[dict[str, RawServer]]:
    """One server per encoding (started together: each imports torch to load the model)."""
    started = {}
    for encoding in ENCODINGS:
        server = RawServer("--model", str(scripted_checkpoint))
        result = server.initialize(SETTINGS, encodings=[encoding])
        assert result["capabilities"]["positionEncoding"] == encoding
        started[encoding] = server
    for server in started.values():
        assert server.wait_model()["model"]["state"] == "ready"
    yield started
    for server in started.values():
        assert server.alive()
        server.stop()


URIS = (f"file:///sync/doc{i}.py" for i in itertools.count())


def server_text(server: RawServer, uri: str) -> str:
    prompt = server.prompt(uri, END, END)
    assert prompt is not None
    match = _PROMPT.fullmatch(prompt["prompt"])
    assert match is not None, prompt
    suffix, prefix = match.groups()
    return prefix + suffix


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(settings.get_profile("robustness"), max_examples=EXAMPLES)
@given(initial=texts, edits=st.lists(notifications, min_size=1, max_size=6))
def test_incremental_edits_match_a_reference(
    servers: dict[str, RawServer], encoding: str, initial: str, edits: list[list[tuple[int, int, str]]]
) -> None:
    server = servers[encoding]
    reference = Reference(initial, encoding)
    uri = next(URIS)
    server.open(uri, initial)
    for version, notification in enumerate(edits, start=2):
        content_changes = [reference.change(*change) for change in notification]
        server.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": version}, "contentChanges": content_changes},
        )
    try:
        assert server_text(server, uri) == reference.as_model_sees_it()
    finally:
        server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


def test_the_reference_counts_code_units_like_the_spec() -> None:
    """The reference itself: 😀 is 4 UTF-8 bytes, 2 UTF-16 units, 1 UTF-32 unit; CRLF is one break."""
    for encoding, units in (("utf-8", 4), ("utf-16", 2), ("utf-32", 1)):
        ref = Reference("a😀\r\nb", encoding)
        assert [(line, ch) for line, ch, _ in ref.positions()] == [
            (0, 0),
            (0, 1),
            (0, 1 + units),
            (1, 0),
            (1, 1),
        ]
        change = ref.change(2, 1, "")  # from after 😀 to the start of line 1: joins the lines
        assert change["range"]["end"] == {"line": 1, "character": 0}
        assert ref.text == "a😀b"
