"""Robustness fixtures: the scripted checkpoint (its greedy answer to any prompt is ``a + b``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "robustness",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.fixture(scope="session")
def scripted_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    from .fuzz_cases import SCRIPTED_TEXT

    return write_scripted_checkpoint(tmp_path_factory.mktemp("robustness") / "scripted", SCRIPTED_TEXT)
