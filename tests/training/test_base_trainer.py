"""The base of the training stages: each shared setting declared once, the stages' defaults as they were
before the base existed, and the loop parts every stage gets (config file, log set-aside, resume, keep-best,
final/) whatever its steps are."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest

from bgm_model import BridgeModel
from bgm_model.training.base_config import BaseTrainConfig
from bgm_model.training.base_trainer import BaseTrainer, TrainPlan, TrainRun
from bgm_model.training.examples import as_train_examples
from bgm_model.training.logs import JsonlLog
from bgm_model.training.rl_config import RLConfig
from bgm_model.training.sl_config import SLConfig
from bgm_model.training.toy import make_toy_examples

#: ``SLConfig().to_dict()`` and ``RLConfig().to_dict()`` before the shared base (bgm-bridge 0.1.0).
SL_DEFAULTS = {
    "output_dir": "bgm-sl", "learning_rate": 5e-05, "num_epochs": 3, "batch_size": 8,
    "gradient_accumulation_steps": 1, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 1.0,
    "loss_reduction": "sequence", "soft_target_weight": 0.0, "soft_target_temperature": 0.2,
    "soft_target_secondary_weight": 0.1, "freeze_encoder_layers": 0, "seed": 42, "dev_fraction": 0.1,
    "eval_metric": "em", "eval_batch_size": 16, "max_eval_examples": 0, "logging_steps": 10, "save_steps": 0,
    "max_steps": 0, "resume": True, "mixed_precision": "no",
}  # fmt: skip
RL_DEFAULTS = {
    "output_dir": "bgm-rl", "reward": "em", "learning_rate": 1e-05, "num_epochs": 1, "max_steps": 0,
    "batch_size": 8, "num_samples": 4, "temperature": 1.0, "ppo_epochs": 2, "mini_batch_size": 16,
    "clip_range": 0.2, "kl_coef": 0.05, "scale_rewards": False, "warmup_ratio": 0.0, "weight_decay": 0.0,
    "max_grad_norm": 1.0, "freeze_encoder_layers": 0, "seed": 42, "dev_fraction": 0.0, "eval_steps": 0,
    "eval_at_start": True, "eval_batch_size": 16, "max_eval_examples": 0, "logging_steps": 1,
    "save_steps": 50, "resume": True, "mixed_precision": "no",
}  # fmt: skip


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------------------------------------ configs
def test_stage_config_defaults_are_those_from_before_the_shared_base():
    assert SLConfig().to_dict() == SL_DEFAULTS
    assert RLConfig().to_dict() == RL_DEFAULTS


def test_every_setting_both_stages_have_is_declared_in_the_base():
    assert _names(SLConfig) & _names(RLConfig) == _names(BaseTrainConfig)


@pytest.mark.parametrize("cls", [SLConfig, RLConfig])
def test_a_stage_redeclares_a_shared_setting_only_to_change_its_default_or_help(cls):
    base = {f.name: f for f in dataclasses.fields(BaseTrainConfig)}
    mine = {f.name: f for f in dataclasses.fields(cls)}
    redeclared = set(vars(cls).get("__annotations__", {})) & set(base)
    assert redeclared, "the test must see the stage's own declarations"
    for name in redeclared:
        now, shared = mine[name], base[name]
        assert (now.default, now.metadata["help"]) != (shared.default, shared.metadata["help"]), name
    for name in set(base) - redeclared:
        assert mine[name] is base[name] or mine[name].metadata == base[name].metadata, name


def test_shared_checks_name_the_stage_config():
    with pytest.raises(ValueError, match=r"RLConfig\.warmup_ratio must be in \[0, 1\), got 1.0"):
        RLConfig(warmup_ratio=1.0)
    with pytest.raises(ValueError, match=r"SLConfig\.mixed_precision must be no/fp16/bf16"):
        SLConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match=r"RLConfig\.eval_batch_size must be > 0"):
        RLConfig(eval_batch_size=0)
    with pytest.raises(ValueError, match=r"SLConfig\.freeze_encoder_layers must be >= 0"):
        SLConfig(freeze_encoder_layers=-1)


def test_a_stage_config_round_trips_through_the_base_json(tmp_path):
    cfg = RLConfig(output_dir=str(tmp_path), learning_rate=3e-4, reward="f1", save_steps=0)
    assert RLConfig.from_json(cfg.to_json(tmp_path / "rl.json")) == cfg
    assert RLConfig.from_json(tmp_path / "rl.json") == cfg


# ------------------------------------------------------------------------------------------------ trainer
class _ScriptedStage(BaseTrainer[BaseTrainConfig, dict]):
    """A stage whose steps train nothing and whose dev rewards are scripted: what it shows is the base's."""

    stage = "toy"

    def __init__(self, bridge: BridgeModel, config: BaseTrainConfig, dev_rewards: list[float], callbacks=()):
        examples = as_train_examples(make_toy_examples(4, n_passages=3, seed=1), need_ids=False, what="train")
        dev = examples[:1]
        super().__init__(bridge, config, examples, dev, reader=None, reward=None, callbacks=callbacks)
        self.dev_rewards = list(dev_rewards)

    def evaluate(self, examples: Any = None) -> dict[str, float]:
        return {"reward": self.dev_rewards.pop(0)}

    def _plan(self) -> TrainPlan:
        return TrainPlan(total_steps=4, optimizer_steps=4, summary="toy: 4 steps")

    def _run(self, run: TrainRun) -> None:
        while run.state["global_step"] < run.total_steps:
            run.state["global_step"] += 1
            self._call_back({"step": run.state["global_step"]})
            if run.state["global_step"] % 2 == 0:
                self._evaluate_and_keep_best(run)
                self._checkpoint_now(run)

    def _selection_key(self, metrics: dict[str, float]) -> tuple[float]:
        return (metrics["reward"],)

    def _result(self, state: dict[str, Any]) -> dict:
        return dict(state)


def test_the_base_writes_the_config_keeps_the_best_and_saves_final(tiny_make_bridge, tmp_path):
    state = _ScriptedStage(tiny_make_bridge(), BaseTrainConfig(output_dir=str(tmp_path)), [0.7, 0.3]).train()

    assert BaseTrainConfig.from_json(tmp_path / "toy_config.json").output_dir == str(tmp_path)
    assert (state["global_step"], state["best_metric"], state["best_step"]) == (4, 0.7, 2)
    assert [e["dev_reward"] for e in state["evaluations"]] == [0.7, 0.3]
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["event"], r["step"]) for r in logged] == [("toy", "eval", 2), ("toy", "eval", 4)]
    for name in ("best", "final", "checkpoint"):
        BridgeModel.from_pretrained(tmp_path / name)


def test_the_base_resumes_from_the_checkpoint_and_a_fresh_start_sets_the_old_log_aside(
    tiny_make_bridge, tmp_path, caplog
):
    config = BaseTrainConfig(output_dir=str(tmp_path))

    def crash_at_3(record: dict[str, Any]) -> None:
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _ScriptedStage(tiny_make_bridge(), config, [0.2], callbacks=[crash_at_3]).train()
    with caplog.at_level(logging.INFO):
        state = _ScriptedStage(tiny_make_bridge(), config, [0.5]).train()
    assert "Resuming TOY from" in caplog.text and "(step 2)" in caplog.text
    assert [e["dev_reward"] for e in state["evaluations"]] == [0.2, 0.5], "each step evaluated once"
    assert (state["best_metric"], state["best_step"]) == (0.5, 4)

    fresh = dataclasses.replace(config, resume=False)
    again = _ScriptedStage(tiny_make_bridge(), fresh, [0.1, 0.1]).train()
    assert [e["dev_reward"] for e in again["evaluations"]] == [0.1, 0.1], "a fresh start keeps nothing"
    assert len((tmp_path / "log.1.jsonl").read_text().splitlines()) == 2, "the earlier run's log is kept"


def test_a_checkpoint_that_kept_only_the_best_metric_still_guards_best(tiny_make_bridge, tmp_path):
    """RL checkpoints written before the base stored ``best_metric`` without a ``best_key``."""
    trainer = _ScriptedStage(tiny_make_bridge(), BaseTrainConfig(output_dir=str(tmp_path)), [0.4, 0.6])
    state = {"global_step": 6, "best_metric": 0.5, "best_step": 2, "evaluations": [], "best_key": None}
    log = JsonlLog(tmp_path / "log.jsonl", True)
    run = TrainRun(None, None, None, state, log, None, total_steps=8)  # type: ignore[arg-type]

    trainer._evaluate_and_keep_best(run)
    assert (state["best_metric"], state["best_step"]) == (0.5, 2) and not (tmp_path / "best").exists()
    state["global_step"] = 8
    trainer._evaluate_and_keep_best(run)
    assert (state["best_metric"], state["best_step"], state["best_key"]) == (0.6, 8, [0.6])
    assert (tmp_path / "best").is_dir()


def test_sl_then_rl_leave_both_stages_on_the_model_card(tiny_make_bridge, tiny_silver_records, tmp_path):
    from bgm_model import BridgeModel
    from bgm_model.training.rl_config import RLConfig
    from bgm_model.training.rl_trainer import RLTrainer
    from bgm_model.training.sl_config import SLConfig
    from bgm_model.training.sl_trainer import SLTrainer
    from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids

    examples = make_toy_examples(6, n_passages=3, seed=3)
    SLTrainer(tiny_make_bridge(), SLConfig(output_dir=str(tmp_path / "sl"), num_epochs=1, batch_size=2,
                                          dev_fraction=0.34), tiny_silver_records(examples, toy_optimal_ids),
              reader=ToyReader()).train()  # fmt: skip
    sl = BridgeModel.from_pretrained(tmp_path / "sl" / "final")
    RLTrainer(sl, RLConfig(output_dir=str(tmp_path / "rl"), max_steps=1, batch_size=2, num_samples=2,
                           dev_fraction=0.0), examples, reader=ToyReader()).train()  # fmt: skip
    card = (tmp_path / "rl" / "final" / "README.md").read_text()
    assert "### sl (" in card and "### rl (" in card
    assert "train_examples=4" in card and "dev_examples=2" in card, "SL's split is recorded"
    assert "| epoch | step | dev_reward | dev_seq_acc |" in card, "the dev evaluations are a table"
    assert [r.stage for r in BridgeModel.from_pretrained(tmp_path / "rl" / "final").model_card_data.training] == ["sl", "rl"]
