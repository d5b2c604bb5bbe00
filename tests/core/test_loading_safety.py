"""Loading a bridge never runs code from its folder, and a damaged bridge never loads silently.

Each test keeps the reproducer of the attack or damage it guards against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bgm_model import BridgeConfig, BridgeLoadError, BridgeModel
from tests._helpers import make_tiny_bridge

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "bridge"
    make_tiny_bridge().save_pretrained(path)
    return path


def _edit_weights(path: Path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _edit_config(path: Path, edit) -> None:
    data = json.loads((path / "config.json").read_text())
    edit(data)
    (path / "config.json").write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------ code execution
def test_custom_code_in_a_tampered_bridge_never_runs_even_if_stdin_says_yes(saved: Path, tmp_path: Path):
    """Reproducer: model_type "evil-model" + auto_map + evil.py; transformers asked [y/N] and `echo y |` ran it."""
    marker = tmp_path / "PWNED"

    def tamper(cfg):
        cfg["model_type"] = "evil-model"
        cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSeq2SeqLM": "evil.EvilModel"}

    _edit_config(saved, tamper)
    (saved / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil-model'\n"
    )
    script = (
        "from bgm_model import BridgeModel, BridgeLoadError\n"
        f"try:\n    BridgeModel.from_pretrained({str(saved)!r})\n"
        "except BridgeLoadError as e:\n    print('REFUSED', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], input="y\n", capture_output=True, text=True, env=env,
                         timeout=120, cwd=ROOT)  # fmt: skip
    assert not marker.exists(), "evil.py ran"
    assert "REFUSED" in run.stdout and "auto_map" in run.stdout, run.stdout + run.stderr
    assert "[y/N]" not in run.stdout + run.stderr, "transformers must never even ask"


def test_auto_map_in_a_known_model_type_is_refused_too(saved: Path):
    _edit_config(saved, lambda cfg: cfg.update(auto_map={"AutoModelForSeq2SeqLM": "evil.EvilModel"}))
    with pytest.raises(BridgeLoadError, match="never runs code"):
        BridgeModel.from_pretrained(saved)


def test_auto_map_in_the_tokenizer_config_is_refused(saved: Path):
    data = json.loads((saved / "tokenizer_config.json").read_text())
    data["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (saved / "tokenizer_config.json").write_text(json.dumps(data))
    with pytest.raises(BridgeLoadError, match="tokenizer_config.json"):
        BridgeModel.from_pretrained(saved)


def test_a_sharded_index_pointing_at_a_pickle_file_is_refused_before_torch_load(saved: Path, monkeypatch):
    """Reproducer: model.safetensors.index.json next to a .bin made transformers call torch.load on the .bin."""
    tensors = load_file(saved / "model.safetensors")
    (saved / "model.safetensors").unlink()
    torch.save(tensors, saved / "pytorch_model.bin")
    (saved / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "pytorch_model.bin" for k in tensors}})
    )
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(BridgeLoadError, match="safetensors only"):
        BridgeModel.from_pretrained(saved)
    assert calls == [], "torch.load was reached"


def test_an_index_naming_a_non_safetensors_file_is_refused(saved: Path):
    tensors = load_file(saved / "model.safetensors")
    (saved / "model.safetensors").rename(saved / "weights.data")
    (saved / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "weights.data" for k in tensors}})
    )
    with pytest.raises(BridgeLoadError, match="not safetensors"):
        BridgeModel.from_pretrained(saved)


def test_a_sharded_safetensors_bridge_still_loads(saved: Path):
    tensors = load_file(saved / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, saved / file, metadata={"format": "pt"})
    (saved / "model.safetensors").unlink()
    (saved / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}})
    )
    loaded = BridgeModel.from_pretrained(saved)
    reference = make_tiny_bridge()
    assert loaded.bridge("q", ["a", "b"]).ids == reference.bridge("q", ["a", "b"]).ids


# ------------------------------------------------------------------------------------------ damaged weights
def test_a_missing_tensor_is_an_error_naming_it_not_a_random_init(saved: Path):
    key = "decoder.bert.encoder.layer.0.attention.output.LayerNorm.bias"
    _edit_weights(saved, lambda t: t.pop(key))
    with pytest.raises(BridgeLoadError, match=f"missing tensors \\['{key}'\\]"):
        BridgeModel.from_pretrained(saved)


def test_an_unexpected_tensor_is_an_error_naming_it(saved: Path):
    _edit_weights(saved, lambda t: t.update({"extra.weight": torch.zeros(3)}))
    with pytest.raises(BridgeLoadError, match="unexpected tensors \\['extra.weight'\\]"):
        BridgeModel.from_pretrained(saved)


def test_a_wrong_shape_names_the_tensor_and_both_shapes(saved: Path):
    key = "encoder.embeddings.position_embeddings.weight"
    _edit_weights(saved, lambda t: t.update({key: torch.zeros(10, 32)}))
    with pytest.raises(BridgeLoadError, match=f"'{key}' has shape \\[10, 32\\] in the checkpoint, the model needs \\[256, 32\\]"):
        BridgeModel.from_pretrained(saved)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_safetensors_file_is_a_bridge_load_error(damage: str, saved: Path):
    file = saved / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"garbage" * 10, "empty": b""}[damage])
    with pytest.raises(BridgeLoadError, match="model.safetensors is not a complete safetensors file"):
        BridgeModel.from_pretrained(saved)


# ------------------------------------------------------------------------------------------ bad settings on load
@pytest.mark.parametrize(
    ("field", "value"),
    [("max_passages", "8"), ("max_passages", 2.5), ("max_repeats", True), ("pointer_scoring", 1),
     ("relevance_prior", "inf"), ("overflow", "drop")],  # fmt: skip
)
def test_invalid_bridge_settings_in_config_json_are_a_load_error(field: str, value, saved: Path):
    _edit_config(saved, lambda cfg: cfg["bgm_bridge"].update({field: value}))
    with pytest.raises(BridgeLoadError, match=f"settings are invalid: BridgeConfig.{field}"):
        BridgeModel.from_pretrained(saved)


def test_an_unreadable_config_json_is_a_load_error(saved: Path):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(BridgeLoadError, match="not readable JSON"):
        BridgeModel.from_pretrained(saved)


def test_overrides_on_load_are_validated(saved: Path):
    with pytest.raises(TypeError, match="max_repeats must be an int"):
        BridgeModel.from_pretrained(saved, max_repeats=True)
    assert BridgeModel.from_pretrained(saved, max_repeats=1).config == BridgeConfig(
        **{**make_tiny_bridge().config.to_dict(), "max_repeats": 1}
    )
