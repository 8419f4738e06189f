"""End-to-end fixtures: tiny checkpoints written once per test session (helpers in ``lsp_session``)."""

from __future__ import annotations

import pytest

from .lsp_session import LOOPING_TEXT, MULTILINE_AFTER, MULTILINE_TEXT, SCRIPTED_TEXT, Checkpoints


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return Checkpoints(
        scripted=write_scripted_checkpoint(root / "scripted", SCRIPTED_TEXT),
        looping=write_scripted_checkpoint(root / "looping", LOOPING_TEXT, loop=True),
        multiline=write_scripted_checkpoint(root / "multiline", MULTILINE_TEXT + MULTILINE_AFTER),
        missing=root / "does-not-exist",
    )
