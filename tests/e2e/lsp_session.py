"""Driving the real server process over stdio with pytest-lsp's client.

Clients are impersonated with the capabilities pytest-lsp ships (VS Code, Neovim, Emacs); the
position encoding each one ends up with is the one the server picks from what it offers. Models
are tiny checkpoints written at test time: a *scripted* one whose greedy answer to any FIM prompt
is a known text, and a *looping* one that never stops on its own (for cancellation).

Server processes are module-scoped: importing torch costs seconds per process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities
from pytest_lsp.client import make_test_lsp_client

REPO = Path(__file__).resolve().parents[2]
SCRIPTED_TEXT = "a + b"
LOOPING_TEXT = "spam eggs "
MULTILINE_TEXT = "    return a + b\n    # done"
MULTILINE_AFTER = "\nprint(total)"
"""What the multi-line checkpoint writes after ``MULTILINE_TEXT``: a line out of the block, never shown."""
READY_TIMEOUT_S = 90.0

# Settings every e2e server starts with: greedy decoding, so scripted checkpoints answer exactly.
BASE_SETTINGS: dict[str, Any] = {"temperature": 0, "debounceMs": 0}


@dataclass(frozen=True)
class Checkpoints:
    scripted: Path
    looping: Path
    multiline: Path
    missing: Path


def capabilities_of(client: str, encodings: list[str] | None = None) -> types.ClientCapabilities:
    """pytest-lsp's capabilities of ``client``; ``encodings`` replaces the offered position encodings."""
    caps = client_capabilities(client)
    if encodings is not None:
        if caps.general is None:
            caps.general = types.GeneralClientCapabilities()
        caps.general.position_encodings = encodings
    return caps


# name -> (pytest-lsp client, offered encodings or None for the client's own, expected encoding)
CLIENTS: dict[str, tuple[str, list[str] | None, str]] = {
    "vscode-utf16": ("visual-studio-code", None, "utf-16"),
    "neovim-utf8": ("neovim", None, "utf-8"),
    "emacs-utf32": ("emacs", ["utf-32", "utf-16"], "utf-32"),  # eglot on Emacs 30 without utf-8
}


class Session:
    """A started client with helpers for the requests the tests make."""

    def __init__(self, client: LanguageClient, encoding: str):
        self.client = client
        self.encoding = encoding
        self._version = 0

    # documents
    def open(self, uri: str, text: str, language_id: str = "python") -> None:
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)
            )
        )

    def change(self, uri: str, changes: list[Any]) -> None:
        self._version += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self._version + 1),
                content_changes=changes,
            )
        )

    def close(self, uri: str) -> None:
        self.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )

    # requests
    def inline_params(
        self, uri: str, line: int, character: int, selected=None
    ) -> types.InlineCompletionParams:
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic, selected_completion_info=selected
            ),
        )

    async def inline(
        self, uri: str, line: int, character: int, selected=None
    ) -> list[types.InlineCompletionItem]:
        result = await self.client.text_document_inline_completion_async(
            self.inline_params(uri, line, character, selected)
        )
        if result is None:
            return []
        return list(result.items if isinstance(result, types.InlineCompletionList) else result)

    async def completion(self, uri: str, line: int, character: int) -> types.CompletionList:
        result = await self.client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=line, character=character),
            )
        )
        assert isinstance(result, types.CompletionList)
        return result

    async def command(self, name: str, *arguments: Any) -> Any:
        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=name, arguments=list(arguments))
        )

    async def prompt(self, uri: str, line: int, character: int) -> dict[str, Any] | None:
        return await self.command(
            "refact.prompt",
            {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}},
        )

    async def raw_request(self, method: str, params: Any) -> Any:
        """Sends ``params`` as they are (no lsprotocol types): for malformed requests."""
        protocol = self.client.protocol
        msg_id = f"raw-{time.monotonic_ns()}"
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        protocol._request_futures[msg_id] = future
        protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return await asyncio.wait_for(asyncio.wrap_future(future), 30)

    async def stats(self) -> dict[str, Any]:
        return await self.command("refact.stats")

    async def wait_for(self, predicate, timeout: float = READY_TIMEOUT_S, what: str = "condition") -> dict:
        """Polls ``refact.stats`` until ``predicate(stats)``; returns those stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last stats: {stats}")
            await asyncio.sleep(0.05)

    async def wait_model(self, timeout: float = READY_TIMEOUT_S) -> dict:
        """Waits until the model is ready or failed; returns the stats."""
        return await self.wait_for(
            lambda s: s["model"]["state"] in ("ready", "error"), timeout, "the model to load"
        )

    def configure(self, settings: dict[str, Any]) -> None:
        """What a client does when the user edits settings: push them with didChangeConfiguration."""
        current = self.client.get_configuration(section="refact") or {}
        merged = {**current, **settings}
        self.client.set_configuration(merged, section="refact")
        self.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"refact": merged})
        )


async def start_session(
    client_name: str,
    *,
    encodings: list[str] | None = None,
    model: Path | None = None,
    initialization_options: dict[str, Any] | None = None,
    configuration: dict[str, Any] | None = None,
    args: list[str] | None = None,
    cwd: Path = REPO,
) -> Session:
    """Starts ``python -m refact_lsp`` in ``cwd`` and initializes it as ``client_name`` would."""
    client = make_test_lsp_client()
    if configuration is not None:
        client.set_configuration(configuration, section="refact")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("REFACT_LSP_MODEL", None)
    command = [sys.executable, "-m", "refact_lsp", "--stdio", *(args or [])]
    if model is not None:
        command += ["--model", str(model)]
    await client.start_io(*command, env=env, cwd=str(cwd))
    caps = capabilities_of(client_name, encodings)
    result = await client.initialize_session(
        types.InitializeParams(
            capabilities=caps,
            client_info=types.ClientInfo(name=f"pytest-lsp as {client_name}"),
            initialization_options=initialization_options,
            root_uri=REPO.as_uri(),
        )
    )
    encoding = result.capabilities.position_encoding
    return Session(client, str(getattr(encoding, "value", encoding) or "utf-16"))


async def stop_session(session: Session) -> None:
    try:
        await asyncio.wait_for(session.client.shutdown_session(), 15)
    finally:
        await session.client.stop()


SHADOWING_MODULES = ("random", "tempfile", "inspect", "json", "asyncio", "dataclasses", "typing")
"""Standard-library names a user's project may well hold a file of (random.py, inspect.py, ...)."""


def shadowing_project(folder: Path) -> Path:
    """A project folder whose files are named like standard-library modules, each of which ends the
    process when imported: ``python -m refact_lsp`` started there (as editors start servers, in the
    project) must import none of them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHADOWING_MODULES:
        (folder / f"{name}.py").write_text(f"raise SystemExit('the project\\'s {name}.py was imported')\n")
    return folder


SELECTED_LINE = "    return ad"
"""The line ``selected_item`` opens, a completion popup's item ``add_numbers(`` selected over ``ad``."""


def selected_item(session: Session, name: str) -> tuple[str, int, int, types.SelectedCompletionInfo]:
    """Opens a document with ``SELECTED_LINE`` as its line 1: (uri, start of ``ad``, cursor after it, the
    selected item that replaces ``ad``)."""
    uri = uri_of(name)
    session.open(uri, f"def add(a, b):\n{SELECTED_LINE}\n")
    start, cursor = len("    return "), len(SELECTED_LINE)
    selected = types.SelectedCompletionInfo(
        range=types.Range(
            start=types.Position(line=1, character=start), end=types.Position(line=1, character=cursor)
        ),
        text="add_numbers(",
    )
    return uri, start, cursor, selected


def uri_of(name: str) -> str:
    return (REPO / "tests" / "e2e" / "workspace" / name).as_uri()


def units(text: str, encoding: str) -> int:
    """Length of ``text`` in the given LSP position encoding."""
    if encoding == "utf-8":
        return len(text.encode("utf-8"))
    if encoding == "utf-16":
        return len(text.encode("utf-16-le")) // 2
    return len(text)
