"""A keystroke's prompt building, back to back and after a pause, for one or more versions of the code.

    PYTHONPATH=. .venv/bin/python bench/prompt_build.py --trees <worktree of the old commit> . --rounds 3

Each tree (a checkout or worktree, ``.`` for this one) builds the prompts of a typed line in the middle of
a 10,000-line file (the file of ``bench/keystrokes.py --sections overhead``) with the real tokenizer and
the window kept from keystroke to keystroke, as the server does. Each keystroke is timed twice: right
after the previous one (warm) and after a pause (``--pause-ms``, what the server sees between keystrokes:
code and data not touched for a few milliseconds are slow again on a VM; ``--spin`` pauses in a busy
loop instead of a sleep). A lock's acquire and release is timed the same way, to show how much a pause
costs on this machine at all. The trees run in turn in fresh processes (``--rounds`` times, alternately);
the p50 of each is printed with its ratio to the first tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from keystrokes import overhead_document

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, threading, time
from tokenizers import Tokenizer
from refact_lsp.service import prompt
from refact_lsp.service.prompt import CachedEncoder, build_prompt

job = json.load(sys.stdin)  # tokenizer, lines, at, typed, keys, pause_s, spin
tok = Tokenizer.from_file(job["tokenizer"])
lines, at, typed = job["lines"], job["at"], job["typed"]
lock = threading.Lock()


def lock_op():
    lock.acquire(timeout=0.005)
    lock.release()


def spin_for(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def typing(wait):
    encoder = CachedEncoder(lambda text: tok.encode(text, add_special_tokens=False).ids)
    doc, window, prompt_ms, lock_us = list(lines), None, [], []
    for i in range(min(job["keys"], len(typed))):
        doc[at] = typed[: i + 1]
        wait()
        t = time.perf_counter()
        prompt = build_prompt(doc, at, i + 1, encoder, 4096 - 16, "single", window)
        prompt_ms.append((time.perf_counter() - t) * 1000)
        window = prompt.window
        wait()
        t = time.perf_counter()
        lock_op()
        lock_us.append((time.perf_counter() - t) * 1e6)
    skip = min(5, len(prompt_ms) // 2)  # the first keystrokes tokenize the window
    return statistics.median(prompt_ms[skip:]), statistics.median(lock_us[skip:])


pause = job["pause_s"]
warm = typing(lambda: None)
paused = typing(lambda: spin_for(pause) if job["spin"] else time.sleep(pause))
print(json.dumps({"warm": warm, "paused": paused, "module": prompt.__file__}))
"""


def run(tree: Path, job: str) -> dict:
    """``CHILD`` on ``job`` (JSON) with ``tree``'s package."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", CHILD]
    out = subprocess.run(command, cwd=tree, env=env, input=job, check=True, stdout=subprocess.PIPE, text=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(found["module"]).is_relative_to(tree), f"{tree} imported {found['module']}"
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", nargs="+", type=Path, default=[Path(".")])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keys", type=int, default=40)
    ap.add_argument("--pause-ms", type=float, default=20.0)
    ap.add_argument("--spin", action="store_true", help="pause in a busy loop instead of sleeping")
    ap.add_argument("--file", default=str(REPO / "bench" / "data" / "typed_session.py.txt"))
    args = ap.parse_args()
    lines, at, typed = overhead_document(Path(args.file).read_text("utf-8"))
    tokenizer = str(REPO / "tests" / "fixtures" / "tokenizer.json")
    job = json.dumps(
        {"tokenizer": tokenizer, "lines": lines, "at": at, "typed": typed, "keys": args.keys,
         "pause_s": args.pause_ms / 1000, "spin": args.spin}
    )  # fmt: skip
    found: dict[int, list[dict]] = {i: [] for i in range(len(args.trees))}
    for _ in range(args.rounds):
        for i, tree in enumerate(args.trees):
            found[i].append(run(tree.resolve(), job))
    how = "spinning" if args.spin else "sleeping"
    print(f"{len(args.trees)} tree(s), {args.rounds} round(s), {args.keys} keys, {args.pause_ms} ms {how}")
    print(f"{'tree':30}  {'prompt warm':>12}  {'after pause':>12}  {'lock warm':>10}  {'after pause':>12}")
    base: tuple[float, float] | None = None
    for i, tree in enumerate(args.trees):
        warm = statistics.median(r["warm"][0] for r in found[i])
        paused = statistics.median(r["paused"][0] for r in found[i])
        lock_warm = statistics.median(r["warm"][1] for r in found[i])
        lock_paused = statistics.median(r["paused"][1] for r in found[i])
        base = base or (warm, paused)
        ratios = f"  x{warm / base[0]:.2f} warm, x{paused / base[1]:.2f} after a pause" if i else ""
        print(
            f"{str(tree)[-30:]:30}  {warm:9.3f} ms  {paused:9.3f} ms  {lock_warm:7.1f} us  "
            f"{lock_paused:9.1f} us{ratios}"
        )


if __name__ == "__main__":
    main()
