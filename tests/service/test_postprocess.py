"""Golden post-processing cases from tests/data/postprocess_cases.json."""

import json
import random
from pathlib import Path

import pytest

from refact_lsp.service.postprocess import PostContext, decided, postprocess

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


CONTEXTS = [
    PostContext("single", "x = ", "", ["y = 1"]),
    PostContext("multi", "    ", "", ["    return 1", "z"]),
    PostContext("multi", "", "", ["\tpass"]),
    PostContext("multi", "\tif x:", "", []),
    PostContext("multi", "        y", ")", ["        y = 2", "    z"]),
]
PIECES = [" ", "  ", "\t", "\n", "\r", "\r\n", "x", "y = 2", ")", "<fim_prefix>", "<|endoftext|>", "<fim_"]


@pytest.mark.parametrize("ctx", CONTEXTS, ids=lambda c: f"{c.mode}-{c.line_prefix!r}")
def test_a_decided_suggestion_never_changes(ctx):
    """Where ``decided`` lets a generation stop, no continuation changes the suggestion; and some random
    answers are decided before their end (the rule stops generations)."""
    rng = random.Random(repr(ctx))
    stopped_early = 0
    for _ in range(3000):
        raw = "".join(rng.choice(PIECES) for _ in range(rng.randrange(12)))
        if not decided(raw, ctx):
            continue
        for _ in range(5):
            more = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 6)))
            assert postprocess(raw + more, ctx) == postprocess(raw, ctx), (raw, more)
        stopped_early += 1
    assert stopped_early > 100


def test_decided_at_the_first_line_out_of_the_block():
    ctx = PostContext("multi", "", "", [])
    body = "    a = 1\n    b = 2\n"
    assert not decided(body, ctx)
    assert not decided(body + "  ", ctx)  # no character yet: the line may still be indented enough
    assert decided(body + "c", ctx)
    assert postprocess(body + "c = 3\n    d", ctx) == "    a = 1\n    b = 2"
    assert not decided("    x\n        deeper\n    same", ctx)
    assert not decided("x = 1", PostContext("single", "", "", []))
    assert decided("x = 1\n", PostContext("single", "", "", []))


@pytest.mark.parametrize(
    ("line_prefix", "line_suffix", "raw", "expected"),
    [
        # the model ends its lines before the text right of the cursor: it goes on a line of its own
        ("    ", "}", "return a + 1;\n", "return a + 1;\n    "),
        ("    ", "}", "return a + 1;\n\n", "return a + 1;\n    "),
        ("    ", "}", "return a + 1;\n<|endoftext|>", "return a + 1;\n    "),
        ("  foo(", ")", "\n    a,\n    b\n", "\n    a,\n    b\n  "),
        ("    ", "}", "return a + 1;\n}", "return a + 1;\n    "),  # its own "}" is out of the block
        # no line break after its text: it goes on the cursor line; nothing right of it: nothing to keep
        ("    ", "}", "return a + 1;", "return a + 1;"),
        ("  foo(", ")", "a, b", "a, b"),
        ("    ", "", "return a + 1;\n", "return a + 1;"),
    ],
)
def test_multi_line_text_before_the_rest_of_the_line_ends_its_line(line_prefix, line_suffix, raw, expected):
    assert postprocess(raw, PostContext("multi", line_prefix, line_suffix, [])) == expected
