"""A local model folder's files, to notice when the user fixed a checkpoint that failed to load."""

from __future__ import annotations

import os
from pathlib import Path


def local_model_files(source: str) -> tuple[tuple[str, int, int], ...] | None:
    """(name, mtime, size) of the files in a local model folder; None if ``source`` is no folder."""
    try:
        with os.scandir(Path(source).expanduser()) as entries:
            return tuple(
                sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries if e.is_file())
            )
    except OSError:
        return None


def is_local_source(source: str) -> bool:
    """A folder path rather than a hub id (``smallcloudai/Refact-1_6B-fim``)."""
    return source.startswith(("/", "~", ".")) or Path(source).expanduser().is_dir()
