"""Fuzz the real server with many cases and report: ``python bench/fuzz.py [--cases N] [--seed S]``.

Uses the CI fuzzer's generators (``tests/robustness/fuzz_cases.py``) on one server process with the
scripted checkpoint, plus corrupt framing (bad, short, huge or missing ``Content-Length``) every
``--framing-every`` cases, and a 10 MB document every ``--big-every`` cases. Every case is checked as in
CI (each request answered once, properly; the sanity completion still right); the first failure stops
the run and is printed. The report: cases, frames, requests, answers by error code, crashes, duration.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from tests.robustness.framing_cases import corrupt_framing_round  # noqa: E402
from tests.robustness.fuzz_cases import (  # noqa: E402
    SANITY_POSITION,
    SANITY_URI,
    SCRIPTED_TEXT,
    CaseReport,
    frames,
    run_case,
    start_fuzz_server,
)


class TimeUp(Exception):
    """--max-seconds reached: stop generating, report what ran."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--framing-every", type=int, default=50)
    parser.add_argument("--big-every", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=None, help="stop early (reported)")
    args = parser.parse_args()

    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    work = Path(tempfile.mkdtemp(prefix="refact-fuzz-"))
    checkpoint = write_scripted_checkpoint(work / "scripted", SCRIPTED_TEXT)
    log = work / "server.log"
    server = start_fuzz_server(checkpoint, stderr_path=log)
    report = CaseReport()
    ids = itertools.count(1_000_000)
    counter = itertools.count(1)
    extra = {"framing rounds": 0, "big documents": 0}
    started = time.perf_counter()

    @seed(args.seed)
    @settings(
        max_examples=args.cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=frames(ids))
    def one(case) -> None:
        if args.max_seconds and time.perf_counter() - started > args.max_seconds:
            raise TimeUp
        n = next(counter)
        run_case(server, case, report)
        if args.framing_every and n % args.framing_every == 0:
            corrupt_framing_round(server, n)
            extra["framing rounds"] += 1
        if args.big_every and n % args.big_every == 0:
            big = "x = 1\n" * (10 * 1024 * 1024 // 6)
            server.open("file:///fuzz/big.py", big)
            assert server.inline("file:///fuzz/big.py", big.count("\n"), 0) is not None
            server.notify("textDocument/didClose", {"textDocument": {"uri": "file:///fuzz/big.py"}})
            extra["big documents"] += 1
        if n % 5000 == 0:
            print(f"  {n} cases, {time.perf_counter() - started:.0f} s", flush=True)

    crash = None
    try:
        one()
    except TimeUp:
        print(f"stopped after --max-seconds {args.max_seconds}")
    except BaseException as exc:  # noqa: BLE001 - reported below
        crash = exc
    duration = time.perf_counter() - started
    alive = server.alive()
    sanity = server.inline(SANITY_URI, *SANITY_POSITION) if alive else None
    code = server.stop()
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(report.errors_by_code.items()))
    nulls: dict[int, int] = {}
    for error in server.null_id_errors:
        nulls[error["error"]["code"]] = nulls.get(error["error"]["code"], 0) + 1
    print(f"cases            {report_cases(counter)}")
    print(f"frames           {report.frames}")
    print(f"requests         {report.requests} (results {report.results}; errors by code {codes})")
    print(f"id-null errors   {nulls}")
    print(f"extra            {extra}")
    print(f"server crashes   {0 if alive else 1} (exit code after shutdown: {code}); sanity at end {sanity}")
    print(f"failure          {crash!r}" if crash else "failure          none")
    print(f"duration         {duration:.0f} s ({report.frames / max(duration, 1e-9):.0f} frames/s)")
    print(f"server log       {log}")
    sys.exit(1 if crash or not alive else 0)


def report_cases(counter: itertools.count) -> int:
    return next(counter) - 1


if __name__ == "__main__":
    main()
