"""Faults over the real server's stdio: broken checkpoints, out of memory mid-generation, a vanished client.

Each is reported to the user (window/showMessage), the server keeps serving, and it recovers once the
setting is fixed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refact_lsp.service.completion import DOWNLOAD_RETRY_S

from .fuzz_cases import (
    SANITY_POSITION,
    SANITY_TEXT,
    SANITY_URI,
    SCRIPTED_TEXT,
    SETTINGS,
    configure,
    wait_state,
)
from .rpc import RawServer


def _copy(checkpoint: Path, folder: Path) -> Path:
    shutil.copytree(checkpoint, folder)
    return folder


def broken_checkpoints(good: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (folder, a word the error message must contain)."""
    cases: dict[str, tuple[Path, str]] = {"missing folder": (root / "nowhere", "nowhere")}

    truncated = _copy(good, root / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases["truncated weights"] = (truncated, "model.safetensors")

    garbage = _copy(good, root / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    cases["garbage weights"] = (garbage, "model.safetensors")

    bad_json = _copy(good, root / "bad-json")
    (bad_json / "config.json").write_text("{ not json")
    cases["config not JSON"] = (bad_json, "config.json")

    wrong_type = _copy(good, root / "wrong-type")
    config = json.loads((wrong_type / "config.json").read_text())
    (wrong_type / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    cases["wrong model_type"] = (wrong_type, "llama")

    wrong_shape = _copy(good, root / "wrong-shape")
    (wrong_shape / "config.json").write_text(json.dumps({**config, "n_embd": config["n_embd"] * 2}))
    cases["config shapes differ from the tensors"] = (wrong_shape, "shape")

    not_an_object = _copy(good, root / "config-list")
    (not_an_object / "config.json").write_text("[1, 2]")
    cases["config not an object"] = (not_an_object, "JSON object")

    bad_size = _copy(good, root / "bad-size")
    (bad_size / "config.json").write_text(json.dumps({**config, "n_layer": "two"}))
    cases["config size not a number"] = (bad_size, "n_layer must be a positive integer")

    no_weights = _copy(good, root / "no-weights")
    (no_weights / "model.safetensors").unlink()
    cases["no weights file"] = (no_weights, "no model weights")

    no_tokenizer = _copy(good, root / "no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    cases["missing tokenizer"] = (no_tokenizer, "tokenizer")
    return cases


def notified(server: RawServer, since: int = 0, method: str = "window/showMessage") -> list[str]:
    """The messages the server showed (or, with ``method="window/logMessage"``, logged)."""
    return [n["params"]["message"] for n in server.notifications[since:] if n["method"] == method]


@pytest.fixture(scope="module")
def server(scripted_checkpoint: Path) -> Iterator[RawServer]:
    server = RawServer("--model", str(scripted_checkpoint))
    server.initialize(SETTINGS)
    assert server.wait_model()["model"]["state"] == "ready"
    server.open(SANITY_URI, SANITY_TEXT)
    yield server
    server.stop()


def test_broken_checkpoints_are_reported_and_fixing_the_setting_recovers(
    server: RawServer, scripted_checkpoint: Path, tmp_path: Path
) -> None:
    for name, (folder, word) in broken_checkpoints(scripted_checkpoint, tmp_path).items():
        seen = len(server.notifications)
        configure(server, model=str(folder))
        state = wait_state(server, folder)
        assert state["state"] == "error", name
        assert word.lower() in state["error"].lower(), (name, state["error"])
        messages = notified(server, seen)
        assert any("could not load" in m and str(folder) in m for m in messages), (name, messages)
        # still serving: requests are answered (empty while there is no model), nothing crashed
        assert server.inline(SANITY_URI, *SANITY_POSITION) == [], name
        # refact.prompt asked rightly, too early: RequestFailed (-32803, try again), not InvalidParams
        position = {"line": SANITY_POSITION[0], "character": SANITY_POSITION[1]}
        command = {
            "command": "refact.prompt",
            "arguments": [{"textDocument": {"uri": SANITY_URI}, "position": position}],
        }
        answer = server.wait(server.request("workspace/executeCommand", command))
        assert answer["error"]["code"] == -32803 and "not ready" in answer["error"]["message"], (name, answer)
        assert server.alive(), name
    configure(server, model=str(scripted_checkpoint))
    assert wait_state(server, scripted_checkpoint)["state"] == "ready"
    assert server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]


def test_fixing_the_files_on_disk_reloads_on_the_next_request(
    server: RawServer, scripted_checkpoint: Path, tmp_path: Path
) -> None:
    folder = _copy(scripted_checkpoint, tmp_path / "fixed-later")
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text("{ not json")
    configure(server, model=str(folder))
    assert wait_state(server, folder)["state"] == "error"
    time.sleep(1.1)  # requests look at the files at most once a second
    assert server.inline(SANITY_URI, *SANITY_POSITION) == []  # unchanged files: no new attempt
    assert server.stats()["model"]["state"] == "error"
    (folder / "config.json").write_text(config)  # the user fixes the file; no setting changes
    time.sleep(1.1)
    assert server.inline(SANITY_URI, *SANITY_POSITION) == []  # this request notices and reloads
    assert wait_state(server, folder)["state"] == "ready"
    assert server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
    configure(server, model=str(scripted_checkpoint))
    assert wait_state(server, scripted_checkpoint)["state"] == "ready"


def test_a_failed_download_is_tried_again_by_later_requests(
    scripted_checkpoint: Path, tmp_path: Path
) -> None:
    """No network when the editor starts (the hub offline): the error is shown once, requests try again
    after each wait of ``DOWNLOAD_RETRY_S`` (a failure again is only logged), and once the files can be
    had the model loads without any setting changed, and says so."""
    hub, repo = tmp_path / "hf", "refact-test/scripted"
    server = RawServer("--model", repo, env={"HF_HOME": str(hub), "HF_HUB_OFFLINE": "1"})

    def wait_for_retry(failed_at: float, attempt: int) -> None:
        time.sleep(max(0.0, failed_at + DOWNLOAD_RETRY_S[attempt] + 0.2 - time.monotonic()))

    try:
        server.initialize(SETTINGS)
        state = wait_state(server, repo)
        failed_at = time.monotonic()
        assert state["state"] == "error" and "could not download" in state["error"], state
        assert 0 < state["download_retry_in_s"] <= DOWNLOAD_RETRY_S[0]
        assert [m for m in notified(server) if "could not load" in m and repo in m]
        server.open(SANITY_URI, SANITY_TEXT)
        assert server.inline(SANITY_URI, *SANITY_POSITION) == []  # within the first wait: no new attempt
        assert server.stats()["model"]["state"] == "error"

        seen = len(server.notifications)
        wait_for_retry(failed_at, 0)
        assert server.inline(SANITY_URI, *SANITY_POSITION) == []  # this request starts a retry
        assert wait_state(server, repo)["state"] == "error"  # still offline and nothing cached
        failed_at = time.monotonic()
        assert not [m for m in notified(server, seen) if "could not load" in m]  # not shown again
        logged = notified(server, seen, "window/logMessage")
        assert [m for m in logged if "could not load" in m and repo in m]

        # the files become available (offline, the hub's cache is read): no setting changes
        snapshot = hub / "hub" / "models--refact-test--scripted" / "snapshots" / ("0" * 40)
        shutil.copytree(scripted_checkpoint, snapshot)
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
        seen = len(server.notifications)
        wait_for_retry(failed_at, 1)
        assert server.inline(SANITY_URI, *SANITY_POSITION) == []
        state = wait_state(server, repo)
        assert state["state"] == "ready" and state["download_retry_in_s"] is None
        assert server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
        assert [m for m in notified(server, seen) if "ready" in m and repo in m]
    finally:
        server.stop()


def test_out_of_memory_mid_generation_is_reported_and_retried_shorter(scripted_checkpoint: Path) -> None:
    """``REFACT_LSP_FAULT=oom-once``: the first generation runs out of memory inside the decode loop."""
    server = RawServer("--model", str(scripted_checkpoint), env={"REFACT_LSP_FAULT": "oom-once"})
    try:
        server.initialize(SETTINGS)
        assert server.wait_model()["model"]["state"] == "ready"
        server.open(SANITY_URI, "# a comment line\n" * 20 + SANITY_TEXT)
        assert server.inline(SANITY_URI, 21, SANITY_POSITION[1]) == [SCRIPTED_TEXT]
        messages = notified(server)
        assert any("out of memory" in m and "retrying with" in m for m in messages), messages
        stats = server.stats()
        assert stats["model"]["state"] == "ready"
        assert stats["last_run"]["prompt_tokens"] < 0.6 * server.prompt(SANITY_URI, 21, 11)["tokens"]
        assert server.inline(SANITY_URI, 21, SANITY_POSITION[1]) == [SCRIPTED_TEXT]  # and again, normally
    finally:
        server.stop()


def test_a_client_that_closes_the_pipe_while_loading_ends_the_server(scripted_checkpoint: Path) -> None:
    server = RawServer("--model", str(scripted_checkpoint))
    server.initialize(SETTINGS)  # the model starts loading in the background
    assert server.process.stdin is not None
    server.process.stdin.close()
    started = time.monotonic()
    code = server.process.wait(20)
    assert time.monotonic() - started < 15
    assert code == 0
    server.stop()


@pytest.mark.parametrize("linger", [False, True])
def test_a_tcp_client_that_leaves_with_unread_answers_ends_the_server(linger: bool) -> None:
    """Closing a socket with unread data in it (or with SO_LINGER 0) resets the connection instead of
    ending it: the server must end the session all the same, not keep listening for ever."""
    import select
    import socket
    import struct
    import subprocess
    import sys

    from .rpc import REPO

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "refact_lsp", "--tcp", str(port), "--model", "/nowhere"], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the server never listened"
                time.sleep(0.05)
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
        client.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body.encode())
        assert select.select([client], [], [], 30)[0], "no answer to initialize"  # arrived, left unread
        if linger:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert process.wait(20) == 0
    finally:
        process.kill()
        process.wait(10)


def test_a_client_that_vanishes_mid_generation_stops_the_model(tmp_path: Path) -> None:
    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    looping = write_scripted_checkpoint(tmp_path / "looping", "spam eggs ", loop=True)
    stderr = tmp_path / "stderr.log"
    server = RawServer("--model", str(looping), stderr_path=stderr)
    server.initialize({**SETTINGS, "maxNewTokens": 4000, "multiline": "always"})
    assert server.wait_model()["model"]["state"] == "ready"
    server.open(SANITY_URI, SANITY_TEXT)
    server.request(
        "textDocument/inlineCompletion",
        {
            "textDocument": {"uri": SANITY_URI},
            "position": {"line": 2, "character": 0},
            "context": {"triggerKind": 1},
        },
    )
    deadline = time.monotonic() + 30
    while not server.stats()["busy"]:
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.02)
    assert server.process.stdin is not None
    server.process.stdin.close()  # the editor died: its end of both pipes goes away
    started = time.monotonic()
    code = server.process.wait(30)
    assert time.monotonic() - started < 10, "the server kept generating for a client that is gone"
    assert code == 0
    server.stop()
    assert "Traceback" not in stderr.read_text(errors="replace")  # the engine thread ended quietly


# A client process that starts the server, asks for a never-ending completion and waits to be killed.
KILLED_CLIENT = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from rpc import RawServer
server = RawServer("--model", sys.argv[2], stderr_path=Path(sys.argv[3]))
server.initialize({"temperature": 0, "debounceMs": 0, "maxNewTokens": 4000, "multiline": "always"})
assert server.wait_model()["model"]["state"] == "ready"
server.open("file:///killed.py", "def f(a, b):\n    return \n")
server.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///killed.py"},
               "position": {"line": 2, "character": 0}, "context": {"triggerKind": 1}})
while not server.stats()["busy"]:
    time.sleep(0.02)
print(server.process.pid, flush=True)
time.sleep(600)
"""


def _process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for a parent that is gone (nothing runs any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_client_ends_the_server_mid_generation_without_a_traceback(tmp_path: Path) -> None:
    """The editor process is killed: both pipes close under the server while it generates."""
    import signal
    import subprocess
    import sys

    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    looping = write_scripted_checkpoint(tmp_path / "looping", "spam eggs ", loop=True)
    stderr = tmp_path / "server-stderr.log"
    here = str(Path(__file__).resolve().parent)
    client = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, here, str(looping), str(stderr)], stdout=subprocess.PIPE
    )
    server_pid = None
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        assert line.strip().isdigit(), f"the client never saw the generation start (exit {client.poll()})"
        server_pid = int(line)
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        deadline = time.monotonic() + 30
        while not _process_gone(server_pid):
            assert time.monotonic() < deadline, "the server kept running (and generating) for a dead client"
            time.sleep(0.05)
    finally:
        client.kill()
        client.wait()
        if server_pid is not None and not _process_gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)
    logged = stderr.read_text(errors="replace")
    assert "serving on stdio" in logged  # the log was captured
    assert "Traceback" not in logged, logged


def test_shutdown_with_a_handler_still_waiting_is_answered_and_the_exit_is_clean(tmp_path: Path) -> None:
    """A settings change makes the server ask the client for its settings, and this client's answer does
    not fit, so that handler still waits at shutdown. Cancelling it removes it from pygls' table of pending
    futures while pygls loops over that table: the shutdown failed ("dictionary changed size during
    iteration") and the exit code was 1."""
    log = tmp_path / "stderr.log"
    server = RawServer("--model", str(tmp_path / "nowhere"), stderr_path=log)
    try:
        server.call("initialize", {"processId": None, "capabilities": {"workspace": {"configuration": True}}})
        server.notify("initialized", {})
        server.notify("workspace/didChangeConfiguration", {"settings": {}})
        time.sleep(0.5)  # the handler asks, and gets an answer it cannot read
        assert server.call("shutdown") is None
        server.notify("exit")
        assert server.process.wait(15) == 0
    finally:
        server.stop()
    assert "changed size during iteration" not in log.read_text(encoding="utf-8")


class _LateConfiguration(RawServer):
    """A client that answers ``workspace/configuration`` only when told (``answer_configuration``)."""

    def __init__(self, *args: str, **kwargs: object):
        self.held: list[object] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _dispatch(self, message: dict) -> None:
        if message.get("method") == "workspace/configuration" and "id" in message:
            self.held.append(message["id"])
            return
        super()._dispatch(message)

    def answer_configuration(self, section: dict) -> None:
        self.send({"jsonrpc": "2.0", "id": self.held.pop(0), "result": [section]})

    def answer_configuration_then_push(self, answered: dict, pushed: dict) -> None:
        """The answer to the held pull and, right behind it in the same write, a push of newer settings
        (the user changed them just after the client answered)."""
        answer = {"jsonrpc": "2.0", "id": self.held.pop(0), "result": [answered]}
        push = {
            "jsonrpc": "2.0",
            "method": "workspace/didChangeConfiguration",
            "params": {"settings": pushed},
        }
        frames = b"".join(
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            for body in (json.dumps(message).encode("utf-8") for message in (answer, push))
        )
        stdin = self.process.stdin
        assert stdin is not None
        with self._write_lock:
            stdin.write(frames)
            stdin.flush()


def test_a_configuration_answered_after_the_wait_is_applied_when_it_comes(
    scripted_checkpoint: Path, tmp_path: Path
) -> None:
    """The server waits 5 s for ``workspace/configuration``, then loads with the settings it has; the
    answer that comes later is applied then (here: another model), not dropped with an error logged."""
    late = _copy(scripted_checkpoint, tmp_path / "late-model")
    stderr = tmp_path / "stderr.log"
    server = _LateConfiguration(stderr_path=stderr)
    try:
        capabilities = {"workspace": {"configuration": True}, "textDocument": {"inlineCompletion": {}}}
        options = {"refact": {**SETTINGS, "model": str(scripted_checkpoint)}}
        server.call(
            "initialize", {"processId": None, "capabilities": capabilities, "initializationOptions": options}
        )
        server.notify("initialized", {})
        # after the wait the model loads without an answer
        assert wait_state(server, scripted_checkpoint)["state"] == "ready"
        assert len(server.held) == 1
        server.answer_configuration({**SETTINGS, "model": str(late)})
        assert wait_state(server, late)["state"] == "ready"
        assert server.alive()
    finally:
        server.stop()
    log = stderr.read_text()
    assert "answered late" in log and " ERROR " not in log, log


def test_settings_pushed_right_after_a_pull_was_answered_are_not_undone_by_that_answer(
    scripted_checkpoint: Path,
) -> None:
    """The answer to ``workspace/configuration`` and a push of newer settings read together: the pull's
    handler resumed only after the push was applied, and its older answer replaced the newer settings
    (here the push switched Python off and suggestions still came)."""
    server = _LateConfiguration()
    try:
        capabilities = {"workspace": {"configuration": True}, "textDocument": {"inlineCompletion": {}}}
        settings = {**SETTINGS, "model": str(scripted_checkpoint)}
        server.call(
            "initialize",
            {"processId": None, "capabilities": capabilities, "initializationOptions": {"refact": settings}},
        )
        server.notify("initialized", {})
        deadline = time.monotonic() + 30
        while not server.held:
            assert time.monotonic() < deadline, "no workspace/configuration request"
            time.sleep(0.01)
        server.answer_configuration_then_push(
            settings, {"refact": {**settings, "languages": {"python": False}}}
        )
        assert wait_state(server, scripted_checkpoint)["state"] == "ready"
        server.open(SANITY_URI, SANITY_TEXT)
        assert server.inline(SANITY_URI, *SANITY_POSITION) == []
        configure(server, model=str(scripted_checkpoint), languages={"python": True})
        assert server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
        assert server.alive()
    finally:
        server.stop()


@pytest.mark.skipif(os.name != "posix", reason="the editor's process is watched on POSIX only")
def test_the_server_exits_when_the_editors_process_is_gone(tmp_path: Path) -> None:
    """LSP: "If the parent process is not alive then the server should exit", even while its input pipe
    stays open (another process inherited it). A processId that is not there at all (another PID
    namespace) is not watched."""
    editor = subprocess.Popen(["sleep", "60"])
    watched = RawServer("--model", str(tmp_path / "nowhere"))
    unwatched = RawServer("--model", str(tmp_path / "nowhere"))
    try:
        for server, pid in ((watched, editor.pid), (unwatched, 2**22 + 12345)):
            server.call("initialize", {"processId": pid, "capabilities": {}})
            server.notify("initialized", {})
        time.sleep(0.5)
        assert watched.alive()
        editor.kill()
        editor.wait()
        assert watched.process.wait(timeout=15) == 1  # as an exit without shutdown
        assert unwatched.alive() and "result" in unwatched.wait(unwatched.request("shutdown"))
    finally:
        editor.kill()
        watched.stop()
        unwatched.stop()


def test_output_of_libraries_on_stdout_does_not_corrupt_the_protocol(tmp_path: Path) -> None:
    """``REFACT_LSP_FAULT=stdout-noise``: a line printed and one written to file descriptor 1 in the
    server (as a library or a native library might) go to stderr; the protocol's stream stays whole."""
    stderr = tmp_path / "stderr.log"
    server = RawServer(
        "--model", str(tmp_path / "nowhere"), env={"REFACT_LSP_FAULT": "stdout-noise"}, stderr_path=stderr
    )
    try:
        server.call("initialize", {"processId": None, "capabilities": {}})
        server.notify("initialized", {})
        stats = server.call("workspace/executeCommand", {"command": "refact.stats", "arguments": []})
        assert stats["requests"] == 0 and server.alive()
    finally:
        assert server.stop() == 0
    log = stderr.read_text()
    assert "stdout noise from print" in log and "stdout noise from file descriptor 1" in log, log
