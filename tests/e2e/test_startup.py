"""``initialize`` is answered without torch or transformers; the command line parses as documented."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refact_lsp.cli import build_parser, cli_settings, is_loopback, parse_args, parse_tcp
from refact_lsp.server import RisingPercentage

# Feeds `initialize` to a fresh server in a fresh interpreter and reports what got imported.
INITIALIZE_PROBE = r"""
import asyncio, json, sys
from refact_lsp.server import create_server

server = create_server({"model": "/nowhere"})
sent = []

class Writer:
    def write(self, data):
        sent.append(data)
    def close(self):
        pass

server.protocol.set_writer(Writer())
request = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "processId": None, "rootUri": None,
    "capabilities": {"general": {"positionEncodings": ["utf-16", "utf-8"]}},
    "initializationOptions": {"maxNewTokens": 20}}}

async def main():
    server.protocol.handle_message(server.protocol.structure_message(request))
    for _ in range(50):
        if sent:
            break
        await asyncio.sleep(0.01)

asyncio.run(main())
body = b"".join(sent).split(b"\r\n\r\n", 1)[1]
print(json.dumps({"answer": json.loads(body),
                  "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def test_initialize_answers_without_importing_torch_or_transformers() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", INITIALIZE_PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["torch"] is False
    assert report["transformers"] is False
    caps = report["answer"]["result"]["capabilities"]
    assert caps["positionEncoding"] == "utf-8"  # preferred over the client's first choice
    assert caps["inlineCompletionProvider"] == {}  # InlineCompletionOptions, an object
    assert caps["completionProvider"] == {"resolveProvider": False}
    assert caps["textDocumentSync"]["change"] == 2  # incremental
    assert set(caps["executeCommandProvider"]["commands"]) == {"refact.prompt", "refact.stats"}


def test_tcp_addresses() -> None:
    assert parse_tcp("2087") == ("127.0.0.1", 2087)
    assert parse_tcp("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_tcp("[::1]:9000") == ("::1", 9000)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--tcp", "host:notaport"])


def test_options_come_from_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFACT_LSP_MODEL", "/env/model")
    monkeypatch.setenv("REFACT_LSP_DTYPE", "bfloat16")
    monkeypatch.setenv("REFACT_LSP_LOG_LEVEL", "DEBUG")
    args = build_parser().parse_args(["--stdio", "--model", "/flag/model"])
    assert cli_settings(args) == {"model": "/flag/model", "dtype": "bfloat16"}
    assert args.log_level == "debug"
    assert args.tcp is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"REFACT_LSP_LOG_LEVEL": "verbose"}, "REFACT_LSP_LOG_LEVEL='verbose'"),
        (["--device", "gpu"], {}, "--device"),
        ([], {"REFACT_LSP_DTYPE": "float64"}, "--dtype (or REFACT_LSP_DTYPE)"),
        (["--log-file", "/nonexistent-dir/refact.log"], {}, "--log-file (or REFACT_LSP_LOG_FILE)"),
        ([], {"REFACT_LSP_LOG_FILE": "/nonexistent-dir/refact.log"}, "No such file or directory"),
    ],
)
def test_a_bad_option_exits_at_once_with_a_usage_message(
    argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2  # argparse's usage error: nothing started
    assert message in capsys.readouterr().err


REPO = Path(__file__).resolve().parents[2]


def test_a_tcp_address_in_use_is_one_error_line_and_exit_code_1() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "refact_lsp", "--tcp", str(port), "--model", "/nowhere"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
        )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on tcp 127.0.0.1:{port}" in lines[0], proc.stderr
    assert "serving on" not in proc.stderr


def test_tcp_logs_the_address_it_bound(tmp_path: Path) -> None:
    """Port 0 lets the system choose: the log says which port that was, after binding."""
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "refact_lsp", "--tcp", "0", "--model", "/nowhere"], stderr=err, cwd=REPO
        )
    try:
        deadline = time.monotonic() + 30
        while "serving on" not in stderr.read_text():
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "the server never said where it listens"
            time.sleep(0.05)
        match = re.search(r"serving on tcp 127\.0\.0\.1:(\d+)$", stderr.read_text(), re.MULTILINE)
        assert match and int(match.group(1)) != 0, stderr.read_text()
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=10):
            pass  # it listens there; the connection's end of input ends the session
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait(10)


def _lifecycle(messages: list[dict]) -> tuple[int, list[dict]]:
    """Runs the real server on ``messages`` (framed, then end of input); its exit code and answers."""
    code, answers, _ = _lifecycle_logged(messages)
    return code, answers


def _lifecycle_logged(messages: list[dict]) -> tuple[int, list[dict], str]:
    """``_lifecycle``, and what the server logged (its standard error)."""
    stream = b"".join(
        b"Content-Length: %d\r\n\r\n" % len(body) + body
        for body in (json.dumps(m).encode() for m in messages)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "refact_lsp", "--stdio", "--model", "/nowhere"],
        input=stream,
        capture_output=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    answers = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in proc.stdout.split(b"Content-Length")[1:]]
    return proc.returncode, answers, proc.stderr.decode(errors="replace")


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}
EXIT = {"jsonrpc": "2.0", "method": "exit"}


def test_exit_without_shutdown_is_exit_code_1_and_with_it_0() -> None:
    assert _lifecycle([INITIALIZE, EXIT])[0] == 1
    shutdown = {"jsonrpc": "2.0", "id": 2, "method": "shutdown"}
    assert _lifecycle([INITIALIZE, shutdown, EXIT])[0] == 0


def test_a_request_before_initialize_gets_server_not_initialized() -> None:
    stats = {"jsonrpc": "2.0", "id": 7, "method": "workspace/executeCommand"}
    stats["params"] = {"command": "refact.stats", "arguments": []}
    opened = {"jsonrpc": "2.0", "method": "textDocument/didOpen"}
    opened["params"] = {
        "textDocument": {"uri": "file:///a.py", "languageId": "python", "version": 1, "text": ""}
    }
    code, answers = _lifecycle([stats, opened, INITIALIZE, {**stats, "id": 8}, EXIT])
    by_id = {answer.get("id"): answer for answer in answers}
    assert by_id[7]["error"]["code"] == -32002
    assert "result" in by_id[1]
    assert by_id[8]["result"]["documents"] == 0  # the didOpen before initialize was dropped
    assert code == 1


def test_a_loads_progress_rises_through_its_download_and_its_load() -> None:
    """LSP: a progress percentage "should be steadily rising" (the load used to start again at 0)."""
    with_download = RisingPercentage()
    steps = [("download", 0), ("download", 50), ("download", 100), ("load", 0), ("load", 50), ("load", 100)]
    assert [with_download(*step) for step in steps] == [0, 45, 90, 90, 95, 100]
    local = RisingPercentage()
    assert [local("load", p) for p in (0, 30, 20, 100)] == [0, 30, 30, 100]
    assert local("load", None) is None  # a step of unknown size: no percentage


def test_a_request_the_client_got_wrong_is_logged_as_a_warning_not_an_error() -> None:
    """refact.prompt for a document that is not open is answered -32602: the server did nothing wrong, and
    editors show its ERROR lines as errors. pygls' records stay redacted (no arguments, no traceback)."""
    import logging
    import sys

    from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams

    from refact_lsp.cli import RedactPygls

    def record(error: Exception) -> logging.LogRecord:
        try:
            raise error
        except Exception:
            return logging.LogRecord(
                "pygls.protocol.json_rpc",
                logging.ERROR,
                __file__,
                1,
                'failed "%s"',
                ("secret",),
                sys.exc_info(),
            )

    bad_params = record(JsonRpcInvalidParams("document not open: file:///a.py"))
    assert RedactPygls().filter(bad_params)
    assert (bad_params.levelname, bad_params.getMessage(), bad_params.exc_info) == (
        "WARNING",
        'failed "%s" [details at debug level]',
        None,
    )
    from refact_lsp.server import RequestFailed

    too_early = record(RequestFailed("the model is not ready (state loading)"))  # answered -32803
    assert RedactPygls().filter(too_early) and too_early.levelname == "WARNING"
    internal = record(JsonRpcInternalError("boom"))
    assert RedactPygls().filter(internal) and internal.levelname == "ERROR"


def test_a_request_for_a_method_the_server_does_not_implement_is_logged_as_a_warning_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client's request the server has no handler for is answered -32601, rightly: the server did nothing
    wrong, so no ERROR line (editors show those as errors). An internal error stays an ERROR."""
    unknown = {"jsonrpc": "2.0", "id": 2, "method": "$/unknownRequest", "params": {}}
    shutdown = {"jsonrpc": "2.0", "id": 3, "method": "shutdown"}
    code, answers, logged = _lifecycle_logged([INITIALIZE, unknown, shutdown, EXIT])
    by_id = {answer.get("id"): answer for answer in answers}
    assert by_id[2]["error"]["code"] == -32601 and code == 0, (answers, logged)
    assert "Method Not Found" in logged and " ERROR " not in logged, logged

    from pygls.exceptions import FeatureRequestError, JsonRpcInternalError

    from refact_lsp.server import create_server

    server = create_server({"model": "/nowhere"})
    with caplog.at_level("DEBUG", logger="refact_lsp"):
        server.report_server_error(JsonRpcInternalError("boom"), FeatureRequestError)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", "FeatureRequestError: boom")]


def test_enumeration_values_the_server_does_not_know_are_ignored_not_refused() -> None:
    """LSP: "the using side of an enumeration shouldn't fail on an enumeration value it doesn't know".
    vscode-languageclient sends ``trace: "compact"`` (``refact.trace.server`` set so), newer clients newer
    capability values: ``initialize`` used to be refused (-32602) and every later request with -32002."""
    capabilities = {
        "general": {"positionEncodings": ["utf-7", "utf-8"]},
        "textDocument": {"completion": {"completionItem": {"tagSupport": {"valueSet": [1, 2]}}}},
    }
    initialize = {**INITIALIZE, "params": {"capabilities": capabilities, "trace": "compact"}}
    stats = {"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand"}
    stats["params"] = {"command": "refact.stats", "arguments": []}
    shutdown = {"jsonrpc": "2.0", "id": 3, "method": "shutdown"}
    initialized = {"jsonrpc": "2.0", "method": "initialized"}
    code, answers = _lifecycle([initialize, initialized, stats, shutdown, EXIT])
    by_id = {answer.get("id"): answer for answer in answers}
    assert by_id[1]["result"]["capabilities"]["positionEncoding"] == "utf-8", by_id[1]
    assert "result" in by_id[2] and "result" in by_id[3] and code == 0

    from lsprotocol import types

    from refact_lsp.server import lenient_converter

    converter = lenient_converter()
    assert converter.structure("verbose", types.TraceValue) is types.TraceValue.Verbose
    with pytest.raises(ValueError):  # a value of the wrong type is still wrong
        converter.structure(5, types.TraceValue)
