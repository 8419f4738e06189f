"""Replay a typing session through the real server over stdio and measure what each keystroke costs.

    PYTHONPATH=. python bench/keystrokes.py                      # CPU: "mid" random checkpoint, ~3 min
    PYTHONPATH=. python bench/keystrokes.py --device cuda --dtype bfloat16 --shape real --context 2048 \\
        --max-new-tokens 16 --single-line                        # GPU: the 1.6B shape, + transformers

A real source file (default: ``bench/data/typed_session.py.txt``, this project's
``refact_lsp/service/completion.py`` as of commit ``998ccd1``, frozen so that runs of different versions
type the same text: which keystrokes hit the caches depends on it) is opened with part of a function
cut out, and that part is typed back one character at a time like an editor does: an incremental
``didChange`` then ``textDocument/inlineCompletion`` per keystroke, a pause between keystrokes. Now and
then the typist accepts the suggestion shown (after a reading pause; then asks at the new cursor, then
undoes it) or types along it for a few characters. Random weights make no sense, so the typed text never
matches them on its own: those events stand in for it.

The same events run with the default settings and with ``kvReuse=false, completionCache=false,
speculative=false`` (the naive baseline; on CPU only its first ``--naive-keys`` keystrokes, since each
one prefills the whole prompt), in one server process, and the report shows per-request latency p50/p95
(measured by the client, from ``didChange`` sent to answer received), model runs, cache hits (typed-ahead
and speculative) and prompt tokens prefilled per request (from ``refact.stats``), with the ratios.

Then: a typed-ahead hit's time in the server, the server's overhead apart from the model on a
10,000-line file (didChange + request minus the model's prefill and decode, client side and in the
server), and what an edit costs in a 1,000-line and a 100,000-line document. On CUDA (or with
``--hf``), transformers' ``generate`` on the same checkpoint (loaded through ``AutoModelForCausalLM``
with the registered ``gpt_refact`` class) answers the same prompts, for ms per completion and ms/token.

Each section catches its own errors and the run goes on.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

REPO = Path(__file__).resolve().parents[1]
NAIVE = {"kvReuse": False, "completionCache": False, "speculative": False}
DEFAULT = {"kvReuse": True, "completionCache": True, "speculative": True}
SUMMARY: list[str] = []


@contextmanager
def section(title: str) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    t = time.perf_counter()
    try:
        yield
    except Exception as e:  # noqa: BLE001 - report and go on with the next section
        print(f"   FAILED: {type(e).__name__}: {e}")
        traceback.print_exc(limit=5, file=sys.stdout)
        SUMMARY.append(f"{title}: FAILED ({type(e).__name__})")
    finally:
        print(f"   ({time.perf_counter() - t:.1f} s)", flush=True)


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


# -- the document on the client side ---------------------------------------------------------------


def position(text: str, offset: int) -> types.Position:
    """LSP position of a str offset (the server is asked for utf-32: characters are code points)."""
    line = text.count("\n", 0, offset)
    return types.Position(line=line, character=offset - (text.rfind("\n", 0, offset) + 1))


def offset_of(text: str, pos: types.Position) -> int:
    start = 0
    for _ in range(pos.line):
        start = text.index("\n", start) + 1
    return start + pos.character


class Client:
    """pygls' client on ``python -m refact_lsp`` with the few requests the bench makes."""

    def __init__(self) -> None:
        self.lsp = LanguageClient("refact-bench", "1")
        self.versions: dict[str, int] = {}

        @self.lsp.feature(types.WINDOW_LOG_MESSAGE)
        def _log(_params: Any) -> None: ...

        @self.lsp.feature(types.WINDOW_SHOW_MESSAGE)
        def _show(params: types.ShowMessageParams) -> None:
            print(f"   server says: {params.message}")

    async def start(
        self, model: Path, settings: dict[str, Any], device: str, dtype: str, constants: dict[str, Any]
    ) -> None:
        """``python -m refact_lsp`` on ``model``; with ``constants``, the decode's module constants
        (``generate``'s, ``triton_decode``'s or ``triton_gemv``'s) are set in the server process before it
        starts."""
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        server = ["-m", "refact_lsp"]
        if constants:
            sets = "".join(f"setattr(owner({n!r}), {n!r}, {v!r}); " for n, v in constants.items())
            server = [
                "-c",
                "import runpy; from refact_lsp.engine import generate, triton_decode, triton_gemv; "
                "owner = lambda n: next(m for m in (generate, triton_decode, triton_gemv) if hasattr(m, n)); "
                f"{sets}runpy.run_module('refact_lsp', run_name='__main__', alter_sys=True)",
            ]
        args = [*server, "--stdio", "--model", str(model), "--device", device, "--dtype", dtype]
        await self.lsp.start_io(sys.executable, *args, env=env, cwd=str(REPO))
        caps = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf32])
        )
        await self.lsp.initialize_async(
            types.InitializeParams(capabilities=caps, initialization_options={"refact": settings})
        )
        self.lsp.initialized(types.InitializedParams())

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.lsp.shutdown_async(None), 10)
            self.lsp.exit(None)
        finally:
            await self.lsp.stop()

    async def stats(self) -> dict[str, Any]:
        return await self.lsp.workspace_execute_command_async(
            types.ExecuteCommandParams(command="refact.stats", arguments=[])
        )

    async def wait(self, predicate, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            s = await self.stats()
            if predicate(s):
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: last stats {s}")
            await asyncio.sleep(0.01)

    def configure(self, settings: dict[str, Any]) -> None:
        self.lsp.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"refact": settings})
        )

    def open(self, uri: str, text: str) -> None:
        self.versions[uri] = 1
        self.lsp.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
            )
        )

    def change_params(self, uri: str, text: str, start: int, end: int, new_text: str):
        """The ``didChange`` replacing ``text[start:end]`` (positions computed here, outside the timing)."""
        self.versions[uri] += 1
        return types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(start=position(text, start), end=position(text, end)), text=new_text
                )
            ],
        )

    def change(self, uri: str, text: str, start: int, end: int, new_text: str) -> None:
        self.lsp.text_document_did_change(self.change_params(uri, text, start, end, new_text))

    @staticmethod
    def inline_params(uri: str, text: str, offset: int) -> types.InlineCompletionParams:
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=position(text, offset),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )

    @staticmethod
    def answer(result: Any, text: str) -> tuple[str, int, int] | None:
        """(text, range start offset, range end offset) of the first item, or None."""
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        if not items or items[0].range is None:
            return None
        return (
            items[0].insert_text,
            offset_of(text, items[0].range.start),
            offset_of(text, items[0].range.end),
        )

    async def inline(self, uri: str, text: str, offset: int) -> tuple[str, int, int] | None:
        result = await self.lsp.text_document_inline_completion_async(self.inline_params(uri, text, offset))
        return self.answer(result, text)

    async def prompt(self, uri: str, text: str, offset: int) -> dict[str, Any] | None:
        p = position(text, offset)
        return await self.lsp.workspace_execute_command_async(
            types.ExecuteCommandParams(
                command="refact.prompt",
                arguments=[
                    {"textDocument": {"uri": uri}, "position": {"line": p.line, "character": p.character}}
                ],
            )
        )


# -- the typing session ----------------------------------------------------------------------------


@dataclass
class Sample:
    kind: str  # "key", "accept", "undo", "along" (typing along a suggestion)
    ms: float  # client side, didChange sent -> answer received
    model_runs: int
    cache_hits: int
    speculative_hits: int
    prefilled: int  # prompt tokens computed (prompt - reused)
    prompt_tokens: int
    model_ms: float  # prefill + decode of this request's run (0 for a cache answer)
    server_ms: float  # the request's time in the service
    answered: bool
    generated: int = 0  # tokens decoded by this request's run


@dataclass
class Run:
    name: str
    samples: list[Sample] = field(default_factory=list)
    prompts: list[tuple[str, int]] = field(default_factory=list)  # (prompt text, tokens) of some requests
    end_stats: dict[str, Any] = field(default_factory=dict)


class Typist:
    """Types ``typed`` into ``text`` at ``cursor``; asks for a suggestion after each keystroke."""

    def __init__(self, client: Client, args: argparse.Namespace):
        self.client, self.args = client, args

    async def measure(self, run: Run, kind: str, uri: str, before_text: str, edit, text: str, at: int):
        """One keystroke: ``edit`` (start, end, new text) or None, then the request at ``at``."""
        client = self.client
        stats_before = await client.stats()
        change = client.change_params(uri, before_text, *edit) if edit is not None else None
        request = client.inline_params(uri, text, at)
        t = time.perf_counter()
        if change is not None:
            client.lsp.text_document_did_change(change)
        result = await client.lsp.text_document_inline_completion_async(request)
        ms = (time.perf_counter() - t) * 1000
        answer = client.answer(result, text)
        s = await self.client.stats()
        runs = s["model_runs"] - stats_before["model_runs"]
        last = s.get("last_run") or {}
        run.samples.append(
            Sample(
                kind,
                ms,
                runs,
                s["cache_hits"] - stats_before["cache_hits"],
                s["speculative"]["hits"] - stats_before["speculative"]["hits"],
                (s["prompt_tokens"] - s["reused_tokens"])
                - (stats_before["prompt_tokens"] - stats_before["reused_tokens"]),
                s["prompt_tokens"] - stats_before["prompt_tokens"],
                (last.get("prefill_ms", 0) + last.get("decode_ms", 0)) if runs else 0.0,
                s.get("last_latency_ms") or 0.0,
                answer is not None,
                s["generated_tokens"] - stats_before["generated_tokens"],
            )
        )
        return answer

    async def session(self, run: Run, uri: str, text: str, cursor: int, typed: str, keys: int) -> None:
        args, client = self.args, self.client
        client.open(uri, text)
        await client.inline(uri, text, cursor)  # warm-up: the first prompt of the file is prefilled once
        await self.idle()
        pace = args.pace_ms / 1000
        for i, ch in enumerate(keystrokes(typed)[:keys]):
            new = text[:cursor] + ch + text[cursor:]
            answer = await self.measure(run, "key", uri, text, (cursor, cursor, ch), new, cursor + len(ch))
            text, cursor = new, cursor + len(ch)
            if i % 10 == 0 and len(run.prompts) < args.hf_prompts:
                p = await client.prompt(uri, text, cursor)
                if p:
                    run.prompts.append((p["prompt"], p["tokens"]))
            await asyncio.sleep(pace)
            if answer is None:
                continue
            suggestion, start, end = answer
            if i % args.accept_every == args.accept_every // 2:  # read it, accept, go on, undo
                await asyncio.sleep(args.accept_pause_ms / 1000)
                accepted = text[:start] + suggestion + text[end:]
                at = start + len(suggestion)
                await self.measure(run, "accept", uri, text, (start, end, suggestion), accepted, at)
                await asyncio.sleep(pace)
                await self.measure(run, "undo", uri, accepted, (start, at, text[start:end]), text, cursor)
                await asyncio.sleep(pace)
            elif i % args.accept_every == 0 and start == end == cursor and len(suggestion) > 3:
                along = text
                for k in range(3):  # type along the suggestion, then delete what was typed
                    new = along[: cursor + k] + suggestion[k] + along[cursor + k :]
                    await self.measure(
                        run, "along", uri, along, (cursor + k, cursor + k, suggestion[k]), new, cursor + k + 1
                    )
                    along = new
                    await asyncio.sleep(pace)
                await self.measure(run, "undo", uri, along, (cursor, cursor + 3, ""), text, cursor)
                await asyncio.sleep(pace)
        run.end_stats = await client.stats()

    async def idle(self) -> None:
        await self.client.wait(lambda s: not s["busy"] and not s["speculating"], 120, "an idle model")


def keystrokes(typed: str) -> list[str]:
    """One string per keystroke: Enter inserts the line break and the next line's indentation at once
    (the editor's auto-indent), any other key one character."""
    keys: list[str] = []
    i = 0
    while i < len(typed):
        if typed[i] == "\n":
            j = i + 1
            while j < len(typed) and typed[j] in " \t":
                j += 1
            keys.append(typed[i:j])
            i = j
        else:
            keys.append(typed[i])
            i += 1
    return keys


def typing_scenario(path: Path, chars: int) -> tuple[str, int, str]:
    """The file with whole lines cut out of its middle: (text, cursor, what to type back)."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    start_line = len(lines) // 2
    while start_line < len(lines) - 1 and not lines[start_line].strip():
        start_line += 1
    line = lines[start_line]
    start = sum(len(line) for line in lines[:start_line]) + len(line) - len(line.lstrip())  # indented
    end = source.find("\n", start + chars)
    end = len(source) if end == -1 else end
    return source[:start] + source[end:], start, source[start:end]


def summarize(name: str, samples: list[Sample]) -> dict[str, float]:
    ms = [s.ms for s in samples]
    runs = sum(s.model_runs for s in samples)
    prefilled = [s.prefilled for s in samples if s.model_runs]
    out = {
        "requests": len(samples),
        "p50": pct(ms, 50),
        "p95": pct(ms, 95),
        "mean": statistics.fmean(ms) if ms else float("nan"),
        "model_runs": runs,
        "cache_hits": sum(s.cache_hits for s in samples),
        "spec_hits": sum(s.speculative_hits for s in samples),
        "prefilled_per_request": sum(s.prefilled for s in samples) / max(1, len(samples)),
        "prefilled_per_run_p50": pct(prefilled, 50) if prefilled else 0.0,
        "prompt_p50": pct([s.prompt_tokens for s in samples if s.model_runs], 50) if prefilled else 0.0,
        "answered": sum(s.answered for s in samples),
        "generated_per_run": sum(s.generated for s in samples) / max(1, runs),
    }
    print(
        f"   {name:<28} {out['requests']:>4} req  p50 {out['p50']:8.1f} ms  p95 {out['p95']:8.1f} ms  "
        f"mean {out['mean']:8.1f} ms | runs {runs:>4}  "
        f"hits {out['cache_hits']:>3} (spec {out['spec_hits']:>2}) | "
        f"prefilled/req {out['prefilled_per_request']:7.1f} tok "
        f"(per run p50 {out['prefilled_per_run_p50']:.0f} "
        f"of {out['prompt_p50']:.0f}), decoded/run {out['generated_per_run']:.1f}"
    )
    return out


def by_kind(samples: list[Sample]) -> None:
    for kind in ("key", "along", "accept", "undo"):
        sub = [s for s in samples if s.kind == kind]
        if sub:
            summarize(f"  {kind}", sub)


# -- sections --------------------------------------------------------------------------------------


async def replay_section(client: Client, args, text: str, cursor: int, typed: str) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    typist = Typist(client, args)
    naive_keys = args.naive_keys if args.naive_keys > 0 else args.keys
    for name, settings, keys in (("default", DEFAULT, args.keys), ("naive", NAIVE, naive_keys)):
        with section(f"typing session: {name} settings {settings}, {keys} keystrokes"):
            client.configure({**base_settings(args), **settings})
            await asyncio.sleep(0.2)
            run = runs[name] = Run(name)
            uri = f"file:///bench/{name}/{Path(args.file).name.removesuffix('.txt')}"
            await typist.session(run, uri, text, cursor, typed, keys)
            summarize(name, run.samples)
            by_kind(run.samples)
            spec = run.end_stats.get("speculative", {})
            print(
                f"   speculative runs {spec.get('runs')}, cancelled {spec.get('cancelled')}, "
                f"hits {spec.get('hits')}; model runs by stop reason {run.end_stats.get('stop_reasons')}"
            )
    with section("per-keystroke ratio, default / naive (the same events)"):
        d, n = runs["default"], runs["naive"]
        count = len(n.samples)
        # the naive run stops after naive_keys keystrokes: compare with the same first events of the default
        same = d.samples[:count]
        sd, sn = summarize("default (same events)", same), summarize("naive", n.samples)
        for key in ("p50", "p95", "mean", "prefilled_per_request"):
            ratio = sd[key] / sn[key] if sn[key] else float("nan")
            print(f"   {key:<24} default/naive = {ratio:.3f}")
        SUMMARY.append(
            f"per keystroke p50 {sd['p50']:.1f} ms vs naive {sn['p50']:.1f} ms: x{sd['p50'] / sn['p50']:.3f} "
            f"(p95 x{sd['p95'] / sn['p95']:.3f}); prefilled/request {sd['prefilled_per_request']:.1f} vs "
            f"{sn['prefilled_per_request']:.1f} tokens"
        )
        full = summarize("default (whole session)", d.samples)
        SUMMARY.append(
            f"default whole session: p50 {full['p50']:.1f} ms p95 {full['p95']:.1f} ms, "
            f"{full['model_runs']} runs, "
            f"{full['cache_hits']} cache hits ({full['spec_hits']} speculative) "
            f"in {full['requests']} requests"
        )
    return runs


async def hit_section(client: Client, runs: dict[str, Run]) -> None:
    with section("typed-ahead hits: time in the server"):
        s = await client.stats()
        hit = s["latency_ms"].get("hit", {})
        hits = [x for x in runs["default"].samples if x.cache_hits]
        print(
            f"   in the server: p50 {hit.get('p50')} ms  p95 {hit.get('p95')} ms  ({hit.get('count')} hits)"
        )
        print(f"   model runs for those hits: {sum(x.model_runs for x in hits)}")
        if hits:
            print(f"   client side (didChange + request): p50 {pct([x.ms for x in hits], 50):.2f} ms")
        SUMMARY.append(
            f"typed-ahead/speculative hit in the server p50 {hit.get('p50')} ms (goal < 2 ms), "
            f"{sum(x.model_runs for x in hits)} model runs for {len(hits)} hits"
        )


def overhead_document(source: str) -> tuple[list[str], int, str]:
    """The overhead section's file: ``source``'s lines repeated to 10,000, an empty line inserted before
    the first code line from the middle on, and what is typed on it (at that code line's indentation)."""
    lines = source.splitlines()
    big = [lines[i % len(lines)] for i in range(10_000)]
    at_line = 5_000
    while not big[at_line].strip() or big[at_line].strip().startswith(("#", '"')):
        at_line += 1
    big.insert(at_line, "")
    indent = big[at_line + 1][: len(big[at_line + 1]) - len(big[at_line + 1].lstrip())]
    return big, at_line, indent + "value = compute(items, key=lambda item: item.name)"


async def overhead_section(client: Client, args, source: str) -> None:
    with section("server overhead apart from the model, 10,000-line file"):
        big, at_line, typed = overhead_document(source)
        text = "\n".join(big) + "\n"
        cursor = sum(len(x) + 1 for x in big[:at_line])
        uri = "file:///bench/overhead/big.py"
        client.configure({**base_settings(args), **DEFAULT})
        await asyncio.sleep(0.2)
        client.open(uri, text)
        typist = Typist(client, args)
        await client.inline(uri, text, cursor)
        await typist.idle()
        run = Run("overhead")
        for ch in typed[: args.overhead_keys]:
            new = text[:cursor] + ch + text[cursor:]
            await typist.measure(run, "key", uri, text, (cursor, cursor, ch), new, cursor + 1)
            text, cursor = new, cursor + 1
            await typist.idle()  # a speculation left running would be model time
        ran = [x for x in run.samples if x.model_runs]
        client_over = [x.ms - x.model_ms for x in ran]
        server_over = [x.server_ms - x.model_ms for x in ran]
        print(
            f"   {len(ran)} requests with a model run; model p50 {pct([x.model_ms for x in ran], 50):.1f} ms"
        )
        print(
            f"   client side  (didChange + request) - model: p50 {pct(client_over, 50):.2f} ms  "
            f"p95 {pct(client_over, 95):.2f} ms"
        )
        print(
            f"   in the server (request)             - model: p50 {pct(server_over, 50):.2f} ms  "
            f"p95 {pct(server_over, 95):.2f} ms"
        )
        s = await client.stats()
        print(f"   in the server, prompt building: p50 {s['latency_ms'].get('prompt', {}).get('p50')} ms")
        SUMMARY.append(
            f"overhead apart from the model on 10,000 lines: p50 {pct(client_over, 50):.2f} ms client side, "
            f"{pct(server_over, 50):.2f} ms in the server (goal < 1 ms)"
        )


async def edit_section(client: Client, source: str, edits: int) -> None:
    with section(f"edit cost: {edits} one-character edits in a 1,000-line and a 100,000-line document"):
        lines = source.splitlines()
        results = {}
        for n in (1_000, 100_000):
            text = "\n".join(lines[i % len(lines)] for i in range(n)) + "\n"
            uri = f"file:///bench/edits/{n}.py"
            client.open(uri, text)
            await client.stats()
            line_start = sum(len(lines[i % len(lines)]) + 1 for i in range(n // 2))
            # type "x" then delete it, in the middle of the document
            changes = [
                client.change_params(uri, text, line_start, line_start + k % 2, "" if k % 2 else "x")
                for k in range(edits)
            ]
            t = time.perf_counter()
            for change in changes:
                client.lsp.text_document_did_change(change)
            s = await client.stats()  # answered after every edit was applied
            per_edit_ms = (time.perf_counter() - t) * 1000 / edits
            change = s["latency_ms"].get("change", {})
            results[n] = (per_edit_ms, change.get("p50"))
            print(
                f"   {n:>7} lines: client side {per_edit_ms:.3f} ms/edit (sent back to back), "
                f"in the server p50 {change.get('p50')} ms"
            )
        a, b = results[1_000], results[100_000]
        print(
            f"   100,000 / 1,000 lines: client side x{b[0] / a[0]:.2f}, "
            f"in the server x{(b[1] or 0) / (a[1] or 1):.2f}"
        )
        SUMMARY.append(
            f"edit in 100,000 vs 1,000 lines: x{b[0] / a[0]:.2f} client side, "
            f"x{(b[1] or 0) / (a[1] or 1):.2f} in the server ({b[1]} vs {a[1]} ms)"
        )


def hf_section(args, model_dir: Path, runs: dict[str, Run]) -> None:
    with section("transformers generate on the same checkpoint and prompts"):
        import torch

        from refact_lsp.engine.registration import register
        from refact_lsp.engine.tokenizer import FIRST_PADDING_ID, RefactTokenizer

        register()
        from transformers import AutoModelForCausalLM

        device = torch.device(
            args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.dtype, torch.float32)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=dtype).to(device).eval()
        print(f"   loaded {type(model).__name__} on {device} in {dtype}")
        tok = RefactTokenizer.from_file(model_dir / "tokenizer.json")
        prompts = runs["default"].prompts[: args.hf_prompts]
        if not prompts:
            print("   no prompts recorded")
            return
        kw = dict(
            do_sample=False,
            suppress_tokens=list(range(FIRST_PADDING_ID, model.config.vocab_size)),
            pad_token_id=0,
        )

        def ids_of(prompt: str) -> list[int]:
            suffix, _, rest = prompt.removeprefix("<fim_suffix>").partition("<fim_prefix>")
            prefix = rest.removesuffix("<fim_middle>")
            return [3, *tok.encode_text(suffix), 1, *tok.encode_text(prefix), 2]

        def timed(ids: list[int], n: int) -> float:
            x = torch.tensor([ids], device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.inference_mode():
                model.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - t) * 1000

        timed(ids_of(prompts[0][0])[:64], 2)  # warm-up
        full, first = [], []
        for prompt, tokens in prompts:
            ids = ids_of(prompt)
            if len(ids) != tokens:
                print(f"   note: re-tokenized prompt has {len(ids)} tokens, the server's {tokens}")
            first.append(timed(ids, 1))
            full.append(timed(ids, args.max_new_tokens))
        per_token = [(f - o) / max(1, args.max_new_tokens - 1) for f, o in zip(full, first, strict=True)]
        print(
            f"   {len(prompts)} prompts of p50 {pct([t for _, t in prompts], 50):.0f} tokens, "
            f"{args.max_new_tokens} new tokens"
        )
        print(
            f"   HF generate: p50 {pct(full, 50):.1f} ms per completion, "
            f"first token p50 {pct(first, 50):.1f} ms, "
            f"decode p50 {pct(per_token, 50):.2f} ms/token"
        )
        d = summarize("ours, default (per keystroke)", runs["default"].samples)
        print(f"   ours per keystroke p50 / HF generate p50 = {d['p50'] / pct(full, 50):.3f}")
        SUMMARY.append(
            f"HF generate p50 {pct(full, 50):.1f} ms per completion, {pct(per_token, 50):.2f} ms/token; "
            f"ours per keystroke p50 {d['p50']:.1f} ms"
        )


def base_settings(args) -> dict[str, Any]:
    return {
        "temperature": 0,
        "maxNewTokens": args.max_new_tokens,
        "contextTokens": args.context,
        "multiline": "never" if args.single_line else "auto",
        "debounceMs": args.debounce_ms,
    }


def write_checkpoint(args, folder: Path) -> Path:
    import torch

    from refact_lsp.dev.checkpoints import MID_SHAPE, REAL_SHAPE, TINY_SHAPE, write_random_checkpoint

    shape = {"tiny": TINY_SHAPE, "mid": MID_SHAPE, "real": REAL_SHAPE}[args.shape]
    dtype = torch.bfloat16 if args.dtype in ("bfloat16", "bf16") else torch.float32
    t = time.perf_counter()
    path = write_random_checkpoint(
        folder / args.shape, **shape, dtype=dtype, n_positions=max(4096, args.context)
    )
    print(f"random {args.shape} checkpoint {shape} in {dtype} written in {time.perf_counter() - t:.1f} s")
    return path


async def main_async(args) -> None:
    text, cursor, typed = typing_scenario(Path(args.file), args.chars)
    source = Path(args.file).read_text(encoding="utf-8")
    print(
        f"typing {len(typed)} characters back into {args.file} ({len(text.splitlines())} lines); "
        f"{args.keys} keystrokes for the default settings, "
        f"{args.naive_keys or args.keys} for the naive ones; "
        f"pace {args.pace_ms} ms, accept pause {args.accept_pause_ms} ms"
    )
    with tempfile.TemporaryDirectory(prefix="refact-bench-") as tmp:
        model_dir = write_checkpoint(args, Path(tmp))
        client = Client()
        t = time.perf_counter()
        await client.start(
            model_dir, {**base_settings(args), **DEFAULT}, args.device, args.dtype, args.decode_constants
        )
        s = await client.wait(lambda s: s["model"]["state"] in ("ready", "error"), 600, "the model")
        print(f"server ready in {time.perf_counter() - t:.1f} s: {s['model']}")
        if s["model"]["state"] != "ready":
            return
        runs: dict[str, Run] = {}
        try:
            if "replay" in args.sections:
                with section("replay"):
                    runs = await replay_section(client, args, text, cursor, typed)
            if "default" in runs:
                await hit_section(client, runs)
            if "overhead" in args.sections:
                await overhead_section(client, args, source)
            if "edits" in args.sections:
                await edit_section(client, source, args.edits)
        finally:
            await client.stop()
        if args.hf and "default" in runs:
            hf_section(args, model_dir, runs)


def decode_constants(value: str) -> dict[str, Any]:
    """``NAME=VALUE,...`` (Python literals) for module constants of ``generate`` (``RUN_AHEAD``),
    ``triton_decode`` or ``triton_gemv``."""
    from refact_lsp.engine import generate, triton_decode, triton_gemv

    constants = {}
    for item in filter(None, value.split(",")):
        name, _, literal = item.partition("=")
        if not name.isupper() or not any(hasattr(m, name) for m in (generate, triton_decode, triton_gemv)):
            raise argparse.ArgumentTypeError(
                f"no such constant in generate, triton_decode or triton_gemv: {name}"
            )
        constants[name] = ast.literal_eval(literal)
    return constants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("tiny", "mid", "real"), default="mid")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--context", type=int, default=4096, help="contextTokens")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument(
        "--single-line",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="multiline: never (default; with auto, column-0 multi-line prompts put the cursor line first)",
    )
    ap.add_argument(
        "--debounce-ms", type=int, default=0, help="debounceMs (0: measure the work, not the wait)"
    )
    ap.add_argument("--file", default=str(REPO / "bench" / "data" / "typed_session.py.txt"))
    ap.add_argument("--chars", type=int, default=400, help="characters cut out of the file, to type back")
    ap.add_argument("--keys", type=int, default=120, help="keystrokes with the default settings")
    ap.add_argument(
        "--naive-keys", type=int, default=None, help="keystrokes with the naive settings (0: all)"
    )
    ap.add_argument("--pace-ms", type=float, default=100.0, help="pause after each answer")
    ap.add_argument("--accept-pause-ms", type=float, default=500.0, help="reading pause before accepting")
    ap.add_argument("--accept-every", type=int, default=12)
    ap.add_argument("--overhead-keys", type=int, default=20)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument(
        "--hf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="transformers generate (default: on CUDA)",
    )
    ap.add_argument("--hf-prompts", type=int, default=8)
    ap.add_argument(
        "--sections",
        type=lambda value: set(value.split(",")),
        default={"replay", "overhead", "edits"},
        help="comma-separated: replay (with hits and transformers), overhead, edits (default: all)",
    )
    ap.add_argument(
        "--decode-constants",
        type=decode_constants,
        default={},
        help="the decode's module constants in the server, e.g. FUSED_GEMV=True,PDL=True or RUN_AHEAD=False",
    )
    args = ap.parse_args()
    if args.naive_keys is None:
        args.naive_keys = 0 if args.device.startswith("cuda") else 16
    if args.hf is None:
        args.hf = args.device.startswith("cuda")
    import torch

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )
    print(f"command: {' '.join(sys.argv)}")
    t = time.perf_counter()
    asyncio.run(main_async(args))
    print(f"\n== summary ({time.perf_counter() - t:.0f} s)")
    for line in SUMMARY:
        print(f" - {line}")


if __name__ == "__main__":
    main()
