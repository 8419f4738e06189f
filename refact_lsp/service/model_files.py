"""A local model folder's files, to notice when the user fixed a checkpoint that failed to load."""

from __future__ import annotations

import os
from pathlib import Path


def local_model_files(source: str) -> tuple[tuple[str, int, int, int, int], ...] | None:
    """(name, mtime, ctime, inode, size) of the files in a local model folder (a chmod changes the ctime,
    a file put in place of another the inode); None if ``source`` is no folder."""
    try:
        with os.scandir(Path(source).expanduser()) as entries:
            stats = [(e.name, e.stat()) for e in entries if e.is_file()]
            return tuple(sorted((n, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, s.st_size) for n, s in stats))
    except OSError:
        return None
