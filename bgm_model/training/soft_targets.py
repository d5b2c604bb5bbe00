"""Soft supervised targets for SL from a silver record: every extension the search scanned, not only the one
it kept (:func:`step_targets`, used by :class:`~bgm_model.training.sl_trainer.SLTrainer`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgm_model.training.silver.sequence import SilverSequence

#: The action "stop here" in :func:`step_targets` (the bridge's end token).
END = -1


def step_targets(
    record: SilverSequence, *, temperature: float = 0.2, secondary_weight: float = 0.1
) -> list[dict[int, float]]:
    """Soft supervised targets from everything the search evaluated, one distribution per decoding step.

    Step ``t`` is the decision after the first ``t`` silver IDs. Every extension the search scanned there
    and stopping (:data:`END`, valued as the sequence so far) get probability proportional to
    ``exp(value / temperature)`` with ``value = primary + secondary_weight * secondary``; candidates the search
    did not try there get none. A step the search never scanned (it stopped because the reward was at its
    maximum or the sequence at ``max_length``) gets :data:`END` with probability 1. A small ``temperature`` approaches the hard silver sequence (up to
    its tie rule); a larger one also teaches which passages come close, ten outcomes per step instead of one.
    Steps without a scan (a record written before ``scanned`` existed) get the silver decision itself.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def value(primary: float, secondary: float | None) -> float:
        return primary + secondary_weight * (secondary if secondary is not None else 0.0)

    targets: list[dict[int, float]] = []
    for t in range(len(record.ids) + 1):
        silver = record.ids[t] if t < len(record.ids) else END
        scan = record.scanned[t] if t < len(record.scanned) and t < len(record.trajectory) else None
        values = {int(i): value(p, q) for i, p, q in scan or ()}
        if scan:
            state = record.trajectory[t]
            values[END] = value(state["primary"], state["secondary"])
        finite = {a: v for a, v in values.items() if math.isfinite(v)}
        if not finite:  # not scanned (or nothing scored): the silver decision itself
            targets.append({silver: 1.0})
            continue
        top = max(finite.values())
        weights = {a: math.exp((v - top) / temperature) for a, v in finite.items()}
        total = sum(weights.values())
        targets.append({a: w / total for a, w in weights.items() if w / total > 1e-6})
    return targets
