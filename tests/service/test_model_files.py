import os
from pathlib import Path

from refact_lsp.model_source import is_local_source
from refact_lsp.service.model_files import local_model_files


def test_the_files_change_when_one_is_rewritten(tmp_path: Path) -> None:
    assert local_model_files(str(tmp_path / "missing")) is None
    (tmp_path / "config.json").write_text("{ not json")
    before = local_model_files(str(tmp_path))
    assert before is not None and [name for name, *_ in before] == ["config.json"]
    assert local_model_files(str(tmp_path)) == before  # nothing changed
    (tmp_path / "config.json").write_text("{}")
    stat = (tmp_path / "config.json").stat()
    os.utime(tmp_path / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert local_model_files(str(tmp_path)) != before


def test_local_sources_and_hub_ids(tmp_path: Path) -> None:
    assert is_local_source(str(tmp_path))
    assert is_local_source("./models/refact") and is_local_source("~/models/refact")
    assert not is_local_source("smallcloudai/Refact-1_6B-fim")
    # what loading takes for a folder (a bare name, a path with more parts): retried once its files appear
    assert is_local_source("refact-model") and is_local_source("models/refact/v1")
    assert not is_local_source(" smallcloudai/Refact-1_6B-fim ")


def test_the_files_change_when_one_is_made_readable_or_replaced(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x" * 10)
    weights.chmod(0o000)
    before = local_model_files(str(tmp_path))
    weights.chmod(0o644)  # a fix that changes neither the time written nor the size
    assert local_model_files(str(tmp_path)) != before
    readable = local_model_files(str(tmp_path))
    replacement = tmp_path / "new"
    replacement.write_bytes(b"y" * 10)
    os.utime(replacement, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns))
    replacement.replace(weights)
    assert local_model_files(str(tmp_path)) != readable
