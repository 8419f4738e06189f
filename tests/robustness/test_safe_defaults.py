"""Safe defaults, each shown on the real server process: no remote code, no pickles unless asked, TCP on
loopback, no network traffic with a local model, no document text in the logs above debug level."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fuzz_cases import (
    SANITY_POSITION,
    SANITY_TEXT,
    SANITY_URI,
    SCRIPTED_TEXT,
    SETTINGS,
    configure,
    wait_state,
)
from .rpc import REPO, RawServer

SECRET = "TOPSECRET_7f3a9c"
SITECUSTOMIZE = """
import os, socket
_log = os.environ["REFACT_TEST_CONNECT_LOG"]
with open(_log, "a") as f:
    f.write("sitecustomize loaded\\n")
def _wrap(original):
    def connect(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            with open(_log, "a") as f:
                f.write(f"connect {address!r}\\n")
        return original(self, address, *args)
    return connect
socket.socket.connect = _wrap(socket.socket.connect)
socket.socket.connect_ex = _wrap(socket.socket.connect_ex)
_getaddrinfo = socket.getaddrinfo
def _resolve(host, *args, **kwargs):
    with open(_log, "a") as f:
        f.write(f"resolve {host!r}\\n")
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _resolve
import atexit
def _at_exit():
    with open(_log, "a") as f:
        f.write(f"exit HF_HUB_DISABLE_TELEMETRY={os.environ.get('HF_HUB_DISABLE_TELEMETRY')}\\n")
atexit.register(_at_exit)
"""


@dataclass
class Watched:
    server: RawServer
    connect_log: Path
    stderr: Path


@pytest.fixture(scope="module")
def watched(scripted_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    """A server at the default log level whose every outgoing connection is recorded."""
    root = tmp_path_factory.mktemp("watched")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    connect_log, stderr = root / "connects.log", root / "stderr.log"
    env = {"PYTHONPATH": str(root / "site"), "REFACT_TEST_CONNECT_LOG": str(connect_log)}
    env.update({"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": ""})  # the server must not rely on these
    server = RawServer("--model", str(scripted_checkpoint), env=env, stderr_path=stderr)
    server.initialize(SETTINGS)
    assert server.wait_model()["model"]["state"] == "ready"
    server.open(SANITY_URI, SANITY_TEXT)
    yield Watched(server, connect_log, stderr)
    server.stop()


def test_remote_code_in_a_checkpoint_never_runs(
    watched: Watched, scripted_checkpoint: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    evil = tmp_path / "evil"
    shutil.copytree(scripted_checkpoint, evil)
    marker = tmp_path / "remote-code-ran"
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.Config", "AutoModelForCausalLM": "modeling_evil.Model"}
    (evil / "config.json").write_text(json.dumps(config))
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("modeling_evil.py", "configuration_evil.py", "__init__.py"):
        (evil / name).write_text(code)
    configure(watched.server, model=str(evil))
    assert wait_state(watched.server, evil)["state"] == "ready"
    assert watched.server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
    assert not marker.exists(), "code shipped with the checkpoint was executed"
    sources = "\n".join(p.read_text() for p in (REPO / "refact_lsp").rglob("*.py"))
    assert "trust_remote_code=True" not in sources


def test_pickle_weights_load_only_when_the_user_opts_in(
    watched: Watched, scripted_checkpoint: Path, tmp_path: Path
) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(scripted_checkpoint, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    configure(watched.server, model=str(pickled))
    state = wait_state(watched.server, pickled)
    assert state["state"] == "error" and "allowPickle" in state["error"], state
    configure(watched.server, model=str(pickled), allowPickle=True)
    deadline = time.monotonic() + 60
    while watched.server.stats()["model"]["state"] != "ready":
        assert time.monotonic() < deadline, watched.server.stats()["model"]
        time.sleep(0.05)
    assert watched.server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
    configure(watched.server, model=str(scripted_checkpoint), allowPickle=False)
    assert wait_state(watched.server, scripted_checkpoint)["state"] == "ready"


def test_document_text_is_not_logged_above_debug(watched: Watched) -> None:
    server = watched.server
    secret_doc = f"def f():\n    {SECRET} = 1\n    return \n"
    server.open("file:///safe/secret.py", secret_doc)
    assert server.inline("file:///safe/secret.py", 2, 11) == [SCRIPTED_TEXT]
    # failure paths that make pygls or the server log: bad params, an unknown JSON-RPC version, edits to a
    # document that is not open, text that cannot be encoded
    bad = {"textDocument": {"uri": 5, "text": SECRET}, "position": SECRET}
    answer = server.wait(server.request("textDocument/inlineCompletion", bad))
    assert answer["error"]["code"] == -32602
    server.send({"jsonrpc": "1.0", "method": "textDocument/didOpen", "params": {"text": SECRET}})
    server.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": "file:///safe/not-open.py", "version": 2},
            "contentChanges": [{"text": SECRET}],
        },
    )
    server.open("file:///safe/surrogate.py", f"x = '\ud800{SECRET}'\n")
    server.inline("file:///safe/surrogate.py", 0, 5)
    server.send_bytes(f'{{"jsonrpc": "2.0", "method": "{SECRET}" '.encode())  # not JSON
    server.inline(SANITY_URI, *SANITY_POSITION)  # everything before it has been handled
    logged = watched.stderr.read_text(errors="replace")
    assert "[details at debug level]" in logged, "pygls logged nothing: the failure paths were not reached"
    assert SECRET not in logged
    for note in server.notifications:
        if note["method"] in ("window/logMessage", "window/showMessage"):
            assert SECRET not in note["params"]["message"]


def test_nothing_leaves_the_machine_with_a_local_model(watched: Watched) -> None:
    assert watched.server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
    lines = watched.connect_log.read_text().splitlines()
    assert "sitecustomize loaded" in lines, "the connection recorder was not active"
    assert [line for line in lines if line.startswith(("connect", "resolve"))] == []


def test_hub_telemetry_is_turned_off_by_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before anything imports huggingface_hub (which reads it once); a user's own value would win."""
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "connects.log"
    server = RawServer(env={"PYTHONPATH": str(tmp_path), "REFACT_TEST_CONNECT_LOG": str(log)})
    server.call("initialize", {"processId": None, "capabilities": {}})
    assert server.process.stdin is not None
    server.process.stdin.close()  # the client leaves: the interpreter exits normally and runs atexit
    assert server.process.wait(30) == 0
    server.stop()
    assert "exit HF_HUB_DISABLE_TELEMETRY=1" in log.read_text().splitlines()


class _RunsCode:
    """Pickles as a call that writes ``marker``: what a hostile ``pytorch_model.bin`` does when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_pickle_that_would_run_code_is_refused_even_when_allowed(
    watched: Watched, scripted_checkpoint: Path, tmp_path: Path
) -> None:
    """allowPickle still unpickles tensors only (``torch.load(weights_only=True)``)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    hostile, marker = tmp_path / "hostile", tmp_path / "pickle-code-ran"
    shutil.copytree(scripted_checkpoint, hostile)
    tensors = load_file(hostile / "model.safetensors")
    torch.save({**tensors, "lm_head.weight": _RunsCode(marker)}, hostile / "pytorch_model.bin")
    (hostile / "model.safetensors").unlink()
    configure(watched.server, model=str(hostile), allowPickle=True)
    state = wait_state(watched.server, hostile)
    assert state["state"] == "error", state
    assert "not a plain file of tensors" in state["error"] and "safetensors" in state["error"], state
    assert not marker.exists(), "unpickling ran code"
    assert watched.server.inline(SANITY_URI, *SANITY_POSITION) == []  # no model, still serving
    configure(watched.server, model=str(scripted_checkpoint), allowPickle=False)
    assert wait_state(watched.server, scripted_checkpoint)["state"] == "ready"
    assert watched.server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.parametrize(("where", "loopback"), [("{port}", True), ("0.0.0.0:{port}", False)])
def test_tcp_binds_to_loopback_unless_told_otherwise(where: str, loopback: bool, tmp_path: Path) -> None:
    port = _free_port()
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "refact_lsp", "--tcp", where.format(port=port)], cwd=REPO, stderr=err
        )
    try:
        deadline = time.monotonic() + 30
        while not _listening_addresses(port):
            assert process.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)
        addresses = _listening_addresses(port)
        if loopback:
            assert addresses == {"0100007F"}, addresses  # 127.0.0.1 only
            assert "non-loopback" not in stderr.read_text()
        else:
            assert addresses == {"00000000"}, addresses
            assert "non-loopback" in stderr.read_text()
    finally:
        process.terminate()
        process.wait(10)
