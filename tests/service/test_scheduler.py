"""The scheduler with plain asyncio and blocking jobs standing in for the engine."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from refact_lsp.service.scheduler import Scheduler, Skipped


class Engine:
    """A blocking 'generation' that takes ``steps`` steps of ``step_s`` and checks its stop event."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active = 0
        self.max_active = 0
        self.steps_done: dict[str, int] = {}
        self._lock = threading.Lock()

    def job(self, name: str, steps: int = 1, step_s: float = 0.01):
        def work(stop: threading.Event) -> str:
            with self._lock:
                self.calls.append(name)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            try:
                for done in range(1, steps + 1):
                    if stop.is_set():
                        return f"{name}:stopped"
                    time.sleep(step_s)
                    self.steps_done[name] = done
                return f"{name}:done"
            finally:
                with self._lock:
                    self.active -= 1

        return work


async def complete(scheduler: Scheduler, key: str, work, debounce_s: float = 0.0, place=None):
    """What the completion service does with a ticket: None when skipped."""
    ticket = scheduler.ticket(key, place=place)
    try:
        await ticket.debounce(debounce_s)
        result = await ticket.run(work)
        return None if ticket.superseded else result
    except Skipped as skip:
        return skip.reason
    finally:
        ticket.close()


@pytest.fixture
async def scheduler():
    sched = Scheduler(asyncio.get_running_loop(), max_waiting=2)
    yield sched
    sched.close()


async def test_a_burst_is_collapsed_by_the_debounce(scheduler: Scheduler) -> None:
    engine = Engine()
    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(complete(scheduler, "doc", engine.job(f"r{i}"), debounce_s=0.05)))
        await asyncio.sleep(0.005)
    results = await asyncio.gather(*tasks)
    assert results == ["superseded"] * 4 + ["r4:done"]
    assert engine.calls == ["r4"]
    assert scheduler.superseded_count == 4


async def test_superseded_while_running_stops_and_never_overlaps(scheduler: Scheduler) -> None:
    engine = Engine()
    first = asyncio.create_task(complete(scheduler, "doc", engine.job("old", steps=500)))
    while "old" not in engine.steps_done:
        await asyncio.sleep(0.005)
    second = asyncio.create_task(complete(scheduler, "doc", engine.job("new", steps=2)))
    assert await first is None  # superseded: answered empty
    assert await second == "new:done"
    assert engine.steps_done["old"] < 50  # stopped within a step or so, not after 500
    assert engine.max_active == 1


async def test_requests_for_the_same_place_run_one_after_the_other_and_a_new_place_supersedes_them(
    scheduler: Scheduler,
) -> None:
    engine = Engine()
    jobs = [engine.job(name, steps=3) for name in ("ghost", "menu", "next")]
    ghost = asyncio.create_task(complete(scheduler, "doc", jobs[0], place=("v1", 4)))
    await asyncio.sleep(0.005)
    menu = asyncio.create_task(complete(scheduler, "doc", jobs[1], place=("v1", 4)))
    assert await asyncio.gather(ghost, menu) == ["ghost:done", "menu:done"]
    waiting = [
        asyncio.create_task(complete(scheduler, "doc", jobs[i], 0.05, place=("v2", 5))) for i in (0, 1)
    ]
    await asyncio.sleep(0.005)
    newer = asyncio.create_task(complete(scheduler, "doc", jobs[2], place=("v3", 6)))
    assert await asyncio.gather(*waiting, newer) == ["superseded", "superseded", "next:done"]
    assert scheduler.superseded_count == 2 and engine.max_active == 1


async def test_other_documents_are_not_superseded(scheduler: Scheduler) -> None:
    engine = Engine()
    a = asyncio.create_task(complete(scheduler, "a", engine.job("a", steps=3)))
    b = asyncio.create_task(complete(scheduler, "b", engine.job("b", steps=3)))
    assert await asyncio.gather(a, b) == ["a:done", "b:done"]
    assert engine.max_active == 1


async def test_cancelling_the_task_stops_the_job_and_holds_the_worker_until_it_returns(
    scheduler: Scheduler,
) -> None:
    engine = Engine()
    step_s = 0.05
    running = asyncio.create_task(complete(scheduler, "a", engine.job("long", steps=100, step_s=step_s)))
    while "long" not in engine.steps_done:
        await asyncio.sleep(0.005)
    follower = asyncio.create_task(complete(scheduler, "b", engine.job("next")))
    await asyncio.sleep(0)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await follower == "next:done"
    assert engine.max_active == 1  # "next" waited for "long" to notice its stop event
    assert engine.steps_done["long"] <= 3


async def test_on_done_sees_every_result_even_of_a_cancelled_task(scheduler: Scheduler) -> None:
    engine = Engine()
    done: list[str] = []
    ticket = scheduler.ticket("a")
    running = asyncio.create_task(ticket.run(engine.job("long", steps=100, step_s=0.02), done.append))
    while "long" not in engine.steps_done:
        await asyncio.sleep(0.005)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    while scheduler.busy:
        await asyncio.sleep(0.005)
    ticket.close()
    assert done == ["long:stopped"]  # counted although nobody awaited the answer any more
    other = scheduler.ticket("b")
    assert await other.run(engine.job("b"), done.append) == "b:done"
    other.close()
    assert done == ["long:stopped", "b:done"]


async def test_cancelling_a_waiting_task_leaves_the_queue_working(scheduler: Scheduler) -> None:
    engine = Engine()
    running = asyncio.create_task(complete(scheduler, "a", engine.job("a", steps=5)))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(complete(scheduler, "b", engine.job("b")))
    await asyncio.sleep(0.01)
    assert scheduler.waiting == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert scheduler.waiting == 0
    assert await running == "a:done"
    assert await complete(scheduler, "c", engine.job("c")) == "c:done"
    assert engine.calls == ["a", "c"]
    assert not scheduler.busy


async def test_the_waiting_queue_is_bounded_and_drops_the_oldest(scheduler: Scheduler) -> None:
    engine = Engine()
    blocker = asyncio.create_task(complete(scheduler, "busy", engine.job("busy", steps=10)))
    await asyncio.sleep(0.01)
    burst = []
    for i in range(6):
        burst.append(asyncio.create_task(complete(scheduler, f"doc{i}", engine.job(f"d{i}"))))
        await asyncio.sleep(0)
    assert scheduler.waiting <= 2
    results = await asyncio.gather(blocker, *burst)
    assert results == ["busy:done"] + ["dropped"] * 4 + ["d4:done", "d5:done"]
    assert engine.calls == ["busy", "d4", "d5"]
    assert scheduler.dropped_count == 4


async def test_exclusive_jobs_are_never_dropped(scheduler: Scheduler) -> None:
    engine = Engine()
    blocker = asyncio.create_task(complete(scheduler, "busy", engine.job("busy", steps=5)))
    await asyncio.sleep(0.01)
    load = asyncio.create_task(scheduler.run_exclusive(engine.job("load")))
    await asyncio.sleep(0)
    burst = [asyncio.create_task(complete(scheduler, f"d{i}", engine.job(f"d{i}"))) for i in range(4)]
    results = await asyncio.gather(blocker, load, *burst)
    assert results[1] == "load:done"
    assert "load" in engine.calls
    assert engine.max_active == 1


async def test_closing_a_document_stops_its_request(scheduler: Scheduler) -> None:
    engine = Engine()
    task = asyncio.create_task(complete(scheduler, "doc", engine.job("doc", steps=500)))
    while "doc" not in engine.steps_done:
        await asyncio.sleep(0.005)
    scheduler.cancel_key("doc")
    assert await task == "doc:stopped"
    assert engine.steps_done["doc"] < 50


async def speculate(scheduler: Scheduler, work, key: str | None = "doc"):
    """What the service does with an idle ticket: the result, or the skip reason."""
    ticket = scheduler.idle_ticket(key)
    try:
        return await ticket.run(work)
    except Skipped as skip:
        return skip.reason
    finally:
        ticket.close()


async def test_a_request_preempts_an_idle_job_within_a_step(scheduler: Scheduler) -> None:
    engine = Engine()
    idle = asyncio.create_task(speculate(scheduler, engine.job("idle", steps=500)))
    while "idle" not in engine.steps_done:
        await asyncio.sleep(0.005)
    assert scheduler.speculating and not scheduler.busy
    real = asyncio.create_task(complete(scheduler, "other", engine.job("real", steps=2)))
    assert await real == "real:done"
    assert await idle == "idle:stopped"
    assert engine.steps_done["idle"] < 50
    assert engine.max_active == 1


async def test_an_idle_job_never_waits_for_the_worker(scheduler: Scheduler) -> None:
    engine = Engine()
    busy = asyncio.create_task(complete(scheduler, "doc", engine.job("busy", steps=5)))
    await asyncio.sleep(0.01)
    assert await speculate(scheduler, engine.job("idle")) == "preempted"
    assert await busy == "busy:done"
    assert await speculate(scheduler, engine.job("idle")) == "idle:done"
    assert engine.calls == ["busy", "idle"]


async def test_an_idle_job_does_not_start_while_a_request_debounces(scheduler: Scheduler) -> None:
    engine = Engine()
    real = asyncio.create_task(complete(scheduler, "b", engine.job("real"), debounce_s=0.05))
    await asyncio.sleep(0)  # the request holds its ticket and debounces; the worker is free
    assert await speculate(scheduler, engine.job("idle", steps=100), key="a") == "preempted"
    assert await real == "real:done"
    assert engine.calls == ["real"]


async def test_preempting_by_key_leaves_other_documents_idle_jobs(scheduler: Scheduler) -> None:
    engine = Engine()
    idle = asyncio.create_task(speculate(scheduler, engine.job("idle", steps=3), key="a"))
    await asyncio.sleep(0)
    assert not scheduler.preempt_idle("b")
    assert await idle == "idle:done"
    idle = asyncio.create_task(speculate(scheduler, engine.job("idle2", steps=500), key="a"))
    while "idle2" not in engine.steps_done:
        await asyncio.sleep(0.005)
    assert scheduler.preempt_idle("a")
    assert await idle == "idle2:stopped"
