"""The generation engine: scripted checkpoints make every stop rule observable."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from fim_requests import fim, greedy
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from refact_lsp.dev.checkpoints import (
    hub_config,
    scripted_state_dict,
    write_checkpoint,
    write_scripted_checkpoint,
)
from refact_lsp.engine.generate import KV_SLOTS, GenerationRequest, Generator, TextStream, draw, sample_next
from refact_lsp.engine.loading import ModelSpec, load_model
from refact_lsp.engine.runner import ModelRunner
from refact_lsp.engine.tokenizer import FIRST_PADDING_ID
from refact_lsp.token_ids import common_prefix_len


@pytest.fixture(scope="module")
def scripted(scripted_ckpt) -> Generator:
    return Generator(load_model(ModelSpec(str(scripted_ckpt), device="cpu")))


def test_scripted_checkpoint_spells_its_text(scripted, tokenizer, script_text) -> None:
    chunks: list[str] = []
    res = scripted.generate(
        greedy(fim(tokenizer, "x = 1\n", "\nfoo()"), max_new_tokens=100), on_token=chunks.append
    )
    assert res.text == script_text
    assert res.stop_reason == "eot"
    assert "".join(chunks) == script_text
    assert res.token_ids == tokenizer.encode_text(script_text)
    assert res.steps == len(res.token_ids) + 1


def test_streaming_is_utf8_safe(scripted, tokenizer) -> None:
    """🙂 is split across byte-level tokens: no replacement character is ever streamed."""
    assert any(len(tokenizer.token_bytes(i)) < 4 for i in tokenizer.encode_text("🙂"))
    chunks: list[str] = []
    scripted.generate(greedy(fim(tokenizer, "a", "b"), max_new_tokens=100), on_token=chunks.append)
    assert "\ufffd" not in "".join(chunks)
    assert "🙂" in "".join(chunks)


def test_stop_string_cuts_text_and_stream(scripted, tokenizer) -> None:
    chunks: list[str] = []
    res = scripted.generate(
        greedy(fim(tokenizer, "a", "b"), stop_strings=("\n\t\n",), max_new_tokens=100), on_token=chunks.append
    )
    assert res.stop_reason == "stop_string"
    assert res.text == "def hello():\n    return 42"
    assert "".join(chunks) == res.text  # the held-back "\n\t" was never streamed
    single = scripted.generate(greedy(fim(tokenizer, "a", "b"), stop_strings=("\n",)))
    assert (single.text, single.stop_reason) == ("def hello():", "stop_string")


def test_max_new_tokens(scripted, tokenizer) -> None:
    res = scripted.generate(greedy(fim(tokenizer, "a", "b"), max_new_tokens=3))
    assert res.stop_reason == "max_tokens"
    assert res.text == "def hello():"
    assert len(res.token_ids) == 3


def test_time_budget(scripted, tokenizer) -> None:
    res = scripted.generate(greedy(fim(tokenizer, "a", "b"), max_new_tokens=100, time_budget_s=0.0))
    assert res.stop_reason == "time_budget"
    assert len(res.token_ids) == 1


def test_should_stop_is_checked_between_decode_steps(scripted, tokenizer) -> None:
    calls = []

    def stop_after_three_tokens() -> bool:
        calls.append(1)
        return len(calls) > 3  # call 1 is before prefill, then one call after each token

    res = scripted.generate(
        greedy(fim(tokenizer, "a", "b"), max_new_tokens=100), should_stop=stop_after_three_tokens
    )
    assert res.stop_reason == "cancelled"
    assert len(res.token_ids) == 3
    before = scripted.generate(greedy(fim(tokenizer, "a", "b")), should_stop=lambda: True)
    assert (before.stop_reason, before.text, before.steps) == ("cancelled", "", 0)


def test_immediate_eot_is_an_empty_answer(tmp_path: Path, tokenizer) -> None:
    gen = Generator(load_model(ModelSpec(str(write_scripted_checkpoint(tmp_path, "")), device="cpu")))
    res = gen.generate(GenerationRequest(fim(tokenizer, "a", "b")))
    assert (res.text, res.stop_reason, res.steps, res.token_ids) == ("", "eot", 1, [])


@pytest.mark.parametrize("control", ["<filename>", "<fim_prefix>", "<empty_output>"])
def test_any_control_token_ends_the_completion(tmp_path: Path, tokenizer, control: str) -> None:
    """The model writes ``y = 2``, then a control token and more: the completion is ``y = 2``, never the
    control token's name as text."""
    said = tokenizer.encode_text("y = 2")
    script = [*said, tokenizer.token_to_id(control), *tokenizer.encode_text("foo.py")]
    sd, n_embd = scripted_state_dict(script)
    gen = Generator(load_model(ModelSpec(str(write_checkpoint(tmp_path, hub_config(n_embd, 4, 1), sd)))))
    res = gen.generate(greedy(fim(tokenizer, "x = 1\n", "\n"), max_new_tokens=50))
    assert (res.text, res.stop_reason, res.token_ids, res.steps) == ("y = 2", "eot", said, len(said) + 1)


def test_kv_reuse_gives_identical_results(scripted, random_ckpt, tokenizer) -> None:
    gen = Generator(load_model(ModelSpec(str(random_ckpt), device="cpu")))
    prefix = "def add(a, b):\n    return a"
    prompts = [fim(tokenizer, prefix[:n], "\n\nprint(add(1, 2))\n") for n in (10, 14, 15, 20, 26, 12)]
    outputs = {}
    for reuse in (True, False):
        gen.reset_cache()
        outputs[reuse] = [
            gen.generate(GenerationRequest(p, max_new_tokens=8, temperature=0.8, seed=i, kv_reuse=reuse))
            for i, p in enumerate(prompts)
        ]
    assert [r.token_ids for r in outputs[True]] == [r.token_ids for r in outputs[False]]
    assert all(r.reused_tokens == 0 for r in outputs[False])
    assert sum(r.reused_tokens for r in outputs[True]) > 5 * 20
    # the same prompt again: everything but the last prompt token comes from the cache
    again = gen.generate(GenerationRequest(prompts[-1], max_new_tokens=8, temperature=0.8, seed=5))
    assert again.reused_tokens == len(prompts[-1]) - 1
    assert again.token_ids == outputs[False][-1].token_ids


def test_kv_slots_keep_recent_prompts_apart(random_ckpt, tokenizer) -> None:
    """Prompts that share little take their own slot (up to KV_SLOTS, then the least recently used
    is overwritten), so going back to an earlier one reuses it; answers never depend on the slots."""
    gen = Generator(load_model(ModelSpec(str(random_ckpt), device="cpu")))
    fresh = Generator(gen.loaded)  # the same weights, a slot per request from scratch
    docs = [fim(tokenizer, f"def f{i}(x):\n    return x + {i}", f"\n\nprint(f{i}({i}))\n") for i in range(6)]

    def run(prompt: list[int]) -> int:
        res = gen.generate(greedy(prompt, max_new_tokens=4))
        assert res.token_ids == fresh.generate(greedy(prompt, max_new_tokens=4, kv_reuse=False)).token_ids
        return res.reused_tokens

    assert [run(p) for p in docs[:KV_SLOTS]] == [0] * KV_SLOTS  # nothing shared: a slot each
    assert len(gen._caches) == KV_SLOTS
    # each is still there: everything but its last token is reused
    assert [run(p) for p in docs[:KV_SLOTS]] == [len(p) - 1 for p in docs[:KV_SLOTS]]
    # one more overwrites the least recently used (docs[0]): only their common start is reused
    shared = common_prefix_len(docs[0], docs[KV_SLOTS])
    assert 0 < shared < len(docs[0]) // 2
    assert run(docs[KV_SLOTS]) == shared
    assert len(gen._caches) == KV_SLOTS
    assert run(docs[1]) == len(docs[1]) - 1
    assert run(docs[0]) == shared  # it was overwritten
    # a prompt that mostly shares with one slot continues it: typing at the cursor
    typed = fim(tokenizer, "def f1(x):\n    return x + 1 + y", "\n\nprint(f1(1))\n")
    assert run(typed) > len(typed) // 2
    assert len(gen._caches) == KV_SLOTS


def test_seeded_sampling_is_reproducible_and_top_p_tiny_is_greedy(random_ckpt, tokenizer) -> None:
    gen = Generator(load_model(ModelSpec(str(random_ckpt), device="cpu")))
    prompt = fim(tokenizer, "import os\n", "")
    a = gen.generate(GenerationRequest(prompt, max_new_tokens=6, temperature=1.0, seed=3, stop_strings=()))
    b = gen.generate(GenerationRequest(prompt, max_new_tokens=6, temperature=1.0, seed=3, stop_strings=()))
    assert a.token_ids == b.token_ids
    g = gen.generate(greedy(prompt, max_new_tokens=6))
    nucleus = gen.generate(
        GenerationRequest(prompt, max_new_tokens=6, temperature=1.0, top_p=1e-6, stop_strings=())
    )
    assert nucleus.token_ids == g.token_ids


def test_greedy_picks_the_first_best_real_token() -> None:
    """On a CPU the argmax is numpy's (torch's is ~25x slower there): the same first maximum, padding out."""
    logits = torch.zeros(FIRST_PADDING_ID + 64)
    logits[[7, 40, 900]] = 3.0
    logits[FIRST_PADDING_ID + 5] = 9.0  # padding beats them all, but is never chosen
    assert sample_next(logits, 0.0, 1.0, None) == 7 == int(torch.argmax(logits[:FIRST_PADDING_ID]))
    assert sample_next(torch.tensor([1.0, 5.0, 2.0]), 0.0, 1.0, None) == 1


def test_a_tiny_temperature_is_greedy_and_nan_logits_are_an_error_either_way() -> None:
    logits = torch.tensor([1.0, 5.0, 2.0, 4.999])
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, t, 1.0, g) for t in (1e-30, 1e-40, 5e-324) for _ in range(5)} == {1}
    for temperature in (0.0, 0.5):
        with pytest.raises(ValueError):
            sample_next(torch.full((4,), float("nan")), temperature, 1.0, g)


def test_draw_follows_the_weights_and_never_draws_a_zero_weight() -> None:
    """Sampling draws from the cumulative weights (``torch.multinomial`` is ~25x slower on a CPU):
    frequencies follow the weights, zero weights (masked padding) never come, whatever the total."""
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0]) * 7.0  # not normalised
    counts = torch.bincount(torch.tensor([draw(weights, g) for _ in range(6000)]), minlength=6)
    assert counts[0] == counts[2] == counts[5] == 0
    freq = counts.float() / counts.sum()
    torch.testing.assert_close(freq[[1, 3, 4]], torch.tensor([0.2, 0.5, 0.3]), atol=0.025, rtol=0)
    assert {draw(torch.tensor([0.0, 0.0, 1e-30]), g) for _ in range(50)} == {2}
    for broken in ([0.0, 0.0], [0.5, float("nan")], [float("inf"), 1.0]):  # as torch.multinomial, an error
        with pytest.raises(ValueError, match="cannot sample"):
            draw(torch.tensor(broken), g)


def test_padding_ids_are_never_produced(tmp_path: Path, tokenizer) -> None:
    folder = write_scripted_checkpoint(tmp_path, "abc = 1")
    tensors = load_file(str(folder / "model.safetensors"))
    head = tensors["lm_head.weight"]
    n_embd = head.shape[1]
    for d in range(n_embd):  # a padding row beats every real successor: 20 > 10
        head[FIRST_PADDING_ID + d, d] = 20.0
    save_file(tensors, str(folder / "model.safetensors"))
    loaded = load_model(ModelSpec(str(folder), device="cpu"))
    prompt = fim(tokenizer, "x", "y")
    with torch.no_grad():
        raw = loaded.model(torch.tensor([prompt])).logits[0, -1]
    assert int(raw.argmax()) >= FIRST_PADDING_ID  # unmasked, the model would pick padding
    gen = Generator(loaded)
    assert gen.generate(greedy(prompt)).text == "abc = 1"
    for seed in range(5):
        res = gen.generate(GenerationRequest(prompt, temperature=1.5, seed=seed, max_new_tokens=10))
        assert all(t < FIRST_PADDING_ID for t in res.token_ids)


def test_prompt_validation(scripted) -> None:
    with pytest.raises(ValueError, match="empty"):
        scripted.generate(GenerationRequest([]))
    with pytest.raises(ValueError, match="context"):
        scripted.generate(GenerationRequest([5] * 4096))
    with pytest.raises(ValueError, match="outside"):
        scripted.generate(GenerationRequest([5, 60000]))


def test_runner_states_and_cancellation(tmp_path: Path, tokenizer) -> None:
    states: list[str] = []
    runner = ModelRunner(on_state=states.append)
    assert runner.state == "unloaded" and runner.tokenizer is None
    runner.load(
        ModelSpec(str(write_scripted_checkpoint(tmp_path, "while True: pass", loop=True)), device="cpu")
    )
    assert states == ["loading", "ready"] and runner.n_ctx == 4096
    prompt = fim(runner.tokenizer, "a", "b")

    cancel = threading.Event()
    seen: list[str] = []

    def on_token(text: str) -> None:
        seen.append(text)
        if len(seen) == 2:
            cancel.set()

    res = runner.generate(greedy(prompt, max_new_tokens=1000), cancel, on_token=on_token)
    assert res.stop_reason == "cancelled" and len(res.token_ids) == 2

    # a generation waiting for the device gives up at once when cancelled
    long_cancel = threading.Event()
    results = []
    worker = threading.Thread(
        target=lambda: results.append(runner.generate(greedy(prompt, max_new_tokens=3000), long_cancel))
    )
    worker.start()
    while not runner._gen_lock.locked():
        time.sleep(0.001)
    waiting = threading.Event()
    waiting.set()
    queued = runner.generate(greedy(prompt), waiting)
    assert queued.stop_reason == "cancelled" and queued.steps == 0
    assert worker.is_alive()
    long_cancel.set()
    worker.join(timeout=10)
    assert results[0].stop_reason == "cancelled"


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab\n\t é🙂")), max_size=30),
    stops=st.lists(st.sampled_from(["\n", "\n\n", "b\t", "🙂"]), max_size=2),
)
def test_text_stream_matches_one_shot_decode(tokenizer, text: str, stops: list[str]) -> None:
    chunks: list[str] = []
    stream = TextStream(tokenizer.token_bytes, tuple(stops), chunks.append)
    stopped = False
    for tok in tokenizer.encode_text(text):
        if stream.push(tok):
            stopped = True
            break
    if not stopped:
        stream.finish()
    cut = min([text.find(s) for s in stops if s in text], default=len(text))
    assert stream.text == text[:cut]
    assert stopped == (cut < len(text))
    assert "".join(chunks) == stream.text


def test_a_character_cut_off_by_the_end_is_dropped_not_replaced(tokenizer) -> None:
    """A budget spent inside a multi-byte character (🙂 is three byte-level tokens here) ends the text
    before that character: no U+FFFD for the editor to insert."""
    ids = tokenizer.encode_text('print("🙂")')
    emoji = [i for i in ids if tokenizer.token_bytes(i)[0] >= 0x80]
    assert len(emoji) > 1
    chunks: list[str] = []
    stream = TextStream(tokenizer.token_bytes, (), chunks.append)
    for tok in ids[: ids.index(emoji[1]) + 1]:  # part of the emoji's bytes
        stream.push(tok)
    stream.finish()
    assert stream.text == 'print("' == "".join(chunks)


def test_a_kept_inference_mode_lasts_from_a_generation_to_the_next_load(scripted_ckpt, script_text) -> None:
    """The server's runner leaves its generation thread in inference mode after a generation (no entering
    and leaving it on each request), generates the same, and leaves it before loading: weights loaded in
    it would be inference tensors. Other threads are untouched."""
    found: dict[str, object] = {}

    def on_the_generation_thread() -> None:
        runner = ModelRunner(keep_inference_mode=True)
        spec = ModelSpec(str(scripted_ckpt), device="cpu")
        runner.load(spec)
        prompt = fim(runner.tokenizer, "x = 1\n", "\nfoo()")
        found["before"] = torch.is_inference_mode_enabled()
        found["texts"] = [runner.generate(greedy(prompt, max_new_tokens=100), threading.Event()).text]
        found["kept"] = torch.is_inference_mode_enabled()
        found["texts"].append(runner.generate(greedy(prompt, max_new_tokens=100), threading.Event()).text)
        runner.load(spec)
        found["after_load"] = torch.is_inference_mode_enabled()
        found["inference_weights"] = any(p.is_inference() for p in runner.loaded.model.parameters())
        found["texts"].append(runner.generate(greedy(prompt, max_new_tokens=100), threading.Event()).text)

    thread = threading.Thread(target=on_the_generation_thread)
    thread.start()
    thread.join(timeout=120)
    assert (found["before"], found["kept"], found["after_load"]) == (False, True, False)
    assert found["inference_weights"] is False
    assert found["texts"] == [script_text] * 3
    assert not torch.is_inference_mode_enabled()
