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


def test_runner_reports_load_errors(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    runner = ModelRunner()
    with pytest.raises(ModelLoadError):
        runner.load(ModelSpec(str(ckpt), device="cpu"))
    assert runner.state == "error" and "no model weights" in runner.error


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
