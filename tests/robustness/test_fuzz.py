"""The fuzzer over the real server's stdio: hostile frames never kill it, every request is answered once,
with a result or a proper JSON-RPC error, and the server still completes correctly after each case."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings

from .fuzz_cases import (
    SANITY_POSITION,
    SANITY_URI,
    SCRIPTED_TEXT,
    CaseReport,
    Frame,
    check_answer,
    frames,
    run_case,
    start_fuzz_server,
)
from .rpc import RawServer

CASES = 300  # about 1,600 frames; bench/fuzz.py runs 100,000 cases


@pytest.fixture(scope="module")
def server(scripted_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawServer]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    server = start_fuzz_server(scripted_checkpoint, stderr_path=log)
    yield server
    assert server.alive(), f"the server died: {server.describe_exit()}\n{log.read_text()[-3000:]}"
    assert server.stop() == 0
    # a clean exit writes only log lines (the frozen model once made Triton's bindings report leaks)
    assert not [line for line in log.read_text().splitlines() if "leaked" in line or "Traceback" in line]


IDS = itertools.count(1_000_000)
REPORT = CaseReport()


@settings(settings.get_profile("robustness"), max_examples=CASES)
@given(case=frames(IDS))
def test_hostile_frames_are_answered_and_survived(server: RawServer, case: list[Frame]) -> None:
    run_case(server, case, REPORT)


def test_the_fuzzer_reached_the_server_handlers(server: RawServer) -> None:
    """The cases were not all rejected at the door: results and several kinds of errors came back."""
    assert REPORT.requests > 500
    assert REPORT.results > 50
    assert {-32602, -32601} <= set(REPORT.errors_by_code), REPORT.errors_by_code
    assert server.null_id_errors, "unreadable frames get a parse error or invalid request with a null id"
    assert {e["error"]["code"] for e in server.null_id_errors} <= {-32700, -32600}


def test_huge_documents_and_lines(server: RawServer) -> None:
    """A 10 MB document and a 1 MB line: opened, edited, completed in, closed; the server lives on."""
    big = "x = 1\n" * (10 * 1024 * 1024 // 6)
    server.open("file:///fuzz/big.py", big)
    end = big.count("\n")
    assert server.inline("file:///fuzz/big.py", end // 2, 5) is not None
    server.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": "file:///fuzz/big.py", "version": 2},
            "contentChanges": [
                {
                    "range": {"start": {"line": 7, "character": 0}, "end": {"line": end - 7, "character": 0}},
                    "text": "",
                }
            ],
        },
    )
    prompt = server.prompt("file:///fuzz/big.py", 13, 5)  # 7 lines kept above the deleted range, 7 below
    assert prompt is not None and prompt["prompt"].count("x = 1") == 14
    long_line = "y = [" + "1, " * (1024 * 1024 // 3) + "]"
    server.open("file:///fuzz/long.py", f"def f():\n{long_line}\n    return ")
    assert server.inline("file:///fuzz/long.py", 2, 11) == [SCRIPTED_TEXT]
    check_answer(
        server.wait(
            server.request(
                "textDocument/completion",
                {
                    "textDocument": {"uri": "file:///fuzz/long.py"},
                    "position": {"line": 1, "character": 500_000},
                },
            )
        )
    )
    for uri in ("file:///fuzz/big.py", "file:///fuzz/long.py"):
        server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
