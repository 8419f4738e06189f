"""Golden post-processing cases from tests/data/postprocess_cases.json."""

import json
from pathlib import Path

import pytest

from refact_lsp.service.postprocess import PostContext, postprocess

CASES = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "postprocess_cases.json").read_text("utf-8")
)


def test_enough_cases():
    assert len(CASES) >= 25
    assert len({case["name"] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_postprocess_golden(case):
    ctx = PostContext(
        mode=case["mode"],
        line_prefix=case.get("line_prefix", ""),
        line_suffix=case.get("line_suffix", ""),
        next_lines=case.get("next_lines", []),
    )
    assert postprocess(case["raw"], ctx) == case["expected"]


def test_context_from_lines():
    lines = ["def f():", "    ret", "    return 1", "", "x"]
    ctx = PostContext.from_lines(lines, 1, 7, "single", lookahead=2)
    assert ctx == PostContext("single", "    ret", "", ["    return 1", ""])
    multi = PostContext.from_lines(lines, 1, 4, "multi", prefix_cut=0)
    assert (multi.line_prefix, multi.line_suffix) == ("", "ret")
