"""How long this machine takes to wake a sleeping thread: the floor under a request's two thread hand-offs.

A request with a model run crosses threads twice: the event loop hands the job to the engine's worker
thread (which sleeps on a queue) and the worker hands the result back to the event loop (which sleeps in
``epoll``). This times, after a 20 ms sleep as between keystrokes: a thread waking from ``epoll`` on a socket
(asyncio's self-pipe), a thread waking on a lock (the worker's queue), and the whole hand-back as the
server does it (``loop.call_soon_threadsafe`` from a worker thread to a callback on the loop).

    .venv/bin/python bench/wakeup.py --rounds 60
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import select
import socket
import statistics
import threading
import time

PAUSE_S = 0.02


def epoll_wakeup(rounds: int) -> list[float]:
    a, b = socket.socketpair()
    poller = select.epoll()
    poller.register(a.fileno(), select.EPOLLIN)
    times = []
    for _ in range(rounds):
        sent = [0.0]

        def wake(sent=sent) -> None:
            time.sleep(PAUSE_S)
            sent[0] = time.perf_counter()
            b.send(b"\0")

        threading.Thread(target=wake).start()
        poller.poll()
        a.recv(1)
        times.append((time.perf_counter() - sent[0]) * 1000)
    return times


def lock_wakeup(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        lock, sent = threading.Lock(), [0.0]
        lock.acquire()

        def wake(lock=lock, sent=sent) -> None:
            time.sleep(PAUSE_S)
            sent[0] = time.perf_counter()
            lock.release()

        threading.Thread(target=wake).start()
        lock.acquire()
        times.append((time.perf_counter() - sent[0]) * 1000)
    return times


def loop_handback(rounds: int) -> list[float]:
    """As the server: a worker thread waiting on a queue runs the job, then wakes the loop."""
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=lambda: [job() for job in iter(jobs.get, None)], daemon=True).start()

    async def handbacks() -> list[float]:
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(rounds):
            done, sent = loop.create_future(), [0.0]

            def work(done=done, sent=sent) -> None:
                time.sleep(PAUSE_S)  # the model, the GIL released
                sent[0] = time.perf_counter()
                loop.call_soon_threadsafe(lambda: done.set_result(time.perf_counter()))

            jobs.put(work)
            times.append((await done - sent[0]) * 1000)
        jobs.put(None)
        return times

    return asyncio.run(handbacks())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    for name, measure in (
        ("epoll wake-up (a socket byte)", epoll_wakeup),
        ("lock wake-up", lock_wakeup),
        ("call_soon_threadsafe -> callback on the loop", loop_handback),
    ):
        times = sorted(measure(args.rounds)[5:])
        print(f"{name:46} p50 {statistics.median(times):.3f} ms  p90 {times[len(times) * 9 // 10]:.3f} ms")


if __name__ == "__main__":
    main()
