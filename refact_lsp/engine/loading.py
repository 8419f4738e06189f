"""Find, download and load a ``gpt_refact`` checkpoint: safetensors by name, strictly checked.

A source is a local folder or a hub id (downloaded with huggingface_hub into its standard cache).
Tensors are matched by name against the model built from config.json: a missing, unexpected or
wrongly shaped tensor is a :class:`ModelLoadError` naming it, never a silent random init. The older
layout (``attn.k``/``attn.v``, ``mlp.linear_1``/``mlp.linear_3``) is fused at load time. Pickle
checkpoints (``pytorch_model.bin``) load only with ``allow_pickle=True``. Remote code never runs.
dtype ``int8`` (CPU only) loads float32 and quantizes the Linear layers (:mod:`refact_lsp.engine.quantize`).
A load whose ``ModelSpec.superseded`` turns true gives up (:class:`LoadSuperseded`), a download included.
A device that runs out of memory during the load is a retryable :class:`ModelLoadError` (another process may
hold the GPU for a while), raised once the failed load's memory is freed.
"""

from __future__ import annotations

import errno
import gc
import io
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import torch
from safetensors import safe_open

from refact_lsp.engine.config import GPTRefactConfig
from refact_lsp.engine.model import GPTRefactForCausalLM
from refact_lsp.engine.tokenizer import RefactTokenizer
from refact_lsp.model_source import is_hub_id

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smallcloudai/Refact-1_6B-fim"
ABANDON_POLL_S = 0.1
"""A superseded load gives up its download at most this long after ``ModelSpec.superseded`` turns true."""
_SIZE_KEYS = ("vocab_size", "n_embd", "n_head", "n_layer", "n_positions")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


CPU_OUT_OF_MEMORY = "DefaultCPUAllocator: can't allocate memory"
"""How torch words a failed CPU allocation (a plain RuntimeError, not ``torch.OutOfMemoryError``)."""
OUT_OF_MEMORY = "out of memory"
"""In other plain RuntimeErrors of a full device: "MPS backend out of memory", "CUDA error: out of memory" (a
CUDA context that could not be made)."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch's for a device (the CPU included) that ran out of memory."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    message = str(error)
    return CPU_OUT_OF_MEMORY in message or OUT_OF_MEMORY in message.lower()


def free_device_memory(device: torch.device) -> None:
    """Collect what dropped tensors left (reference cycles) and give the device's cached memory back (to other
    processes, and to the next try): call it once nothing refers to the tensors, outside an ``except`` block
    (the exception's frames hold them)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class ModelLoadError(Exception):
    """A model could not be loaded; ``str(error)`` is meant for the user. ``retryable``: it may work
    later without any change (the download failed: no network yet, the hub down; the device ran out of
    memory: another process may hold it for a while)."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class LoadSuperseded(ModelLoadError):
    """The load was given up for a newer one (``ModelSpec.superseded``): nothing to show the user."""


@dataclass(frozen=True)
class ProgressEvent:
    stage: Literal["download", "load"]
    message: str
    percentage: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class ModelSpec:
    source: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    allow_pickle: bool = False
    revision: str | None = None
    superseded: Callable[[], bool] | None = field(default=None, compare=False, repr=False)
    """True once a newer load replaces this one (called from the download's threads too)."""


@dataclass
class LoadedModel:
    model: GPTRefactForCausalLM
    tokenizer: RefactTokenizer
    device: torch.device
    dtype: torch.dtype
    n_ctx: int
    source_dir: Path
    quantization: str | None = None  # "int8": Linear weights int8, activations ``dtype`` (float32)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. An explicit device that is not available is an error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ModelLoadError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        # else torch fails at the first tensor (after the download): "CUDA error: invalid device ordinal"
        count = torch.cuda.device_count()
        visible = f"{count} CUDA devices are visible (cuda:0 to cuda:{count - 1})"
        if count == 1:
            visible = "1 CUDA device is visible (cuda:0)"
        raise ModelLoadError(f"device {name!r} requested but only {visible}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {name!r} requested but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


def is_int8(name: str) -> bool:
    return (name or "").strip().lower() == "int8"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp16 where bf16 is not native: before Ampere), fp16 on MPS, float32 on CPU.

    ``int8`` (CPU only) computes in float32: the answer is the activations' dtype."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if _bf16_supported(device) else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if name == "int8":
        if device.type != "cpu":
            raise ModelLoadError(
                f"dtype 'int8' is for the CPU only (device is {device}); on a GPU use auto or bfloat16"
            )
        return torch.float32
    if name not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r} (use auto, float32, bfloat16, float16 or int8)")
    return _DTYPES[name]


def _bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has bf16 natively (Ampere or later, or ROCm). ``torch.cuda.is_bf16_supported()``
    also says yes where bf16 is only emulated (a T4 or V100 makes bf16 tensors, but has no bf16 tensor cores:
    its fp16 matmuls are the fast ones), and answers for the current GPU, which need not be ``cuda:N``."""
    with torch.cuda.device(device):  # no index: the current GPU
        return torch.cuda.is_bf16_supported(including_emulation=False)


# --- locating the checkpoint ------------------------------------------------------------------


def _progress_tqdm(
    on_progress: ProgressCallback,
    expected_bytes: int | None = None,
    superseded: Callable[[], bool] | None = None,
) -> type:
    """A tqdm class for ``snapshot_download(tqdm_class=...)`` that forwards its byte bars to ``on_progress``
    as one percentage that only goes up, and stops a superseded download: its ``update`` raises
    :class:`LoadSuperseded` once ``superseded()`` is true (huggingface_hub's HTTP download updates it every
    10 MB it receives; hf_xet logs and ignores errors raised in its progress callbacks, see ``_abandonable``).

    huggingface_hub (2.x) makes three bars of it: the bytes written (its total grows as each file starts,
    so it alone would show 100 % after the first small file), the bytes received from the network (its
    own estimate) and a count of files. Only the first counts here, against ``expected_bytes`` (the
    files' sizes, listed before the download): a percentage below one already sent is not sent, and 100
    waits for the end of the download. Without the sizes only the megabytes go out, without a percentage."""
    from tqdm import tqdm

    sent = {"pct": -1}

    class _ProgressTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            name = kwargs.pop("name", None) or ""
            kwargs["disable"] = False
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            self._forwarded = self.unit == "B" and not name.endswith(".transfer")

        def update(self, n=1):
            _give_up_if_superseded(superseded)
            result = super().update(n)
            if not self._forwarded:
                return result
            if expected_bytes:
                pct = max(0, min(99, int(100 * self.n / expected_bytes)))
                if pct > sent["pct"]:
                    sent["pct"] = pct
                    msg = f"downloading: {self.n / 1e6:.0f}/{expected_bytes / 1e6:.0f} MB"
                    on_progress(ProgressEvent("download", msg, pct))
            elif int(self.n / 1e8) > sent["pct"]:  # the total is not known: every 100 MB, no percentage
                sent["pct"] = int(self.n / 1e8)
                on_progress(ProgressEvent("download", f"downloading: {self.n / 1e6:.0f} MB", None))
            return result

    return _ProgressTqdm


RepoFiles = dict[str, int | None]
"""A repo's files: name -> size in bytes (None: not listed)."""


def _repo_files(repo_id: str, revision: str | None) -> RepoFiles | None:
    """The repo's files: the hub's listing, else (offline) the one huggingface_hub cached with the download
    of this revision, else None."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        return {f.rfilename: f.size for f in info.siblings or []}
    except Exception:  # noqa: BLE001 - the download itself reports the errors that matter
        log.debug("no file listing for %s from the hub", repo_id, exc_info=True)
    try:
        from huggingface_hub import get_cached_repo_tree  # huggingface_hub >= 1.23

        return {f.path: f.size for f in get_cached_repo_tree(repo_id, revision=revision)}
    except Exception:  # noqa: BLE001 - not downloaded (or by an older huggingface_hub): no listing
        return None


def _download_patterns(repo_id: str, files: RepoFiles | None, allow_pickle: bool) -> list[str]:
    """What to fetch: the safetensors weights, or the pickle ones only where the repo has no safetensors
    (the loader never reads pickles next to safetensors). A pickle-only repo without ``allow_pickle`` is
    refused before anything is downloaded. Without a listing, what the flags allow."""
    from huggingface_hub.utils import filter_repo_objects

    patterns = ["config.json", "tokenizer.json", "*.safetensors", "*.safetensors.index.json"]
    pickles = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
    if files is None:
        return patterns + pickles if allow_pickle else patterns
    names = list(files)
    if any(filter_repo_objects(names, allow_patterns=["*.safetensors"])):
        return patterns
    pickled = list(filter_repo_objects(names, allow_patterns=pickles[:1]))
    if not pickled:
        return patterns
    if not allow_pickle:
        raise _pickle_refused(repo_id, pickled[0])
    return patterns + pickles


def _expected_bytes(files: RepoFiles | None, patterns: list[str]) -> int | None:
    """The total size of the listed files the download will fetch (None when the hub does not say)."""
    from huggingface_hub.utils import filter_repo_objects

    listed = files or {}
    return sum(listed[n] or 0 for n in filter_repo_objects(list(listed), allow_patterns=patterns)) or None


def _snapshot_gaps(folder: Path, files: RepoFiles | None, patterns: list[str]) -> list[str]:
    """The files a downloaded snapshot lacks (an interrupted download that the hub, out of reach, could not
    finish): the listed ones the patterns choose, or without a listing config.json, tokenizer.json and the
    weights."""
    from huggingface_hub.utils import filter_repo_objects

    if files is not None:
        chosen = filter_repo_objects(list(files), allow_patterns=patterns)
        return [name for name in chosen if not (folder / name).is_file()]
    gaps = [name for name in ("config.json", "tokenizer.json") if not (folder / name).is_file()]
    weights, _ = _find_weights(folder)
    return gaps + ([f.name for f in weights if not f.is_file()] if weights else ["model.safetensors"])


def _no_folder(source: str) -> str:
    """Where the folder ``source`` was looked for, for an error message."""
    path = Path(source).expanduser()
    where = f"there is no folder {os.path.abspath(path)}"
    if path.is_absolute():
        return where
    return f"{where} (a relative path is taken from the server's working directory, {os.getcwd()})"


def locate_checkpoint(spec: ModelSpec, on_progress: ProgressCallback | None = None) -> Path:
    """The local folder of ``spec.source``: a folder, else a hub id (``owner/name``) downloaded first."""
    source = (spec.source or "").strip()
    if not source:
        raise ModelLoadError("no model given")
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"model path {source!r} is a file; give the checkpoint's folder")
    if not is_hub_id(source):
        raise ModelLoadError(
            f"model folder {source!r} not found: {_no_folder(source)}; nor is it a hub id (owner/name)"
        )
    return _download(source, spec, on_progress or (lambda _e: None))


_LOCAL_STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
"""A download that fails writing the cache: retrying without the user's help would fail the same way."""


T = TypeVar("T")


def _abandonable(work: Callable[[], T], superseded: Callable[[], bool] | None) -> T:
    """``work()``; where it may be superseded, on a thread of its own that this one gives up (raising
    :class:`LoadSuperseded`) within ``ABANDON_POLL_S`` of ``superseded()`` turning true. A download left
    behind stops at its next progress update over HTTP (``_progress_tqdm``); hf_xet ignores the progress
    bar's error, so its transfer goes on in the background to its end (into the cache), without holding up
    the next load."""
    if superseded is None:
        return work()
    outcome: list = []

    def run() -> None:
        try:
            outcome.extend((work(), None))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread (if it still waits)
            outcome.extend((None, e))

    thread = threading.Thread(target=run, name="refact-model-download", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(ABANDON_POLL_S)
        if thread.is_alive():
            _give_up_if_superseded(superseded)
    result, error = outcome
    if error is not None:
        raise error
    return result


def _download(repo_id: str, spec: ModelSpec, on_progress: ProgressCallback) -> Path:
    """The snapshot folder of ``repo_id``, downloaded where needed: on a thread of its own (``_abandonable``)
    where the load may be superseded, the hub's file listing included (a network that does not answer
    holds it up for its timeouts)."""

    def report(event: ProgressEvent) -> None:  # a download given up reports nothing more: it stops there
        _give_up_if_superseded(spec.superseded)
        on_progress(event)

    return _abandonable(lambda: _fetch(repo_id, spec, report), spec.superseded)


def _fetch(repo_id: str, spec: ModelSpec, on_progress: ProgressCallback) -> Path:
    from huggingface_hub import snapshot_download

    files = _repo_files(repo_id, spec.revision)
    patterns = _download_patterns(repo_id, files, spec.allow_pickle)
    on_progress(ProgressEvent("download", f"downloading {repo_id}", 0))
    bars = _progress_tqdm(on_progress, _expected_bytes(files, patterns), spec.superseded)
    try:
        folder = Path(
            snapshot_download(repo_id, revision=spec.revision, allow_patterns=patterns, tqdm_class=bars)
        )
    except Exception as e:
        _give_up_if_superseded(spec.superseded)  # the error may be the giving up itself
        raise _download_error(repo_id, e) from e
    gaps = _snapshot_gaps(folder, files, patterns)
    if gaps:  # snapshot_download could not reach the hub and gave the cached, partial snapshot
        raise ModelLoadError(
            f"the download of {repo_id!r} is incomplete: {folder} lacks {', '.join(gaps)} (an interrupted "
            "download?) and the hub could not be reached to finish it; it is tried again later",
            retryable=True,
        )
    on_progress(ProgressEvent("download", f"downloaded {repo_id}", 100))
    return folder


def _download_error(repo_id: str, e: Exception) -> ModelLoadError:
    """``snapshot_download``'s error for the user: retryable (no network yet, the hub down, a login that
    comes later) unless the cache cannot be written."""
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(e, OSError) and e.errno in _LOCAL_STORAGE_ERRORS:
        # the same again later would fill the disk (or fail) again: the user has to make room first
        return ModelLoadError(
            f"could not download {repo_id!r} into the cache folder {constants.HF_HUB_CACHE} "
            f"(set HF_HUB_CACHE or HF_HOME to use another): {e.strerror or e}"
        )
    what = f"{repo_id!r}: "
    if isinstance(e, RepositoryNotFoundError):  # maybe meant as a folder
        what = f"{repo_id!r}, and it is no folder either: {_no_folder(repo_id)}. "
    return ModelLoadError(f"could not download {what}{type(e).__name__}: {e}", retryable=True)


# --- reading tensors --------------------------------------------------------------------------


def _pickle_refused(where: str, name: str) -> ModelLoadError:
    """The error for a checkpoint with only pickle weights while allowPickle is off."""
    return ModelLoadError(
        f"{where} has only pickle weights ({name}); pickle files can run code when loaded. "
        "Convert them to safetensors, or opt in with allowPickle if you trust the source."
    )


def _read_json(path: Path) -> object:
    """``path``'s JSON; a file that cannot be read or parsed is a :class:`ModelLoadError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e


def _index_files(index: Path) -> list[str]:
    """The shard file names of a ``*.index.json`` (its ``weight_map``: tensor name -> file name)."""
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ModelLoadError(f"{index}: expected an object whose weight_map maps tensor names to file names")
    return sorted(set(weight_map.values()))


def _find_weights(folder: Path) -> tuple[list[Path], bool]:
    """The weight files the folder holds or its index names (maybe missing), safetensors first, and whether
    they are pickles; ``([], False)`` if none."""
    for index_name, single, pickled in (
        ("model.safetensors.index.json", "model.safetensors", False),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", True),
    ):
        files: list[Path] = []
        index = folder / index_name
        if index.is_file():
            files = [folder / f for f in _index_files(index)]
        elif (folder / single).is_file():
            files = [folder / single]
        elif not pickled:
            files = sorted(folder.glob("*.safetensors"))
        if files:
            return files, pickled
    return [], False


def _weight_files(folder: Path, allow_pickle: bool) -> tuple[list[Path], bool]:
    """The weight files and whether they are pickles."""
    files, pickled = _find_weights(folder)
    if not files:
        raise ModelLoadError(f"no model weights (model.safetensors) in {folder}")
    if pickled and not allow_pickle:
        raise _pickle_refused(str(folder), files[0].name)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(f"{folder} is missing weight files: {', '.join(missing)}")
    return files, pickled


def read_tensors(folder: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint by name, on CPU (safetensors are memory-mapped)."""
    files, pickled = _weight_files(folder, allow_pickle)
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if pickled:
            tensors.update(_load_pickled_tensors(f))
            continue
        try:
            # the OS's own error first (permission denied...): safetensors words it as "not found"
            _refuse_lfs_pointer(f)
            with safe_open(str(f), framework="pt", device="cpu") as sf:
                for name in sf.keys():  # noqa: SIM118 - safe_open is not a mapping
                    tensors[name] = sf.get_tensor(name)
        except Exception as e:
            raise ModelLoadError(f"cannot read {f}: {e}") from e
    return tensors


def _load_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``pytorch_model*.bin`` state dict, unpickled with ``weights_only`` (tensors only, never code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a pickle that needs more than tensors (code, objects) or a broken file
        reason = next((line for line in str(e).splitlines() if "GLOBAL" in line), str(e).split("\n", 1)[0])
        raise ModelLoadError(
            f"cannot read {path}: it is not a plain file of tensors and is never loaded as one that may run "
            f"code ({type(e).__name__}: {reason.strip()}). Convert the checkpoint to safetensors."
        ) from e
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelLoadError(f"{path} does not hold a state dict (tensors by name)")
    return state


def fuse_legacy_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fuse ``attn.k``+``attn.v`` into ``attn.kv``, ``mlp.linear_1``+``mlp.linear_3`` into ``gate_up_proj``.

    Incomplete pairs are left as they are, so the name check reports them.
    """
    out = dict(tensors)
    pairs = ((".attn.k.weight", ".attn.v.weight", ".attn.kv.weight"),)
    pairs += ((".mlp.linear_1.weight", ".mlp.linear_3.weight", ".mlp.gate_up_proj.weight"),)
    for first, second, fused in pairs:
        for name in [n for n in tensors if n.endswith(first)]:
            base = name[: -len(first)]
            if base + second in out and base + fused not in out:
                out[base + fused] = torch.cat([out.pop(name), out.pop(base + second)], dim=0)
    return out


def _listing(names: list[str], limit: int = 6) -> str:
    names = sorted(names)
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Size], where: str) -> None:
    """Raise :class:`ModelLoadError` naming missing, unexpected and wrongly shaped tensors."""
    problems = []
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    shapes = [
        f"{n} {list(tensors[n].shape)} (config.json implies {list(expected[n])})"
        for n in expected
        if n in tensors and tensors[n].shape != expected[n]
    ]
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes: {_listing(shapes)}")
    if problems:
        raise ModelLoadError(f"checkpoint {where} does not match gpt_refact: " + "; ".join(problems))


def read_config(folder: Path) -> GPTRefactConfig:
    """The folder's config.json, checked: a missing key or a value of the wrong type or range is a
    :class:`ModelLoadError` naming the file, not a model that loads and then fails every forward pass."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"no config.json in {folder}")
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object of settings, not {type(raw).__name__}")
    if raw.get("model_type") != "gpt_refact":
        raise ModelLoadError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'gpt_refact'")
    for key in _SIZE_KEYS:
        value = raw.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelLoadError(f"{path}: {key} must be a positive integer, not {value!r}")
    eps = raw.get("layer_norm_epsilon")
    if isinstance(eps, int) and not isinstance(eps, bool):  # JSON may write 1.0 as 1
        raw["layer_norm_epsilon"] = float(eps)
    try:
        return GPTRefactConfig(**raw)
    except Exception as e:  # noqa: BLE001 - strict type checks, transformers' own checks: all about the file
        raise ModelLoadError(f"{path}: {' '.join(str(e).split())}") from e


def load_weights(
    folder: Path,
    config: GPTRefactConfig,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    allow_pickle: bool = False,
) -> GPTRefactForCausalLM:
    """Build the model for ``config`` and fill it from the folder's tensors (``dtype=None`` keeps theirs)."""
    with torch.device("meta"):
        model = GPTRefactForCausalLM(config)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    tensors = fuse_legacy_tensors(read_tensors(folder, allow_pickle))
    check_tensors(tensors, expected, str(folder))
    # copy=True: a tensor already of the right dtype on the CPU would stay mapped from the file, and a file
    # rewritten under the running server (cp over it) would change the weights or crash it (SIGBUS)
    state = {n: t.to(device=device, dtype=dtype or t.dtype, copy=True) for n, t in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _give_up_if_superseded(superseded: Callable[[], bool] | None, what: str = "download") -> None:
    """Raises :class:`LoadSuperseded` once ``superseded()`` is true (``ModelSpec.superseded``)."""
    if superseded is not None and superseded():
        raise LoadSuperseded(f"{what} given up for a newer model")


LFS_POINTER = b"version https://git-lfs.github.com/spec/"
FIM_TOKENS = {0: "<|endoftext|>", 1: "<fim_prefix>", 2: "<fim_middle>", 3: "<fim_suffix>"}


def _refuse_lfs_pointer(path: Path) -> None:
    """``ModelLoadError`` for a Git LFS pointer in place of the file (a ``git clone`` without git-lfs)."""
    with path.open("rb") as f:
        if f.read(len(LFS_POINTER)) == LFS_POINTER:
            raise ModelLoadError(
                f"{path} is a Git LFS pointer, not the file: run `git lfs pull` in {path.parent} "
                "(or give the hub id and let the server download the model)"
            )


def _check_tokenizer_fits(tokenizer: RefactTokenizer, vocab_size: int, path: Path) -> None:
    """``ModelLoadError`` when the tokenizer is not Refact's (its FIM tokens elsewhere) or has ids the model
    has no embedding for: every request would fail, the model looking ready."""
    wrong = {i: t for i, t in FIM_TOKENS.items() if tokenizer.token_to_id(t) != i}
    if wrong:
        raise ModelLoadError(f"{path} is not a Refact tokenizer: {', '.join(wrong.values())} not at ids 0-3")
    if tokenizer.vocab_size > vocab_size:
        raise ModelLoadError(
            f"{path} has {tokenizer.vocab_size} tokens, the model's vocab_size is {vocab_size} "
            "(config.json): the tokenizer does not belong to these weights"
        )


def load_model(spec: ModelSpec, on_progress: ProgressCallback | None = None) -> LoadedModel:
    """Locate (download if needed), check and load model and tokenizer. Blocking: call it on a thread.
    Superseded (``spec.superseded``), it gives up between its steps and during the download. A device that
    runs out of memory is a retryable :class:`ModelLoadError`, raised once the failed load's memory is
    freed."""
    device = resolve_device(spec.device)
    try:
        return _load_model(spec, device, on_progress or (lambda _e: None))
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(e):
            raise
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'out of memory'}"
    # outside the except block: the failed load's frames (and the tensors they hold) are gone before freeing
    free_device_memory(device)
    advice = "free memory, or set dtype to bfloat16 or int8"
    if device.type != "cpu":
        advice = "free GPU memory (another process may hold it), or set device (another GPU, or cpu) or dtype"
    message = f"ran out of memory loading the model on {device}; {advice} ({reason})"
    raise ModelLoadError(message, retryable=True)


def _load_model(spec: ModelSpec, device: torch.device, report: ProgressCallback) -> LoadedModel:
    """``load_model`` on ``device``; an out-of-memory error goes through as torch raised it."""
    dtype = resolve_dtype(spec.dtype, device)
    folder = locate_checkpoint(spec, report)
    _give_up_if_superseded(spec.superseded, f"loading {spec.source}")
    label = "int8" if is_int8(spec.dtype) else str(dtype).removeprefix("torch.")
    name = folder.name if Path(spec.source).expanduser().is_dir() else spec.source  # not a snapshot's hash
    report(ProgressEvent("load", f"loading {name} on {device} ({label})", 0))
    config = read_config(folder)
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelLoadError(f"no tokenizer.json in {folder}")
    try:
        _refuse_lfs_pointer(tok_path)
        tokenizer = RefactTokenizer.from_file(tok_path)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"cannot read {tok_path}: {e}") from e
    _check_tokenizer_fits(tokenizer, config.vocab_size, tok_path)
    quantization = "int8" if is_int8(spec.dtype) else None
    try:
        model = load_weights(folder, config, device=device, dtype=dtype, allow_pickle=spec.allow_pickle)
        _give_up_if_superseded(spec.superseded, f"loading {spec.source}")
        if quantization:
            from refact_lsp.engine.quantize import quantize_int8

            report(ProgressEvent("load", "quantizing the Linear layers to int8", 50))
            quantize_int8(model)
        else:
            model.fuse_projections()  # q and kv in one GEMM
    except ModelLoadError:
        raise
    except (RuntimeError, OSError, ValueError) as e:  # unreadable file ...
        if is_out_of_memory(e):
            raise  # load_model's to report (retryable) once the memory is freed
        raise ModelLoadError(f"cannot load {folder} on {device}: {e}") from e
    report(ProgressEvent("load", "model ready", 100))
    return LoadedModel(model, tokenizer, device, dtype, config.n_positions, folder, quantization)
