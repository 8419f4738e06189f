"""The completion service around a stand-in model run and model load (no engine): what it answers, caches
and reports when the document, the settings or the model change meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from refact_lsp.service.completion import CompletionService, Selection, _Run
from refact_lsp.service.prompt import Prompt

URI = "file:///a.py"
WAIT_S = 10.0


class _Events:
    """Records the model events the service sends."""

    def __init__(self) -> None:
        self.log: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: self.log.append((name, args))


class _Tokenizer:
    def __init__(self, encode: Callable[[str], list[int]]):
        self.encode_text = encode


class _Runner:
    """What the service reads of a loaded model (the runs themselves are ``_Model``'s)."""

    n_ctx = 4096
    state = "ready"

    def __init__(self, encode: Callable[[str], list[int]]):
        self.tokenizer = _Tokenizer(encode)


class _Model:
    """Stands in for ``CompletionService._generate`` on the worker thread: a scripted raw answer for each
    prompt, held until ``release`` is set when ``hold``."""

    def __init__(self, answer: Callable[[Prompt], str], hold: bool = False):
        self.answer = answer
        self.runs: list[Prompt] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, prompt: Prompt, post: Any, stop: threading.Event, speculative: bool = False) -> _Run:
        self.runs.append(prompt)
        self.started.set()
        self.release.wait(WAIT_S)
        return _Run(self.answer(prompt))


class _Loader:
    """Stands in for ``CompletionService._load_blocking`` on the worker thread: records the model each load
    is for, holds it until that model's gate is set, then fails with ``errors[model]`` or succeeds."""

    def __init__(self, errors: dict[str, str] | None = None):
        self.loads: list[str] = []
        self.started: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.gates: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.errors = errors or {}

    def __call__(self, generation: int, key: tuple[Any, ...]) -> tuple[str | None, bool]:
        model = str(key[0])
        self.loads.append(model)
        self.started[model].set()
        self.gates[model].wait(WAIT_S)
        return self.errors.get(model), False


async def _wait(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT_S)


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _service(encode: Callable[[str], list[int]], model: _Model, **settings: Any) -> CompletionService:
    """A service with a ready model whose runs are ``model``'s."""
    base = {"temperature": 0, "debounceMs": 0, "speculative": False, **settings}
    service = CompletionService(asyncio.get_running_loop(), _Events(), base_settings=base)
    service._runner, service._model_state = _Runner(encode), "ready"
    service._generate = model  # type: ignore[method-assign]
    return service


async def _running(
    encode: Callable[[str], list[int]], answer: Callable[[Prompt], str], text: str, line: int, character: int
) -> tuple[_Model, CompletionService, asyncio.Future[Any]]:
    """A service whose model holds ``answer`` until released, ``text`` open, and a request at ``(line,
    character)`` whose model run has started."""
    model = _Model(answer, hold=True)
    service = _service(encode, model)
    service.open(URI, "python", 1, text)
    request = asyncio.ensure_future(service.complete(URI, line, character))
    await _wait(model.started)
    return model, service, request


def _whole_lines_or_rest(prompt: Prompt) -> str:
    """A model continuing ``def f(a):\\n    |``: whole lines from column 0, else the rest of the line."""
    return "    b = a + 1\n    return b" if prompt.mode == "multi" else "b = a + 1"


async def test_an_answer_made_under_settings_changed_during_its_run_is_not_cached(encode) -> None:
    model, service, first = await _running(
        encode, _whole_lines_or_rest, "def f(a):\n    \n", 1, 4
    )  # multi-line
    service.configure({"multiline": "never"})  # clears the cache of multi-line answers
    model.release.set()
    assert (await first) is not None
    again = await service.complete(URI, 1, 4)
    assert again is not None and again.text == "b = a + 1"  # the model's answer under the new settings
    assert len(model.runs) == 2
    service.close()


async def test_postprocessing_sees_the_text_the_prompt_was_built_from(encode) -> None:
    """A line typed below the cursor during the run, and deleted again, changes neither the answer nor what
    is cached for the request's text."""
    text = "def f(a):\n    \n"
    model, service, first = await _running(encode, _whole_lines_or_rest, text, 1, 4)
    service.change(URI, 2, [((2, 0, 2, 0), "    return b\n")])  # no request for it yet (debounced)
    model.release.set()
    answer = await first
    assert answer is not None and answer.text == "    b = a + 1\n    return b"
    service.change(URI, 3, [((2, 0, 3, 0), "")])
    assert service.documents.get(URI).text == text
    hit = await service.complete(URI, 1, 4)
    assert hit is not None and hit.text == "    b = a + 1\n    return b"  # what the model gives for it
    assert len(model.runs) == 1
    service.close()


async def test_the_range_is_in_units_of_the_line_the_request_saw(encode) -> None:
    model, service, first = await _running(encode, lambda prompt: "1", "x = \n", 0, 4)
    service.change(URI, 2, [((0, 0, 0, 0), "\U0001f600")])  # two UTF-16 units before the cursor
    model.release.set()
    answer = await first
    assert answer is not None and (answer.text, answer.start, answer.end) == ("1", 4, 4)
    service.close()


async def test_a_typed_ahead_hit_that_only_repeats_the_text_after_the_cursor_is_no_suggestion(encode) -> None:
    model = _Model(lambda prompt: "x, y)")
    service = _service(encode, model)
    service.open(URI, "python", 1, "r = foo()\n")
    first = await service.complete(URI, 0, 8)  # r = foo(|)
    assert first is not None and (first.text, first.start, first.end) == ("x, y)", 8, 9)
    service.change(URI, 2, [((0, 8, 0, 8), "x")])
    typed = await service.complete(URI, 0, 9)  # r = foo(x|): the rest of the suggestion
    assert typed is not None and (typed.text, typed.start, typed.end) == (", y)", 9, 10)
    service.change(URI, 3, [((0, 9, 0, 9), ", y")])
    assert await service.complete(URI, 0, 12) is None  # r = foo(x, y|): only the ")" that is there
    assert (len(model.runs), service.stats.cache_hits) == (1, 2)
    service.close()


async def test_a_cached_answer_serves_only_its_own_prompt_at_its_place(encode) -> None:
    """Two places with the same text before the cursor whose multi-line prompts differ only in what the
    cache's suffix key leaves out (found by tests/service/test_speedups_fuzz.py): whether a line break
    follows the cursor line, and blank text right of the cursor. Each gets the model's answer for its own
    prompt, as without the cache, not the other's."""
    model = _Model(lambda prompt: f"    return {len(prompt.suffix)}")
    service = _service(encode, model)
    service.open(URI, "python", 1, "def f():\n")
    first = await service.complete(URI, 1, 0)  # the empty last line: the prompt's suffix is ""
    assert first is not None and first.text == "    return 0"
    service.change(URI, 2, [((1, 0, 1, 0), "\n")])  # an empty line after it: the suffix is "\n"
    second = await service.complete(URI, 1, 0)
    assert second is not None and second.text == "    return 1"

    other = "file:///b.py"
    service.open(other, "python", 1, "def g():\n    \n")
    third = await service.complete(other, 1, 2)  # in the middle of "    ": the suffix is "    \n"
    assert third is not None and third.text == "    return 5"
    service.change(other, 2, [((1, 2, 1, 4), "")])  # the blank text right of the cursor deleted
    fourth = await service.complete(other, 1, 2)
    assert fourth is not None and fourth.text == "    return 3"
    assert len(model.runs) == 4 and service.stats.cache_hits == 0
    service.close()


async def test_a_cached_answer_is_post_processed_for_the_lines_below_the_prompt(encode) -> None:
    """Post-processing drops the end of a multi-line answer that repeats the lines below the cursor, which
    it reads past the prompt's window (a small context here): a line changed there, out of the prompt,
    changes the suggestion for the same prompt, with the cache as without it."""
    model = _Model(lambda prompt: "    a = 1\n    b = 2\n    c = 3")
    service = _service(encode, model, contextTokens=16, maxNewTokens=1)
    service.open(URI, "python", 1, "def f():\n    \n    b = 2\n    c = 3\n    d = 4\n")
    first = await service.complete(URI, 1, 4)
    assert first is not None and first.text == "    a = 1"  # "b = 2", "c = 3" follow
    assert "c = 3" not in model.runs[0].text  # beyond the window
    service.change(URI, 2, [((3, 4, 3, 9), "e = 5")])  # "b = 2", "e = 5" follow: nothing repeats them
    second = await service.complete(URI, 1, 4)
    assert second is not None and second.text == "    a = 1\n    b = 2\n    c = 3"
    assert [prompt.text for prompt in model.runs] == [model.runs[0].text] * 2  # the same prompt
    service.close()


async def test_typing_along_a_speculative_answer_never_shown_runs_the_model(encode) -> None:
    """The speculation after a suggestion computes the answer for after accepting it. Typing a character
    of that answer before asking (it was never shown) gets what the model answers there, as without the
    cache, not the rest of the speculative answer; once that answer was shown, typing along it is
    answered from the cache (found by tests/service/test_speedups_fuzz.py)."""

    answers = {"foo": "(1)", "foo(1)": "  # one", "foo(1) ": "# uno"}  # after "x = ", "y = "

    def answer(prompt: Prompt) -> str:
        return answers.get(prompt.prefix.rsplit("= ", 1)[1], "")

    model = _Model(answer)
    service = _service(encode, model, speculative=True)
    service.open(URI, "python", 1, "x = foo\ny = foo\n")
    assert (await service.complete(URI, 0, 7)).text == "(1)"
    await _until(lambda: service._speculation is not None and service._speculation.done())
    assert len(model.runs) == 2  # the speculation: "  # one" after "(1)"
    service.change(URI, 2, [((0, 7, 0, 7), "(1)")])  # accepted
    service.change(URI, 3, [((0, 10, 0, 10), " ")])  # and typed on before asking
    typed = await service.complete(URI, 0, 11)
    assert typed is not None and typed.text == "# uno"  # the model's answer there
    assert len(model.runs) == 3

    assert (await service.complete(URI, 1, 7)).text == "(1)"
    await _until(lambda: service._speculation is not None and service._speculation.done())
    service.change(URI, 4, [((1, 7, 1, 7), "(1)")])
    shown = await service.complete(URI, 1, 10)  # the speculation's answer, shown
    assert shown is not None and shown.text == "  # one"
    service.change(URI, 5, [((1, 10, 1, 10), " ")])
    typed = await service.complete(URI, 1, 11)  # typing along what is shown: its rest
    assert typed is not None and typed.text == " # one"
    assert (len(model.runs), service.stats.speculative_hits) == (5, 2)
    service.close()


async def test_a_load_superseded_while_it_runs_changes_nothing(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"  # local model folders
    a.mkdir()
    b.mkdir()
    (b / "config.json").write_text("{}")
    loader = _Loader(errors={str(a): "a is broken"})
    events = _Events()
    service = CompletionService(asyncio.get_running_loop(), events, base_settings={"model": str(a)})
    service._load_blocking = loader  # type: ignore[method-assign]
    service.start()
    await _wait(loader.started[str(a)])
    service.configure({"model": str(b)})
    loader.gates[str(a)].set()  # a's load fails after b was chosen
    await _wait(loader.started[str(b)])
    await asyncio.sleep(0)
    model = service.stats_snapshot()["model"]
    assert (model["state"], model["error"]) == ("loading", None)
    assert [name for name, _ in events.log] == ["model_loading", "model_loading"]  # b's progress goes on
    service._retry_failed_load()  # what each request does: b has not failed, nothing to load again
    loader.gates[str(b)].set()
    await _until(lambda: service.stats_snapshot()["model"]["state"] != "loading")
    assert service.stats_snapshot()["model"]["state"] == "ready"
    assert events.log[-1] == ("model_loaded", (str(b), None))
    await asyncio.sleep(0.05)
    assert loader.loads == [str(a), str(b)]
    service.close()


async def test_another_setting_changed_during_the_load_does_not_load_the_model_again() -> None:
    loader = _Loader()
    service = CompletionService(asyncio.get_running_loop(), _Events(), base_settings={"model": "/models/a"})
    service._load_blocking = loader  # type: ignore[method-assign]
    service.start()
    await _wait(loader.started["/models/a"])
    service.configure({"model": "/models/a", "temperature": 0.5})
    loader.gates["/models/a"].set()
    await _until(lambda: service.stats_snapshot()["model"]["state"] == "ready")
    for _ in range(5):  # a second load, if one was scheduled, would start now
        await asyncio.sleep(0.01)
    assert loader.loads == ["/models/a"]
    service.close()


async def test_a_request_right_after_an_identical_cancelled_one_is_answered(encode) -> None:
    """The cancelled request's computation is being cancelled: the new one must not wait for it."""
    model, service, first = await _running(encode, lambda prompt: "1", "x = \n", 0, 4)
    first.cancel()  # $/cancelRequest, then the client asks again at the same place
    second = asyncio.ensure_future(service.complete(URI, 0, 4))
    model.release.set()
    answer = await asyncio.wait_for(second, WAIT_S)
    assert answer is not None and answer.text == "1"
    assert first.cancelled()
    service.close()


async def test_a_request_identical_to_an_older_one_for_the_same_place_joins_it(encode) -> None:
    """Ghost text, then ghost text for the popup's selected item, then ghost text again (same text and
    position): the third waits for the first's run instead of starting one of its own."""
    model, service, first = await _running(encode, lambda prompt: "1", "x = \n", 0, 4)
    selected = asyncio.ensure_future(service.complete(URI, 0, 4, Selection(0, 4, 0, 4, "")))
    again = asyncio.ensure_future(service.complete(URI, 0, 4))
    await asyncio.sleep(0.05)
    model.release.set()
    answers = await asyncio.wait_for(asyncio.gather(first, selected, again), WAIT_S)
    assert [a.text if a else None for a in answers] == ["1", "1", "1"]
    assert len(model.runs) == 2  # the first request's and the selection's
    assert service._jobs == {}
    service.close()


async def test_the_answer_reaches_each_waiting_request_on_the_next_loop_turn(encode) -> None:
    """From the model's result on the loop to the requests' answers: the computation hands its answer to
    each waiting request itself, so they resume two turns after the result (its computation's turn, then
    theirs), not four (``asyncio.shield`` on the computation's task: the task's done callbacks, the outer
    future's, then the request)."""
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    model = _Model(lambda prompt: "1", hold=True)
    service = _service(encode, model)
    delivered: list[int] = []
    count = service._count
    service._count = lambda run: (delivered.append(turns), count(run))  # type: ignore[method-assign]
    service.open(URI, "python", 1, "x = \n")
    first = asyncio.ensure_future(service.complete(URI, 0, 4))
    again = asyncio.ensure_future(service.complete(URI, 0, 4))  # ghost text and completion items: joined
    await _wait(model.started)
    answered: list[int] = []
    for request in (first, again):
        request.add_done_callback(lambda _: answered.append(turns))
    ticking = asyncio.ensure_future(ticker())
    model.release.set()
    answers = await asyncio.wait_for(asyncio.gather(first, again), WAIT_S)
    ticking.cancel()
    assert [a.text if a else None for a in answers] == ["1", "1"]
    assert len(model.runs) == 1
    # the requests' own done callbacks, which record the turn, run one turn after they return
    assert [turn - delivered[0] for turn in answered] == [3, 3]
    service.close()


async def test_the_speculation_starts_after_the_response_is_sent(encode) -> None:
    """pygls runs a request's handler as a task and sends the response from its done callback: the
    speculation that follows an answer must not start (and take the CPU) before that."""
    order: list[str] = []
    service = _service(encode, _Model(lambda prompt: "1"))
    service._start_speculation = lambda *args: order.append("speculation")  # type: ignore[method-assign]
    service.open(URI, "python", 1, "x = \n")
    handler = asyncio.ensure_future(service.complete(URI, 0, 4))
    handler.add_done_callback(lambda _: order.append("response"))
    answer = await asyncio.wait_for(handler, WAIT_S)
    await _until(lambda: "speculation" in order)
    assert answer is not None and answer.text == "1"
    assert order == ["response", "speculation"]
    service.close()


async def test_a_download_superseded_by_another_model_is_given_up(tmp_path, monkeypatch) -> None:
    """The model setting changes while the hub download of the one before (GBs) runs: the download stops at
    its next progress update, the new model loads at once, and no error is shown for the one given up."""
    import gc

    import huggingface_hub
    from huggingface_hub import constants

    from refact_lsp.dev.checkpoints import write_random_checkpoint

    folder = str(write_random_checkpoint(tmp_path / "local", n_layer=1))
    downloading, stopped = threading.Event(), threading.Event()

    def snapshot_download(repo_id: str, tqdm_class: Any = None, **kwargs: Any) -> str:
        """huggingface_hub's: 10 GB, 10 MB per progress update, about 1 GB/s."""
        bar = tqdm_class(name="huggingface_hub.snapshot_download", total=10**10, unit="B")
        downloading.set()
        try:
            for _ in range(1000):
                bar.update(10**7)
                time.sleep(0.01)
        finally:
            stopped.set()
        raise OSError("the download ran to its end")

    class HfApi:
        def model_info(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError("no listing")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", HfApi)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    events = _Events()
    service = CompletionService(
        asyncio.get_running_loop(), events, base_settings={"model": "owner/big", "device": "cpu"}
    )
    service.start()
    await _wait(downloading)
    switched = time.monotonic()
    service.configure({"model": folder})
    await _until(lambda: service.stats_snapshot()["model"]["state"] in ("ready", "error"))
    assert service.stats_snapshot()["model"]["state"] == "ready"
    assert time.monotonic() - switched < 5.0 and stopped.is_set()
    assert [args for name, args in events.log if name == "model_loaded"] == [(folder, None)]
    service.close()
    gc.unfreeze()  # the runner froze the loaded model (gc.freeze): let the interpreter free it at exit


async def test_a_load_out_of_device_memory_is_tried_again_by_a_later_request(tmp_path, monkeypatch) -> None:
    """The GPU was full for a moment (another process) when the model loaded: the error says so and when it
    is tried again, and the first request after that wait loads the model, no setting changed."""
    import gc

    import torch

    from refact_lsp.dev.checkpoints import write_random_checkpoint
    from refact_lsp.engine import loading
    from refact_lsp.service import completion

    folder = str(write_random_checkpoint(tmp_path / "model", n_layer=1))
    real, loads = loading.load_weights, []

    def load_weights(*args: Any, **kwargs: Any) -> Any:
        loads.append(kwargs["device"])
        if len(loads) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_weights", load_weights)
    monkeypatch.setattr(completion, "DOWNLOAD_RETRY_S", (1.0,))
    events = _Events()
    service = CompletionService(
        asyncio.get_running_loop(), events, base_settings={"model": folder, "device": "cpu"}
    )
    service.start()
    await _until(lambda: service.stats_snapshot()["model"]["state"] == "error")
    model = service.stats_snapshot()["model"]
    assert "ran out of memory loading the model on cpu" in model["error"], model
    assert model["error"].endswith("; trying again in 1 s") and 0 < model["download_retry_in_s"] <= 1.0
    shown = model["error"]
    service._retry_failed_load()  # what each request does: within the wait, nothing
    await asyncio.sleep(1.05)
    assert service.stats_snapshot()["model"]["state"] == "error" and len(loads) == 1
    service._retry_failed_load()  # the first request after the wait
    await _until(lambda: service.stats_snapshot()["model"]["state"] != "loading")
    model = service.stats_snapshot()["model"]
    assert (model["state"], model["error"], model["download_retry_in_s"]) == ("ready", None, None)
    assert [args for name, args in events.log if name == "model_loaded"] == [(folder, shown), (folder, None)]
    assert len(loads) == 2
    service.close()
    gc.unfreeze()  # the runner froze the loaded model (gc.freeze): let the interpreter free it at exit


async def test_a_run_that_ends_without_text_is_an_empty_answer_not_an_error(encode, caplog) -> None:
    """A run stopped without text (the document closed during it, the model switched, out of memory twice)
    answers nothing; it is no failure to log with a traceback."""
    service = _service(encode, _Model(lambda prompt: None))  # type: ignore[arg-type,return-value]
    service.open(URI, "python", 1, "x = \n")
    with caplog.at_level("ERROR"):
        assert await asyncio.wait_for(service.complete(URI, 0, 4), WAIT_S) is None
    assert service.stats.errors == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    service.close()


async def test_multi_line_text_before_a_closer_leaves_the_closer_on_its_own_line(encode) -> None:
    """``multiline: always`` in the indentation of ``    }``: the model writes the body before the ``}``;
    accepted, the ``}`` keeps its own line and indentation, and so when the user types along."""
    text = "function f(a) {\n    }\n"
    model = _Model(lambda prompt: "return a + 1;\n")
    service = _service(encode, model, multiline="always")
    service.open("file:///a.js", "javascript", 1, text)

    def accepted(s: Any, line: str) -> str:
        return line[: s.start] + s.text + line[s.end :]

    first = await service.complete("file:///a.js", 1, 4)
    assert first is not None and accepted(first, "    }") == "    return a + 1;\n    }"
    service.change("file:///a.js", 2, [((1, 4, 1, 4), "re")])
    typed = await service.complete("file:///a.js", 1, 6)  # typed along: the rest, from the cache
    assert typed is not None and accepted(typed, "    re}") == "    return a + 1;\n    }"
    assert (len(model.runs), service.stats.cache_hits) == (1, 1)
    service.close()


async def test_a_progress_event_of_a_load_given_up_is_not_shown_for_the_next_one() -> None:
    """A download given up (the user chose another model) may send one last event from its own thread
    after the newer load began: it is not that load's progress."""
    from refact_lsp.engine.loading import ProgressEvent

    events = _Events()
    service = CompletionService(asyncio.get_running_loop(), events)
    service._load_generation = 2  # load 1 was superseded by load 2
    service._on_progress(1, ProgressEvent("download", "downloading: 40 %", 40))
    service._on_progress(2, ProgressEvent("load", "loading", 10))
    await _until(lambda: bool(events.log))
    await asyncio.sleep(0.01)
    assert events.log == [("model_progress", ("load", "loading", 10))]
    service.close()


async def test_a_max_new_tokens_near_the_models_context_leaves_the_prompt_half_of_it(encode) -> None:
    """``maxNewTokens: 4096`` with ``contextTokens: 8192`` on a model of 4,096 positions left no room for the
    document: the prompt was its three special tokens. It keeps half the context (the engine stops the
    generation at the context's end)."""
    service = _service(encode, _Model(lambda prompt: ""), maxNewTokens=4096, contextTokens=8192)
    text = "".join(f"value_{i} = compute({i}, key=lambda item: item.name)\n" for i in range(400))
    service.open(URI, "python", 1, text)
    info = service.prompt_info(URI, 399, len("value_399 = compute(399, key=lambda item: item.name)"))
    assert info is not None and 1024 < info["tokens"] <= 2048
    service.close()
