"""Dev evaluation of a bridge during training: greedy output, downstream reward, target NLL and accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .examples import TrainExample

__all__ = ["evaluate_bridge"]


def evaluate_bridge(
    accelerator: Any,
    bridge: Any,
    examples: Sequence[TrainExample],
    *,
    reader: Any = None,
    reward: Any = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Dev metrics of ``bridge``'s greedy output, each process on its shard, gathered.

    ``reward`` (when a reader is given): mean downstream reward of the reader's answer on the greedy passage
    sequence; ``seq_acc``: greedy output == target ids; ``loss``: mean target NLL (records with targets only);
    ``length``: mean output length.
    """
    from accelerate.utils import gather_object

    from bgm_model.rewards import reward_batch, reward_needs_answer

    shard = list(examples[accelerator.process_index :: accelerator.num_processes])
    rows: list[tuple[float, float, float, float, float]] = []  # reward, has_target, seq_acc, nll, length
    was_training = bridge.training
    bridge.eval()
    try:
        for start in range(0, len(shard), batch_size):
            chunk = shard[start : start + batch_size]
            qs, ps = [e.question for e in chunk], [e.passages for e in chunk]
            outs = bridge.bridge_batch(qs, ps, batch_size=batch_size)
            rewards = [math.nan] * len(chunk)
            if reader is not None:
                ordered = [[e.passages[i] for i in o.ids] for e, o in zip(chunk, outs)]
                answers = (
                    reader.answer_batch(qs, ordered) if reward_needs_answer(reward) else [""] * len(chunk)
                )
                rewards = reward_batch(
                    reward,
                    answers,
                    [e.answers for e in chunk],
                    questions=qs,
                    passage_lists=ordered,
                    reader=reader,
                )
            with_t = [j for j, e in enumerate(chunk) if e.ids is not None]
            nll = [math.nan] * len(chunk)
            if with_t:
                with torch.no_grad():
                    lp = bridge.sequence_log_probs(
                        [qs[j] for j in with_t], [ps[j] for j in with_t], [chunk[j].ids for j in with_t]
                    )
                for j, v in zip(with_t, lp.tolist()):
                    nll[j] = -v
            for j, (e, o) in enumerate(zip(chunk, outs)):
                has_t = e.ids is not None
                rows.append(
                    (float(rewards[j]), float(has_t), float(has_t and o.ids == e.ids), nll[j], len(o.ids))
                )
    finally:
        bridge.train(was_training)
    rows = list(gather_object(rows)) if accelerator.num_processes > 1 else rows

    def mean(values: list[float]) -> float:
        values = [v for v in values if not math.isnan(v)]
        return float(sum(values) / len(values)) if values else math.nan

    targeted = [r for r in rows if r[1]]
    return {
        "reward": mean([r[0] for r in rows]),
        "seq_acc": mean([r[2] for r in targeted]) if targeted else math.nan,
        "loss": mean([r[3] for r in targeted]) if targeted else math.nan,
        "length": mean([r[4] for r in rows]),
        "n": float(len(rows)),
    }
