"""A raw JSON-RPC client over the real server's stdio: it can send bytes no LSP library would.

A reader thread parses the server's frames; responses are kept by id, notifications in a list. Used by the
fuzzer, the document-sync property test and the load test (and by ``bench/fuzz.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ANSWER_TIMEOUT_S = 60.0


class ServerDied(AssertionError):
    """The server process exited (or closed its output) while a test still talked to it."""


class RawServer:
    """``python -m refact_lsp --stdio`` driven with raw frames."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, stderr_path: Path | None = None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("REFACT_LSP_MODEL", None)
        self._stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "refact_lsp", "--stdio", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(REPO),
            env=full_env,
        )
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self.responses: dict[Any, dict[str, Any]] = {}
        self.null_id_errors: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.duplicates: list[Any] = []
        self.closed = False
        self._reader = threading.Thread(target=self._read, name="rpc-reader", daemon=True)
        self._reader.start()

    # Reading ---------------------------------------------------------------------------------------

    def _read(self) -> None:
        out = self.process.stdout
        assert out is not None
        try:
            while True:
                length = None
                while True:
                    line = out.readline()
                    if not line:
                        return
                    line = line.strip()
                    if not line:
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    continue
                message = json.loads(out.read(length))
                self._dispatch(message)
        finally:
            with self._lock:
                self.closed = True
                self._answered.notify_all()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:  # a request from the server: answer, never make it wait
            self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
        with self._lock:
            if "method" in message:
                self.notifications.append(message)
            elif message.get("id") is None:
                self.null_id_errors.append(message)
            else:
                key = message["id"]
                if key in self.responses:
                    self.duplicates.append(key)
                self.responses[key] = message
                self._answered.notify_all()

    # Writing ---------------------------------------------------------------------------------------

    def send_bytes(self, body: bytes, headers: bytes = b"") -> None:
        """One frame with a correct Content-Length around ``body`` (which need not be JSON or UTF-8)."""
        frame = b"Content-Length: %d\r\n%s\r\n" % (len(body), headers) + body
        stdin = self.process.stdin
        assert stdin is not None
        try:
            with self._write_lock:
                stdin.write(frame)
                stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise ServerDied(f"the server closed its input: {exc}; {self.describe_exit()}") from exc

    def _write_json(self, message: Any) -> None:
        self.send_bytes(json.dumps(message).encode("utf-8"))

    def send(self, message: Any) -> None:
        self._write_json(message)

    def request(self, method: str, params: Any = None, msg_id: Any = None) -> Any:
        """Sends a request and returns its id (answers are collected by :meth:`wait`)."""
        msg_id = next(self._ids) if msg_id is None else msg_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return msg_id

    def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def wait(self, msg_id: Any, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        """The response to ``msg_id`` (result or error); fails if the server dies or stays silent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while msg_id not in self.responses:
                if self.closed:
                    raise ServerDied(f"no answer to {msg_id!r}: {self.describe_exit()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no answer to request {msg_id!r} within {timeout} s")
                self._answered.wait(left)
            return self.responses[msg_id]

    def call(self, method: str, params: Any = None, timeout: float = ANSWER_TIMEOUT_S) -> Any:
        """A request that must succeed: its result."""
        answer = self.wait(self.request(method, params), timeout)
        if "error" in answer:
            raise AssertionError(f"{method} failed: {answer['error']}")
        return answer.get("result")

    # Session helpers -------------------------------------------------------------------------------

    def initialize(self, settings: dict[str, Any], encodings: list[str] | None = None) -> dict[str, Any]:
        caps: dict[str, Any] = {"textDocument": {"inlineCompletion": {}}}
        if encodings:
            caps["general"] = {"positionEncodings": encodings}
        result = self.call(
            "initialize",
            {"processId": None, "capabilities": caps, "initializationOptions": {"refact": settings}},
        )
        self.notify("initialized", {})
        return result

    def stats(self) -> dict[str, Any]:
        return self.call("workspace/executeCommand", {"command": "refact.stats", "arguments": []})

    def wait_model(self, timeout: float = 120.0, source: Any = None) -> dict[str, Any]:
        """Stats once the model (the one set to ``source``, when given) has loaded or failed."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            model = stats["model"]
            if model["state"] in ("ready", "error") and (source is None or model["source"] == str(source)):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"the model did not load: {model}")
            time.sleep(0.05)

    def open(self, uri: str, text: str, version: int = 1, language: str = "python") -> None:
        self.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}},
        )

    def inline(self, uri: str, line: int, character: int, timeout: float = ANSWER_TIMEOUT_S) -> list[str]:
        """Texts of the inline completion items at a position."""
        result = self.call(
            "textDocument/inlineCompletion",
            {
                "textDocument": {"uri": uri},
                "position": {"line": line, "character": character},
                "context": {"triggerKind": 2},
            },
            timeout,
        )
        items = result.get("items", []) if isinstance(result, dict) else (result or [])
        return [item["insertText"] for item in items]

    def prompt(self, uri: str, line: int, character: int) -> dict[str, Any] | None:
        return self.call(
            "workspace/executeCommand",
            {
                "command": "refact.prompt",
                "arguments": [
                    {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
                ],
            },
        )

    def alive(self) -> bool:
        return self.process.poll() is None and not self.closed

    def describe_exit(self) -> str:
        code = self.process.poll()
        return "still running" if code is None else f"exit code {code}"

    def stop(self, timeout: float = 15.0) -> int | None:
        """shutdown + exit when alive; kills it if it does not exit in time. Returns the exit code."""
        if self.alive():
            try:
                self.wait(self.request("shutdown"), timeout)
                self.notify("exit")
            except (AssertionError, OSError):
                pass
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._stderr is not subprocess.DEVNULL:
            self._stderr.close()
        return code
