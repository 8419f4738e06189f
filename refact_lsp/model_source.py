"""What the ``model`` setting names: a local folder or a hub id (shared by the service and the engine; only
huggingface_hub's id check is imported, and only when a name needs it)."""

from __future__ import annotations

from pathlib import Path


def is_hub_id(source: str) -> bool:
    """``owner/name`` as huggingface_hub validates repo ids (a bare ``name`` is taken for a folder)."""
    if source.count("/") != 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def is_local_source(source: str) -> bool:
    """A folder (one that exists, or a name that is no hub id: loading it looks for that folder)."""
    return Path(source).expanduser().is_dir() or not is_hub_id(source.strip())
