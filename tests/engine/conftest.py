"""Tiny checkpoints in the official layout, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from refact_lsp.dev.checkpoints import (
    fixture_tokenizer_path,
    write_random_checkpoint,
    write_scripted_checkpoint,
)

SCRIPT = 'def hello():\n    return 42\n\t\nprint("世界🙂")'


@pytest.fixture
def one_gemv_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """One GEMV tile, not the autotuner's six: on a GPU each tile of each shape compiles (about a second
    each); the autotuned path has a test of its own (``test_triton_gemv.py``) and is the one
    ``test_cuda.py`` runs."""
    from refact_lsp.engine import triton_gemv

    monkeypatch.setattr(triton_gemv, "AUTOTUNE", False)


@pytest.fixture(scope="session")
def script_text() -> str:
    return SCRIPT


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("random_fused"), n_layer=2, seed=1)


@pytest.fixture(scope="session")
def legacy_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(
        tmp_path_factory.mktemp("random_legacy"), n_layer=2, seed=1, layout="legacy"
    )


@pytest.fixture(scope="session")
def scripted_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scripted_checkpoint(tmp_path_factory.mktemp("scripted"), SCRIPT)


@pytest.fixture(scope="session")
def tokenizer():
    from refact_lsp.engine.tokenizer import RefactTokenizer

    return RefactTokenizer.from_file(fixture_tokenizer_path())
