"""Where a keystroke's time in the server goes, step by step, for one or more versions of the code.

Each tree (a checkout or worktree, ``.`` for this one) is copied to a scratch folder with timestamps added at
the steps of an ``inlineCompletion`` request: read, handler, prompt, worker hand-off, model, hand-back,
post-processing, response written. Then ``bench/keystrokes.py --sections overhead`` runs on each copy in turn
(``--rounds`` times, alternately, so that drift of the machine hits both alike) and the median of each step
over the requests with a model run is printed, one column per run.

    PYTHONPATH=. .venv/bin/python bench/trace_overhead.py --trees <worktree of the old commit> . --rounds 2

The marks are put in by text replacement: a step whose code changed shape fails loudly (``AssertionError``
naming the file and the text it looked for); adjust ``MARKS`` then. Not a test: the copies are scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TRACE_MODULE = """
import json, time
MARKS = []
def mark(label):
    MARKS.append((label, time.perf_counter()))
def reset():
    MARKS.clear(); mark("read")
def dump(path):
    if not MARKS or MARKS[0][0] != "read":
        return
    t0 = MARKS[0][1]
    with open(path, "a") as f:
        f.write(json.dumps([(label, (t - t0) * 1000) for label, t in MARKS]) + "\\n")
"""

M = "from refact_lsp import _trace; _trace.mark"

WRITER = """    class _TracedWriter(StdoutWriter):
        def write(self, data):
            from refact_lsp import _trace
            answering = bool(_trace.MARKS) and _trace.MARKS[-1][0] == "returned"
            super().write(data)
            if answering:
                _trace.mark("written")
                _trace.dump(os.environ["REFACT_TRACE_FILE"])
                _trace.MARKS.clear()

    server.protocol.set_writer(_TracedWriter(stdout or sys.stdout.buffer))"""

# (file, [(text or alternatives, replacement)]): in a replacement "{text}" stands for the text found and
# "{indent}" for its first line's indentation
MARKS: list[tuple[str, list[tuple[str | tuple[str, ...], str]]]] = [
    (
        "refact_lsp/transport.py",
        [
            (
                "            try:\n                message = json.loads(item)",
                "            from refact_lsp import _trace\n"
                "            if b'inlineCompletion' in item: _trace.reset()\n{text}",
            ),
            ("    server.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))", WRITER),
        ],
    ),
    (
        "refact_lsp/service/completion.py",
        [
            (
                "        started = time.perf_counter()\n        stats = self.stats\n",
                f"        {M}('handler')\n{{text}}",
            ),
            (
                (
                    "                suggestion = await waiter\n",
                    "            suggestion = await asyncio.shield(job.task)\n",
                ),
                "{indent}_trace.mark('prepared')\n{text}{indent}_trace.mark('resumed')\n",
            ),
            (
                '        stats.record_latency("total", (time.perf_counter() - started) * 1000)\n',
                "{text}        _trace.mark('returned')\n",
            ),
            (
                "            raw = (await ticket.run("
                "lambda stop: self._generate(prompt, post, stop), self._count)).text\n",
                f"            {M}('debounced')\n{{text}}            _trace.mark('result on the loop')\n",
            ),
            (
                "        suggestion = self._suggestion(req, prompt.mode, completion)"
                " if completion else None\n",
                f"{{text}}        {M}('post-processed')\n",
            ),
        ],
    ),
    (
        "refact_lsp/service/scheduler.py",
        [
            (
                "        def deliver(result: Any, error: BaseException | None) -> None:  # on the loop\n",
                f"{{text}}            {M}('loop woken')\n",
            ),
            (
                "            try:\n                result, error = work(self.stop), None",
                f"            {M}('worker woken')\n{{text}}",
            ),
            (
                "            call_soon_threadsafe(scheduler.loop, deliver, result, error)\n",
                "            _trace.mark('worker done')\n{text}",
            ),
            ("        scheduler.worker.submit(job)", f"        {M}('submitted')\n{{text}}"),
        ],
    ),
    (
        "refact_lsp/engine/generate.py",
        [
            (
                "        t0 = time.perf_counter()\n",
                f"        {M}('model start')\n        t0 = _trace.MARKS[-1][1]\n",
            ),
            (
                "        reused = self._select_cache(prompt, request.kv_reuse)\n",
                "{text}        _trace.mark('KV slot chosen')\n",
            ),
            (
                "        t_end = time.perf_counter()\n",
                "        _trace.mark('model end')\n        t_end = _trace.MARKS[-1][1]\n",
            ),
        ],
    ),
]


def traced_copy(tree: Path, dest: Path) -> None:
    """``tree``'s package, bench and tokenizer fixture in ``dest``, with the marks put in."""
    for part in ("refact_lsp", "bench"):
        shutil.copytree(tree / part, dest / part)
    (dest / "tests" / "fixtures").mkdir(parents=True)
    shutil.copy(tree / "tests" / "fixtures" / "tokenizer.json", dest / "tests" / "fixtures")
    (dest / "refact_lsp" / "_trace.py").write_text(TRACE_MODULE)
    for name, edits in MARKS:
        path = dest / name
        text = path.read_text()
        for found, replacement in edits:
            options = found if isinstance(found, tuple) else (found,)
            hit = next((o for o in options if text.count(o) == 1), None)
            assert hit is not None, f"{name}: none of {options!r} found once: adjust MARKS"
            indent = hit[: len(hit) - len(hit.lstrip(" "))]
            text = text.replace(hit, replacement.replace("{text}", hit).replace("{indent}", indent))
        path.write_text(text)


def run(copy: Path, keys: int, trace_file: Path) -> list[list[tuple[str, float]]]:
    trace_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(copy), "REFACT_TRACE_FILE": str(trace_file)}
    command = [sys.executable, "bench/keystrokes.py", "--sections", "overhead", "--overhead-keys", str(keys)]
    subprocess.run(command, cwd=copy, env=env, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in trace_file.read_text().splitlines()] if trace_file.exists() else []
    return [row for row in rows if any(label == "model start" for label, _ in row)]


def steps(rows: list[list[tuple[str, float]]]) -> dict[str, float]:
    """The median of each step (between two marks) and of the totals without the model, in ms."""
    found: dict[str, list[float]] = {}
    for row in rows:
        for (a, ta), (b, tb) in zip(row, row[1:], strict=False):
            found.setdefault(f"{a} -> {b}", []).append(tb - ta)
        at = dict(row)
        model = at["model end"] - at["model start"]
        found.setdefault("handler -> returned, without the model", []).append(
            at["returned"] - at["handler"] - model
        )
        found.setdefault("read -> written, without the model", []).append(at["written"] - model)
    return {step: statistics.median(values) for step, values in found.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", nargs="+", type=Path, default=[Path(".")])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keys", type=int, default=40, help="keystrokes per run (--overhead-keys)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="refact-trace-") as tmp:
        copies = []
        for i, tree in enumerate(args.trees):
            copy = Path(tmp) / f"tree{i}"
            traced_copy(tree.resolve(), copy)
            copies.append(copy)
        columns: list[tuple[str, dict[str, float]]] = []
        for r in range(args.rounds):
            for i, copy in enumerate(copies):
                rows = run(copy, args.keys, Path(tmp) / "trace.jsonl")
                columns.append((f"{args.trees[i]} #{r + 1}", steps(rows)))
                print(f"{columns[-1][0]}: {len(rows)} requests with a model run", flush=True)
    names = list(dict.fromkeys(step for _, found in columns for step in found))
    width = max(map(len, names))
    print(f"{'median ms':{width}}  " + "  ".join(f"{name:>14.14}" for name, _ in columns))
    for step in names:
        if step == "KV slot chosen -> model end":
            continue  # the model itself
        cells = "  ".join(f"{found[step]:14.3f}" if step in found else f"{'-':>14}" for _, found in columns)
        print(f"{step:{width}}  {cells}")


if __name__ == "__main__":
    main()
