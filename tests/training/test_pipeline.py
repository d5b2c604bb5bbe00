"""``train_bridge``: SPS -> SL -> RL in one call, and reuse of bridges trained with the same recipe."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
import torch

from bgm_model import BridgeModel
from bgm_model.training.pipeline import BridgeRecipe, train_bridge, warm_start_bridge
from bgm_model.training.silver import read_silver
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids

RECIPE = BridgeRecipe(reward="em", silver_max_length=2, silver_top_m=None, sl_epochs=2, sl_batch_size=4,
                      rl_steps=1, rl_samples=2, rl_batch_size=2, freeze_encoder_layers=1)


def test_train_bridge_writes_silver_and_both_bridges(tmp_path, tiny_make_bridge: Callable[..., BridgeModel]) -> None:
    examples = make_toy_examples(6, n_passages=4, seed=3)
    reader = ToyReader(supports_scoring=True, cache=False)

    trained = train_bridge(examples, reader, tmp_path, RECIPE, bridge=tiny_make_bridge())

    assert not trained.reused and trained.rl_dir is not None and trained.final_dir == trained.rl_dir
    silver = {s.id: s.ids for s in read_silver(trained.silver_path)}
    assert silver == {ex.id: toy_optimal_ids(ex) for ex in examples}  # greedy finds the toy optimum
    assert set(trained.seconds) == {"silver sequences", "SL", "RL"}
    for folder in (trained.sl_dir, trained.rl_dir):
        assert isinstance(BridgeModel.from_pretrained(folder), BridgeModel)
    stamp = json.loads((tmp_path / "recipe.json").read_text())
    assert stamp["recipe"]["reward"] == "em" and len(stamp["examples"]) == 6


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
    rl_changed = BridgeRecipe(**{**RECIPE.__dict__, "rl_learning_rate": 3e-5})
    sl_weights = _weights(BridgeModel.from_pretrained(first.sl_dir))
    fresh = tiny_make_bridge()
    assert not torch.equal(_weights(fresh), sl_weights)
    with caplog.at_level(logging.INFO, logger="bgm_model.training.pipeline"):
        rl_only = train_bridge(examples, reader, tmp_path, rl_changed, reuse=True, bridge=fresh)
    assert "reusing the SL bridge" in caplog.text
    assert (tmp_path / "rl" / "log.1.jsonl").exists()  # the earlier RL run's curve is kept apart
    assert not rl_only.reused and weights.stat().st_mtime_ns == sl_before and "RL" in rl_only.seconds
    assert torch.equal(_weights(BridgeModel.from_pretrained(rl_only.sl_dir)), sl_weights)

    changed = BridgeRecipe(**{**RECIPE.__dict__, "rl_steps": 0})
    retrained = train_bridge(examples, reader, tmp_path, changed, reuse=True, bridge=tiny_make_bridge())
    assert not retrained.reused and retrained.rl_dir is None and retrained.final_dir == retrained.sl_dir
    assert train_bridge(examples, reader, tmp_path, changed, reuse=True, bridge=tiny_make_bridge()).reused

    # An SL setting changed: SL is trained again.
    sl_changed = BridgeRecipe(**{**RECIPE.__dict__, "sl_epochs": 1})
    train_bridge(examples, reader, tmp_path, sl_changed, reuse=True, bridge=tiny_make_bridge())
    assert weights.stat().st_mtime_ns != sl_before


def _weights(model: BridgeModel) -> torch.Tensor:
    return torch.cat([t.flatten().float() for t in model.state_dict().values()])


def test_the_default_bridge_starts_the_same_whatever_ran_before() -> None:
    first = _weights(warm_start_bridge(RECIPE))
    torch.rand(1000)  # e.g. a retriever or sampler drew random numbers before training started
    assert torch.equal(_weights(warm_start_bridge(RECIPE)), first)
    assert not torch.equal(_weights(warm_start_bridge(BridgeRecipe(**{**RECIPE.__dict__, "seed": 1}))), first)


def test_validation_questions_choose_the_rl_step(tmp_path, tiny_make_bridge: Callable[..., BridgeModel]) -> None:
    """Held-out questions get no silver sequence and no RL rollouts; ``bridge/`` is the RL step (SL start
    included) with the best validation reward, and a reuse reports the same choice."""
    examples = make_toy_examples(10, n_passages=4, seed=7)
    reader = ToyReader(supports_scoring=True, cache=False)
    recipe = BridgeRecipe(**{**RECIPE.__dict__, "validation_fraction": 0.3, "rl_steps": 4, "rl_eval_steps": 2})

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
    recipe = BridgeRecipe(**{**RECIPE.__dict__, "validation_fraction": 0.3, "rl_steps": 0, "sl_epochs": 3})
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
    recipe = BridgeRecipe(**{**RECIPE.__dict__, "validation_fraction": 1.0})
    with pytest.raises(ValueError, match="validation_fraction"):
        train_bridge(make_toy_examples(2), ToyReader(), tmp_path, recipe)
