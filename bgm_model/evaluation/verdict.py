"""Is the trained bridge better than what a user could do without it?

:func:`validate_against_fixed` evaluates the bridge and every fixed arrangement (top-k with and without reversal
and repetition of the top passage, all candidates in retriever order and reversed, long-context reorder) on
held-out questions with the same reader, picks the best fixed arrangement there, and compares the bridge with
it question by question: the mean paired difference of the reward and its bootstrap CI. The verdict is
"beats" / "loses to" when the CI lies above / below zero, else "equals".

The held-out questions are the ones the SL epoch and the RL step were chosen on, so the bridge's number is
slightly optimistic; the best fixed arrangement is chosen on the same questions, the maximum of many noisy
means, which is optimistic too.
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


def fixed_arrangements(ks: Sequence[int] = (1, 2, 3, 5)) -> list[Arrangement]:
    """The arrangements a user could ship instead of a bridge (no retrieval is not one of them)."""
    return [retriever_order(), reversed_order(), long_context_reorder(), *top_k_variants(ks)]


@dataclass(frozen=True)
class ValidationVerdict:
    """The bridge against the best fixed arrangement on held-out questions."""

    verdict: Verdict
    arrangement: str
    """The best fixed arrangement on these questions (ties: the shorter prompt, then the first listed)."""
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
    """Every method's mean reward and prompt tokens on these questions, bridge first."""

    def sentence(self) -> str:
        return (
            f"the bridge {self.verdict} {self.arrangement} on {self.questions} validation questions "
            f"({self.reward} {self.bridge_reward:.3f} vs {self.arrangement_reward:.3f}, paired difference "
            f"{self.difference:+.3f}, {self.level:.0%} CI [{self.ci_low:+.3f}, {self.ci_high:+.3f}])"
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
    order = {m.name: i for i, m in enumerate(fixed)}
    best = max(order, key=lambda n: (statistics.fmean(per_method[n]), -tokens[n], -order[n]))
    diffs = [a - b for a, b in zip(per_method[BRIDGE_NAME], per_method[best], strict=True)]
    low, high = bootstrap_ci(diffs, seed=seed, level=level)
    verdict: Verdict = "beats" if low > 0 else "loses to" if high < 0 else "equals"
    table = tuple(
        {"method": name, reward_name(score): round(statistics.fmean(values), 4), "prompt tokens": round(tokens[name], 1)}
        for name, values in per_method.items()
    )
    return ValidationVerdict(
        verdict=verdict, arrangement=best, reward=reward_name(score), questions=len(examples),
        bridge_reward=statistics.fmean(per_method[BRIDGE_NAME]), arrangement_reward=statistics.fmean(per_method[best]),
        difference=statistics.fmean(diffs), ci_low=low, ci_high=high, level=level, table=table,
    )
