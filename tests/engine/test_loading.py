"""Loading: strict tensor checks with named errors, pickle opt-in, Auto classes, device/dtype choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import refact_lsp  # noqa: F401 - registers gpt_refact with transformers' Auto classes
from refact_lsp.engine.config import GPTRefactConfig
from refact_lsp.engine.loading import (
    ModelLoadError,
    ModelSpec,
    _progress_tqdm,
    load_model,
    resolve_device,
    resolve_dtype,
)
from refact_lsp.engine.model import GPTRefactForCausalLM
from refact_lsp.engine.runner import ModelRunner


@pytest.fixture
def ckpt(random_ckpt: Path, tmp_path: Path) -> Path:
    """A private copy of the random checkpoint to damage."""
    return Path(shutil.copytree(random_ckpt, tmp_path / "ckpt"))


def edit_tensors(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def test_config_reads_hub_fields(random_ckpt: Path) -> None:
    raw = json.loads((random_ckpt / "config.json").read_text())
    assert raw["auto_map"]["AutoModelForCausalLM"].startswith("modeling_gpt_refact")
    cfg = GPTRefactConfig(**raw)
    assert (cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.vocab_size, cfg.n_positions) == (64, 4, 2, 49216, 4096)
    assert cfg.mlp_width == 256 and GPTRefactConfig().mlp_width == 5632
    assert cfg.bos_token_id is None and cfg.eos_token_id == 0 and not cfg.tie_word_embeddings


def test_auto_classes_give_our_classes_despite_auto_map(random_ckpt: Path, legacy_ckpt: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    assert type(AutoConfig.from_pretrained(random_ckpt)) is GPTRefactConfig
    model = AutoModelForCausalLM.from_pretrained(random_ckpt)
    legacy = AutoModelForCausalLM.from_pretrained(legacy_ckpt)
    assert type(model) is GPTRefactForCausalLM
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, legacy(ids).logits)


@pytest.mark.parametrize("via", ["load_model", "auto"])
def test_missing_tensor_is_named(ckpt: Path, via: str) -> None:
    edit_tensors(ckpt, lambda t: t.pop("transformer.h.1.attn.q.weight"))
    with pytest.raises(ModelLoadError, match=r"missing tensors: transformer\.h\.1\.attn\.q\.weight"):
        if via == "auto":
            from transformers import AutoModelForCausalLM

            AutoModelForCausalLM.from_pretrained(ckpt)
        else:
            load_model(ModelSpec(str(ckpt), device="cpu"))


def test_wrong_shape_is_named(ckpt: Path) -> None:
    edit_tensors(ckpt, lambda t: t.update({"ln_f.weight": torch.ones(65)}))
    with pytest.raises(
        ModelLoadError, match=r"wrong shapes: ln_f\.weight \[65\] \(config\.json implies \[64\]\)"
    ):
        load_model(ModelSpec(str(ckpt), device="cpu"))


def test_unexpected_and_half_legacy_tensors_are_named(ckpt: Path) -> None:
    def edit(t):
        t["transformer.h.0.attn.k.weight"] = t["transformer.h.0.attn.kv.weight"][:16].clone()
        t["transformer.extra.weight"] = torch.zeros(3)

    edit_tensors(ckpt, edit)
    with pytest.raises(
        ModelLoadError, match=r"unexpected tensors: transformer\.extra\.weight, transformer\.h\.0\.attn\.k"
    ):
        load_model(ModelSpec(str(ckpt), device="cpu"))


def test_pickle_only_folder_is_refused_unless_allowed(ckpt: Path) -> None:
    tensors = load_file(str(ckpt / "model.safetensors"))
    torch.save(tensors, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        load_model(ModelSpec(str(ckpt), device="cpu"))
    loaded = load_model(ModelSpec(str(ckpt), device="cpu", allow_pickle=True))
    torch.testing.assert_close(loaded.model.lm_head.weight, tensors["lm_head.weight"])


def test_missing_tokenizer_config_or_folder(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        load_model(ModelSpec(str(ckpt), device="cpu"))
    (ckpt / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(ModelSpec(str(ckpt), device="cpu"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(ModelSpec(str(tmp_path / "nowhere" / "at all"), device="cpu"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="expected 'gpt_refact'"):
        load_model(ModelSpec(str(tmp_path / "empty"), device="cpu"))


def test_weights_or_tokenizer_that_are_git_lfs_pointers_say_so(ckpt: Path) -> None:
    """A ``git clone`` without git-lfs leaves ~130-byte pointer files in place of the weights."""
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 3200000000\n"
    for name in ("model.safetensors", "tokenizer.json"):
        original = (ckpt / name).read_bytes()
        (ckpt / name).write_text(pointer)
        with pytest.raises(ModelLoadError, match=f"{name} is a Git LFS pointer.*git lfs pull"):
            load_model(ModelSpec(str(ckpt), device="cpu"))
        (ckpt / name).write_bytes(original)


def test_a_tokenizer_that_does_not_belong_to_the_weights_is_refused(ckpt: Path) -> None:
    """Ids the model has no embedding for failed every request while the model looked ready."""
    write_config(ckpt, vocab_size=1000)
    edit_tensors(
        ckpt,
        lambda t: t.update(
            {k: v[:1000].clone() for k, v in t.items() if k in ("transformer.wte.weight", "lm_head.weight")}
        ),
    )
    with pytest.raises(ModelLoadError, match="49216 tokens, the model's vocab_size is 1000"):
        load_model(ModelSpec(str(ckpt), device="cpu"))


def write_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon"),
        ({"layer_norm_epsilon": None}, "layer_norm_epsilon"),
        ({"layer_norm_epsilon": 0}, "layer_norm_epsilon"),
        ({"layer_norm_epsilon": True}, "layer_norm_epsilon"),
        ({"n_inner": "256"}, "n_inner"),
        ({"n_inner": -5}, "n_inner"),
        ({"multi_query": "true"}, "multi_query"),
        ({"head_dim": 32}, "head_dim"),
        ({"torch_dtype": "bfloat17"}, "bfloat17"),
    ],
)
def test_config_values_of_the_wrong_type_or_range_are_named(ckpt: Path, changes: dict, named: str) -> None:
    """Each of these used to load (and then fail every forward pass) or fail with a bare AttributeError."""
    write_config(ckpt, **changes)
    with pytest.raises(ModelLoadError, match=rf"config\.json: .*{named}"):
        load_model(ModelSpec(str(ckpt), device="cpu"))


def test_config_keys_with_their_derived_values_load(ckpt: Path) -> None:
    write_config(ckpt, head_dim=16, mlp_width=256, layer_norm_epsilon=1, n_inner=256, torch_dtype="float32")
    loaded = load_model(ModelSpec(str(ckpt), device="cpu"))
    assert loaded.model.config.head_dim == 16 and loaded.model.config.layer_norm_epsilon == 1.0


@pytest.mark.parametrize("index", ["[1, 2]", "{not json", '{"weight_map": ["a"]}', '{"metadata": {}}'])
def test_a_malformed_shard_index_is_named(ckpt: Path, index: str) -> None:
    (ckpt / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors\.index\.json"):
        load_model(ModelSpec(str(ckpt), device="cpu"))


@pytest.fixture
def fake_hub(random_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """huggingface_hub without the network: repo ``owner/both`` has safetensors and pickle weights,
    ``owner/pickles`` pickle weights only. Returns the files each download fetched, by repo id."""
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    remote = tmp_path / "remote"
    tensors = load_file(str(random_ckpt / "model.safetensors"))
    for name, safetensors in (("both", True), ("pickles", False)):
        repo = remote / "owner" / name
        repo.mkdir(parents=True)
        for file in ("config.json", "tokenizer.json") + (("model.safetensors",) if safetensors else ()):
            shutil.copy(random_ckpt / file, repo)
        torch.save(tensors, repo / "pytorch_model.bin")
    fetched: dict[str, list[str]] = {}

    def snapshot_download(repo_id: str, revision=None, allow_patterns=None, **kwargs) -> str:
        names = sorted(f.name for f in (remote / repo_id).iterdir())
        fetched[repo_id] = list(filter_repo_objects(names, allow_patterns=allow_patterns))
        local = tmp_path / "cache" / repo_id
        local.mkdir(parents=True, exist_ok=True)
        for file in fetched[repo_id]:
            shutil.copy(remote / repo_id / file, local)
        return str(local)

    class HfApi:
        def model_info(self, repo_id: str, revision=None, files_metadata: bool = False) -> SimpleNamespace:
            listing = (remote / repo_id).iterdir()
            return SimpleNamespace(
                siblings=[SimpleNamespace(rfilename=f.name, size=f.stat().st_size) for f in listing]
            )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", HfApi)
    return fetched


def test_hub_download_fetches_pickle_weights_only_for_a_repo_without_safetensors(
    fake_hub: dict[str, list[str]],
) -> None:
    load_model(ModelSpec("owner/both", device="cpu", allow_pickle=True))
    assert fake_hub["owner/both"] == ["config.json", "model.safetensors", "tokenizer.json"]
    with pytest.raises(ModelLoadError, match=r"owner/pickles has only pickle weights .*allowPickle") as info:
        load_model(ModelSpec("owner/pickles", device="cpu"))
    assert not info.value.retryable
    assert "owner/pickles" not in fake_hub  # refused before anything was downloaded
    load_model(ModelSpec("owner/pickles", device="cpu", allow_pickle=True))
    assert fake_hub["owner/pickles"] == ["config.json", "pytorch_model.bin", "tokenizer.json"]


def test_a_full_disk_is_no_reason_to_download_again(fake_hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retrying would fill the disk again, every time: not retryable, and the cache folder is named."""
    import errno

    import huggingface_hub
    from huggingface_hub import constants

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", full)
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec("owner/both", device="cpu"))
    assert not info.value.retryable
    assert str(constants.HF_HUB_CACHE) in str(info.value) and "No space left" in str(info.value)

    def offline(*_args, **_kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec("owner/both", device="cpu"))
    assert info.value.retryable  # the network may come back


def test_the_loaded_weights_are_not_the_files_own(random_ckpt: Path, tmp_path: Path) -> None:
    """A checkpoint rewritten under the running server (cp over it) changes neither its weights nor, cut
    short, kills it: the weights are copied out of the file's memory map."""
    folder = tmp_path / "ckpt"
    shutil.copytree(random_ckpt, folder)
    loaded = load_model(ModelSpec(str(folder), device="cpu", dtype="float32"))
    before = loaded.model.lm_head.weight.clone()
    tensors = load_file(str(folder / "model.safetensors"))
    data = (folder / "model.safetensors").read_bytes()
    assert tensors["lm_head.weight"].dtype == torch.float32  # the same dtype: no conversion copies it
    with open(folder / "model.safetensors", "r+b") as f:  # in place, same size: the mapping sees it
        header = 8 + int.from_bytes(data[:8], "little")
        f.seek(header)
        f.write(bytes(len(data) - header))
    assert torch.equal(loaded.model.lm_head.weight, before)


def test_from_pretrained_device_map_auto_picks_the_engines_device(random_ckpt: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(random_ckpt, device_map="auto")
    assert model.lm_head.weight.device.type == resolve_device("auto").type
    with pytest.raises(ValueError, match=r"device_map 'nowhere' is not supported"):
        AutoModelForCausalLM.from_pretrained(random_ckpt, device_map="nowhere")


def test_runner_reports_load_errors(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    runner = ModelRunner()
    with pytest.raises(ModelLoadError):
        runner.load(ModelSpec(str(ckpt), device="cpu"))
    assert runner.state == "error" and "no model weights" in runner.error


def test_a_missing_folder_is_loading_then_an_error_never_downloading(tmp_path: Path) -> None:
    states: list[str] = []
    runner = ModelRunner(on_state=states.append)
    with pytest.raises(ModelLoadError, match="not found"):
        runner.load(ModelSpec(str(tmp_path / "no" / "such" / "model"), device="cpu"))
    assert states == ["loading", "error"]


def test_device_and_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == cpu
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("int8", cpu) == torch.float32  # int8 weights, float32 activations
    with pytest.raises(ModelLoadError, match="int8.*CPU only"):
        resolve_dtype("int8", torch.device("cuda"))
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("float8", cpu)
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("tpu!")


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (torch.OutOfMemoryError, "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has 3.94 MiB free."),
        (RuntimeError, "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    ],
    ids=["OutOfMemoryError", "RuntimeError"],
)
def test_a_load_out_of_device_memory_is_retryable_once_its_memory_is_freed(
    random_ckpt: Path, monkeypatch, kind: type[RuntimeError], text: str
) -> None:
    """Another process held the GPU when the model loaded: the error says so and is retryable (the service
    tries again later, no setting changed), and the failed load's model is gone before the device's cached
    memory is given back (else the cache keeps it from the other process and the next try)."""
    import weakref

    from refact_lsp.engine import loading

    built: list[weakref.ref] = []
    real = loading.load_weights

    def load_weights(folder, config, *, device, dtype, allow_pickle=False):
        model = real(folder, config, device=torch.device("cpu"), dtype=dtype, allow_pickle=allow_pickle)
        built.append(weakref.ref(model))
        raise kind(text)  # its last tensor did not fit

    emptied: list[bool] = []  # whether the failed load's model was gone then
    monkeypatch.setattr(loading, "load_weights", load_weights)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(built[0]() is None))
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec(str(random_ckpt), device="cuda", dtype="float32"))
    assert info.value.retryable
    message = str(info.value)
    assert message.startswith("ran out of memory loading the model on cuda; free GPU memory"), message
    assert f"{kind.__name__}: {text.splitlines()[0]}" in message and "\n" not in message
    assert emptied == [True]

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(loading, "load_weights", broken)
    with pytest.raises(ModelLoadError, match="cannot load .* on cuda: boom") as info:
        load_model(ModelSpec(str(random_ckpt), device="cuda", dtype="float32"))
    assert not info.value.retryable  # any other error


def test_auto_dtype_asks_the_requested_gpu_about_bf16_not_the_current_one(monkeypatch) -> None:
    """``torch.cuda.is_bf16_supported()`` answers for the current GPU: with mixed GPUs, ``cuda:1`` (no bf16)
    got bf16 because ``cuda:0`` (the current one) has it. Here torch's own check runs against two fake GPUs:
    0 an Ampere (bf16), 1 a Volta that cannot make a bf16 tensor; the current device is switched back."""
    from types import SimpleNamespace

    current = [0]

    def exchange(index: int) -> int:  # what torch.cuda.device does on entering and leaving
        previous = current[0]
        if index >= 0:
            current[0] = index
        return previous

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "_exchange_device", exchange)
    monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", exchange)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(major=(8, 7)[i]))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda i: i == 0)
    monkeypatch.setattr(torch.version, "hip", None)
    assert resolve_dtype("auto", torch.device("cuda:1")) == torch.float16
    assert resolve_dtype("auto", torch.device("cuda:0")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16  # no index: the current one
    assert current == [0]
    current[0] = 1
    assert resolve_dtype("auto", torch.device("cuda:0")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert current == [1]


def test_auto_dtype_is_float16_where_bf16_is_only_emulated(monkeypatch) -> None:
    """A T4 or V100 makes bf16 tensors (torch's ``is_bf16_supported()`` says yes) but has no bf16 tensor
    cores, only fp16 ones: ``auto`` takes fp16 there, bf16 from Ampere on."""
    from types import SimpleNamespace

    major = [7]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "_exchange_device", lambda index: 0)
    monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", lambda index: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(major=major[0]))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda i: True)  # emulation works
    monkeypatch.setattr(torch.version, "hip", None)
    assert torch.cuda.is_bf16_supported()  # torch's default answer counts the emulation
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16  # asked for: given
    major[0] = 8
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_a_cuda_index_beyond_the_devices_is_named_before_anything_is_loaded(monkeypatch, tmp_path) -> None:
    """``cuda:7`` on a machine with one GPU: an error that says so, before the download and the load (which
    failed with torch's "CUDA error: invalid device ordinal" and its debugging hints, after both)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        ModelLoadError, match=r"'cuda:7' requested but only 1 CUDA device is visible \(cuda:0\)"
    ):
        resolve_device("cuda:7")
    with pytest.raises(ModelLoadError, match="'cuda:1'"):
        load_model(ModelSpec(str(tmp_path / "missing"), device="cuda:1"))
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")


def test_download_progress_is_forwarded() -> None:
    events = []
    bar = _progress_tqdm(events.append, expected_bytes=4_000_000)(total=4_000_000, unit="B")
    bar.update(1_000_000)
    bar.update(1)  # same percentage: not repeated
    bar.update(2_999_999)
    bar.close()
    assert [(e.stage, e.percentage) for e in events] == [("download", 25), ("download", 99)]  # 100 at the end
    assert events[0].message == "downloading: 1/4 MB"
    unknown = []  # the hub did not list the sizes: megabytes only
    bar = _progress_tqdm(unknown.append)(total=0, unit="B")
    bar.update(250_000_000)
    assert [(e.message, e.percentage) for e in unknown] == [("downloading: 250 MB", None)]


def test_download_progress_only_goes_up_over_huggingface_hubs_three_bars() -> None:
    """huggingface_hub 2.x: bytes written (its total grows as files start), network bytes and a file
    count, updated from parallel downloads. One rising percentage of the expected bytes comes out."""
    events = []
    bars = _progress_tqdm(events.append, expected_bytes=3_202_001_000)
    written = bars(name="huggingface_hub.snapshot_download", total=0, unit="B", desc="Reconstructing")
    network = bars(name="huggingface_hub.snapshot_download.transfer", total=0, unit="B")
    files = bars(total=3, desc="Fetching 3 files")
    written.total, network.total = 1_000, 1_000  # the small file starts first and finishes at once
    written.update(1_000)
    network.update(950)
    files.update(1)
    written.total += 3_202_000_000
    for _ in range(100):
        written.update(32_020_000)
        network.update(30_000_000)
    files.update(2)
    percentages = [e.percentage for e in events]
    assert percentages == sorted(set(percentages)) and percentages[-1] == 99
    assert percentages[0] == 0 and len(percentages) == 100  # 0 after the small file, then 1 .. 99


class _HttpHub:
    """The Hugging Face hub's HTTP API as snapshot_download 2.x uses it (repo info, file tree, resolve),
    served from memory on 127.0.0.1; files are sent in 64 KB chunks, ``delay_s`` apart. ``requests``: what
    was asked; ``sent``: bytes sent of each file; ``ended``: files whose response ended (sent or given up)."""

    CHUNK = 64 * 1024

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        self.sent: dict[str, int] = {}
        self.ended: set[str] = set()
        self.delay_s = 0.0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def sha(repo_id: str) -> str:
        import hashlib

        return hashlib.sha1(repo_id.encode()).hexdigest()

    def add(self, repo_id: str, folder: Path, names: tuple[str, ...] | None = None) -> None:
        names = names or ("config.json", "tokenizer.json", "model.safetensors")
        self.repos[repo_id] = {name: (folder / name).read_bytes() for name in names}

    def _answer(self, handler, body: bool) -> None:
        import hashlib
        import time
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(handler.path).path).strip("/")
        self.requests.append(f"{handler.command} /{path}")
        api = path.startswith("api/models/")
        parts = path.removeprefix("api/models/").split("/")
        repo_id, rest = "/".join(parts[:2]), parts[2:]
        files = self.repos.get(repo_id)
        if files is None:
            return self._send(
                handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}
            )
        if api and rest[:1] in ([], ["revision"]):
            siblings = [{"rfilename": name, "size": len(data)} for name, data in files.items()]
            info = {"id": repo_id, "sha": self.sha(repo_id), "siblings": siblings}
            return self._send(handler, 200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        if api and rest[:1] == ["tree"]:
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in files.items()
            ]
            return self._send(handler, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
        name = "/".join(rest[2:])
        if api or rest[:1] != ["resolve"] or name not in files:
            return self._send(handler, 404, b"{}", {"X-Error-Code": "EntryNotFound"})
        data = files[name]
        headers = {"X-Repo-Commit": self.sha(repo_id), "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        self._send(handler, 200, data, headers, body=body)
        if not body:
            return
        try:
            for start in range(0, len(data), self.CHUNK):
                time.sleep(self.delay_s)
                handler.wfile.write(data[start : start + self.CHUNK])
                self.sent[name] = self.sent.get(name, 0) + min(self.CHUNK, len(data) - start)
        except OSError:  # the client gave up
            handler.close_connection = True
        finally:
            self.ended.add(name)

    @staticmethod
    def _send(handler, status: int, data: bytes, headers: dict[str, str], body: bool | None = None) -> None:
        """The status and headers; the body too unless ``body`` is given (then the caller sends it)."""
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body is None and handler.command != "HEAD":
            handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """huggingface_hub's real download code against :class:`_HttpHub`, with a cache of its own (online:
    ``monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)`` takes it offline)."""
    from huggingface_hub import constants

    hub = _HttpHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.close()


@pytest.mark.parametrize("source", ["./models/refact", "models/refact/v2", "../refact", "~/no/such/refact"])
def test_a_missing_folder_that_is_no_hub_id_names_where_it_was_looked_for(
    source: str, http_hub: _HttpHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a hub id (huggingface_hub's own rule): a folder, looked for in the server's working directory."""
    import os

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec(source, device="cpu"))
    assert not info.value.retryable
    assert os.path.abspath(Path(source).expanduser()) in str(info.value)
    if not source.startswith("~"):
        assert f"working directory, {tmp_path}" in str(info.value)
    assert http_hub.requests == []  # not asked


def test_a_hub_id_without_such_a_folder_goes_to_the_hub(
    http_hub: _HttpHub, random_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``owner/name`` is a hub id unless that folder exists; one the hub does not know either names both."""
    monkeypatch.chdir(tmp_path)
    http_hub.add("smallcloudai/Refact-1_6B-fim", random_ckpt)
    loaded = load_model(ModelSpec("smallcloudai/Refact-1_6B-fim", device="cpu"))
    assert loaded.source_dir.parent.name == "snapshots"
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec("models/refact", device="cpu"))
    assert "RepositoryNotFoundError" in str(info.value)
    assert f"no folder {tmp_path / 'models' / 'refact'}" in str(info.value)
    assert f"working directory, {tmp_path}" in str(info.value)
    shutil.copytree(random_ckpt, tmp_path / "models" / "refact")
    assert load_model(ModelSpec("models/refact", device="cpu")).source_dir == Path("models/refact")


def _partial_snapshot(random_ckpt: Path, repo_id: str, sha: str) -> Path:
    """A hub cache entry from an interrupted download: config.json and tokenizer.json, no weights, no file
    listing (as an older huggingface_hub, or another tool, leaves it)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(random_ckpt / name, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return snapshot


def test_a_cached_snapshot_without_its_weights_is_downloaded_again(
    http_hub: _HttpHub, random_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    http_hub.add("owner/model", random_ckpt)
    snapshot = _partial_snapshot(random_ckpt, "owner/model", http_hub.sha("owner/model"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors") as info:
        load_model(ModelSpec("owner/model", device="cpu"))
    assert info.value.retryable  # the next try downloads it
    assert str(snapshot) in str(info.value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    loaded = load_model(ModelSpec("owner/model", device="cpu"))
    assert loaded.source_dir == snapshot
    assert [r for r in http_hub.requests if r.startswith("GET /owner")] == [
        f"GET /owner/model/resolve/{http_hub.sha('owner/model')}/model.safetensors"
    ]


def test_a_cached_repo_with_both_weight_kinds_loads_offline_with_allow_pickle(
    http_hub: _HttpHub, random_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the safetensors were downloaded: offline (no listing from the hub) they are what is looked for."""
    from huggingface_hub import constants

    both = Path(shutil.copytree(random_ckpt, tmp_path / "both"))
    torch.save(load_file(str(both / "model.safetensors")), both / "pytorch_model.bin")
    http_hub.add(
        "owner/both", both, ("config.json", "tokenizer.json", "model.safetensors", "pytorch_model.bin")
    )
    online = load_model(ModelSpec("owner/both", device="cpu", allow_pickle=True))
    assert sorted(p.name for p in online.source_dir.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = load_model(ModelSpec("owner/both", device="cpu", allow_pickle=True))
    assert offline.source_dir == online.source_dir
    torch.testing.assert_close(offline.model.lm_head.weight, online.model.lm_head.weight)


def test_a_superseded_download_stops_at_its_next_chunk(
    http_hub: _HttpHub, random_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model setting changed during a download: the load gives up at once (no error for the user: the
    newer load reports), and the download stops at the next chunk it receives."""
    import threading
    import time

    from huggingface_hub import constants

    from refact_lsp.engine.loading import LoadSuperseded

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", _HttpHub.CHUNK)  # 10 MB: more than the whole file
    http_hub.add("owner/slow", random_ckpt)
    size = len(http_hub.repos["owner/slow"]["model.safetensors"])
    http_hub.delay_s = 0.02  # about 8 s for the weights
    superseded = threading.Event()
    given_up = []

    def progress(event) -> None:
        if http_hub.sent.get("model.safetensors") and not superseded.is_set():  # the weights are coming
            superseded.set()
            given_up.append(time.monotonic())

    with pytest.raises(LoadSuperseded):
        load_model(ModelSpec("owner/slow", device="cpu", superseded=superseded.is_set), progress)
    assert time.monotonic() - given_up[0] < 1.0
    deadline = time.monotonic() + 2.0
    while "model.safetensors" not in http_hub.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "model.safetensors" in http_hub.ended and http_hub.sent["model.safetensors"] < size / 2
    http_hub.delay_s = 0.0
    assert load_model(ModelSpec("owner/slow", device="cpu")).source_dir.parent.name == "snapshots"


def test_a_superseded_download_that_ignores_its_progress_bar_is_left_behind(
    fake_hub: dict[str, list[str]], random_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hf_xet logs and ignores what its progress callbacks raise: the load gives up all the same, at once,
    and the download left to finish in the background reports nothing more."""
    import contextlib
    import threading
    import time

    import huggingface_hub

    from refact_lsp.engine.loading import LoadSuperseded

    superseded, finished = threading.Event(), threading.Event()
    given_up: list[float] = []

    def snapshot_download(repo_id: str, tqdm_class=None, **kwargs) -> str:
        size = (random_ckpt / "model.safetensors").stat().st_size
        bar = tqdm_class(name="huggingface_hub.snapshot_download", total=size, unit="B")
        for step in range(50):
            if step == 5:
                superseded.set()  # the model setting changes
                given_up.append(time.monotonic())
            with contextlib.suppress(Exception):  # as hf_xet does (it logs it)
                bar.update(size // 50)
            time.sleep(0.02)
        finished.set()
        return str(random_ckpt)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    events: list[tuple[float, str, int | None]] = []
    spec = ModelSpec("owner/both", device="cpu", superseded=superseded.is_set)
    with pytest.raises(LoadSuperseded):
        load_model(spec, lambda e: events.append((time.monotonic(), e.message, e.percentage)))
    assert time.monotonic() - given_up[0] < 0.5 and not finished.is_set()
    assert finished.wait(5.0)
    time.sleep(0.05)
    assert events and all(at < given_up[0] for at, *_ in events)


def test_an_older_huggingface_hub_without_cached_repo_trees_still_downloads(monkeypatch, tmp_path) -> None:
    """``get_cached_repo_tree`` came with huggingface_hub 1.23 (pyproject allows older): without it there is
    no offline listing, and the download goes on (here: offline, nothing cached, a retryable error)."""
    import huggingface_hub

    real = huggingface_hub.__getattr__

    def without_it(name: str):
        if name == "get_cached_repo_tree":
            raise AttributeError(name)
        return real(name)

    if "get_cached_repo_tree" in vars(huggingface_hub):
        monkeypatch.delattr(huggingface_hub, "get_cached_repo_tree")
    monkeypatch.setattr(huggingface_hub, "__getattr__", without_it)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    from refact_lsp.engine import loading

    assert loading._repo_files("someone/some-model", None) is None
    with pytest.raises(ModelLoadError) as info:
        ModelRunner().load(ModelSpec("someone/some-model", device="cpu", superseded=lambda: False))
    assert info.value.retryable and "get_cached_repo_tree" not in str(info.value)
