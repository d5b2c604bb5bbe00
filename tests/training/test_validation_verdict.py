"""The shipping guarantee: a trained bridge is compared with every fixed arrangement on held-out questions
(paired bootstrap CI), the verdict goes into its model card, and ``require_better`` refuses a losing bridge."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest

from bgm_model import BridgeModel
from bgm_model.data import QAExample
from bgm_model.evaluation.arrangements import fixed_sequences, top_k
from bgm_model.evaluation.verdict import BridgeNotBetterError, fixed_arrangements, validate_against_fixed
from bgm_model.readers import CallableReader
from bgm_model.training.pipeline import BridgeRecipe, replace_config, train_bridge
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids

RECIPE = BridgeRecipe.from_dict({
    "reward": "em",
    "silver": {"max_length": 2, "top_m": None},
    "sl": {"num_epochs": 1, "batch_size": 4, "freeze_encoder_layers": 1},
    "rl": {"max_steps": 0},
    "validation_fraction": 0.5,
})


def top1_reader() -> CallableReader:
    """Answers right only when shown exactly the retriever's first passage: top-1 is optimal."""

    def answer(question: str, passages: Sequence[str]) -> str:
        return question.split()[-1] if list(passages) == [f"first of {question}"] else "unknown"

    return CallableReader(answer, name="top1-is-best", cache=False)


def top1_examples(n: int) -> list[QAExample]:
    return [
        QAExample(id=f"q{i}", question=f"what is item{i}", answers=[f"item{i}"],
                  passages=[f"first of what is item{i}", *(f"distractor {j} of item{i}" for j in range(3))])
        for i in range(n)
    ]


def test_an_oracle_beats_every_fixed_arrangement_on_the_toy_task():
    examples = make_toy_examples(12, n_passages=4, seed=2)
    oracle = fixed_sequences("oracle", {ex.id: toy_optimal_ids(ex) for ex in examples})
    verdict = validate_against_fixed(oracle, examples, ToyReader(cache=False), reward="em")
    assert verdict.verdict == "beats" and verdict.bridge_reward == 1.0
    assert verdict.ci_low > 0 and verdict.arrangement_reward < 1.0
    assert verdict.arrangement in {m.name for m in fixed_arrangements()}
    assert verdict.table[0]["method"] == "BGM bridge" and len(verdict.table) == 1 + len(fixed_arrangements())
    assert verdict.sentence().startswith(f"the bridge beats {verdict.arrangement} on 12 validation questions")


def test_top1_wins_against_a_bridge_that_shows_everything():
    examples = top1_examples(8)
    everything = fixed_sequences("all", {ex.id: [0, 1, 2, 3] for ex in examples})
    verdict = validate_against_fixed(everything, examples, top1_reader(), reward="em")
    assert verdict.verdict == "loses to" and verdict.arrangement == top_k(1).name
    assert (verdict.difference, verdict.ci_high) == (-1.0, -1.0)
    same = fixed_sequences("top-1 too", {ex.id: [0] for ex in examples})
    tie = validate_against_fixed(same, examples, top1_reader(), reward="em")
    assert tie.verdict == "equals" and tie.difference == 0.0


def test_one_lucky_arrangement_among_many_does_not_make_the_bridge_lose():
    # On 20 questions top-2 answers 5 and the bridge (top-1) 1: alone, a 95% CI says "loses to"; compared with
    # 17 arrangements at once, 4 more right answers are what one of them gets by luck, so the verdict "equals".
    examples = [QAExample(id=f"q{i}", question=f"what is item{i}", answers=[f"item{i}"],
                          passages=[f"p{j} of item{i}" for j in range(4)]) for i in range(20)]

    def answer(question: str, passages: Sequence[str]) -> str:
        i = int(question.removeprefix("what is item"))
        shown = [p.split()[0] for p in passages]
        right = (shown == ["p0"] and i == 0) or (shown == ["p0", "p1"] and i < 5)
        return f"item{i}" if right else "unknown"

    reader = CallableReader(answer, name="top2-lucky", cache=False)
    bridge = fixed_sequences("top-1 bridge", {ex.id: [0] for ex in examples})
    verdict = validate_against_fixed(bridge, examples, reader, reward="em")
    assert verdict.arrangement == top_k(2).name and verdict.difference == pytest.approx(-0.2)
    assert verdict.ci_high < 0  # the plain CI: below top-2
    assert verdict.comparisons == len(fixed_arrangements()) and verdict.adjusted_ci_high >= 0
    assert verdict.adjusted_ci_low < verdict.ci_low and verdict.verdict == "equals"
    assert "widened for 17 arrangements" in verdict.sentence()
    rows = {row["method"]: row for row in verdict.table}
    assert rows[top_k(2).name]["paired difference"] == pytest.approx(-0.2) and "ci" not in rows["BGM bridge"]
    # compared with top-2 alone, the same difference is a loss
    alone = validate_against_fixed(bridge, examples, reader, reward="em", arrangements=[top_k(2)])
    assert alone.verdict == "loses to" and alone.comparisons == 1
    assert (alone.adjusted_ci_low, alone.adjusted_ci_high) == (alone.ci_low, alone.ci_high)


def test_beating_the_best_arrangement_means_beating_every_one():
    examples = top1_examples(8)
    beaten = validate_against_fixed(fixed_sequences("top-1 bridge", {ex.id: [0] for ex in examples}), examples,
                                    top1_reader(), reward="em", arrangements=[top_k(2), top_k(3)])
    assert beaten.verdict == "beats" and beaten.ci_low == 1.0
    # with top-1 itself among the arrangements the bridge only equals it
    tie = validate_against_fixed(fixed_sequences("top-1 bridge", {ex.id: [0] for ex in examples}), examples,
                                 top1_reader(), reward="em", arrangements=[top_k(2), top_k(1)])
    assert tie.verdict == "equals" and tie.arrangement == top_k(1).name


def test_require_better_refuses_a_bridge_that_loses_to_top1(tmp_path, tiny_make_bridge: Callable[..., BridgeModel]):
    # One SL epoch at a learning rate that changes nothing: the random tiny bridge never picks exactly [0].
    recipe = replace_config(RECIPE, {"require_better": True, "sl": {"learning_rate": 1e-12}})
    with pytest.raises(BridgeNotBetterError, match=r"Use top-1 instead") as raised:
        train_bridge(top1_examples(12), top1_reader(), tmp_path, recipe, bridge=tiny_make_bridge())
    assert raised.value.verdict.verdict == "loses to" and raised.value.verdict.questions == 6
    assert not (tmp_path / "bridge_sl").exists()  # nothing at the shipping path
    rejected = BridgeModel.from_pretrained(tmp_path / "bridge_sl.rejected")
    record = {r.stage: r for r in rejected.model_card_data.training}["validation"]
    assert record.metrics["best_fixed_arrangement"] == "top-1" and "loses to top-1" in record.metrics["verdict"]


def test_a_bridge_that_does_not_lose_ships_with_its_verdict(tmp_path, tiny_make_bridge: Callable[..., BridgeModel]):
    # A reader that ignores the passages: every arrangement ties, so the bridge "equals" and ships.
    reader = CallableReader(lambda q, ps: "unknown", name="constant", cache=False)
    examples = make_toy_examples(8, n_passages=4, seed=1)
    recipe = replace_config(RECIPE, {"require_better": True})
    trained = train_bridge(examples, reader, tmp_path, recipe, bridge=tiny_make_bridge())
    assert trained.verdict is not None and trained.verdict.verdict == "equals"
    saved = BridgeModel.from_pretrained(trained.final_dir)
    record = {r.stage: r for r in saved.model_card_data.training}["validation"]
    assert record.data == {"validation_questions": 4} and record.metrics["table"][0]["method"] == "BGM bridge"
    assert "the bridge equals" in (trained.final_dir / "README.md").read_text()
    assert json.loads((tmp_path / "validation_verdict.json").read_text())["verdict"] == "equals"
    again = train_bridge(examples, reader, tmp_path, recipe, reuse=True, bridge=tiny_make_bridge())
    assert again.reused and again.verdict == trained.verdict


def test_require_better_needs_validation_questions():
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        replace_config(RECIPE, {"require_better": True, "validation_fraction": 0.0})
