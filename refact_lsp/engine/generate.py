"""Prefill + decode loop over the engine's own KV cache (not transformers' ``generate``).

The :class:`Generator` keeps the last request's cache (prompt and generated tokens). With
``kv_reuse`` a new prompt that shares a token prefix with it only prefills the rest: ALiBi puts
positions in the attention bias, so cached keys/values stay valid whatever follows them.

On CUDA the fast path is on by default: prefill with ``scaled_dot_product_attention``, decode with static
shapes over the same preallocated cache (:meth:`GPTRefactForCausalLM.decode_step`) replayed as a CUDA
graph. Greedy decoding keeps the device a step ahead of the host (each step picks its token on the device
and feeds it to the next, queued before the host reads it back and applies the stop rules); sampling runs
one step at a time on the host. Running out of device memory raises
:class:`GenerationOutOfMemory` after dropping the cache, so a caller can retry with a shorter prompt.
"""

from __future__ import annotations

import codecs
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from refact_lsp.dev.faults import maybe_inject
from refact_lsp.engine import triton_decode
from refact_lsp.engine.cuda_graph import DecodeGraph, greedy_pick, picked_token
from refact_lsp.engine.inference_mode import inference
from refact_lsp.engine.kv_cache import KVCache
from refact_lsp.engine.loading import LoadedModel, free_device_memory, is_out_of_memory
from refact_lsp.engine.readback import PickReadback
from refact_lsp.engine.tokenizer import EOT_ID, FIM_MIDDLE_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID, FIRST_PADDING_ID

StopReason = Literal["eot", "stop_string", "decided", "max_tokens", "time_budget", "cancelled"]
"""Why a generation ended; ``eot``: the model ended it with ``<|endoftext|>`` or another control token
(``<fim_prefix>``, ``<filename>``, ...: none belongs in a completion, so none is written out as text);
``decided``: the request's ``stop_when`` said that no more text would change the answer."""
GREEDY_BELOW = 1e-6
"""Temperatures below this are greedy (the distribution is one-hot to float32's precision anyway)."""
SHORT_TAIL = 8
"""With the fast path, a prompt tail of up to this many new tokens goes through the decode step."""
RUN_AHEAD = True
"""``Generator.run_ahead``'s default: greedy decoding on the fast path queues each step before the host
has read the token it feeds (the device picks it), so the device does not wait for the host between
steps. The host's share of a step was 0.055 ms of 2.08 on an H100 at ``dc38df8`` (``docs/benchmarks.md``)."""
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
PREFILL_CHUNK = 512  # bounds the float32 attention scores of a long prefill: n_head x 512 x n_ctx
KV_SLOTS = 4
"""KV caches kept at once, least recently used dropped first. Each holds one recent prompt: another
document's window, or the column-0 multi-line prompt right after Enter next to the single-line one of
the line being typed, keeps its own instead of overwriting the one the next keystroke needs. With one
key/value head a slot is small (the 1.6B model in bf16: 32 MB at 4,096 tokens)."""
log = logging.getLogger(__name__)


class GenerationOutOfMemory(Exception):
    """The device ran out of memory during a generation. The KV cache was dropped and memory released;
    the generator stays usable, and a shorter prompt may fit."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int] | tuple[int, ...]
    max_new_tokens: int = 50
    temperature: float = 0.2
    top_p: float = 1.0
    seed: int | None = None
    stop_strings: tuple[str, ...] = ("\n\n",)
    time_budget_s: float | None = None
    kv_reuse: bool = True
    prefill_chunk: int | None = None
    """Tokens per prefill forward pass (default ``PREFILL_CHUNK``); the stop event is checked between
    them, so a small chunk makes a low-priority (speculative) run stop within about one decode step."""
    stop_when: Callable[[str], bool] | None = None
    """Called with the text so far after each token (stop strings cut off); True ends the generation
    there (reason ``decided``): the caller knows that nothing the model writes next would change the
    answer, e.g. a multi-line completion that has left the cursor's block."""


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int] = field(default_factory=list)
    """The sampled tokens, without the control token that ended them."""
    stop_reason: StopReason = "eot"
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose keys/values came from the previous request
    prefill_s: float = 0.0  # until the first token is chosen
    decode_s: float = 0.0
    steps: int = 0  # tokens sampled, <|endoftext|> included


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Pick a token from ``[vocab]`` logits: padding ids masked; greedy when ``temperature`` is 0 (or
    below ``GREEDY_BELOW``, where dividing by it would overflow float32)."""
    logits = logits.float()
    if logits.shape[-1] > FIRST_PADDING_ID:
        logits[FIRST_PADDING_ID:] = float("-inf")
    if temperature < GREEDY_BELOW:
        if logits.device.type == "cpu":  # numpy's vectorised argmax: ~4 us where torch's takes ~100 us
            values = logits.numpy()
            best = int(values.argmax())  # the first NaN, if any
            return picked_token(best, float(values[best]))
        # the index and its logit in one read back from the device
        return picked_token(*greedy_pick(logits, logits.new_empty(2)).tolist())
    # shifted by the maximum first: a tiny temperature sends the others to -inf, never the best to inf
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
    if 0 < top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of strictly more likely tokens
        sorted_probs[before >= top_p] = 0.0  # the most likely token always survives
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return draw(probs, generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One index drawn from the (not necessarily normalised) weights ``probs`` ``[vocab]``: the first
    whose cumulative weight exceeds a uniform draw over the total, so a zero weight is never drawn.
    Raises ``ValueError`` when the weights have no finite positive total (NaN logits), as
    ``torch.multinomial`` does.

    The same distribution as ``torch.multinomial(probs, 1)``, which took 1.26 ms over 49k weights on
    the development VM's CPU (this: 0.050 ms; docs/benchmarks.md), longer than a small model's decode
    step."""
    cdf = torch.cumsum(probs, dim=0)
    total = cdf[-1:]
    u = torch.rand(1, generator=generator, device=probs.device, dtype=cdf.dtype) * total
    index = torch.searchsorted(cdf, u, right=True)
    drawn, weight = torch.cat([index.to(cdf.dtype), total]).tolist()  # one read back from the device
    if not (0 < weight < math.inf):
        raise ValueError(f"cannot sample: the probabilities sum to {weight} (the logits are not finite)")
    return min(int(drawn), probs.shape[0] - 1)


class TextStream:
    """Incremental, UTF-8-safe detokenizer that cuts at stop strings and holds back a possible stop start."""

    def __init__(self, token_bytes: Callable[[int], bytes], stops: tuple[str, ...], on_text):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._on_text = on_text
        self.text = ""
        self._emitted = 0

    def push(self, token_id: int) -> bool:
        """Add a token; True when a stop string appeared (``text`` is then cut before it)."""
        before = len(self.text)
        self.text += self._decoder.decode(self._token_bytes(token_id))
        cut = -1
        for stop in self._stops:
            i = self.text.find(stop, max(0, before - len(stop) + 1))
            if i != -1 and (cut == -1 or i < cut):
                cut = i
        if cut != -1:
            self.text = self.text[:cut]
            self._emit(len(self.text))
            return True
        self._emit(len(self.text) - self._held_back())
        return False

    def finish(self) -> None:
        """The generation ended: emit what was held back for a stop string. The bytes of a character cut
        off by the end (a token budget spent inside an emoji, say) are dropped, not written as U+FFFD
        into the user's file."""
        self._decoder.reset()
        self._emit(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest tail of ``text`` that could begin a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def _emit(self, upto: int) -> None:
        if upto > self._emitted:
            chunk = self.text[self._emitted : upto]
            self._emitted = upto
            if self._on_text is not None:
                self._on_text(chunk)


class Generator:
    """Runs requests on one loaded model; keeps the last request's KV cache. One caller at a time.

    ``fast_path`` (default: on for CUDA) prefills with SDPA and decodes with static shapes; ``cuda_graphs``
    (default: with the fast path on CUDA) replays that decode step as a CUDA graph; ``triton_kernels``
    (default: with the fast path where :func:`triton_decode.supports` the model) runs the decode step's
    norms, attention and activation as Triton kernels, and falls back to torch's if they fail.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        fast_path: bool | None = None,
        cuda_graphs: bool | None = None,
        compile_decode: bool = False,
        triton_kernels: bool | None = None,
        run_ahead: bool | None = None,
    ):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self._end_ids = self.tokenizer.special_ids | {EOT_ID}
        """Tokens that end a completion (``StopReason`` ``eot``)."""
        self.device = loaded.device
        self.n_ctx = loaded.n_ctx
        on_cuda = self.device.type == "cuda"
        self.fast_path = on_cuda if fast_path is None else fast_path
        self.cuda_graphs = self.fast_path and on_cuda and (cuda_graphs is None or cuda_graphs)
        self.compile_decode = compile_decode and self.cuda_graphs
        """Compile the decode step with ``torch.compile`` before capturing it (CUDA graphs only)."""
        wanted = triton_decode.supports(self.model, self.device) if triton_kernels is None else triton_kernels
        self.triton_kernels = (
            wanted
            and self.fast_path
            and not self.compile_decode
            and triton_decode.can_run(self.model, self.device)
        )
        """The decode step through :func:`triton_decode.decode_step`."""
        self.sdpa_prefill = True
        """Prefill with ``scaled_dot_product_attention`` (on every device: same logits, less memory)."""
        self._caches: list[KVCache] = []  # least recently used first; the last is ``cache``
        self.multi_token_steps = True
        """A keystroke's few new prompt tokens in one decode step (off after that step failed to capture)."""
        self.run_ahead = RUN_AHEAD if run_ahead is None else run_ahead
        """Greedy decoding with the fast path queues each step before the host has read the token it
        feeds (the device picks it): the device never waits for the host between steps."""
        self._graphs: dict[tuple[KVCache, int], DecodeGraph] = {}  # captured steps: (slot, tokens a step)
        self._eager: dict[tuple[KVCache, int], DecodeGraph] = {}  # the same, uncaptured (no CUDA graphs)
        self._readback: PickReadback | None = None

    @property
    def cache(self) -> KVCache:
        """The KV cache of the current (or last) request."""
        if not self._caches:
            self._caches.append(self._new_cache())
        return self._caches[-1]

    def _new_cache(self) -> KVCache:
        cfg = self.model.config
        return KVCache(
            cfg.n_layer,
            cfg.head_dim,
            self.n_ctx,
            device=self.device,
            dtype=self.model.transformer.wte.weight.dtype,  # int8 keeps float32 embeddings/activations
        )

    def _select_cache(self, prompt: list[int], reuse: bool) -> int:
        """Make the slot that shares the most leading tokens with ``prompt`` the current ``cache``;
        returns how many it shares. It is taken when it shares at least half of the prompt or of what it
        holds (continuing it loses no more than it keeps); otherwise the prompt gets a new slot while
        there are fewer than ``KV_SLOTS``, else the least recently used one (its cache is overwritten)."""
        if not reuse:
            return 0  # the current slot, from scratch
        caches = self._caches
        shared = [cache.common_prefix_len(prompt) for cache in caches]
        best = max(range(len(caches)), key=shared.__getitem__, default=None)
        if best is None or 2 * shared[best] < min(len(prompt), caches[best].length):
            if len(caches) < KV_SLOTS:
                caches.append(self._new_cache())
                return 0
            best = 0
        caches.append(caches.pop(best))
        return shared[best]

    def reset_cache(self) -> None:
        for cache in self._caches:
            cache.reset()

    def warm_up(self) -> None:
        """On CUDA, one tiny generation: the Triton kernels' compilation, cuBLAS's set-up and the first KV
        slot's graph capture happen now (at load, in the background) instead of in the first request.
        Nothing of it stays cached but the captured graph."""
        if self.device.type != "cuda":
            return
        prompt = [FIM_SUFFIX_ID, FIM_PREFIX_ID, FIM_MIDDLE_ID]  # short: the prompt's tail is decoded too
        self.generate(
            GenerationRequest(prompt, max_new_tokens=2, temperature=0.0, stop_strings=(), kv_reuse=False)
        )
        self.reset_cache()

    def release_memory(self) -> None:
        """Drop the KV caches and the decode graphs (rebuilt on the next request) and free device memory."""
        self._caches, self._graphs, self._eager = [], {}, {}
        free_device_memory(self.device)

    def _forward(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        sdpa = self.sdpa_prefill and len(ids) > 1  # one query row: plain matmuls are faster
        return self.model(x, kv_cache=self.cache, logits_to_keep=1, sdpa=sdpa).logits[0, -1]

    def _decode(self, tokens: list[int]) -> torch.Tensor:
        """Logits after ``tokens`` (one while generating, up to ``SHORT_TAIL`` of a keystroke's prompt),
        which are appended to the cache: one static step (a CUDA graph per slot and token count)."""
        if not self.fast_path:
            return self._forward(tokens)
        cache = self.cache
        pos = cache.length
        if pos + len(tokens) > cache.capacity:
            raise ValueError(f"KV cache overflow: {pos + len(tokens)} tokens > capacity {cache.capacity}")
        step = self._static_step(tokens, pos)
        if step is None:  # a multi-token step failed to capture: one token a step from now on
            for token in tokens:
                logits = self._decode([token])
            return logits
        logits = step.run(tokens, pos)
        cache.commit(tokens)
        return logits

    def _static_step(self, tokens: list[int], pos: int) -> DecodeGraph | None:
        """The current slot's static step for ``len(tokens)`` tokens (built at ``pos``, the next position
        to write): its CUDA graph, captured now if need be, else the same step run eagerly. None for
        several tokens once multi-token steps are off."""
        if len(tokens) > 1 and not self.multi_token_steps:
            return None
        key = (self.cache, len(tokens))
        if self.cuda_graphs:
            graph = self._graphs.get(key) or self._capture(tokens, pos)
            if graph is not None:
                self._graphs[key] = graph
                return graph
            if len(tokens) > 1 and not self.multi_token_steps:
                return None
        step = self._eager.get(key)
        if step is None:
            step = DecodeGraph(self.model, self.cache, tokens, pos, self._step(), capture=False)
            self._eager[key] = step
        return step

    def _step(self) -> Callable[[torch.Tensor, torch.Tensor, KVCache], torch.Tensor]:
        """The static decode step: ``torch.compile``'d (``compile_decode``), with the Triton kernels
        (``triton_kernels``), or the model's own."""
        if self.compile_decode:
            self.model.drop_stale_fusions()  # the compiled step trusts the fused q/kv weights it finds
            return torch.compile(self.model.decode_step, fullgraph=True, dynamic=False)
        if self.triton_kernels:
            return functools.partial(triton_decode.decode_step, self.model)
        return self.model.decode_step

    def _capture(self, tokens: list[int], pos: int) -> DecodeGraph | None:
        """Capture the decode step. If the Triton kernels fail (their compilation, say), capture torch's
        step instead; if that fails too, log a warning and decode eagerly from now on."""
        try:
            return DecodeGraph(self.model, self.cache, tokens, pos, step=self._step())
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # capture is best effort: the eager step computes the same thing
            if len(tokens) > 1:  # keep the one-token step as it is: decode a tail a token at a time
                log.warning(
                    "a %d-token decode step failed, one token a step: %s: %s",
                    len(tokens),
                    type(e).__name__,
                    e,
                )
                self.multi_token_steps = False
                return None
            if self.triton_kernels:
                log.warning("Triton decode kernels failed, using torch's: %s: %s", type(e).__name__, e)
                self.triton_kernels = False
                self._graphs.clear()  # every captured step runs them
                self._eager.clear()
                return self._capture(tokens, pos)
            log.warning("CUDA graph capture failed, decoding without graphs: %s: %s", type(e).__name__, e)
            self.cuda_graphs = self.compile_decode = False  # compiling is for a captured step only
            return None

    @inference
    def generate(
        self,
        request: GenerationRequest,
        should_stop: Callable[[], bool] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Generate a completion for ``request.prompt_ids`` (blocking).

        Raises ``ValueError`` for a bad prompt and :class:`GenerationOutOfMemory` when the device runs out of
        memory (the generator stays usable).
        """
        try:
            if self.device.type != "cuda":
                return self._generate(request, should_stop, on_token)
            # cuDNN's attention builds a plan per new sequence length (about a second on an H100) and every
            # prompt length is new: only the attention kernels without per-shape setup are allowed. The
            # model's GPU is made the current one: Triton launches and graph captures go to the current GPU.
            with sdpa_kernel(SDPA_BACKENDS), torch.cuda.device(self.device):
                return self._generate(request, should_stop, on_token)
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(e):
                raise
            reason = str(e).splitlines()[0] if str(e) else "out of memory"
        # outside the except block: the failed call's frames (and their tensors) are gone before freeing
        self.release_memory()
        raise GenerationOutOfMemory(
            f"out of memory on {self.device} for a prompt of {len(request.prompt_ids)} tokens: {reason}"
        )

    def _generate(
        self,
        request: GenerationRequest,
        should_stop: Callable[[], bool] | None,
        on_token: Callable[[str], None] | None,
    ) -> GenerationResult:
        t0 = time.perf_counter()
        prompt = list(request.prompt_ids)
        reused = self._select_cache(prompt, request.kv_reuse)
        self._validate(prompt, checked=reused)  # the cached prefix was checked by an earlier request
        stop = should_stop or (lambda: False)
        result = GenerationResult(text="", prompt_tokens=len(prompt))
        if stop():
            result.stop_reason = "cancelled"
            return result

        cache = self.cache
        reused = min(reused, len(prompt) - 1)  # always recompute the last prompt token for its logits
        cache.truncate(reused)
        result.reused_tokens = reused
        chunk = max(1, min(request.prefill_chunk or PREFILL_CHUNK, PREFILL_CHUNK))
        for start in range(reused, len(prompt), chunk):
            if start > reused and stop():
                result.stop_reason = "cancelled"
                result.prefill_s = time.perf_counter() - t0
                return result
            tail = prompt[start : start + chunk]
            # a keystroke's few new tokens: one static step (a CUDA graph) instead of a prefill pass
            short = self.fast_path and len(tail) <= SHORT_TAIL
            logits = self._decode(tail) if short else self._forward(tail)

        greedy = request.temperature < GREEDY_BELOW
        gen = None
        if not greedy:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(
                request.seed if request.seed is not None else int(torch.randint(2**62, ()).item())
            )
        max_new = min(request.max_new_tokens, self.n_ctx - len(prompt))
        stream = TextStream(self.tokenizer.token_bytes, tuple(request.stop_strings), on_token)
        t_first = None
        reason: StopReason | None = "max_tokens" if max_new <= 0 else None

        def goes_on(token: int) -> bool:
            """Take the next sampled token; False (with ``reason`` set) when generation stops at it."""
            nonlocal t_first, reason
            result.steps += 1
            if t_first is None:
                t_first = time.perf_counter()
            if token in self._end_ids:
                reason = "eot"
                return False
            result.token_ids.append(token)
            if stream.push(token):
                reason = "stop_string"
            elif request.stop_when is not None and request.stop_when(stream.text):
                reason = "decided"
            elif len(result.token_ids) >= max_new:
                reason = "max_tokens"
            elif request.time_budget_s is not None and time.perf_counter() - t0 >= request.time_budget_s:
                reason = "time_budget"
            elif stop():
                reason = "cancelled"
            return reason is None

        if reason is None:
            maybe_inject("decode")
            if greedy and self.fast_path and self.run_ahead:
                self._greedy_run_ahead(logits, max_new, goes_on)
            else:
                while goes_on(sample_next(logits, request.temperature, request.top_p, gen)):
                    logits = self._decode([result.token_ids[-1]])
        if reason != "stop_string":
            stream.finish()
        t_end = time.perf_counter()
        t_first = t_first or t_end
        result.text = stream.text
        result.stop_reason = reason
        result.prefill_s = t_first - t0
        result.decode_s = t_end - t_first
        return result

    def _greedy_run_ahead(self, logits: torch.Tensor, max_new: int, goes_on: Callable[[int], bool]) -> None:
        """Greedy decoding from the prompt's ``logits`` with the device a step ahead of the host: each
        one-token step picks its token on the device and feeds it to the next step, which is queued before
        the host reads the token back (through :class:`PickReadback`) and applies the stop rules
        (``goes_on``). Generates what the one-step-at-a-time loop does; a step queued for a token that
        ends the generation is wasted (its cache entry is not committed)."""
        cache = self.cache
        readback = self._readback or PickReadback(self.device)
        self._readback = readback
        picked = greedy_pick(logits, torch.empty(2, dtype=torch.float32, device=self.device))
        readback.start(0, picked)
        step = None
        if max_new > 1:  # the step that feeds the first token, queued before the host knows it
            step = self._static_step([0], cache.length)
            if step is None:
                raise RuntimeError("no one-token decode step")  # only several tokens a step can be off
            step.run_after(picked, cache.length)
            readback.start(1, step.picked)
        n = 0  # tokens read back
        while True:
            token = readback.take(n)
            n += 1
            if not goes_on(token):
                return
            cache.commit([token])  # the queued step fed it
            if step is not None and n + 1 < max_new:  # room for a token after the next one
                step.run_on()
                readback.start(n + 1, step.picked)

    def _validate(self, prompt: list[int], checked: int = 0) -> None:
        """Raise ``ValueError`` for an empty or too long prompt, or ids outside the vocabulary (from
        ``prompt[checked:]``: the first ``checked`` ids are known to be good)."""
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.n_ctx}")
        vocab = self.model.config.vocab_size
        bad = [t for t in prompt[checked:] if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt has token ids outside the vocabulary: {bad[:5]}")
