"""Load: 1,000 completion requests over 20 documents, with edits and random ``$/cancelRequest``s, on the
real server with a tiny scripted checkpoint.

Every request is answered (a result, or RequestCancelled -32800 for a cancelled one), the process's
resident memory grows less than 50 MB from warm-up to the end, no asyncio task, thread or handler future is
left behind,
and bursts are collapsed (supersede, debounce, typed-ahead cache): far fewer model runs than requests.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from .rpc import RawServer

DOCS = [f"file:///load/doc{i:02}.py" for i in range(20)]
REQUESTS = 1000
WARM_UP = 100
WINDOW = 40  # requests in flight before the test waits for their answers (a fast typist's burst)
SETTINGS = {"temperature": 0, "debounceMs": 10}
RSS_GROWTH_LIMIT_KB = 50 * 1024
REQUEST_CANCELLED = -32800


def _position(line: str) -> dict[str, int]:
    return {"line": 1, "character": len(line)}


def test_a_thousand_requests_with_cancels_and_edits(scripted_checkpoint: Path) -> None:
    rng = random.Random(6)
    server = RawServer("--model", str(scripted_checkpoint))
    try:
        server.initialize(SETTINGS)
        assert server.wait_model()["model"]["state"] == "ready"
        lines = {}
        for uri in DOCS:
            lines[uri] = "    return "
            server.open(uri, f"def f(a, b):\n{lines[uri]}\n")
        answers: Counter = Counter()
        cancelled: set = set()
        in_flight: list = []
        versions = Counter()
        baseline = None

        def settle() -> None:
            for msg_id in in_flight:
                answer = server.wait(msg_id)
                if "error" in answer:
                    assert answer["error"]["code"] == REQUEST_CANCELLED, answer
                    assert msg_id in cancelled, f"an error for a request never cancelled: {answer}"
                    answers["cancelled"] += 1
                else:
                    answers["items" if _items(answer["result"]) else "empty"] += 1
            in_flight.clear()

        for n in range(REQUESTS):
            if n == WARM_UP:
                settle()
                time.sleep(0.3)  # let the last speculation end
                baseline = (server.stats()["process"], _rss_kb(server))
            uri = rng.choice(DOCS)
            if rng.random() < 0.4:  # the user typed: an edit at the cursor
                typed = rng.choice(["a", " ", "+", "b", "😀"])
                at = _position(lines[uri])
                versions[uri] += 1
                server.notify(
                    "textDocument/didChange",
                    {
                        "textDocument": {"uri": uri, "version": versions[uri] + 1},
                        "contentChanges": [{"range": {"start": at, "end": at}, "text": typed}],
                    },
                )
                lines[uri] += typed
            method = rng.choice(["textDocument/inlineCompletion", "textDocument/completion"])
            params = {"textDocument": {"uri": uri}, "position": _position(lines[uri])}
            if method == "textDocument/inlineCompletion":
                params["context"] = {"triggerKind": 2}
            in_flight.append(server.request(method, params))
            if rng.random() < 0.25:
                victim = rng.choice(in_flight)
                cancelled.add(victim)
                server.notify("$/cancelRequest", {"id": victim})
            if len(in_flight) >= WINDOW:
                settle()
        settle()
        time.sleep(0.3)
        stats = server.stats()
        end_rss = _rss_kb(server)
    finally:
        alive = server.alive()
        server.stop()
    assert baseline is not None
    process, start_rss = baseline
    print(f"load: {answers}, model runs {stats['model_runs']}, rss {start_rss} -> {end_rss} kB")
    assert alive
    assert sum(answers.values()) == REQUESTS
    assert not server.duplicates
    assert answers["items"] > 50 and answers["cancelled"] > 10, answers
    assert end_rss - start_rss < RSS_GROWTH_LIMIT_KB, (start_rss, end_rss)
    assert stats["process"]["threads"] <= process["threads"], (process, stats["process"])
    assert stats["process"]["tasks"] <= process["tasks"], (process, stats["process"])
    # pygls kept a future per notification (each didChange) for good: the handlers in flight stay few
    assert stats["process"]["pending"] <= process["pending"], (process, stats["process"])
    assert stats["requests"] >= REQUESTS
    assert stats["model_runs"] < REQUESTS / 3, stats


def _items(result: object) -> list:
    if isinstance(result, dict):
        return list(result.get("items") or [])
    return list(result or [])


def _rss_kb(server: RawServer) -> int:
    """VmRSS of the server process, read from /proc (Linux)."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
