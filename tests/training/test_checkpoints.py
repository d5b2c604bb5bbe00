"""Resume checkpoints: loading them never runs code, they only resume the run they belong to, and a failed
write (a full disk) says so and leaves the previous checkpoint intact."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bgm_model import BridgeModel
from bgm_model.errors import CheckpointError
from bgm_model.training.checkpoints import load_state_file, rng_state, set_rng_state
from bgm_model.training.rl_config import RLConfig
from bgm_model.training.rl_trainer import RLTrainer
from bgm_model.training.sl_config import SLConfig
from bgm_model.training.sl_trainer import SLTrainer
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids


class _RunsCode:
    """A pickle payload: unpickling it calls ``os.system`` (what an attacker drops into a checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (f"touch {self.marker}",))


def _sl_config(out: Path, **overrides) -> SLConfig:
    return SLConfig(**{"output_dir": str(out), "num_epochs": 1, "batch_size": 2, "dev_fraction": 0.0,
                       "learning_rate": 1e-3, **overrides})  # fmt: skip


def _records(tiny_silver_records, n: int = 6, seed: int = 9):
    return tiny_silver_records(make_toy_examples(n, n_passages=3, seed=seed), toy_optimal_ids)


# ------------------------------------------------------------------------------------------ no code execution
@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt", "rng_state_0.pt"])
def test_a_pickle_payload_in_a_checkpoint_never_runs_on_resume(victim, tiny_make_bridge, tmp_path):
    """Reproducer: a __reduce__ payload in OUT/checkpoint/<file> ran on `bgm train sl ... --output-dir OUT`."""
    from bgm_cli.main import main
    from bgm_model.training.silver import synthesize_to_file

    synthesize_to_file(make_toy_examples(4, n_passages=3, seed=2), ToyReader(), tmp_path / "silver.jsonl")
    tiny_make_bridge().save_pretrained(tmp_path / "init")
    argv = ["train", "sl", "--silver", str(tmp_path / "silver.jsonl"), "--init", str(tmp_path / "init"),
            "--reader", "toy", "--num-epochs", "1", "--batch-size", "2", "--dev-fraction", "0",
            "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    marker = tmp_path / "PWNED"
    torch.save({"state": {}, "payload": _RunsCode(marker)}, tmp_path / "out" / "checkpoint" / victim)

    assert main(argv) == 1, "resume must refuse the file with a clear error"
    assert not marker.exists(), "loading the checkpoint ran the payload"


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_state_file(tmp_path / "rng.pt"))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_rng_state_of_older_checkpoints_loads_with_only_numpy_arrays_allowed(tmp_path):
    """bgm-bridge <= 0.1.0 pickled numpy's state tuple (an ndarray): allow-listed, nothing else."""
    np.random.seed(5)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
               tmp_path / "old.pt")  # fmt: skip
    expected = float(np.random.rand())
    with pytest.raises(CheckpointError, match="refused"):
        load_state_file(tmp_path / "old.pt")  # not allowed by default
    np.random.seed(0)
    set_rng_state(load_state_file(tmp_path / "old.pt", numpy_arrays=True))
    assert float(np.random.rand()) == expected


def test_no_weights_only_false_or_trust_remote_code_true_in_the_package():
    root = Path(__file__).resolve().parents[2]
    hits = [
        f"{path.relative_to(root)}:{n}"
        for package in ("bgm_model", "bgm_integrations")
        for path in (root / package).rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "weights_only=False" in line or "trust_remote_code=True" in line
    ]
    assert hits == []


# ------------------------------------------------------------------------------------------ fingerprint
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"learning_rate": 5e-3}, "learning_rate: 0.001 in the checkpoint, 0.005 now"),
        ({"seed": 7}, "seed: 42 in the checkpoint, 7 now"),
        ({"records_seed": 10}, "the training data changed (6 records in the checkpoint, 6 now, same count"),
        ({"n_records": 8}, "the training data changed (6 records in the checkpoint, 8 now)"),
    ],
)
def test_resume_refuses_changed_data_or_settings_and_names_the_change(
    change, named, tiny_make_bridge, tiny_silver_records, tmp_path
):
    records = _records(tiny_silver_records)
    cfg = _sl_config(tmp_path, num_epochs=2, max_steps=2)
    SLTrainer(tiny_make_bridge(), cfg, records).train()

    settings = {k: v for k, v in change.items() if k in ("learning_rate", "seed")}
    changed = _records(tiny_silver_records, n=change.get("n_records", 6), seed=change.get("records_seed", 9))
    before = (tmp_path / "checkpoint" / "trainer_state.json").read_text()
    with pytest.raises(CheckpointError) as err:
        SLTrainer(tiny_make_bridge(), _sl_config(tmp_path, num_epochs=2, **settings), changed).train()
    assert named in str(err.value)
    assert "--no-resume" in str(err.value)
    assert (tmp_path / "checkpoint" / "trainer_state.json").read_text() == before, "checkpoint untouched"


def test_resume_may_change_where_and_how_often_it_writes(tiny_make_bridge, tiny_silver_records, tmp_path):
    records = _records(tiny_silver_records)
    SLTrainer(tiny_make_bridge(), _sl_config(tmp_path, num_epochs=2, max_steps=2), records).train()
    # logging_steps / save_steps / eval_batch_size do not change what is trained.
    again = _sl_config(tmp_path, num_epochs=2, max_steps=2, logging_steps=1, save_steps=1, eval_batch_size=3)
    assert SLTrainer(tiny_make_bridge(), again, records).train().global_step == 2


def test_rl_resume_refuses_another_reward(tiny_make_bridge, tmp_path):
    examples = make_toy_examples(4, n_passages=3, seed=4)
    cfg = RLConfig(output_dir=str(tmp_path), max_steps=1, batch_size=2, num_samples=2, dev_fraction=0.0,
                   reward="em")  # fmt: skip
    RLTrainer(tiny_make_bridge(), cfg, examples, reader=ToyReader()).train()
    other = RLConfig(**{**cfg.to_dict(), "reward": "f1", "max_steps": 2})
    with pytest.raises(CheckpointError, match="reward: 'em' in the checkpoint, 'f1' now"):
        RLTrainer(tiny_make_bridge(), other, examples, reader=ToyReader()).train()


# ------------------------------------------------------------------------------------------ disk full
def test_a_full_disk_during_a_checkpoint_names_the_file_and_keeps_the_previous_one(
    tiny_make_bridge, tiny_silver_records, tmp_path, monkeypatch
):
    records = _records(tiny_silver_records)
    SLTrainer(tiny_make_bridge(), _sl_config(tmp_path, num_epochs=1), records).train()
    checkpoint = tmp_path / "checkpoint"
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}

    real_save = torch.save

    def save_to_a_full_disk(obj, f, *args, **kwargs):
        # /dev/full fails every write with ENOSPC, as a full disk does.
        if getattr(f, "name", "").endswith("optimizer.pt"):
            with open("/dev/full", "wb") as full:
                return real_save(obj, full, *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    more = _sl_config(tmp_path, num_epochs=1, resume=False)
    with pytest.raises(OSError) as err:
        SLTrainer(tiny_make_bridge(), more, records).train()
    message = str(err.value)
    assert "the disk is full" in message and "optimizer.pt" in message
    assert f"the previous checkpoint {checkpoint} is intact" in message
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    assert not (tmp_path / "checkpoint.tmp").exists(), "the half-written checkpoint is removed"
    BridgeModel.from_pretrained(checkpoint)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 3
