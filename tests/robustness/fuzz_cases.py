"""What the fuzzer sends, as hypothesis strategies, and how one case is checked (shared with bench/fuzz.py).

A case is a short list of frames: well-formed LSP messages with hostile values (positions out of range,
unknown URIs, wrong types, NUL bytes, lone surrogates, CRLF, astral characters), messages of unknown
methods, cancels of requests in flight, and raw bodies that are not JSON, not UTF-8 or not a message. Every
frame carries a correct ``Content-Length``; wrong ones (which lose the message they frame, never the next)
are in ``framing_cases.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from .rpc import RawServer

SANITY_URI = "file:///fuzz/sanity.py"
SANITY_TEXT = "def f(a, b):\n    return \n"
SANITY_POSITION = (1, 11)
FUZZ_URIS = [f"file:///fuzz/doc{i}.py" for i in range(3)] + ["untitled:Untitled-1", "file:///never/opened.py"]
SAFE_SETTINGS_KEYS = [
    "maxNewTokens",
    "temperature",
    "topP",
    "debounceMs",
    "multiline",
    "midLine",
    "contextTokens",
]
"""Settings the fuzzer may scramble (never the model, so the sanity answer stays known)."""

REQUEST_METHODS = [
    "textDocument/inlineCompletion",
    "textDocument/completion",
    "workspace/executeCommand",
    "textDocument/hover",
    "refact/unknown",
    "$/unknownRequest",
    "workspace/symbol",
]
NOTIFICATION_METHODS = [
    "textDocument/didOpen",
    "textDocument/didChange",
    "textDocument/didClose",
    "textDocument/didSave",
    "workspace/didChangeConfiguration",
    "$/cancelRequest",
    "$/setTrace",
    "$/unknownNotification",
    "refact/unknownNotification",
]

HOSTILE_CHARS = st.sampled_from(
    ["\x00", "\r\n", "\r", "\n", "😀", "𝔘", "\ud800", "\udfff", "é", "\t", "\ufeff"]
)
texts = st.lists(st.text(max_size=12) | HOSTILE_CHARS, max_size=8).map("".join)
ints = st.integers(-3, 5) | st.integers(-(2**64), 2**64) | st.sampled_from([2**31 - 1, 2**31, 2**53, -1])
json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
maybe = st.one_of  # readability: maybe(valid, junk)
small = st.integers(0, 5)
positions = (
    st.fixed_dictionaries({"line": small, "character": small})
    | st.fixed_dictionaries({"line": ints, "character": ints})
    | json_values
)
uris = st.sampled_from(FUZZ_URIS + [SANITY_URI]) | texts
ranges = st.fixed_dictionaries({"start": positions, "end": positions})


@st.composite
def request_params(draw: st.DrawFn, method: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # wrong shape altogether
    if method == "workspace/executeCommand":
        return {
            "command": draw(st.sampled_from(["refact.prompt", "refact.stats", "refact.nope"]) | texts),
            "arguments": draw(
                st.lists(
                    st.fixed_dictionaries(
                        {"textDocument": st.fixed_dictionaries({"uri": uris}), "position": positions}
                    )
                    | json_values,
                    max_size=3,
                )
            ),
        }
    params: dict[str, Any] = {"textDocument": {"uri": draw(uris)}, "position": draw(positions)}
    if method == "textDocument/inlineCompletion":
        params["context"] = draw(
            st.fixed_dictionaries({"triggerKind": st.sampled_from([1, 2, 0, 7])}) | json_values
        )
    return params


@st.composite
def notification_params(draw: st.DrawFn, method: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    fuzz_uri = draw(st.sampled_from(FUZZ_URIS) | texts)  # never edits the sanity document
    if method == "textDocument/didOpen":
        return {
            "textDocument": {
                "uri": fuzz_uri,
                "languageId": draw(texts),
                "version": draw(ints),
                "text": draw(texts),
            }
        }
    if method == "textDocument/didChange":
        change = st.fixed_dictionaries({"range": ranges, "text": texts}) | st.fixed_dictionaries(
            {"text": texts}
        )
        return {
            "textDocument": {"uri": fuzz_uri, "version": draw(ints)},
            "contentChanges": draw(st.lists(change | json_values, max_size=3)),
        }
    if method == "textDocument/didClose":
        return {"textDocument": {"uri": fuzz_uri}}
    if method == "workspace/didChangeConfiguration":
        keys = st.sampled_from(SAFE_SETTINGS_KEYS)
        return {"settings": {"refact": draw(st.dictionaries(keys, json_values, max_size=3))}}
    if method == "$/cancelRequest":
        return {"id": draw(ints | texts)}
    return draw(json_values)


RAW_BODIES = st.sampled_from(
    [
        b"{",
        b"",
        b"null",
        b"[]",
        b"[1, 2]",
        b"5",
        b'"text"',
        b'{"jsonrpc": "2.0"}',
        b'{"jsonrpc": "1.0", "method": "textDocument/didOpen", "params": {}}',
        b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "textDocument/completion"}',
        b'{"jsonrpc": "2.0", "id": 1.5, "method": "textDocument/completion", "params": {}}',
        b'{"jsonrpc": "2.0", "result": 1, "id": "not-ours"}',
        b"\xff\xfe\xfd",
        b'{"jsonrpc": "2.0", "method": "$/setTrace", "params": {"value": "\xc3\x28"}}',
        b'{"jsonrpc": "2.0", "method": "x\x00y"}',
    ]
) | st.binary(max_size=64)


@dataclass
class Frame:
    """One frame: raw bytes, or a JSON message; ``request_id`` when an answer is owed."""

    body: bytes
    request_id: Any = None


@st.composite
def frames(draw: st.DrawFn, ids: Any) -> list[Frame]:
    """A case: 1 to 10 frames, requests with fresh ids (``ids`` is an iterator of unique ids)."""
    out: list[Frame] = []
    sent_ids: list[Any] = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["request", "request", "notification", "notification", "cancel", "raw"]))
        if kind == "raw":
            out.append(Frame(draw(RAW_BODIES)))
        elif kind == "cancel" and sent_ids:
            params = {"id": draw(st.sampled_from(sent_ids))}
            out.append(Frame(_dump({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": params})))
        elif kind == "request":
            method = draw(st.sampled_from(REQUEST_METHODS))
            msg_id = next(ids)
            sent_ids.append(msg_id)
            message = {
                "jsonrpc": "2.0",
                "id": msg_id,
                "method": method,
                "params": draw(request_params(method)),
            }
            out.append(Frame(_dump(message), msg_id))
        else:
            method = draw(st.sampled_from(NOTIFICATION_METHODS))
            message = {"jsonrpc": "2.0", "method": method, "params": draw(notification_params(method))}
            out.append(Frame(_dump(message)))
    return out


def _dump(message: Any) -> bytes:
    # surrogatepass: lone surrogates go out as the raw (invalid) UTF-8 a broken client could send
    return json.dumps(message, ensure_ascii=draw_ascii(message)).encode("utf-8", "surrogatepass")


def draw_ascii(message: Any) -> bool:
    """Escape non-ASCII as ``\\uXXXX`` for about half the messages (both forms must be read)."""
    return hash(json.dumps(message, sort_keys=True, default=str)) % 2 == 0


@dataclass
class CaseReport:
    frames: int = 0
    requests: int = 0
    results: int = 0
    errors_by_code: dict[int, int] = field(default_factory=dict)
    null_id_checked: int = 0


def check_answer(answer: dict[str, Any]) -> int | None:
    """Asserts a response is a result or a well-formed error; returns the error code (None: a result)."""
    assert ("result" in answer) != ("error" in answer), f"not one of result/error: {answer}"
    if "error" in answer:
        error = answer["error"]
        assert isinstance(error, dict), answer
        assert isinstance(error.get("code"), int), answer
        assert isinstance(error.get("message"), str), answer
        return error["code"]
    return None


def run_case(server: RawServer, case: list[Frame], report: CaseReport) -> None:
    """Sends a case, checks every request is answered once and properly, then the sanity completion."""
    for frame in case:
        server.send_bytes(frame.body)
    for frame in case:
        report.frames += 1
        if frame.request_id is None:
            continue
        report.requests += 1
        code = check_answer(server.wait(frame.request_id))
        if code is None:
            report.results += 1
        else:
            report.errors_by_code[code] = report.errors_by_code.get(code, 0) + 1
    assert not server.duplicates, f"answered twice: {server.duplicates}"
    for error in server.null_id_errors[report.null_id_checked :]:
        check_answer(error)
    report.null_id_checked = len(server.null_id_errors)
    restore_settings(server)
    assert server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT], (
        "the server no longer completes right"
    )
    assert server.alive()


SCRIPTED_TEXT = "a + b"
SETTINGS = {"temperature": 0, "debounceMs": 0, "maxNewTokens": 16}


def configure(server: RawServer, **settings: object) -> None:
    """``workspace/didChangeConfiguration`` with ``SETTINGS`` plus ``settings``."""
    server.notify("workspace/didChangeConfiguration", {"settings": {"refact": {**SETTINGS, **settings}}})


def wait_state(server: RawServer, model: Any, timeout: float = 60.0) -> dict:
    """The model part of the stats once the model setting ``model`` has loaded or failed."""
    return server.wait_model(timeout, source=model)["model"]


def start_fuzz_server(checkpoint: Any, stderr_path: Any = None) -> RawServer:
    """A server on the scripted checkpoint with the sanity document open."""
    server = RawServer("--model", str(checkpoint), stderr_path=stderr_path)
    server.initialize(SETTINGS)
    assert server.wait_model()["model"]["state"] == "ready"
    server.open(SANITY_URI, SANITY_TEXT)
    assert server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
    return server


def restore_settings(server: RawServer) -> None:
    """Undo what a case did to the settings."""
    server.notify("workspace/didChangeConfiguration", {"settings": {"refact": SETTINGS}})
