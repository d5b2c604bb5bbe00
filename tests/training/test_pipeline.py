"""``train_bridge``: SPS -> SL -> RL in one call, and reuse of bridges trained with the same recipe."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
import torch

from bgm_model import BridgeConfig, BridgeModel
from bgm_model.training.pipeline import BridgeRecipe, replace_config, train_bridge, warm_start_bridge
from bgm_model.training.rl_config import RLConfig
from bgm_model.training.silver import SilverConfig, read_silver
from bgm_model.training.sl_config import SLConfig
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids

RECIPE = BridgeRecipe.from_dict({
    "reward": "em",
    "silver": {"max_length": 2, "top_m": None},
    "sl": {"num_epochs": 2, "batch_size": 4, "freeze_encoder_layers": 1},
    "rl": {"max_steps": 1, "num_samples": 2, "batch_size": 2, "freeze_encoder_layers": 1},
})


def test_recipe_defaults_are_the_demo_settings() -> None:
    """The stage configs a default recipe trains with (the numbers ``bgm demo`` has always used)."""
    recipe = BridgeRecipe()
    assert (recipe.reward, recipe.validation_fraction, recipe.seed) == ("contains+0.5*f1", 0.0, 0)
    assert recipe.silver == SilverConfig(max_length=2, top_m=4, secondary_extends=False)
    assert recipe.bridge_config(10) == BridgeConfig(max_passages=16, max_passage_tokens=96, relevance_prior=0.0,
                                                    max_output_length=4)
    assert recipe.sl_config("out/sl") == SLConfig(
        output_dir="out/sl", num_epochs=8, learning_rate=1e-4, batch_size=8, soft_target_weight=0.0,
        freeze_encoder_layers=4, dev_fraction=0.0, resume=False, seed=0)
    assert recipe.rl_config("out/rl") == RLConfig(
        output_dir="out/rl", max_steps=4, num_samples=4, batch_size=6, learning_rate=1e-5, eval_steps=0,
        freeze_encoder_layers=4, dev_fraction=0.0, resume=False, seed=0, reward="contains+0.5*f1")
    # the warm start has room for every candidate and the longest silver sequence
    longer = replace_config(recipe, {"silver": {"max_length": 6}})
    assert (longer.bridge_config(20).max_passages, longer.bridge_config().max_output_length) == (20, 7)


def test_recipe_round_trips_through_json_and_fills_gaps_with_defaults(caplog: pytest.LogCaptureFixture) -> None:
    recipe = replace_config(RECIPE, {"bridge": {"relevance_prior": 20.0}, "validation_fraction": 0.2})
    text = recipe.to_json()
    assert json.loads(text)["sl"]["num_epochs"] == 2 and text == json.dumps(recipe.to_dict(), indent=2, sort_keys=True)
    assert BridgeRecipe.from_json(text) == recipe
    partial = BridgeRecipe.from_dict({"sl": {"num_epochs": 3}, "from_the_future": 1})
    assert partial.sl.num_epochs == 3 and partial.sl.learning_rate == BridgeRecipe().sl.learning_rate
    assert partial.rl == BridgeRecipe().rl
    assert "from_the_future" in caplog.text
    with pytest.raises(ValueError, match="num_samples"):
        BridgeRecipe.from_dict({"rl": {"num_samples": 1}})  # each stage validates itself


def test_train_bridge_writes_silver_and_both_bridges(tmp_path, tiny_make_bridge: Callable[..., BridgeModel]) -> None:
    examples = make_toy_examples(6, n_passages=4, seed=3)
    reader = ToyReader(supports_scoring=True, cache=False)
    # settings train_bridge never names reach the trainers as they are
    recipe = replace_config(RECIPE, {"sl": {"max_grad_norm": 0.5}, "rl": {"kl_coef": 0.1}, "seed": 3})

    trained = train_bridge(examples, reader, tmp_path, recipe, bridge=tiny_make_bridge())

    assert not trained.reused and trained.rl_dir is not None and trained.final_dir == trained.rl_dir
    silver = {s.id: s.ids for s in read_silver(trained.silver_path)}
    assert silver == {ex.id: toy_optimal_ids(ex) for ex in examples}  # greedy finds the toy optimum
    assert set(trained.seconds) == {"silver sequences", "SL", "RL"}
    for folder in (trained.sl_dir, trained.rl_dir):
        assert isinstance(BridgeModel.from_pretrained(folder), BridgeModel)
    stamp = json.loads((tmp_path / "recipe.json").read_text())
    assert stamp["recipe"]["reward"] == "em" and len(stamp["examples"]) == 6
    assert BridgeRecipe.from_dict(stamp["recipe"]) == recipe
    assert SLConfig.from_json(tmp_path / "sl" / "sl_config.json") == recipe.sl_config(tmp_path / "sl")
    assert RLConfig.from_json(tmp_path / "rl" / "rl_config.json") == recipe.rl_config(tmp_path / "rl")


def test_train_bridge_reuses_only_a_matching_recipe(tmp_path, caplog: pytest.LogCaptureFixture,
                                                    tiny_make_bridge: Callable[..., BridgeModel]) -> None:
    examples = make_toy_examples(4, n_passages=4, seed=5)
    reader = ToyReader(supports_scoring=True, cache=False)
    first = train_bridge(examples, reader, tmp_path, RECIPE, bridge=tiny_make_bridge())
    weights = first.sl_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns

    again = train_bridge(examples, reader, tmp_path, RECIPE, reuse=True, bridge=tiny_make_bridge())
    assert again.reused and weights.stat().st_mtime_ns == before and again.seconds.keys() == {"silver sequences"}
    assert again.reader_calls == 0  # silver sequences resumed from the file

    no_reuse = train_bridge(examples, reader, tmp_path, RECIPE, reuse=False, bridge=tiny_make_bridge())
    assert not no_reuse.reused

    # Only the RL settings changed: the SL bridge is reused (not retrained), RL runs again.
    sl_before = weights.stat().st_mtime_ns
    rl_changed = replace_config(RECIPE, {"rl": {"learning_rate": 3e-5}})
    sl_weights = _weights(BridgeModel.from_pretrained(first.sl_dir))
    fresh = tiny_make_bridge()
    assert not torch.equal(_weights(fresh), sl_weights)
    with caplog.at_level(logging.INFO, logger="bgm_model.training.pipeline"):
        rl_only = train_bridge(examples, reader, tmp_path, rl_changed, reuse=True, bridge=fresh)
    assert "reusing the SL bridge" in caplog.text
    assert (tmp_path / "rl" / "log.1.jsonl").exists()  # the earlier RL run's curve is kept apart
    assert not rl_only.reused and weights.stat().st_mtime_ns == sl_before and "RL" in rl_only.seconds
    assert torch.equal(_weights(BridgeModel.from_pretrained(rl_only.sl_dir)), sl_weights)

    changed = replace_config(RECIPE, {"rl": {"max_steps": 0}})
    retrained = train_bridge(examples, reader, tmp_path, changed, reuse=True, bridge=tiny_make_bridge())
    assert not retrained.reused and retrained.rl_dir is None and retrained.final_dir == retrained.sl_dir
    assert train_bridge(examples, reader, tmp_path, changed, reuse=True, bridge=tiny_make_bridge()).reused

    # An SL setting changed: SL is trained again.
    sl_changed = replace_config(RECIPE, {"sl": {"num_epochs": 1}})
    train_bridge(examples, reader, tmp_path, sl_changed, reuse=True, bridge=tiny_make_bridge())
    assert weights.stat().st_mtime_ns != sl_before


def _weights(model: BridgeModel) -> torch.Tensor:
    return torch.cat([t.flatten().float() for t in model.state_dict().values()])


def test_the_default_bridge_starts_the_same_whatever_ran_before() -> None:
    first = _weights(warm_start_bridge(RECIPE))
    torch.rand(1000)  # e.g. a retriever or sampler drew random numbers before training started
    assert torch.equal(_weights(warm_start_bridge(RECIPE)), first)
    assert not torch.equal(_weights(warm_start_bridge(replace_config(RECIPE, {"seed": 1}))), first)


def test_validation_questions_choose_the_rl_step(tmp_path, tiny_make_bridge: Callable[..., BridgeModel]) -> None:
    """Held-out questions get no silver sequence and no RL rollouts; ``bridge/`` is the RL step (SL start
    included) with the best validation reward, and a reuse reports the same choice."""
    examples = make_toy_examples(10, n_passages=4, seed=7)
    reader = ToyReader(supports_scoring=True, cache=False)
    recipe = replace_config(RECIPE, {"validation_fraction": 0.3, "rl": {"max_steps": 4, "eval_steps": 2}})

    model = tiny_make_bridge()
    trained = train_bridge(examples, reader, tmp_path, recipe, bridge=model)
    assert torch.equal(_weights(model), _weights(BridgeModel.from_pretrained(trained.rl_dir)))  # in place

    held_out = set(json.loads((tmp_path / "recipe.json").read_text())["validation"])
    assert trained.validation_questions == len(held_out) == 3
    assert held_out.isdisjoint(s.id for s in read_silver(trained.silver_path))
    selection = trained.rl_selection
    assert selection is not None and json.loads((tmp_path / "rl_selection.json").read_text()) == selection
    rewards = {int(step): r for step, r in selection["validation_reward"].items()}
    assert sorted(rewards) == [0, 2, 4]
    best = max(rewards.values())
    assert selection["kept_step"] == min(step for step, r in rewards.items() if r == best)  # first of ties
    assert torch.equal(_weights(BridgeModel.from_pretrained(trained.rl_dir)),
                       _weights(BridgeModel.from_pretrained(tmp_path / "rl" / "best")))
    if selection["kept_step"] == 0:
        assert torch.equal(_weights(BridgeModel.from_pretrained(trained.rl_dir)),
                           _weights(BridgeModel.from_pretrained(trained.sl_dir)))

    # SL chose its epoch on the same questions; RL started from that epoch's bridge.
    sl_selection = trained.sl_selection
    assert sl_selection is not None and json.loads((tmp_path / "sl_selection.json").read_text()) == sl_selection
    epoch_rewards = {int(e): r for e, r in sl_selection["validation_reward"].items()}
    assert sorted(epoch_rewards) == [1, 2] and sl_selection["validation_questions"] == 3
    top = max(epoch_rewards.values())
    assert sl_selection["kept_epoch"] == min(e for e, r in epoch_rewards.items() if r == top)
    assert torch.equal(_weights(BridgeModel.from_pretrained(trained.sl_dir)),
                       _weights(BridgeModel.from_pretrained(tmp_path / "sl" / "best")))
    assert selection["validation_reward"]["0"] == pytest.approx(top)  # RL's start is the kept SL bridge

    again = train_bridge(examples, reader, tmp_path, recipe, reuse=True, bridge=tiny_make_bridge())
    assert again.reused and again.rl_selection == selection and again.validation_questions == 3
    assert again.sl_selection == sl_selection


def test_validation_chooses_the_sl_epoch_without_rl(tmp_path, tiny_make_bridge: Callable[..., BridgeModel]) -> None:
    examples = make_toy_examples(10, n_passages=4, seed=8)
    reader = ToyReader(supports_scoring=True, cache=False)
    recipe = replace_config(RECIPE, {"validation_fraction": 0.3, "rl": {"max_steps": 0}, "sl": {"num_epochs": 3}})
    trained = train_bridge(examples, reader, tmp_path, recipe, bridge=tiny_make_bridge())
    assert trained.rl_dir is None and trained.rl_selection is None
    assert trained.validation_questions == 3 and len(read_silver(trained.silver_path)) == 7
    assert trained.sl_selection is not None and sorted(trained.sl_selection["validation_reward"]) == ["1", "2", "3"]
    kept = trained.sl_selection["kept_epoch"]
    log = [json.loads(line) for line in (tmp_path / "sl" / "log.jsonl").read_text().splitlines()]
    evals = {r["epoch"]: r["dev_reward"] for r in log if r.get("event") == "eval"}
    assert evals[kept] == max(evals.values()) and all(evals[e] < evals[kept] for e in evals if e < kept)
    again = train_bridge(examples, reader, tmp_path, recipe, reuse=True, bridge=tiny_make_bridge())
    assert again.reused and again.sl_selection == trained.sl_selection


def test_validation_fraction_out_of_range_is_rejected(tmp_path) -> None:
    recipe = replace_config(RECIPE, {"validation_fraction": 1.0})
    with pytest.raises(ValueError, match="validation_fraction"):
        train_bridge(make_toy_examples(2), ToyReader(), tmp_path, recipe)


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_resume_checkpoints_are_removed_after_training_unless_kept(
        tmp_path, keep: bool, tiny_make_bridge: Callable[..., BridgeModel]) -> None:
    """The stages of train_bridge never resume, so their ~3x-bridge-sized ``checkpoint/`` folders go once
    each stage ended; the bridges (``final/``, ``bridge_sl/``, ``bridge/``) stay."""
    examples = make_toy_examples(4, n_passages=3, seed=9)
    trained = train_bridge(examples, ToyReader(cache=False), tmp_path, RECIPE, bridge=tiny_make_bridge(),
                           keep_checkpoints=keep)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("checkpoint*") if p.is_dir())
    assert left == (["rl/checkpoint", "sl/checkpoint"] if keep else [])
    for folder in (trained.sl_dir, trained.final_dir, tmp_path / "sl" / "final", tmp_path / "rl" / "final"):
        assert (folder / "config.json").exists(), folder
