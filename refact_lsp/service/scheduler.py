"""Scheduling of model work: per-document debounce, supersede, cancellation, one job at a time.

A completion request takes a :class:`Ticket` for its document. A newer ticket for the same
document supersedes the older ones at once (eglot never sends ``$/cancelRequest``), except those for
the same ``place`` (the same text and position: both still current): a debouncing or waiting ticket
wakes up with :class:`Skipped`, a running one has its stop event set, which the engine checks between
decode steps. Jobs run one at a time on a single daemon worker thread, off
the event loop. At most ``max_waiting`` tickets wait for the worker; when a burst over many
documents exceeds that, the oldest waiting ticket is dropped (the newest is the one the user sees).

Cancellation of the awaiting asyncio task (pygls does this on ``$/cancelRequest``) sets the
ticket's stop event; the worker is released only when the job really returned, so there is never
more than one generation in flight.

An *idle* ticket (:meth:`Scheduler.idle_ticket`, for speculative work) has the lowest priority: it
starts only when the worker is free and no request waits or debounces, never queues, and any new
ticket (or :meth:`Scheduler.preempt_idle`) stops it at once, so real work waits at most for the job's next
check of its stop event (one decode step).

Usage::

    ticket = scheduler.ticket(uri)
    try:
        await ticket.debounce(0.025)
        result = await ticket.run(lambda stop: generate(..., should_stop=stop.is_set))
    except Skipped:
        ...  # superseded or dropped: answer empty
    finally:
        ticket.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
SkipReason = Literal["superseded", "dropped", "closed", "preempted"]

DEFAULT_MAX_WAITING = 4


def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """``loop.call_soon_threadsafe`` from the worker thread, dropped once the loop is closed: the client went
    away mid-job and the process is exiting (asyncio's own ``wrap_future`` does the same)."""
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # closed between the check and the call
            loop.call_soon_threadsafe(callback, *args)


class Skipped(Exception):
    """The ticket will not run: a newer request superseded it, or the waiting queue dropped it."""

    def __init__(self, reason: SkipReason):
        super().__init__(reason)
        self.reason: SkipReason = reason


class Worker:
    """One daemon thread running submitted callables in order (each hands back its own result).

    ``ThreadPoolExecutor`` threads are joined at interpreter exit, so a model download or a long
    generation would hold up the server's exit; a daemon thread does not. No futures either: a job
    wakes the event loop once, itself (see :meth:`Ticket.run`).
    """

    def __init__(self, name: str = "refact-engine"):
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Waits for the thread to end (after :meth:`close`); True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a job hands back its own errors: this is a bug, and the worker goes on
                log.exception("worker job failed")


class Ticket:
    """One request's place in the scheduler (see the module docstring)."""

    def __init__(
        self, scheduler: Scheduler, key: str | None, droppable: bool, idle: bool = False, place: Any = None
    ):
        self.key = key
        self.place = place
        """What the request is for (compared with ``==``): a newer ticket for the same key and place does
        not supersede this one."""
        self.droppable = droppable
        self.idle = idle
        """Lowest priority: runs only on an idle worker, preempted by any other ticket."""
        self.stop = threading.Event()
        """Set when the job should stop: superseded, cancelled or the server is closing."""
        self.skipped: SkipReason | None = None
        self.running = False
        self._scheduler = scheduler
        self._wake: asyncio.Future[None] = scheduler.loop.create_future()
        self._turn: asyncio.Future[None] | None = None

    @property
    def superseded(self) -> bool:
        return self.skipped == "superseded"

    def skip(self, reason: SkipReason) -> None:
        """Stops this ticket: a waiting one wakes with :class:`Skipped`, a running one is told to stop."""
        if self.skipped is None:
            self.skipped = reason
        self.stop.set()
        if not self._wake.done():
            self._wake.set_result(None)
        if self._turn is not None and not self._turn.done():
            self._turn.set_exception(Skipped(reason))
            self._scheduler._forget_waiting(self)

    async def debounce(self, seconds: float) -> None:
        """Waits ``seconds``; raises :class:`Skipped` as soon as the ticket is superseded."""
        if seconds > 0 and self.skipped is None:
            await asyncio.wait([self._wake], timeout=seconds)
        if self.skipped is not None:
            raise Skipped(self.skipped)

    async def run(
        self, work: Callable[[threading.Event], T], on_done: Callable[[T], None] | None = None
    ) -> T:
        """Waits for the worker, then runs ``work(stop_event)`` on it and returns its result.

        Raises :class:`Skipped` if the ticket was skipped before it started. A ticket superseded
        while running still returns the job's result (check :attr:`superseded`). ``on_done(result)``
        runs on the loop when the job returns, even if the awaiting task was cancelled meanwhile.
        """
        if self.skipped is not None:
            raise Skipped(self.skipped)
        await self._scheduler._acquire(self)
        if self.skipped is not None:  # superseded right as the turn came
            self._scheduler._release()
            raise Skipped(self.skipped)
        self.running = True
        scheduler = self._scheduler
        answer: asyncio.Future[T] = scheduler.loop.create_future()

        def deliver(result: Any, error: BaseException | None) -> None:  # on the loop
            scheduler._release()
            if error is None and on_done is not None:
                on_done(result)
            if not answer.done():
                answer.set_exception(error) if error is not None else answer.set_result(result)

        def job() -> None:  # on the worker: one wake-up of the loop hands back the answer and the worker
            try:
                result, error = work(self.stop), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                result, error = None, exc
            call_soon_threadsafe(scheduler.loop, deliver, result, error)

        scheduler.worker.submit(job)
        try:
            return await answer
        except asyncio.CancelledError:
            self.stop.set()
            raise
        finally:
            self.running = False

    def close(self) -> None:
        """Forgets the ticket (call in ``finally``); a still-waiting one is stopped."""
        if self._turn is not None and not self._turn.done():
            self.skip("closed")
        self.stop.set()
        self._scheduler._forget(self)


class Scheduler:
    """Hands out :class:`Ticket`s and runs their jobs one at a time on a :class:`Worker`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_waiting: int = DEFAULT_MAX_WAITING):
        self.loop = loop
        self.max_waiting = max(1, max_waiting)
        self.worker = Worker()
        self._latest: dict[str, list[Ticket]] = {}  # per key: the newest ticket, and those for its place
        self._waiting: deque[Ticket] = deque()
        self._busy = False
        self._idle: Ticket | None = None  # the idle ticket, waiting to start or running
        self.superseded_count = 0
        self.dropped_count = 0

    @property
    def busy(self) -> bool:
        """Whether a job other than an idle (speculative) one is on the worker now."""
        return self._busy and not (self._idle is not None and self._idle.running)

    @property
    def speculating(self) -> bool:
        """Whether an idle ticket's job is on the worker now."""
        return self._idle is not None and self._idle.running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def ticket(self, key: str | None, droppable: bool = True, place: Any = None) -> Ticket:
        """A new ticket; older ones for the same ``key`` are superseded, unless they are for the same
        ``place`` (not None: two requests for the same text and position, say ghost text and completion
        items, are both current); an idle one is preempted."""
        self.preempt_idle()
        ticket = Ticket(self, key, droppable, place=place)
        if key is not None:
            kept = []
            for older in self._latest.get(key, ()):
                if older.skipped is not None:
                    continue
                if place is not None and older.place == place:
                    kept.append(older)
                else:
                    older.skip("superseded")
                    self.superseded_count += 1
            self._latest[key] = [*kept, ticket]
        return ticket

    def idle_ticket(self, key: str | None = None) -> Ticket:
        """A lowest-priority ticket (see the module docstring); it replaces an older idle ticket.

        Its ``run`` raises :class:`Skipped` ("preempted") unless the worker is free and nothing waits.
        """
        self.preempt_idle()
        ticket = Ticket(self, key, droppable=True, idle=True)
        self._idle = ticket
        return ticket

    def preempt_idle(self, key: str | None = None) -> bool:
        """Stops the idle ticket (only if it is for ``key``, when given); True if one was stopped."""
        ticket = self._idle
        if ticket is None or ticket.skipped is not None or (key is not None and ticket.key != key):
            return False
        ticket.skip("preempted")
        return True

    def cancel_key(self, key: str) -> None:
        """Stops whatever is pending or running for ``key`` (e.g. the document was closed)."""
        for ticket in self._latest.pop(key, ()):
            ticket.skip("closed")

    async def run_exclusive(self, work: Callable[[threading.Event], T]) -> T:
        """Runs ``work`` on the worker in turn with the tickets (never dropped, never superseded)."""
        ticket = self.ticket(None, droppable=False)
        try:
            return await ticket.run(work)
        finally:
            ticket.close()

    def close(self) -> None:
        """Stops every ticket and lets the worker thread end."""
        for ticket in [*self._latest_tickets(), *self._waiting]:
            ticket.skip("closed")
        if self._idle is not None:
            self._idle.skip("closed")
        self.worker.close()

    def stop_and_join(self, timeout: float) -> bool:
        """At process exit, once the event loop is gone: stops every job and waits for the worker thread.

        Only thread-safe things are touched (the tickets' stop events). True if the worker ended in time.
        """
        for ticket in [*self._latest_tickets(), *self._waiting, *([self._idle] if self._idle else [])]:
            ticket.stop.set()
        self.worker.close()
        return self.worker.join(timeout)

    async def _acquire(self, ticket: Ticket) -> None:
        if ticket.idle and self._pending_request():
            raise Skipped("preempted")  # a request in its debounce will want the worker in a moment
        if not self._busy and not self._waiting:
            self._busy = True
            return
        if ticket.idle:
            raise Skipped("preempted")
        self.preempt_idle()  # an idle job that started while this ticket debounced: stop it now
        ticket._turn = self.loop.create_future()
        self._waiting.append(ticket)
        droppable = [t for t in self._waiting if t.droppable]
        while len(self._waiting) > self.max_waiting and droppable:
            oldest = droppable.pop(0)
            self.dropped_count += 1
            log.debug("queue full: dropping the oldest waiting request (%s)", oldest.key)
            oldest.skip("dropped")
        try:
            await ticket._turn
        except asyncio.CancelledError:
            ticket.stop.set()
            if ticket._turn.done() and not ticket._turn.cancelled() and ticket._turn.exception() is None:
                self._release()  # the turn was handed over just as the task was cancelled
            self._forget_waiting(ticket)
            raise

    def _pending_request(self) -> bool:
        """Whether a request's ticket is alive and not running (debouncing or waiting)."""
        return any(not t.idle and t.skipped is None and not t.running for t in self._latest_tickets())

    def _latest_tickets(self) -> list[Ticket]:
        return [ticket for tickets in self._latest.values() for ticket in tickets]

    def _release(self) -> None:
        """The worker is free: hand it to the oldest waiting ticket."""
        while self._waiting:
            nxt = self._waiting.popleft()
            if nxt._turn is not None and not nxt._turn.done():
                nxt._turn.set_result(None)
                return
        self._busy = False

    def _forget_waiting(self, ticket: Ticket) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(ticket)

    def _forget(self, ticket: Ticket) -> None:
        self._forget_waiting(ticket)
        if self._idle is ticket:
            self._idle = None
        tickets = self._latest.get(ticket.key) if ticket.key is not None else None
        if tickets is not None and ticket in tickets:
            tickets.remove(ticket)
            if not tickets:
                del self._latest[ticket.key]
