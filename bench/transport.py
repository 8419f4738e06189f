"""The server's round trip without the model: stdin read on the event loop against a pool thread.

``python bench/transport.py [--requests N]`` starts two real servers over pipes (no model: the requests
are answered before any model would run), the default one, which reads a pipe on its event loop
(``transport.pipe_reader``), and one with the pool-thread reader that pygls uses. It sends both the same
``didChange`` + ``inlineCompletion`` pairs, alternating between them so that both see the same load, and
prints each one's round-trip p50/p90/mean and the ratio of the p50s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.robustness.rpc import RawServer  # noqa: E402

POOL_THREAD_SERVER = (
    "import sys, refact_lsp.transport as t\n"
    "async def no_pipe_reader(*args): return None\n"
    "t.pipe_reader = no_pipe_reader\n"
    "from refact_lsp.cli import main\n"
    "main(sys.argv[1:])\n"
)
URI = "file:///bench/transport.py"
WARM_UP = 50


class Server(RawServer):
    """``RawServer``, or with ``code`` run as the server's script instead of ``python -m refact_lsp``."""

    def __init__(self, code: str | None, scratch: Path):
        if code is None:
            super().__init__("--model", "/nowhere")
            return
        script, wrapper, real = scratch / "server.py", scratch / "python", sys.executable
        script.write_text(code)
        wrapper.write_text(f'#!/bin/sh\nshift 2\nexec "{real}" "{script}" "$@"\n')  # drops "-m refact_lsp"
        wrapper.chmod(0o755)
        sys.executable = str(wrapper)
        try:
            super().__init__("--model", "/nowhere")
        finally:
            sys.executable = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=800, help="pairs sent to each server")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="refact-bench-transport-"))
    servers = {
        "event loop (default)": Server(None, scratch),
        "pool thread (pygls)": Server(POOL_THREAD_SERVER, scratch),
    }
    for server in servers.values():
        server.initialize({"model": "/nowhere"})
        server.open(URI, "x = 1\n" * 10_000)
    time.sleep(2.0)  # the failed model load settles
    samples: dict[str, list[float]] = {name: [] for name in servers}
    for i in range(args.requests):
        for name, server in servers.items():
            change = {
                "range": {"start": {"line": 3, "character": 0}, "end": {"line": 3, "character": 0}},
                "text": "y",
            }
            server.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": URI, "version": i + 2}, "contentChanges": [change]},
            )
            started = time.perf_counter()
            server.call(
                "textDocument/inlineCompletion",
                {
                    "textDocument": {"uri": URI},
                    "position": {"line": 5, "character": 3},
                    "context": {"triggerKind": 2},
                },
            )
            samples[name].append((time.perf_counter() - started) * 1000)
    p50 = {}
    for name, values in samples.items():
        values = sorted(values[WARM_UP:])
        p50[name] = statistics.median(values)
        p90, mean = values[len(values) * 9 // 10], statistics.mean(values)
        print(f"{name:22s} round trip p50 {p50[name]:.3f} ms  p90 {p90:.3f} ms  mean {mean:.3f} ms")
    default, pool = p50.values()
    print(
        f"p50 ratio event loop / pool thread: {default / pool:.2f} ({args.requests - WARM_UP} requests each)"
    )
    for server in servers.values():
        server.stop()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
