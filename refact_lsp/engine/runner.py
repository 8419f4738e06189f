"""``ModelRunner``: load state, one generation at a time per device, cancellation."""

from __future__ import annotations

import functools
import gc
import logging
import threading
from collections.abc import Callable
from typing import Literal

from refact_lsp.engine import inference_mode
from refact_lsp.engine.generate import GenerationRequest, GenerationResult, Generator
from refact_lsp.engine.loading import (
    LoadedModel,
    ModelLoadError,
    ModelSpec,
    ProgressCallback,
    ProgressEvent,
    load_model,
)
from refact_lsp.engine.tokenizer import RefactTokenizer
from refact_lsp.model_source import is_local_source

log = logging.getLogger(__name__)

RunnerState = Literal["unloaded", "downloading", "loading", "ready", "error"]


class ModelRunner:
    """Owns the loaded model and its :class:`Generator`. ``load``/``generate`` block: call them on threads."""

    def __init__(
        self,
        on_progress: ProgressCallback | None = None,
        on_state: Callable[[RunnerState], None] | None = None,
        keep_inference_mode: bool = False,
    ):
        """``keep_inference_mode``: the thread that generates stays in inference mode between generations,
        until it loads a model (:mod:`refact_lsp.engine.inference_mode`): for a server's one generation
        thread, which also does the loading."""
        self._on_progress = on_progress
        self._on_state = on_state
        self.state: RunnerState = "unloaded"
        self.error: str | None = None
        self.spec: ModelSpec | None = None
        self._loaded: LoadedModel | None = None
        self._generator: Generator | None = None
        self._gen_lock = threading.Lock()  # one generation at a time on the device
        self._load_lock = threading.Lock()
        self._keep_inference_mode = keep_inference_mode

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    @property
    def tokenizer(self) -> RefactTokenizer | None:
        return self._loaded.tokenizer if self._loaded else None

    @property
    def device(self) -> str | None:
        return str(self._loaded.device) if self._loaded else None

    @property
    def n_ctx(self) -> int | None:
        return self._loaded.n_ctx if self._loaded else None

    def _set_state(self, state: RunnerState, error: str | None = None) -> None:
        self.state, self.error = state, error
        if self._on_state is not None:
            self._on_state(state)

    def _progress(self, event: ProgressEvent, forward: ProgressCallback | None = None) -> None:
        wanted: RunnerState = "downloading" if event.stage == "download" else "loading"
        if self.state != wanted:
            self._set_state(wanted)
        forward = forward or self._on_progress
        if forward is not None:
            forward(event)

    def load(self, spec: ModelSpec, on_progress: ProgressCallback | None = None) -> None:
        """Load ``spec``, replacing any loaded model. Raises :class:`ModelLoadError` (``state`` "error").
        ``on_progress``: this load's progress events, instead of the runner's callback (a download given
        up may still send one, from its own thread, after a newer load began: the caller can tell)."""
        inference_mode.leave()  # the weights must not be inference tensors
        with self._load_lock:
            self.spec = spec
            self._set_state("loading" if is_local_source(spec.source) else "downloading")
            with self._gen_lock:  # no generation while the model is swapped
                self._loaded = self._generator = None
                gc.unfreeze()  # the old model's reference cycles can go
                gc.collect()
            try:
                loaded = load_model(spec, functools.partial(self._progress, forward=on_progress))
            except ModelLoadError as e:
                self._set_state("error", str(e))
                raise
            except Exception as e:  # anything else is reported the same way, never lost
                self._set_state("error", f"{type(e).__name__}: {e}")
                raise ModelLoadError(self.error) from e
            with self._gen_lock:
                self._loaded, self._generator = loaded, Generator(loaded)
                try:
                    self._generator.warm_up()
                except Exception as e:  # the first request pays instead (or reports what is wrong)
                    log.warning("warm-up failed: %s: %s", type(e).__name__, e)
            # torch, transformers and the model are a few hundred thousand long-lived objects: frozen,
            # the cyclic GC no longer walks them all in the middle of a keystroke's request
            gc.collect()
            gc.freeze()
            self._set_state("ready")

    def generate(
        self,
        request: GenerationRequest,
        cancel: threading.Event,
        on_token: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Run one generation; waits for the device. A set ``cancel`` returns ``stop_reason="cancelled"``."""
        while not self._gen_lock.acquire(timeout=0.005):
            if cancel.is_set():
                return GenerationResult(
                    text="", stop_reason="cancelled", prompt_tokens=len(request.prompt_ids)
                )
        try:
            if self._generator is None:
                raise RuntimeError(f"model not ready (state: {self.state})")
            if self._keep_inference_mode:
                inference_mode.keep()
            return self._generator.generate(request, should_stop=cancel.is_set, on_token=on_token)
        finally:
            self._gen_lock.release()
