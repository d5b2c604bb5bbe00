"""Is the trained bridge better than what a user could do without it?

:func:`validate_against_fixed` evaluates the bridge and every fixed arrangement (top-k with and without reversal
and repetition of the top passage, all candidates in retriever order and reversed, long-context reorder) on
held-out questions with the same reader, and compares the bridge with each of them question by question: the
mean paired difference of the reward and its bootstrap CI.

The verdict allows for the comparison being with many arrangements at once, so that a bridge is not refused
because one of them was lucky on few questions (the best of 17 noisy means is an optimistic bar):

* "loses to" X when the bridge is below X even with the CI widened for the number of arrangements compared
  (Bonferroni: level ``1 - (1 - level) / k``); X is the best such arrangement;
* "beats" when the plain CI against *every* fixed arrangement lies above zero;
* "equals" otherwise, naming the best fixed arrangement on these questions.

The held-out questions are the ones the SL epoch and the RL step were chosen on, so the bridge's number is
slightly optimistic too.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bgm_model.data import QAExample
from bgm_model.evaluation.arrangements import (
    Arrangement,
    bridge_arrangement,
    long_context_reorder,
    retriever_order,
    reversed_order,
    top_k_variants,
)
from bgm_model.evaluation.evaluate import EvaluationReport, bootstrap_ci, evaluate
from bgm_model.modeling import BridgeModel
from bgm_model.readers.base import Reader
from bgm_model.rewards import RewardFunc, get_reward, reward_name

Verdict = Literal["beats", "equals", "loses to"]
BRIDGE_NAME = "BGM bridge"
BOOTSTRAP_SAMPLES = 10_000
"""Resamples per CI: the widened CI's tails hold (1 - level) / 2k of them, ~15 at k = 17."""


def fixed_arrangements(ks: Sequence[int] = (1, 2, 3, 5)) -> list[Arrangement]:
    """The arrangements a user could ship instead of a bridge (no retrieval is not one of them)."""
    return [retriever_order(), reversed_order(), long_context_reorder(), *top_k_variants(ks)]


@dataclass(frozen=True)
class ValidationVerdict:
    """The bridge against the fixed arrangements on held-out questions."""

    verdict: Verdict
    arrangement: str
    """The arrangement the verdict names: the best fixed one on these questions (ties: the shorter prompt, then
    the first listed), or for "loses to" the best of those the bridge is significantly below."""
    reward: str
    questions: int
    bridge_reward: float
    arrangement_reward: float
    difference: float
    """Mean of (bridge - arrangement) per question."""
    ci_low: float
    ci_high: float
    level: float
    table: tuple[dict[str, Any], ...]
    """Every method's mean reward and prompt tokens on these questions, bridge first; the fixed ones with the
    paired difference and both CIs."""
    comparisons: int = 1
    """Fixed arrangements compared (the k of the widened CI)."""
    adjusted_ci_low: float | None = None
    adjusted_ci_high: float | None = None
    """The CI of ``difference`` at level ``1 - (1 - level) / comparisons`` ("loses to" needs it below zero)."""

    def sentence(self) -> str:
        adjusted = ""
        if self.adjusted_ci_low is not None and self.adjusted_ci_high is not None and self.comparisons > 1:
            adjusted = (f"; widened for {self.comparisons} arrangements [{self.adjusted_ci_low:+.3f}, "
                        f"{self.adjusted_ci_high:+.3f}]")
        return (
            f"the bridge {self.verdict} {self.arrangement} on {self.questions} validation questions "
            f"({self.reward} {self.bridge_reward:.3f} vs {self.arrangement_reward:.3f}, paired difference "
            f"{self.difference:+.3f}, {self.level:.0%} CI [{self.ci_low:+.3f}, {self.ci_high:+.3f}]{adjusted})"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["table"] = list(self.table)
        return data


class BridgeNotBetterError(RuntimeError):
    """The bridge lost to a fixed arrangement beyond the CI, and the caller asked for a better one only."""

    def __init__(self, verdict: ValidationVerdict, message: str) -> None:
        super().__init__(message)
        self.verdict = verdict


def _rewards(report: EvaluationReport, name: str, examples: Sequence[QAExample], reward: RewardFunc) -> list[float]:
    by_id = {ex.id: ex for ex in examples}
    return [float(reward(row["answer"], by_id[row["id"]].answers)) for row in report.by_name(name).per_example]


def validate_against_fixed(
    bridge: BridgeModel | Arrangement,
    examples: Sequence[QAExample],
    reader: Reader,
    *,
    reward: str | RewardFunc = "contains+0.5*f1",
    arrangements: Sequence[Arrangement] | None = None,
    level: float = 0.95,
    seed: int = 0,
    batch_size: int = 16,
) -> ValidationVerdict:
    """The bridge against every fixed arrangement on ``examples`` (held-out questions), with ``reader``.

    ``bridge``: a bridge, or any arrangement to judge the same way. ``reward``: the per-question score
    compared (the training recipe's reward by default). Raises
    ``ValueError`` without examples or arrangements.
    """
    if not examples:
        raise ValueError("validate_against_fixed needs held-out questions")
    fixed = list(arrangements) if arrangements is not None else fixed_arrangements()
    if not fixed:
        raise ValueError("validate_against_fixed needs at least one fixed arrangement")
    score = get_reward(reward) if isinstance(reward, str) else reward
    judged = (
        Arrangement(BRIDGE_NAME, bridge.arrange) if isinstance(bridge, Arrangement)
        else bridge_arrangement(bridge, name=BRIDGE_NAME)
    )
    methods = [judged, *fixed]
    report = evaluate(examples, reader, methods, batch_size=batch_size, show_progress=False)
    per_method = {m.name: _rewards(report, m.name, examples, score) for m in methods}
    tokens = {m.name: report.by_name(m.name).prompt_tokens for m in methods}
    mean = {name: statistics.fmean(values) for name, values in per_method.items()}
    adjusted_level = 1 - (1 - level) / len(fixed)
    paired: dict[str, dict[str, Any]] = {}
    for m in fixed:
        diffs = [a - b for a, b in zip(per_method[BRIDGE_NAME], per_method[m.name], strict=True)]
        paired[m.name] = {
            "difference": statistics.fmean(diffs),
            "ci": bootstrap_ci(diffs, samples=BOOTSTRAP_SAMPLES, seed=seed, level=level),
            "adjusted_ci": bootstrap_ci(diffs, samples=BOOTSTRAP_SAMPLES, seed=seed, level=adjusted_level),
        }
    order = {m.name: i for i, m in enumerate(fixed)}

    def best_of(names: Sequence[str]) -> str:
        return max(names, key=lambda n: (mean[n], -tokens[n], -order[n]))

    losing = [name for name, p in paired.items() if p["adjusted_ci"][1] < 0]
    if losing:
        verdict: Verdict = "loses to"
        named = best_of(losing)
    else:
        verdict = "beats" if all(p["ci"][0] > 0 for p in paired.values()) else "equals"
        named = best_of(list(order))
    table = tuple(
        {"method": name, reward_name(score): round(mean[name], 4), "prompt tokens": round(tokens[name], 1),
         **({} if name not in paired else {
             "paired difference": round(paired[name]["difference"], 4),
             "ci": [round(v, 4) for v in paired[name]["ci"]],
             "adjusted ci": [round(v, 4) for v in paired[name]["adjusted_ci"]]})}
        for name in per_method
    )
    chosen = paired[named]
    return ValidationVerdict(
        verdict=verdict, arrangement=named, reward=reward_name(score), questions=len(examples),
        bridge_reward=mean[BRIDGE_NAME], arrangement_reward=mean[named], difference=chosen["difference"],
        ci_low=chosen["ci"][0], ci_high=chosen["ci"][1], level=level, table=table, comparisons=len(fixed),
        adjusted_ci_low=chosen["adjusted_ci"][0], adjusted_ci_high=chosen["adjusted_ci"][1],
    )
