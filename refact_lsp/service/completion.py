"""The completion service: what the protocol handlers call.

It ties the pure parts together (documents, settings, prompt, post-processing, edits, the typed-ahead
cache) with the :class:`~refact_lsp.service.scheduler.Scheduler` and the engine's ``ModelRunner``.
Everything here runs on the server's event loop except the jobs handed to the scheduler's worker
thread (model loading and generation). The engine is imported lazily, on the worker thread, so
importing this module costs no torch.

Positions arrive in the negotiated encoding (``self.encoding``) and answers go back in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from refact_lsp.model_source import is_local_source
from refact_lsp.service.documents import Document, DocumentStore
from refact_lsp.service.edits import Edit, completion_item_edit, line_edit
from refact_lsp.service.model_files import local_model_files
from refact_lsp.service.positions import Encoding, lsp_character
from refact_lsp.service.postprocess import PostContext, decided, only_repeats, postprocess
from refact_lsp.service.prompt import (
    CachedEncoder,
    Prompt,
    build_prompt,
    completion_mode,
    shift_window,
    shorter_prompt_ids,
)
from refact_lsp.service.scheduler import Scheduler, Skipped, call_soon_threadsafe
from refact_lsp.service.settings import Settings, SettingsError
from refact_lsp.service.speculative import SPECULATIVE_TAG, accept, indent_unit, next_line_indent
from refact_lsp.service.stats import RunRecord, Stats
from refact_lsp.service.typed_ahead import (
    TypedAheadCache,
    cursor_keys,
    cursor_relative,
    exact_key,
    prompt_relative,
)
from refact_lsp.token_ids import common_prefix_len

log = logging.getLogger(__name__)

TYPED_AHEAD_ENTRIES = 256
SPECULATIVE_PREFILL_CHUNK = 16
"""Prompt tokens per forward pass of a speculative run: it checks its stop event about every decode step."""
SPECULATIVE_MAX_PREFILL = 256
"""A speculation that would prefill more new tokens than this (the window moved) is not worth it."""
MODEL_KEYS = ("model", "device", "dtype", "allowPickle")
ENTER_SPECULATION_MAX_STEP_MS = 20.0
"""The Enter speculation runs only where a decode step (how long a real request may wait for a
preempted speculation) takes at most this long: a GPU, or a small model on a CPU."""
SPECULATION_GRACE_S = 0.005
"""A speculation starts this long after the answer it follows, so that the editor reads and draws that
answer before the model takes the CPU: on a 2-core machine starting at once added 2.8 ms to every
keystroke as the client saw it (``bench/keystrokes.py --sections overhead``, docs/benchmarks.md)."""
RETRY_CHECK_S = 1.0
"""After a local model failed to load, requests look at most this often whether its files changed."""
DOWNLOAD_RETRY_S = (5.0, 5.0, 30.0, 120.0, 600.0)
"""After a hub model's download failed (no network yet, the hub down), or a load ran out of device memory
(another process held it), the first request after each of these waits tries again (the last wait repeats),
without a progress bar or an error message."""


class ServiceError(Exception):
    """A request the service cannot serve as asked (bad settings, bad arguments): a clear message."""


class NotReady(ServiceError):
    """A request that is right but comes too early: the model is not loaded (yet)."""


class ServiceEvents(Protocol):
    """What the protocol layer does with model events (always called on the event loop)."""

    def model_loading(self, source: str, quiet: bool = False) -> None:
        """A load starts (``quiet``: a retry after a failed download, no progress bar unless it downloads)."""

    def model_progress(self, stage: str, message: str, percentage: int | None) -> None: ...

    def model_loaded(self, source: str, error: str | None, quiet: bool = False) -> None:
        """A load ended (``quiet``: a retry, whose failure is only logged)."""

    def generation_problem(self, message: str) -> None: ...


@dataclass(frozen=True)
class Selection:
    """The item selected in the client's completion widget (``selectedCompletionInfo``)."""

    start_line: int
    start_character: int
    end_line: int
    end_character: int
    text: str


@dataclass(eq=False)
class _Job:
    """A request's computation and the requests waiting for its answer (compared by identity).

    The computation hands its answer to each waiter's own future itself (:meth:`answer`): a request
    resumes on the next turn of the loop, where a done callback on the task (``asyncio.shield``) would
    take two. :meth:`settle`, the task's done callback, covers a computation that ended otherwise."""

    key: tuple[Any, ...]
    task: asyncio.Future[Suggestion | None] | None = None
    waiters: list[asyncio.Future[Suggestion | None]] = dataclasses.field(default_factory=list)

    def answer(self, suggestion: Suggestion | None) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(suggestion)

    def settle(self, task: asyncio.Future[Suggestion | None]) -> None:
        for waiter in self.waiters:
            if waiter.done():
                continue
            if task.cancelled():
                waiter.cancel()
            elif task.exception() is not None:
                waiter.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                waiter.set_result(task.result())

    def waiting(self) -> bool:
        """Whether a request still waits for the answer."""
        return any(not waiter.done() for waiter in self.waiters)


@dataclass(frozen=True)
class Suggestion:
    """One answer: replace ``[start, end)`` on ``line`` (LSP units) with ``text`` (document line endings)."""

    text: str
    line: int
    start: int
    end: int
    item_start: int = 0
    """The same suggestion as a completion item (``textDocument/completion``, see
    :func:`completion_item_edit`) replaces ``[item_start, end)`` with ``item_text``: from the start of the
    word before ``start``, that word written again in front of ``text``."""
    item_text: str = ""
    label: str = ""
    """The completion item's label: the first non-blank line of ``item_text``, without indentation."""
    filter_text: str = ""
    """The first line of ``item_text``: it starts with what is typed between ``item_start`` and the cursor."""


class _LinesWithOneReplaced(Sequence[str]):
    """A view of a document's lines with one line replaced (no copy of the document)."""

    def __init__(self, doc: Document, line: int, text: str):
        self._doc, self._line, self._text = doc, line, text

    def __len__(self) -> int:
        return self._doc.line_count

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self._text if i == self._line else self._doc.line(i)


@dataclass
class _Request:
    """Where to complete, resolved against the document (indexes are Python ``str`` indexes)."""

    doc: Document
    line: int
    index: int
    line_text: str
    lines: Sequence[str]
    real_line: str
    """The document's cursor line when the request was resolved (``line_text`` without the selected item):
    the suggestion's range is converted to LSP units on it, whatever the document became meanwhile."""
    selection: tuple[int, int, str] | None = None  # (start index, end index, text) on the cursor line
    version: int | None = None  # the document's version when the request was resolved


@dataclass(frozen=True)
class _Prepared:
    """What a request read of the document when it came: the document may change during its run."""

    req: _Request
    prompt: Prompt
    post: PostContext
    t_prompt: float  # when its prompt began (a cache hit's time in the server is counted from there)


@dataclass(frozen=True)
class _Run:
    """A model run's outcome, from the worker thread: its text (None: cancelled or failed), its numbers."""

    text: str | None
    record: RunRecord | None = None


class CompletionService:
    """Documents, settings, model lifecycle and completion requests for one client."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        events: ServiceEvents,
        base_settings: dict[str, Any] | None = None,
        encoding: Encoding = "utf-16",
    ):
        self.loop = loop
        self.events = events
        self.encoding: Encoding = encoding
        self.documents = DocumentStore()
        self.stats = Stats()
        self.scheduler = Scheduler(loop)
        self.cache = TypedAheadCache(TYPED_AHEAD_ENTRIES)
        try:
            self._cli = Settings.from_lsp(dict(base_settings or {}))
            self._base = self._cli
        except SettingsError as exc:
            raise ServiceError(str(exc)) from exc
        self.settings = self._base
        """The settings in force: the client's section over ``_base`` (the command line's settings, then
        ``initializationOptions``)."""
        self._runner: Any = None  # engine.runner.ModelRunner, created on the worker thread
        self._model_state = "unloaded"
        self._model_error: str | None = None
        self._load_key: tuple[Any, ...] | None = None  # MODEL_KEYS values of the newest load scheduled
        self._load_generation = 0
        self._failed_files: tuple[Any, ...] | None = None  # the local model's files when it failed
        self._next_files_check = 0.0
        self._download_failures = 0  # in a row, for the configured model
        self._next_download = 0.0  # when a request may try the download (or load) again (0: not retryable)
        self._started = False
        self._windows: dict[str, Any] = {}
        self._encoder: CachedEncoder | None = None  # for the loaded tokenizer
        self._closed = False
        self._engine_ids: Sequence[int] = ()  # the last run's prompt (the KV slot it is in holds it)
        self._speculation: asyncio.Future[None] | None = None
        self._jobs: dict[str, list[_Job]] = {}  # per document: the computations for its newest place

    # Settings and the model -----------------------------------------------------------------------

    def configure(self, values: dict[str, Any], reload: bool = True, initial: bool = False) -> list[str]:
        """Client settings (LSP names): the client's whole ``refact`` section (pulled or pushed), over the
        command line's settings and ``initializationOptions``, so that a key the client no longer sends
        goes back to those, and one it sends as null to the command line's value (else the built-in
        default); ``initial``: the ``initializationOptions`` themselves. Changing model, device or dtype
        reloads in the background.

        A bad value is reported and its key keeps the value in force (for ``initializationOptions``, the
        command line's); the rest applies. Returns what was wrong with each (empty when all is well).
        ``ServiceError`` when ``values`` is no object."""
        errors: list[SettingsError] = []
        try:
            base = self._base.merged(values, self._cli, errors) if initial else self._base
            # a bad key of a later section keeps the value in force (not the base's: a typo in "model"
            # must not load another model)
            new = base if initial else base.merged(values, self._cli, errors, keep=self.settings)
        except SettingsError as exc:
            raise ServiceError(str(exc)) from exc
        if new != self.settings:
            self.cache.clear()  # suggestions made under other settings
        self._base, self.settings = base, new
        if reload and self._started and self._model_key() != self._load_key:
            self._schedule_load()
        return [str(exc) for exc in errors]

    def start(self) -> None:
        """Starts loading the configured model (after ``initialized``)."""
        if not self._started:
            self._started = True
            self._schedule_load()

    def close(self) -> None:
        self._closed = True
        if self._speculation is not None:
            self._speculation.cancel()
        self.scheduler.close()

    def _model_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self.settings, key) for key in MODEL_KEYS)

    def _schedule_load(self, retry: bool = False) -> None:
        """Loads the configured model in the background; ``retry``: again, after a retryable failure (a
        download, out of memory)."""
        if not retry:
            self._download_failures = 0
        self._load_generation += 1
        self._load_key = self._model_key()
        self._model_state, self._model_error = "loading", None  # at once: no stale error for the new model
        asyncio.ensure_future(self._load(self._load_generation, self._load_key, retry))

    async def _load(self, generation: int, key: tuple[Any, ...], retry: bool = False) -> None:
        """Loads ``key`` on the worker. A load superseded by a newer one (scheduled before it started or
        while it ran) changes no state and sends no events: the newer load reports for itself."""
        if generation != self._load_generation:
            return
        source = str(key[0])
        self._model_state, self._model_error = "loading", None
        files = local_model_files(source)  # before loading: a fix made meanwhile counts as a change
        self.events.model_loading(source, quiet=retry)
        error: str | None
        retryable = False
        try:
            error, retryable = await self.scheduler.run_exclusive(
                lambda _stop: self._load_blocking(generation, key)
            )
        except Exception as exc:  # noqa: BLE001 - reported, the server keeps running
            log.exception("model load crashed")
            error = f"{type(exc).__name__}: {exc}"
        if generation != self._load_generation:
            return
        self._next_download = 0.0
        if error:
            if retryable:
                wait = DOWNLOAD_RETRY_S[min(self._download_failures, len(DOWNLOAD_RETRY_S) - 1)]
                self._download_failures += 1
                self._next_download = time.monotonic() + wait
                error = f"{error}; trying again in {wait:.0f} s"
            self._model_state, self._model_error = "error", error
            log.error("could not load %s: %s", source, error)
            self._failed_files = files
        else:
            self._model_state, self._model_error = "ready", None
            self._windows.clear()
            self._encoder = None
            self.cache.clear()
        self.events.model_loaded(source, error, quiet=retry)

    def _load_blocking(self, generation: int, key: tuple[Any, ...]) -> tuple[str | None, bool]:
        """On the worker thread: import the engine, load the model. Returns (error message or None,
        whether trying again later may work). A newer load scheduled meanwhile makes this one give up (its
        download too: the engine asks ``superseded``)."""
        if generation != self._load_generation:
            return "superseded", False
        from refact_lsp.engine.loading import ModelLoadError, ModelSpec
        from refact_lsp.engine.runner import ModelRunner

        model, device, dtype, allow_pickle = key
        if self._runner is None:
            self._runner = ModelRunner(on_state=self._on_state, keep_inference_mode=True)

        def superseded() -> bool:  # asked on the engine's threads (the download's too)
            return generation != self._load_generation

        try:
            self._runner.load(
                ModelSpec(
                    model, device=device, dtype=dtype, allow_pickle=allow_pickle, superseded=superseded
                ),
                on_progress=functools.partial(self._on_progress, generation),
            )
        except ModelLoadError as exc:
            return str(exc), exc.retryable
        if self._runner.state != "ready":
            return self._runner.error or f"model state is {self._runner.state}", False
        return None, False

    def _on_progress(self, generation: int, event: Any) -> None:
        """A progress event of load ``generation``, from the engine's threads."""
        call_soon_threadsafe(self.loop, self._progress_on_loop, generation, event)

    def _progress_on_loop(self, generation: int, event: Any) -> None:
        # a download given up may send one more event after a newer load began: not that load's progress
        if generation == self._load_generation:
            self.events.model_progress(event.stage, event.message, event.percentage)

    def _on_state(self, state: str) -> None:
        def update() -> None:
            if self._model_state in ("loading", "downloading") and state in ("downloading", "loading"):
                self._model_state = state

        call_soon_threadsafe(self.loop, update)

    def _retry_failed_load(self) -> None:
        """On requests, a model that failed to load is loaded again: a local one once its files change
        (the user fixed them on disk; looked at most every ``RETRY_CHECK_S``), a hub one whose download
        failed, or one that ran out of device memory, after the next wait of ``DOWNLOAD_RETRY_S``."""
        if self._model_state != "error":
            return
        now = time.monotonic()
        source = str(self.settings.model)  # the one that failed: another setting would be loading
        if self._next_download and now >= self._next_download:
            log.info("trying to load %s again", source)
            self._schedule_load(retry=True)
        elif now >= self._next_files_check:
            self._next_files_check = now + RETRY_CHECK_S
            if is_local_source(source) and local_model_files(source) != self._failed_files:
                log.info("the files of %s changed: loading it again", source)
                self._schedule_load()

    @property
    def ready(self) -> bool:
        return self._model_state == "ready" and self._runner is not None

    # Documents -------------------------------------------------------------------------------------

    def open(self, uri: str, language_id: str, version: int, text: str) -> None:
        self.documents.open(uri, language_id, version, text)
        log.debug("opened %s (%s, %d chars)", uri, language_id, len(text))

    def change(
        self, uri: str, version: int, changes: list[tuple[tuple[int, int, int, int] | None, str]]
    ) -> None:
        """Applies content changes: ``(start_line, start_char, end_line, end_char)`` or None (whole text)."""
        started = time.perf_counter()
        self.scheduler.preempt_idle(uri)  # a speculation for the old text is worthless
        if uri not in self.documents:
            log.warning("change for a document that is not open: %s", uri)
            return
        shifts = self.documents.change(
            uri,
            version,
            [(None if r is None else ((r[0], r[1]), (r[2], r[3])), text) for r, text in changes],
            self.encoding,
        )
        window = self._windows.pop(uri, None)
        for shift in shifts:  # the window follows its lines (a whole-text change forgets it)
            window = None if window is None or shift is None else shift_window(window, *shift)
        if window is not None:
            self._windows[uri] = window
        self.stats.record_latency("change", (time.perf_counter() - started) * 1000)

    def close_document(self, uri: str) -> None:
        self.scheduler.preempt_idle(uri)
        self.scheduler.cancel_key(uri)
        self._windows.pop(uri, None)
        self.documents.close(uri)

    # Requests -------------------------------------------------------------------------------------

    def _resolve(
        self, uri: str, line: int, character: int, selection: Selection | None = None
    ) -> _Request | None:
        if uri not in self.documents:
            return None
        doc = self.documents.get(uri)
        line, index = doc.clamp(line, character, self.encoding)
        line_text = doc.line(line)
        request = _Request(doc, line, index, line_text, doc.lines, line_text, version=doc.version)
        if selection is not None and selection.start_line == line == selection.end_line:
            _, start = doc.clamp(line, selection.start_character, self.encoding)
            _, end = doc.clamp(line, selection.end_character, self.encoding)
            if start <= end:
                virtual = line_text[:start] + selection.text + line_text[end:]
                request.selection = (start, end, selection.text)
                request.line_text = virtual
                request.index = start + len(selection.text) + max(0, index - end)
                request.lines = _LinesWithOneReplaced(doc, line, virtual)
        return request

    def _budget(self) -> int:
        budget = self.settings.prompt_budget
        n_ctx = self._runner.n_ctx if self._runner is not None else None
        if n_ctx:
            # the prompt keeps at least half the model's context: a maxNewTokens near n_ctx caps the tokens
            # generated (the engine stops at n_ctx), not the document out of the prompt
            budget = min(budget, max(n_ctx - self.settings.maxNewTokens, n_ctx // 2))
        return max(0, budget)

    def _mode(self, req: _Request) -> str | None:
        """The completion to run for ``req``; None where none is (its language switched off, say)."""
        settings = self.settings
        if not settings.is_enabled(req.doc.language_id):
            return None
        return completion_mode(req.line_text, req.index, settings.multiline, settings.midLine)

    def _build_prompt(self, req: _Request, mode: str, window: Any = None) -> Prompt:
        """The prompt for ``req``, with the document's last window as the hint (or ``window``)."""
        if self._encoder is None:
            self._encoder = CachedEncoder(self._runner.tokenizer.encode_text)
        return build_prompt(
            req.lines,
            req.line,
            req.index,
            self._encoder,
            self._budget(),
            mode,
            # the window is kept while it suits the cursor (whatever the settings, so that they never
            # change the prompt): the suffix, first in SPM order, then stays the same and reusable
            window_hint=window or self._windows.get(req.doc.uri),
        )

    def prompt_info(self, uri: str, line: int, character: int) -> dict[str, Any] | None:
        """``refact.prompt``: the exact prompt at a position, or None where nothing would be completed."""
        if uri not in self.documents:
            raise ServiceError(f"document not open: {uri}")
        if not self.ready:
            raise NotReady(f"the model is not ready (state {self._model_state})")
        req = self._resolve(uri, line, character)
        assert req is not None
        mode = self._mode(req)
        if mode is None:
            return None
        prompt = self._build_prompt(req, mode)
        return {"prompt": prompt.text, "tokens": len(prompt.ids), "mode": prompt.mode}

    async def complete(
        self, uri: str, line: int, character: int, selection: Selection | None = None
    ) -> Suggestion | None:
        """One completion request: None means no suggestion (empty answer).

        A request for what another one still being computed asks (same document version, position,
        selection, settings and model) waits for that computation instead of superseding it: a client
        asking for both ghost text and completion items on a keystroke gets both. Cancelling one of them
        stops the computation only when no other request waits for it."""
        started = time.perf_counter()
        stats = self.stats
        stats.requests += 1
        self._retry_failed_load()
        place = self._request_place(uri, line, character)
        key = (place, selection)
        # computations for another place of this document are superseded (and forgotten here)
        jobs = [j for j in self._jobs.get(uri, ()) if j.key[0] == place and not j.task.done()]
        job = next((j for j in jobs if j.key == key), None)
        if job is None:
            # supersedes older requests for this document, unless they are for the same place (completion
            # items beside ghost text for the popup's selected item: both current)
            ticket = self.scheduler.ticket(uri, place=place)
            job = _Job(key)
            job.task = self._start(ticket, uri, line, character, selection, job)
            jobs.append(job)
            job.task.add_done_callback(job.settle)
            job.task.add_done_callback(functools.partial(self._forget_job, uri, job))
        self._jobs[uri] = jobs
        try:
            if job.task.done():  # nothing to compute (say, the model is not ready)
                suggestion = job.task.result()
            else:
                waiter: asyncio.Future[Suggestion | None] = self.loop.create_future()
                job.waiters.append(waiter)
                suggestion = await waiter
        except asyncio.CancelledError:
            if not job.waiting():
                job.task.cancel()
                self._forget_job(uri, job, None)  # a new identical request must not join a cancelled job
            stats.cancellations += 1
            raise
        if suggestion is None:
            stats.empty += 1
        else:
            stats.completions += 1
        stats.record_latency("total", (time.perf_counter() - started) * 1000)
        return suggestion

    def _request_place(self, uri: str, line: int, character: int) -> tuple[Any, ...]:
        """The text, position, settings and model a request is for: with its selection, all its answer
        depends on (compared with ``==``: settings hold a dict)."""
        doc = self.documents.get(uri) if uri in self.documents else None
        text = (id(doc), doc.revision) if doc is not None else None
        return (text, line, character, self.settings, self._load_generation, self._model_state)

    def _forget_job(self, uri: str, job: _Job, _task: Any) -> None:
        jobs = self._jobs.get(uri, [])
        if job in jobs:
            jobs.remove(job)
        if not jobs:
            self._jobs.pop(uri, None)

    def _start(
        self,
        ticket: Any,
        uri: str,
        line: int,
        character: int,
        selection: Selection | None,
        job: _Job,
    ) -> asyncio.Future[Suggestion | None]:
        """``job``'s computation, begun now: what it needs of the document is read before the next
        message is handled (a ``didChange`` right behind the request must not move it)."""
        try:
            prepared = self._prepare(uri, line, character, selection)
        except Exception:
            prepared = None
            self._failed(uri, line, character)
        if prepared is None:
            ticket.close()
            nothing: asyncio.Future[Suggestion | None] = self.loop.create_future()
            nothing.set_result(None)
            return nothing
        return asyncio.ensure_future(self._computation(ticket, prepared, job))

    def _failed(self, uri: str, line: int, character: int) -> None:
        """Inside ``except``: a request's unexpected error, counted and logged (the answer is empty)."""
        self.stats.errors += 1
        log.exception("completion failed at %s:%d:%d", uri, line, character)

    def _prepare(self, uri: str, line: int, character: int, selection: Selection | None) -> _Prepared | None:
        """The request resolved against the document, its prompt, and what post-processing reads of the
        text; None where nothing is to be completed."""
        req = self._resolve(uri, line, character, selection)
        if req is None or not self.ready:
            return None
        mode = self._mode(req)
        if mode is None:
            return None
        t_prompt = time.perf_counter()
        prompt = self._build_prompt(req, mode)
        self._windows[uri] = prompt.window
        self.stats.record_latency("prompt", (time.perf_counter() - t_prompt) * 1000)
        return _Prepared(req, prompt, self._post_context(req, prompt), t_prompt)

    async def _computation(self, ticket: Any, prepared: _Prepared, job: _Job) -> Suggestion | None:
        """The work of a request (and of the identical ones that wait for it). The answer goes to the
        waiting requests at once; the speculation that follows it starts after their responses went out."""
        stats = self.stats
        suggestion, follow_up = None, None
        try:
            suggestion, follow_up = await self._complete(ticket, prepared)
        except Skipped as skip:
            if skip.reason == "dropped":
                stats.dropped += 1
            else:
                stats.superseded += 1
        except Exception:
            req = prepared.req
            self._failed(req.doc.uri, req.line, req.index)
        finally:
            ticket.close()
        job.answer(suggestion)  # (the task's done callback forgets the job: a done task is never joined)
        if follow_up is not None:
            # the waiting requests return on the next turn and pygls writes their responses on the one
            # after (from the handler task's done callback): the speculation starts behind those writes
            self.loop.call_soon(self.loop.call_soon, follow_up)
        return suggestion

    async def _complete(
        self, ticket: Any, prepared: _Prepared
    ) -> tuple[Suggestion | None, Callable[[], None] | None]:
        """The suggestion, and the speculation to start once it is answered (None: none)."""
        req, prompt, post, t_prompt = prepared.req, prepared.prompt, prepared.post, prepared.t_prompt
        completion: str | None = None
        keys, exact = cursor_keys(prompt, req.line_text, req.index), exact_key(prompt, post)
        if self.settings.completionCache:  # a typed-ahead hit answers at once, without the debounce
            hit = self.cache.lookup(*keys, exact)
            if hit is not None:
                completion = prompt_relative(hit.rest, req.line_text, req.index, prompt.prefix_cut)
                if only_repeats(completion, post):  # typed up to what follows: nothing left to add
                    completion = ""
                else:  # (a speculative answer is shown now: typing along it may hit)
                    self.cache.show(*keys, exact)
                self.stats.cache_hits += 1
                if hit.tag == SPECULATIVE_TAG:
                    self.stats.speculative_hits += 1
        if completion is None:
            settings, generation = self.settings, self._load_generation
            await ticket.debounce(settings.debounceMs / 1000)
            raw = (await ticket.run(lambda stop: self._generate(prompt, post, stop), self._count)).text
            if ticket.superseded:
                raise Skipped("superseded")
            if raw is None:  # stopped without text: the document closed, the model switched, no memory
                return None, None
            completion = postprocess(raw, post)
            rest = cursor_relative(completion, req.line_text, req.index, prompt.prefix_cut)
            if settings.completionCache and rest and self._cacheable(settings, generation):
                self.cache.put(*keys, rest, exact=exact)
        else:
            self.stats.record_latency("hit", (time.perf_counter() - t_prompt) * 1000)
        suggestion = self._suggestion(req, prompt.mode, completion) if completion else None
        if req.selection is not None:
            return suggestion, None
        speculation = completion if suggestion is not None else None
        return suggestion, functools.partial(self._start_speculation, req, prompt.mode, speculation)

    # Speculation ----------------------------------------------------------------------------------

    def _start_speculation(self, req: _Request, mode: str, completion: str | None) -> None:
        """After answering: in the background, the completions the user will most likely ask for next,
        after accepting ``completion`` and after pressing Enter at the end of the line."""
        settings = self.settings
        if not (settings.speculative and settings.completionCache and settings.kvReuse) or self._closed:
            return
        if self._speculation is not None and not self._speculation.done():
            self._speculation.cancel()
        self._speculation = asyncio.ensure_future(self._speculate(req, mode, completion))

    async def _speculate(self, req: _Request, mode: str, completion: str | None) -> None:
        """Runs on an idle worker only; any request or change preempts it (see ``Scheduler.idle_ticket``)."""
        await asyncio.sleep(SPECULATION_GRACE_S)  # the answer goes out and is drawn first
        if completion:
            edit = line_edit(
                req.line_text,
                req.line,
                req.index,
                completion,
                mode,  # type: ignore[arg-type]
                language_id=req.doc.language_id,
            )
            if edit is not None:
                done = await self._speculate_after(
                    req, edit.start_index, edit.end_index, edit.new_text, SPECULATIVE_MAX_PREFILL
                )
                if not done:
                    return
        step_ms = self.stats.p50("decode_per_token")
        short_steps = step_ms is not None and step_ms <= ENTER_SPECULATION_MAX_STEP_MS
        if short_steps and req.index == len(req.line_text) and req.line_text.strip():
            # Enter: the column-0 multi-line prompt of the new line shares no prefix with the one before,
            # so its prefill runs now, in idle time, a chunk at a time; what a preempted run computed
            # stays in its KV slot for the next try (and for the real request after Enter)
            unit = indent_unit(req.lines, req.line)
            indent = next_line_indent(req.line_text, req.doc.language_id, unit)
            await self._speculate_after(req, req.index, req.index, "\n" + indent, None)

    async def _speculate_after(
        self, req: _Request, start: int, end: int, new_text: str, max_prefill: int | None
    ) -> bool:
        """Completes where the cursor would be after replacing ``[start, end)`` of the cursor line with
        ``new_text`` and caches the answer under that position's keys. False: stopped, go no further."""
        doc, settings, generation = req.doc, self.settings, self._load_generation
        uri = doc.uri
        current = self.documents.get(uri) if uri in self.documents else None
        if current is not doc or doc.version != req.version or not self.ready:
            return False  # the document changed since the request: its lines are not these any more
        after = accept(req.lines, req.line, start, end, new_text)
        spec = _Request(doc, after.line, after.index, after.line_text, after.lines, after.line_text)
        spec_mode = self._mode(spec)
        if spec_mode is None:
            return True
        window = self._windows.get(uri)  # as the edit will move it (see ``change``)
        if window is not None:
            window = shift_window(window, req.line, req.line, new_text.count("\n"))
        prompt = self._build_prompt(spec, spec_mode, window)  # the prompt of the request after the edit
        post = self._post_context(spec, prompt)  # read now: the document may change during the run
        keys, exact = cursor_keys(prompt, spec.line_text, spec.index), exact_key(prompt, post)
        if self.cache.lookup(*keys, exact) is not None:
            return True  # already known (e.g. typed ahead)
        new_tokens = len(prompt.ids) - common_prefix_len(prompt.ids, self._engine_ids)
        if max_prefill is not None and new_tokens > max_prefill:
            return True
        ticket = self.scheduler.idle_ticket(uri)
        try:
            run = await ticket.run(
                lambda stop: self._generate(prompt, post, stop, speculative=True), self._count
            )
            raw = run.text
        except Skipped:
            raw = None
        finally:
            ticket.close()
        if raw is None:
            self.stats.speculative_cancelled += 1
            return False
        self.stats.speculative_runs += 1
        if not self._cacheable(settings, generation):
            return False
        rest = cursor_relative(postprocess(raw, post), spec.line_text, spec.index, prompt.prefix_cut)
        if rest:
            self.cache.put(*keys, rest, tag=SPECULATIVE_TAG, exact=exact, shown=False)
        return True

    def _cacheable(self, settings: Settings, generation: int) -> bool:
        """Whether an answer computed under ``settings`` and model load ``generation`` may go into the cache:
        neither changed during its run (a change clears the cache of answers made under the old ones)."""
        return self.settings == settings and self._load_generation == generation

    def _count(self, run: _Run) -> None:
        """On the loop: counts a finished model run in the stats."""
        if run.record is not None:
            self.stats.record_run(run.record)

    def _generate(
        self, prompt: Prompt, post: PostContext, stop: threading.Event, speculative: bool = False
    ) -> _Run:
        """On the worker thread: one model run (``_count`` it on the loop), ended as soon as its suggestion
        after ``post``-processing is :func:`decided`."""
        from refact_lsp.engine.generate import GenerationOutOfMemory, GenerationRequest

        runner = self._runner
        if runner is None or runner.state != "ready":
            return _Run(None)
        settings = self.settings
        request = GenerationRequest(
            prompt_ids=prompt.ids,  # the engine copies it
            max_new_tokens=settings.maxNewTokens,
            temperature=settings.temperature,
            top_p=settings.topP,
            stop_strings=("\n",) if prompt.mode == "single" else ("\n\n",),
            kv_reuse=settings.kvReuse,
            prefill_chunk=SPECULATIVE_PREFILL_CHUNK if speculative else None,
            stop_when=functools.partial(decided, ctx=post) if post.mode == "multi" else None,
        )
        try:
            result = runner.generate(request, stop)
        except GenerationOutOfMemory as exc:  # the engine freed its memory: once more with half the prompt
            ids = shorter_prompt_ids(request.prompt_ids)
            self._report(f"{exc}; retrying with {len(ids)} tokens of context")
            request = dataclasses.replace(request, prompt_ids=ids)
            try:
                result = runner.generate(request, stop)
            except GenerationOutOfMemory as again:
                self._report(f"{again}; no completion this time")
                return _Run(None)
        self._engine_ids = request.prompt_ids  # (what follows the prompt never matches a new one)
        record = RunRecord(
            stop_reason=result.stop_reason,
            prompt_tokens=result.prompt_tokens,
            reused_tokens=result.reused_tokens,
            generated_tokens=len(result.token_ids),
            max_new_tokens=settings.maxNewTokens,
            prefill_ms=result.prefill_s * 1000,
            decode_ms=result.decode_s * 1000,
            speculative=speculative,
        )
        log.debug("generated %r (%s)", result.text, result.stop_reason)
        return _Run(None if result.stop_reason == "cancelled" else result.text, record)

    def _report(self, message: str) -> None:
        """A generation problem for the user (from the worker thread)."""
        log.warning("%s", message)
        call_soon_threadsafe(self.loop, self.events.generation_problem, message)

    def _post_context(self, req: _Request, prompt: Prompt) -> PostContext:
        return PostContext.from_lines(req.lines, req.line, req.index, prompt.mode, prompt.prefix_cut)

    def _suggestion(self, req: _Request, mode: str, completion: str) -> Suggestion | None:
        doc = req.doc
        edit = line_edit(req.line_text, req.line, req.index, completion, mode, doc.eol, doc.language_id)
        if edit is None:
            return None
        start, end, text = edit.start_index, edit.end_index, edit.new_text
        real_line = req.real_line
        if req.selection is not None:
            # Computed on the line as if the selected item were inserted: map back to the real line.
            sel_start, sel_end, sel_text = req.selection
            real_start = min(start, sel_start)
            text = req.line_text[real_start:start] + text
            inserted_end = sel_start + len(sel_text)
            end = end - inserted_end + sel_end if end >= inserted_end else sel_end
            start = real_start
        end = max(end, start)
        item = completion_item_edit(real_line, Edit(start, end, text, req.line), doc.eol, doc.language_id)
        return Suggestion(
            text=text,
            line=req.line,
            start=lsp_character(real_line, start, self.encoding),
            end=lsp_character(real_line, end, self.encoding),
            item_start=lsp_character(real_line, item.edit.start_index, self.encoding),
            item_text=item.edit.new_text,
            label=item.label,
            filter_text=item.filter_text,
        )

    # Observability --------------------------------------------------------------------------------

    def stats_snapshot(self) -> dict[str, Any]:
        snapshot = self.stats.snapshot()
        runner = self._runner
        snapshot["model"] = {
            "state": self._model_state,
            "error": self._model_error,
            "source": str(self.settings.model),
            "device": str(getattr(runner, "device", "")) if runner is not None and self.ready else None,
            "n_ctx": getattr(runner, "n_ctx", None) if self.ready else None,
            # after a failed download or a load out of device memory (the name is older than the latter):
            # seconds until a request may try again (None: no retry pending)
            "download_retry_in_s": (
                round(max(0.0, self._next_download - time.monotonic()), 1)
                if self._next_download and self._model_state == "error"
                else None
            ),
        }
        snapshot["model_state"] = self._model_state
        snapshot["documents"] = len(self.documents)
        snapshot["busy"] = self.scheduler.busy
        snapshot["speculating"] = self.scheduler.speculating or (
            self._speculation is not None and not self._speculation.done()
        )
        snapshot["waiting"] = self.scheduler.waiting
        return snapshot
