"""Counters and percentiles behind ``refact.stats``."""

from __future__ import annotations

import json

from refact_lsp.service.stats import LATENCY_WINDOW, RunRecord, Stats, percentile


def test_percentile_is_nearest_rank() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_runs_add_up_and_the_snapshot_is_json() -> None:
    stats = Stats()
    stats.record_run(RunRecord("eot", 100, 0, 5, 50, prefill_ms=10.0, decode_ms=5.0))
    stats.record_run(RunRecord("cancelled", 120, 100, 3, 2000, prefill_ms=2.0, decode_ms=3.0))
    snap = json.loads(json.dumps(stats.snapshot()))
    assert snap["model_runs"] == 2
    assert snap["prompt_tokens"] == 220
    assert snap["reused_tokens"] == 100
    assert snap["generated_tokens"] == 8
    assert snap["stop_reasons"] == {"eot": 1, "cancelled": 1}
    assert snap["last_run"]["stop_reason"] == "cancelled"
    assert snap["last_run"]["generated_tokens"] == 3
    assert snap["latency_ms"]["prefill"] == {"p50": 2.0, "p95": 10.0, "count": 2}
    assert snap["latency_ms"]["decode_per_token"]["p95"] == 1.0


def test_latency_windows_are_bounded_and_total_sets_last_latency() -> None:
    stats = Stats()
    for i in range(LATENCY_WINDOW + 500):
        stats.record_latency("total", float(i))
    summary = stats.latency_summary()["total"]
    assert summary["count"] == LATENCY_WINDOW
    assert summary["p50"] >= 500  # the oldest 500 samples were forgotten
    assert stats.snapshot()["last_latency_ms"] == float(LATENCY_WINDOW + 499)


def test_p50_of_a_stage() -> None:
    stats = Stats()
    assert stats.p50("decode_per_token") is None
    for ms in (30.0, 10.0, 20.0):
        stats.record_latency("decode_per_token", ms)
    assert stats.p50("decode_per_token") == 20.0
