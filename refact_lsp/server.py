"""The language server: thin pygls handlers over :class:`~refact_lsp.service.completion.CompletionService`.

Handlers only translate between lsprotocol types and the service. Importing this module does not
import torch or transformers: ``initialize`` answers at once and the model loads in the background
after ``initialized``.

Two pygls defaults are replaced in :class:`RefactProtocol`:

- document sync goes to the service's own document store (pygls' workspace copies every document,
  clamps positions one short and costs O(document) per edit);
- the position encoding is chosen by this server's preference (utf-8, then utf-32, else utf-16)
  among those the client offers, not by the client's order.

Requests whose parameters do not match the protocol are answered with InvalidParams instead of
being dropped.
Objects that are no JSON-RPC message get InvalidRequest; the reader loop is this server's own
(:mod:`refact_lsp.transport`).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import threading
import uuid
from typing import Any

import attrs
import cattrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcMethodNotFound
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, default_converter, lsp_method

from refact_lsp import __version__
from refact_lsp.dev.faults import maybe_inject
from refact_lsp.service.completion import (
    CompletionService,
    NotReady,
    Selection,
    ServiceError,
    Suggestion,
)
from refact_lsp.transport import serve_stdio, serve_tcp

log = logging.getLogger(__name__)
EXIT_WAIT_S = 5.0
"""At exit, how long the engine thread may take to stop (a generation stops within one decode step)."""

SECTION = "refact"
SERVER_NOT_INITIALIZED = types.ErrorCodes.ServerNotInitialized.value
PROMPT_COMMAND = "refact.prompt"
STATS_COMMAND = "refact.stats"
CONFIGURATION_TIMEOUT_S = 5.0
PROGRESS_CREATE_TIMEOUT_S = 5.0
EDITOR_CHECK_S = 3.0
"""How often the server looks whether the editor's process (``processId``) is still there."""
DOWNLOAD_SHARE = 90
"""Of a load's progress bar, the share of the download that comes before the load (if one does)."""


class RequestFailed(JsonRpcException):
    """LSP's RequestFailed: the request was right but cannot be served now (the model is not loaded yet)."""

    CODE = types.LSPErrorCodes.RequestFailed.value


ENCODING_PREFERENCE = (
    types.PositionEncodingKind.Utf8,
    types.PositionEncodingKind.Utf32,
    types.PositionEncodingKind.Utf16,
)


def choose_position_encoding(capabilities: types.ClientCapabilities | None) -> types.PositionEncodingKind:
    """utf-8 if the client offers it, then utf-32, else utf-16 (the LSP default)."""
    general = capabilities.general if capabilities else None
    offered = set(general.position_encodings or []) if general else set()
    for encoding in ENCODING_PREFERENCE:
        if encoding in offered:
            return encoding
    return types.PositionEncodingKind.Utf16


@attrs.define
class _InvalidRequest:
    """A request whose params could not be read: answered with the error by ``handle_message``."""

    id: int | str
    method: str
    error: JsonRpcException
    jsonrpc: str = "2.0"


class _FutureTable(dict):
    """pygls' table of pending handler futures, whose ``items()`` is a snapshot. pygls' shutdown cancels
    the pending futures while it loops over ``items()``; cancelling a ``concurrent.futures.Future`` runs its
    callbacks at once, and those remove it from the table (``_execute_handler``'s ``forget``, pygls' own
    answer): "dictionary changed size during iteration", the shutdown unanswered, the exit code 1. Written by
    hand: pygls (2.1) iterates the live dict."""

    def items(self):  # type: ignore[override]
        return list(super().items())


class RefactProtocol(LanguageServerProtocol):
    """pygls' protocol with the document store, encoding choice and bad-params handling of this server."""

    _server: RefactLanguageServer
    _client_gone = False
    _initialize_received = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._request_futures = _FutureTable(self._request_futures)

    def _send_data(self, data: Any) -> None:
        """pygls' send, except that a client that is gone (broken pipe) ends the session quietly: pygls
        re-raises the error from inside asyncio callbacks, which prints a traceback per pending answer."""
        if self._client_gone:
            return
        try:
            super()._send_data(data)
        except BrokenPipeError:
            self._client_gone = True
            log.info("the client is gone (broken pipe): nothing more is sent")
            if (stop := getattr(self._server, "_stop_event", None)) is not None:
                stop.set()

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        self._initialize_received = True
        encoding = choose_position_encoding(params.capabilities)
        result = yield from super().lsp_initialize(params)
        result.capabilities.position_encoding = encoding
        self.server_capabilities.position_encoding = encoding
        return result

    # Document sync: the user handlers only; pygls' workspace keeps no copy.
    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None

    def structure_message(self, data: dict[str, Any]):
        if (problem := envelope_problem(data)) is not None:
            return _InvalidEnvelope(_valid_id(data.get("id")), problem)
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" in data and isinstance(data.get("method"), str) and isinstance(data["id"], int | str):
                return _InvalidRequest(data["id"], data["method"], exc)
            raise

    def handle_message(self, message):
        if isinstance(message, _InvalidEnvelope):
            log.warning("invalid request: %s", message.problem)
            self._send_invalid_request(message.id, message.problem)
            return
        if self._shutdown and getattr(message, "method", types.EXIT) != types.EXIT and hasattr(message, "id"):
            self._send_invalid_request(message.id, "the server is shutting down")  # LSP: error, not silence
            return
        method = getattr(message, "method", None)
        if method == types.INITIALIZE and self._initialize_received and hasattr(message, "id"):
            # LSP: initialize is sent once; a second one would switch the position encoding under the
            # documents' positions and merge its options as if the session began again
            self._send_invalid_request(message.id, "initialize may only be sent once")
            return
        if not self._initialize_received and method not in (None, types.INITIALIZE, types.EXIT):
            # LSP: a request before initialize gets ServerNotInitialized, a notification is dropped
            if hasattr(message, "id"):
                self.send_error(message.id, SERVER_NOT_INITIALIZED, f"{method}: not initialized yet")
            else:
                log.warning("dropped %s: the server is not initialized", method)
            return
        if isinstance(message, _InvalidRequest):
            log.warning("invalid params for %s (request %s)", message.method, message.id)
            error = message.error
            if not isinstance(error, JsonRpcInvalidParams):
                error = JsonRpcInvalidParams(f"invalid params for {message.method}")
            self._send_response(message.id, error=error.to_response_error())
            return
        super().handle_message(message)

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        """pygls' handler call, except that a handler's future is forgotten once it is done. pygls forgets
        those of requests when it answers them, never those of notifications and of the handlers its own
        generator handlers call: one per keystroke (didChange) otherwise, kept for good."""
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        future = self._request_futures.get(msg_id)
        if future is not None:
            futures = self._request_futures

            def forget(done: Any) -> None:  # runs after pygls' own callback (which answers a request)
                if futures.get(msg_id) is done:
                    del futures[msg_id]

            future.add_done_callback(forget)

    def _send_invalid_request(self, msg_id: int | str | None, problem: str) -> None:
        self.send_error(msg_id, types.ErrorCodes.InvalidRequest.value, f"Invalid Request: {problem}")

    def send_error(self, msg_id: int | str | None, code: int, message: str) -> None:
        """A JSON-RPC error response, also for an id pygls would not answer (``None``: unknown)."""
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


def is_answered_client_error(error: BaseException | None) -> bool:
    """Whether ``error`` was a request's answer that puts no fault on the server: invalid params (-32602),
    a request that cannot be served yet (-32803), or one for a method the server does not implement
    (-32601; no handler raises it)."""
    return isinstance(error, JsonRpcInvalidParams | RequestFailed | JsonRpcMethodNotFound)


def envelope_problem(data: dict[str, Any]) -> str | None:
    """What makes ``data`` no JSON-RPC 2.0 request, notification or response (None: nothing)."""
    if data.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    if "method" in data:
        if not isinstance(data["method"], str):
            return "method must be a string"
        if "id" in data and _valid_id(data["id"]) is None:
            return "id must be an integer or a string"
        return None
    if "id" in data and ("result" in data or "error" in data):
        return None  # a response (one with a bad id is logged by pygls, never answered)
    return "neither a request, a notification nor a response"


def _valid_id(value: Any) -> int | str | None:
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


@attrs.define
class _InvalidEnvelope:
    """A JSON object that is no JSON-RPC message: answered with InvalidRequest (id null if unknown)."""

    id: int | str | None
    problem: str
    jsonrpc: str = "2.0"


class RisingPercentage:
    """One bar for a load's stages: a download's 0-100 % is its first ``DOWNLOAD_SHARE`` %, the load's
    0-100 % the rest (all of it without a download), and the result never goes down (LSP: "should be
    steadily rising"; clients may ignore a value that is not)."""

    def __init__(self) -> None:
        self.last = 0
        self.downloaded = False

    def __call__(self, stage: str, percentage: int | None) -> int | None:
        if percentage is None:
            return None
        if stage == "download":
            self.downloaded = True
            percentage = percentage * DOWNLOAD_SHARE // 100
        elif self.downloaded:
            percentage = DOWNLOAD_SHARE + percentage * (100 - DOWNLOAD_SHARE) // 100
        self.last = max(self.last, min(100, percentage))
        return self.last


class LoadProgress:
    """``$/progress`` for one model load: create the token, begin, report..., end, in order."""

    def __init__(self, server: RefactLanguageServer, title: str, message: str):
        self._server = server
        self._queue: asyncio.Queue[tuple[str, str, int | None]] = asyncio.Queue()
        self._rising = RisingPercentage()
        self._task = asyncio.ensure_future(self._run(title, message))

    def report(self, stage: str, message: str, percentage: int | None) -> None:
        self._queue.put_nowait(("report", f"{stage}: {message}", self._rising(stage, percentage)))

    def end(self, message: str) -> None:
        self._queue.put_nowait(("end", message, None))

    async def _run(self, title: str, message: str) -> None:
        progress = self._server.work_done_progress
        token = f"refact-load-{uuid.uuid4()}"
        created = asyncio.ensure_future(progress.create_async(token))
        try:  # shielded: a late answer is dropped quietly (cancelled, pygls would log an error)
            await asyncio.wait_for(asyncio.shield(created), PROGRESS_CREATE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the client refused or did not answer: no progress
            created.add_done_callback(lambda _: progress.tokens.pop(token, None))  # (a late answer adds it)
            log.info("client did not create a progress token: %s", exc)
            return
        progress.begin(token, types.WorkDoneProgressBegin(title=title, message=message, percentage=0))
        while True:
            kind, text, percentage = await self._queue.get()
            if kind == "end":
                progress.end(token, types.WorkDoneProgressEnd(message=text))
                progress.tokens.pop(token, None)  # pygls keeps every token's future otherwise
                return
            progress.report(token, types.WorkDoneProgressReport(message=text, percentage=percentage))


def lenient_converter() -> cattrs.Converter:
    """pygls' converter, except that an enumeration value lsprotocol does not know (of the right type) is
    kept as it is instead of failing the whole message. LSP: "the using side of an enumeration shouldn't
    fail on an enumeration value it doesn't know"; vscode-languageclient sends ``trace: "compact"`` when
    the user sets ``refact.trace.server`` so, and newer clients newer capability values. Without this an
    ``initialize`` carrying one is refused and the session is dead."""
    converter = default_converter()

    def structure(value: Any, cls: type[enum.Enum]) -> Any:
        try:
            return cls(value)
        except ValueError:
            kind = int if issubclass(cls, int) else str
            if isinstance(value, kind) and not isinstance(value, bool):
                return value
            raise

    for cls in vars(types).values():
        if isinstance(cls, type) and issubclass(cls, enum.Enum) and cls.__module__ == types.__name__:
            converter.register_structure_hook(cls, structure)
    return converter


class RefactLanguageServer(LanguageServer):
    """The pygls server holding the completion service and the negotiated encoding."""

    def __init__(self, cli_settings: dict[str, Any] | None = None):
        super().__init__(
            "refact-lsp", __version__, protocol_cls=RefactProtocol, converter_factory=lenient_converter
        )
        self.cli_settings = dict(cli_settings or {})
        self._service: CompletionService | None = None
        self._progress: LoadProgress | None = None
        self._shown_generation_problem = False
        self._quiet_load: str | None = None  # the source of a quiet retry without a progress bar yet
        self._editor_watch: asyncio.Future[None] | None = None
        self._pulls = 0  # workspace/configuration requests sent
        self._answered_pull = 0  # the latest of them whose answer was applied
        self._pushes = 0  # didChangeConfiguration notifications with the section, applied

    def start_io(self, stdin=None, stdout=None) -> int:
        """Serves over stdio with this server's framing (see :mod:`refact_lsp.transport`); the exit code."""
        return serve_stdio(self, stdin, stdout)

    def start_tcp(self, host: str, port: int) -> int:
        """Serves over TCP with this server's framing (see :mod:`refact_lsp.transport`); the exit code."""
        return serve_tcp(self, host, port)

    def stop_engine(self, timeout: float = EXIT_WAIT_S) -> bool:
        """After the transport closed: stops generation and waits for the engine thread (True: ended)."""
        if self._service is None:
            return True
        return self._service.scheduler.stop_and_join(timeout)

    @property
    def service(self) -> CompletionService:
        if self._service is None:
            self._service = CompletionService(
                asyncio.get_running_loop(), events=self, base_settings=self.cli_settings
            )
        return self._service

    def report_server_error(self, error: Exception, source) -> None:
        """Protocol noise (a bad notification, unreadable JSON) is logged, not shown to the user.

        A frame that is not JSON gets JSON-RPC's parse error, one that is JSON but no message gets an
        invalid-request error (both with a null id: there is no id to answer).
        """
        if source is JsonRpcException and isinstance(error, ValueError | AttributeError | TypeError):
            parse_error = isinstance(error, ValueError)  # JSONDecodeError, UnicodeDecodeError
            code, what = (-32700, "Parse error") if parse_error else (-32600, "Invalid Request")
            log.warning("%s: a frame that is not a JSON-RPC message (%s)", what, type(error).__name__)
            self.protocol.send_error(None, code, f"{what}: {error}"[:200])
            return
        # a request whose params were wrong (refact.prompt for a document not open) was answered -32602, one
        # that came before the model was ready -32803, one for a method the server lacks -32601: the server
        # did nothing wrong
        level = logging.WARNING if is_answered_client_error(error) else logging.ERROR
        log.log(level, "%s: %s", getattr(source, "__name__", source), error)

    # Events from the service (always called on the event loop).
    def model_loading(self, source: str, quiet: bool = False) -> None:
        """A load starts: a progress bar, except for a quiet retry (its bar comes once a download runs)."""
        if self._progress is not None:
            self._progress.end("superseded by a new load")
            self._progress = None
        self._quiet_load = source if quiet else None
        if not quiet:
            self._start_progress(source)

    def _start_progress(self, source: str) -> None:
        if self._client_supports("window.work_done_progress"):
            self._progress = LoadProgress(self, "Refact", f"loading {source}")

    def model_progress(self, stage: str, message: str, percentage: int | None) -> None:
        downloading = percentage or (stage == "download" and percentage is None)  # not the 0 % start
        if self._quiet_load is not None and downloading:  # a retry that is downloading after all
            self._start_progress(self._quiet_load)
            self._quiet_load = None
        if self._progress is not None:
            self._progress.report(stage, message, percentage)

    def model_loaded(self, source: str, error: str | None, quiet: bool = False) -> None:
        """Shown: a failure, and a success after a quiet retry (the failure was shown); else logged."""
        self._quiet_load = None
        if self._progress is not None:
            self._progress.end("failed" if error else "ready")
            self._progress = None
        if error:
            message = f"Refact: could not load the model {source}: {error}"
            if quiet:
                kind = types.MessageType.Warning
                self.window_log_message(types.LogMessageParams(type=kind, message=message))
            else:
                kind = types.MessageType.Error
                self.window_show_message(types.ShowMessageParams(type=kind, message=message))
        else:
            message = f"Refact: model {source} ready"
            kind = types.MessageType.Info
            if quiet:
                self.window_show_message(types.ShowMessageParams(type=kind, message=message))
            self.window_log_message(types.LogMessageParams(type=kind, message=message))

    def generation_problem(self, message: str) -> None:
        """Shown once per session (an out-of-memory tends to repeat), logged every time."""
        kind = types.MessageType.Warning
        if not self._shown_generation_problem:
            self._shown_generation_problem = True
            self.window_show_message(types.ShowMessageParams(type=kind, message=f"Refact: {message}"))
        self.window_log_message(types.LogMessageParams(type=kind, message=f"Refact: {message}"))

    def settings_error(self, message: str) -> None:
        self.window_show_message(
            types.ShowMessageParams(type=types.MessageType.Error, message=f"Refact settings: {message}")
        )

    def _client_supports(self, path: str) -> bool:
        value: Any = self.client_capabilities
        for name in path.split("."):
            value = getattr(value, name, None)
            if value is None:
                return False
        return bool(value)

    def pushed_settings(self, values: dict[str, Any]) -> None:
        """A ``didChangeConfiguration`` with the ``refact`` section: applied, and newer than the answer to
        any pull sent before it (see :meth:`pull_configuration`)."""
        self._pushes += 1
        apply_settings(self, values, reload=True)

    async def pull_configuration(self) -> dict[str, Any] | None:
        """``workspace/configuration`` for section ``refact``, if the client supports it. None also when
        the client pushed the section while the pull was out: the answer may have been read before the
        push, but the pull's handler resumes after the push was applied, and the older settings must not
        replace the newer ones (a client pushes the whole section again on each change)."""
        if not self._client_supports("workspace.configuration"):
            return None
        self._pulls += 1
        pull, pushes = self._pulls, self._pushes
        params = types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
        answer = asyncio.ensure_future(self.workspace_configuration_async(params))
        try:  # shielded: an answer after the wait is still taken (cancelled, pygls would log an error)
            value = await asyncio.wait_for(asyncio.shield(answer), CONFIGURATION_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "workspace/configuration: no answer within %.0f s; the settings in force stay until it comes",
                CONFIGURATION_TIMEOUT_S,
            )
            answer.add_done_callback(functools.partial(self._late_configuration, pull, pushes))
            return None
        except Exception as exc:  # noqa: BLE001 - a client without an answer keeps the current settings
            log.warning("workspace/configuration failed: %s", exc)
            return None
        if self._pushes != pushes:
            log.info("workspace/configuration answered, but settings were pushed since: keeping those")
            return None
        self._answered_pull = pull
        return _section(value)

    def watch_editor(self, pid: int | None) -> None:
        """LSP, of ``processId``: "If the parent process is not alive then the server should exit". Checked
        every ``EDITOR_CHECK_S`` (as vscode-languageserver does), where the stdin pipe may outlive the
        editor (another process inherited it). POSIX only; a process that is not there at ``initialize``
        (an editor in another PID namespace: a container, a sandbox) is not watched."""
        if os.name != "posix" or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
            return
        if not _process_exists(pid):
            log.info("the editor's process %d is not visible from here: not watched", pid)
            return
        self._editor_watch = asyncio.ensure_future(self._watch_editor(pid))

    async def _watch_editor(self, pid: int) -> None:
        while _process_exists(pid):
            await asyncio.sleep(EDITOR_CHECK_S)
        log.warning("the editor (process %d) is gone: exiting", pid)
        raise SystemExit(1)  # as an exit without shutdown: out of the event loop, the engine stopped after

    def _late_configuration(self, pull: int, pushes: int, answer: asyncio.Future[Any]) -> None:
        """A pull's answer after its wait: applied (the model reloads if it changed), unless a later pull
        was answered first or the client pushed its settings since the pull was sent."""
        if answer.cancelled() or answer.exception() is not None or pull < self._answered_pull:
            return
        if self._pushes != pushes:
            return
        self._answered_pull = pull
        value = _section(answer.result())
        if value is not None:
            log.info("workspace/configuration answered late: applying it")
            apply_settings(self, value, reload=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: only whether it exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _section(answer: Any) -> dict[str, Any] | None:
    """The ``refact`` section from a ``workspace/configuration`` answer (None: none, or no object)."""
    value = answer[0] if isinstance(answer, list | tuple) and answer else None
    return value if isinstance(value, dict) else None


def create_server(cli_settings: dict[str, Any] | None = None) -> RefactLanguageServer:
    """A server with every handler registered; ``cli_settings`` are the command line's settings."""
    server = RefactLanguageServer(cli_settings)

    @server.feature(types.INITIALIZE)
    def initialize(ls: RefactLanguageServer, params: types.InitializeParams) -> None:
        encoding = choose_position_encoding(params.capabilities)
        service = ls.service
        service.encoding = str(encoding.value if hasattr(encoding, "value") else encoding)
        options = params.initialization_options
        if isinstance(options, dict):
            apply_settings(ls, options.get(SECTION, options), reload=False, initial=True)
        ls.watch_editor(params.process_id)
        log.info(
            "initialize from %s: position encoding %s",
            params.client_info.name if params.client_info else "unknown client",
            service.encoding,
        )

    @server.feature(types.INITIALIZED)
    async def initialized(ls: RefactLanguageServer, params: types.InitializedParams) -> None:
        maybe_inject("initialized")
        pulled = await ls.pull_configuration()
        if pulled is not None:  # the whole section, empty too (the client cleared every key)
            apply_settings(ls, pulled, reload=False)
        ls.service.start()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: RefactLanguageServer, params: None) -> None:
        ls.service.close()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(
        ls: RefactLanguageServer, params: types.DidChangeConfigurationParams
    ) -> None:
        settings = params.settings
        if isinstance(settings, dict) and isinstance(settings.get(SECTION), dict):
            ls.pushed_settings(settings[SECTION])
            return
        pulled = await ls.pull_configuration()  # the pull model: settings null or for other sections
        if pulled is not None:  # the whole section, empty too (the client cleared every key)
            apply_settings(ls, pulled, reload=True)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: RefactLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        doc = params.text_document
        ls.service.open(doc.uri, doc.language_id, doc.version, doc.text)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: RefactLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        changes: list[tuple[tuple[int, int, int, int] | None, str]] = []
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                changes.append(((r.start.line, r.start.character, r.end.line, r.end.character), change.text))
            else:
                changes.append((None, change.text))
        ls.service.change(params.text_document.uri, params.text_document.version, changes)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: RefactLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.service.close_document(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: RefactLanguageServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList:
        selection = None
        info = params.context.selected_completion_info if params.context else None
        if info is not None:
            selection = Selection(
                info.range.start.line,
                info.range.start.character,
                info.range.end.line,
                info.range.end.character,
                info.text,
            )
        suggestion = await ls.service.complete(
            params.text_document.uri, params.position.line, params.position.character, selection
        )
        if suggestion is None:
            return types.InlineCompletionList(items=[])
        return types.InlineCompletionList(
            items=[types.InlineCompletionItem(insert_text=suggestion.text, range=_range(suggestion))]
        )

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
    async def completion(ls: RefactLanguageServer, params: types.CompletionParams) -> types.CompletionList:
        suggestion = await ls.service.complete(
            params.text_document.uri, params.position.line, params.position.character
        )
        items = [] if suggestion is None else [_completion_item(suggestion)]
        return types.CompletionList(is_incomplete=True, items=items)

    @server.command(PROMPT_COMMAND)
    def prompt_command(ls: RefactLanguageServer, *args: Any) -> dict[str, Any] | None:
        uri, line, character = _prompt_arguments(args)
        try:
            return ls.service.prompt_info(uri, line, character)
        except NotReady as exc:  # try again later (-32803), where -32602 says the call itself is wrong
            raise RequestFailed(str(exc)) from exc
        except ServiceError as exc:
            raise JsonRpcInvalidParams(str(exc)) from exc

    @server.command(STATS_COMMAND)
    def stats_command(ls: RefactLanguageServer, *args: Any) -> dict[str, Any]:
        return {**ls.service.stats_snapshot(), "process": process_snapshot(ls.protocol)}

    return server


def process_snapshot(protocol: RefactProtocol) -> dict[str, Any]:
    """The server process's health: live asyncio tasks, threads, handlers and requests in flight (a
    count that must not grow with the session), resident memory."""
    rss_kb = None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            rss_kb = next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), None)
    except OSError:  # not Linux
        pass
    return {
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "pending": len(protocol._request_futures),
        "rss_mb": None if rss_kb is None else round(rss_kb / 1024, 1),
    }


def apply_settings(
    ls: RefactLanguageServer, values: dict[str, Any], reload: bool, initial: bool = False
) -> None:
    """Client settings (see ``CompletionService.configure``); a bad value is shown to the user and its key
    keeps the value in force, the others apply."""
    try:
        problems = ls.service.configure(values, reload=reload, initial=initial)
    except ServiceError as exc:
        problems = [str(exc)]
    for problem in problems:
        log.warning("rejected setting: %s", problem)
        ls.settings_error(problem)


def _prompt_arguments(args: tuple[Any, ...]) -> tuple[str, int, int]:
    """``[{"textDocument": {"uri"}, "position": {"line", "character"}}]`` -> (uri, line, character)."""
    try:
        (arg,) = args
        uri = arg["textDocument"]["uri"]
        line = arg["position"]["line"]
        character = arg["position"]["character"]
    except (ValueError, TypeError, KeyError) as exc:
        raise JsonRpcInvalidParams(
            f'{PROMPT_COMMAND} expects [{{"textDocument": {{"uri"}}, "position": {{"line", "character"}}}}]'
        ) from exc
    if not isinstance(uri, str) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (line, character)
    ):
        raise JsonRpcInvalidParams(f"{PROMPT_COMMAND}: uri must be a string, line and character >= 0")
    return uri, line, character


def _range(s: Suggestion) -> types.Range:
    return types.Range(
        start=types.Position(line=s.line, character=s.start),
        end=types.Position(line=s.line, character=s.end),
    )


def _completion_item(s: Suggestion) -> types.CompletionItem:
    start = types.Position(line=s.line, character=s.item_start)
    edit_range = types.Range(start=start, end=types.Position(line=s.line, character=s.end))
    return types.CompletionItem(
        label=s.label or s.item_text,
        kind=types.CompletionItemKind.Text,
        detail="Refact",
        insert_text_format=types.InsertTextFormat.PlainText,
        insert_text_mode=types.InsertTextMode.AsIs,  # its lines carry their own indentation
        filter_text=s.filter_text or None,
        text_edit=types.TextEdit(range=edit_range, new_text=s.item_text),
        sort_text="0",
        preselect=True,
    )
