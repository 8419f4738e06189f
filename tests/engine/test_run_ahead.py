"""Greedy decoding with the device a step ahead of the host (``Generator.run_ahead``): the same tokens,
stop reasons and cache as one step at a time, for every stop rule. On the CPU the static step runs
eagerly, the same code path as the CUDA graphs replay."""

from __future__ import annotations

import math

import pytest
import torch
from fim_requests import fim, greedy

from refact_lsp.engine.cuda_graph import DecodeGraph, greedy_pick
from refact_lsp.engine.generate import GenerationRequest, Generator
from refact_lsp.engine.loading import ModelSpec, load_model
from refact_lsp.engine.readback import PickReadback
from refact_lsp.engine.tokenizer import FIRST_PADDING_ID


@pytest.fixture
def steps_run_on(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the steps queued before the host read the token they feed."""
    calls: list[int] = []
    run_on = DecodeGraph.run_on
    monkeypatch.setattr(DecodeGraph, "run_on", lambda self: (calls.append(1), run_on(self))[1])
    return calls


def pair(ckpt) -> tuple[Generator, Generator]:
    """(run ahead, one step at a time) on the fast path's static step, same weights."""
    loaded = load_model(ModelSpec(str(ckpt), device="cpu"))
    ahead, lockstep = Generator(loaded, fast_path=True), Generator(loaded, fast_path=True)
    lockstep.run_ahead = False
    assert ahead.run_ahead
    return ahead, lockstep


def outcome(gen: Generator, request: GenerationRequest, **kw) -> tuple:
    r = gen.generate(request, **kw)
    return r.token_ids, r.text, r.stop_reason, r.steps, list(gen.cache.tokens)


REQUESTS = {
    "eot": dict(max_new_tokens=100),
    "stop string": dict(max_new_tokens=100, stop_strings=("\n\t\n",)),
    "stop at the first line": dict(max_new_tokens=100, stop_strings=("\n",)),
    "one token": dict(max_new_tokens=1),
    "two tokens": dict(max_new_tokens=2),
    "three tokens": dict(max_new_tokens=3),
    "time budget": dict(max_new_tokens=100, time_budget_s=0.0),
    "decided by the caller": dict(max_new_tokens=100, stop_when=lambda text: "return" in text),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_every_stop_rule_gives_what_one_step_at_a_time_gives(
    scripted_ckpt, tokenizer, script_text, name, steps_run_on
) -> None:
    ahead, lockstep = pair(scripted_ckpt)
    request = greedy(fim(tokenizer, "a", "b"), **REQUESTS[name])
    expected = outcome(lockstep, request)
    assert not steps_run_on
    got = outcome(ahead, request)
    assert got == expected
    tokens, text, reason = expected[:3]
    assert script_text.startswith(text) and reason != "cancelled"
    if "stop_when" in REQUESTS[name]:
        assert reason == "decided" and text.endswith("return") and len(text) < len(script_text)
    # the cache holds the prompt and the tokens fed back, not the one a stop came at
    assert got[4] == request.prompt_ids + tokens[: max(0, len(tokens) - (reason != "eot"))]
    if len(tokens) > 2:
        assert steps_run_on, "no step was queued ahead of the host"


def test_cancelling_stops_at_the_same_token(scripted_ckpt, tokenizer) -> None:
    ahead, lockstep = pair(scripted_ckpt)

    def stop_after(n: int):
        calls = []
        return lambda: calls.append(1) or len(calls) > n  # once before prefill, then after each token

    request = greedy(fim(tokenizer, "a", "b"), max_new_tokens=100)
    expected = outcome(lockstep, request, should_stop=stop_after(4))
    assert expected[2] == "cancelled" and len(expected[0]) == 4
    assert outcome(ahead, request, should_stop=stop_after(4)) == expected


def test_typing_on_with_kv_reuse_gives_the_same_result(random_ckpt, tokenizer, steps_run_on) -> None:
    """Random weights run every completion to its length; the next prompt reuses the cache the
    queued-ahead steps wrote (and the wasted one must not be in it)."""
    ahead, lockstep = pair(random_ckpt)
    prefix = "def add(a, b):\n    total = a + b\n    return tot"
    for n in (20, 27, 28, 35, 46, 30):
        request = greedy(fim(tokenizer, prefix[:n], "\n\nprint(add(1, 2))\n"), max_new_tokens=8)
        expected = outcome(lockstep, request)
        assert len(expected[0]) == 8
        assert outcome(ahead, request) == expected
    assert len(steps_run_on) == 6 * 6  # tokens 2 to 7 of each completion fed ahead


def test_sampling_keeps_one_step_at_a_time(random_ckpt, tokenizer, steps_run_on) -> None:
    ahead, lockstep = pair(random_ckpt)
    request = GenerationRequest(fim(tokenizer, "x = ", ""), max_new_tokens=6, temperature=0.8, seed=3)
    assert outcome(ahead, request) == outcome(lockstep, request)
    assert not steps_run_on


@pytest.mark.parametrize("run_ahead", [True, False])
def test_nan_logits_are_an_error_either_way(random_ckpt, tokenizer, run_ahead: bool) -> None:
    gen = pair(random_ckpt)[0]  # weights of its own
    gen.run_ahead = run_ahead
    with torch.no_grad():
        gen.model.lm_head.weight.fill_(math.nan)
    with pytest.raises(ValueError, match="NaN"):
        gen.generate(greedy(fim(tokenizer, "a", "b"), max_new_tokens=4))


def test_greedy_pick_masks_padding_takes_the_first_best_and_reports_nan() -> None:
    logits = torch.zeros(FIRST_PADDING_ID + 64)
    logits[[7, 9]] = 3.0
    logits[FIRST_PADDING_ID + 1] = 100.0  # padding: never picked
    readback = PickReadback(torch.device("cpu"))
    readback.start(0, greedy_pick(logits, torch.empty(2)))
    assert readback.take(0) == 7
    logits[11] = math.nan
    readback.start(1, greedy_pick(logits, torch.empty(2)))
    with pytest.raises(ValueError, match="NaN"):
        readback.take(1)
    assert readback.take(0) == 7  # the other buffer still holds pick 0
