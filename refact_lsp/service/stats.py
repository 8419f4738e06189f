"""Counters and latency percentiles for ``refact.stats``.

Everything here runs on the server's event loop; the engine's numbers arrive through
:meth:`Stats.record_run` after a generation finished. Latencies keep a bounded window of the
most recent samples per stage, so memory stays flat however long the server runs.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

LATENCY_WINDOW = 1000
"""Samples kept per stage for the percentiles."""


def percentile(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``samples``; None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RunRecord:
    """What one model run did, as reported by the engine."""

    stop_reason: str
    prompt_tokens: int
    reused_tokens: int
    generated_tokens: int
    max_new_tokens: int
    prefill_ms: float
    decode_ms: float
    speculative: bool = False
    """A speculative run (the completion after the shown one, as if accepted): counted apart."""


@dataclass
class Stats:
    """Request counters, token counts and per-stage latency windows."""

    requests: int = 0
    completions: int = 0
    empty: int = 0
    cancellations: int = 0
    superseded: int = 0
    dropped: int = 0
    cache_hits: int = 0
    model_runs: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    speculative_runs: int = 0
    """Speculative runs that finished (their non-empty results went into the cache)."""
    speculative_cancelled: int = 0
    """Speculative runs stopped by real work (or skipped because the model was busy)."""
    speculative_hits: int = 0
    """Requests answered from a speculative entry (also counted in ``cache_hits``)."""
    speculative_prompt_tokens: int = 0
    speculative_reused_tokens: int = 0
    stop_reasons: Counter[str] = field(default_factory=Counter)
    last_run: RunRecord | None = None
    last_latency_ms: float | None = None
    _latencies: dict[str, deque[float]] = field(default_factory=dict)

    def record_latency(self, stage: str, ms: float) -> None:
        """Adds one sample (milliseconds) to ``stage``'s window."""
        window = self._latencies.get(stage)
        if window is None:
            window = self._latencies[stage] = deque(maxlen=LATENCY_WINDOW)
        window.append(ms)
        if stage == "total":
            self.last_latency_ms = ms

    def record_run(self, run: RunRecord) -> None:
        """Counts one finished model run (whatever its stop reason); speculative runs apart."""
        if run.speculative:
            self.speculative_prompt_tokens += run.prompt_tokens
            self.speculative_reused_tokens += run.reused_tokens
            return
        self.model_runs += 1
        self.prompt_tokens += run.prompt_tokens
        self.reused_tokens += run.reused_tokens
        self.generated_tokens += run.generated_tokens
        self.stop_reasons[run.stop_reason] += 1
        self.last_run = run
        self.record_latency("prefill", run.prefill_ms)
        self.record_latency("decode", run.decode_ms)
        if run.generated_tokens:
            self.record_latency("decode_per_token", run.decode_ms / run.generated_tokens)

    def p50(self, stage: str) -> float | None:
        """The median of ``stage``'s window (None before its first sample)."""
        window = self._latencies.get(stage)
        return percentile(list(window), 50) if window else None

    def latency_summary(self) -> dict[str, dict[str, float | int | None]]:
        """``{stage: {"p50", "p95", "count"}}`` in milliseconds, rounded to microseconds."""
        summary: dict[str, dict[str, float | int | None]] = {}
        for stage, window in sorted(self._latencies.items()):
            samples = list(window)
            summary[stage] = {
                "p50": _round(percentile(samples, 50)),
                "p95": _round(percentile(samples, 95)),
                "count": len(samples),
            }
        return summary

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of everything (the model part is added by the service)."""
        last_run = None
        if self.last_run is not None:
            run = self.last_run
            last_run = {
                "stop_reason": run.stop_reason,
                "prompt_tokens": run.prompt_tokens,
                "reused_tokens": run.reused_tokens,
                "generated_tokens": run.generated_tokens,
                "max_new_tokens": run.max_new_tokens,
                "prefill_ms": _round(run.prefill_ms),
                "decode_ms": _round(run.decode_ms),
            }
        return {
            "requests": self.requests,
            "completions": self.completions,
            "empty": self.empty,
            "cancellations": self.cancellations,
            "superseded": self.superseded,
            "dropped": self.dropped,
            "cache_hits": self.cache_hits,
            "model_runs": self.model_runs,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "generated_tokens": self.generated_tokens,
            "speculative": {
                "runs": self.speculative_runs,
                "cancelled": self.speculative_cancelled,
                "hits": self.speculative_hits,
                "prompt_tokens": self.speculative_prompt_tokens,
                "reused_tokens": self.speculative_reused_tokens,
            },
            "stop_reasons": dict(self.stop_reasons),
            "last_run": last_run,
            "last_latency_ms": _round(self.last_latency_ms),
            "latency_ms": self.latency_summary(),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
