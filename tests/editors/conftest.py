"""Shared fixtures for the editor tests: scripted checkpoints and the server command line.

The editors start the real server (``python -m refact_lsp``) on tiny checkpoints whose greedy completion
from any prompt is a fixed text, so each test can assert the exact text the editor shows and inserts.
The server starts on the single-line checkpoint; tests switch to the multi-line one with the ``model``
setting (``workspace/didChangeConfiguration``), which also checks that settings reach the server.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Completed after ``    return `` (single-line mode).
SINGLE_LINE_TEXT = "a + b"
#: Completed on a blank indented line (multi-line mode: the model writes from column 0).
MULTILINE_TEXT = "    return a + b\n    # done"

#: Completed inside an auto-closed "()": the model types the ")" and goes on, so the server's range
#: covers the real ")" and the editor shows the text around it.
CLOSER_TEXT = "x):"
#: With multiline "always", completed inside ``foo(|)``: the second line types the auto-closed ")" again, so
#: the server's range covers the real ")" while the ghost text is one multi-line piece.
MULTILINE_CLOSER_TEXT = "a,\n    b)"
#: Completed inside ``foo(|)``: a call's arguments and its ")" (the server's range covers the real ")"), so
#: the ghost text shown is the arguments alone.
CALL_CLOSER_TEXT = "a, b)"

#: Settings sent as initializationOptions: greedy decoding and no debounce, so answers are exact and quick.
TEST_SETTINGS = {"temperature": 0, "debounceMs": 0}


@dataclass(frozen=True)
class ScriptedServer:
    """How to start the server on the scripted checkpoints, and what it answers."""

    command: list[str]
    settings: dict
    single_line_model: Path
    multiline_model: Path
    closer_model: Path
    env: dict[str, str] = field(default_factory=dict)
    single_line_text: str = SINGLE_LINE_TEXT
    multiline_text: str = MULTILINE_TEXT
    closer_text: str = CLOSER_TEXT


@pytest.fixture(scope="session")
def scripted_server(tmp_path_factory: pytest.TempPathFactory) -> ScriptedServer:
    """The server command (on the single-line checkpoint) and its test settings (initializationOptions)."""
    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    root = tmp_path_factory.mktemp("editor-checkpoints")
    single = write_scripted_checkpoint(root / "single-line", SINGLE_LINE_TEXT)
    multi = write_scripted_checkpoint(root / "multiline", MULTILINE_TEXT)
    closer = write_scripted_checkpoint(root / "closer", CLOSER_TEXT)
    return ScriptedServer(
        command=[sys.executable, "-m", "refact_lsp", "--model", str(single)],
        settings=dict(TEST_SETTINGS),
        single_line_model=single,
        multiline_model=multi,
        closer_model=closer,
        env=server_env(),
    )


@pytest.fixture(scope="session")
def multiline_closer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint that answers ``MULTILINE_CLOSER_TEXT``."""
    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    return write_scripted_checkpoint(
        tmp_path_factory.mktemp("editor-checkpoints") / "ml-closer", MULTILINE_CLOSER_TEXT
    )


@pytest.fixture(scope="session")
def call_closer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint that answers ``CALL_CLOSER_TEXT``."""
    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    return write_scripted_checkpoint(
        tmp_path_factory.mktemp("editor-checkpoints") / "call-closer", CALL_CLOSER_TEXT
    )


def server_env() -> dict[str, str]:
    """Environment additions for the editors, so the server they start imports this checkout's
    refact_lsp from any working directory (also when the package is not installed in the venv)."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
