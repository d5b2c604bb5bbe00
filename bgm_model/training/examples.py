"""What the trainers train on: :class:`TrainExample` records normalised from silver sequences or QA examples,
checked against the bridge's limits, split into train/dev and ordered into batches deterministically."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["TrainExample", "as_train_examples", "check_fits", "epoch_order", "global_batches", "split_dev"]


@dataclass(frozen=True)
class TrainExample:
    """What the trainers read from a silver sequence or a QA example (``ids`` is the SL target)."""

    id: str
    question: str
    passages: list[str]
    answers: list[str]
    ids: list[int] | None = None
    #: Soft SL targets, one ``{action: probability}`` per step (action -1 = end); see ``step_targets``.
    targets: list[dict[int, float]] | None = None


def _get(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def as_train_examples(data: Sequence[Any], *, need_ids: bool, what: str) -> list[TrainExample]:
    """Normalise ``SilverSequence`` / ``QAExample`` objects or dicts, with clear errors on bad records."""
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise TypeError(f"{what} must be a sequence of records, got {type(data).__name__}")
    out: list[TrainExample] = []
    for n, item in enumerate(data):
        question, passages = _get(item, "question"), _get(item, "passages")
        ex_id = str(_get(item, "id", n))
        if not isinstance(question, str):
            raise TypeError(f"{what}[{n}] (id {ex_id!r}) has no string 'question'")
        if isinstance(passages, str) or not isinstance(passages, Sequence):
            raise TypeError(f"{what}[{n}] (id {ex_id!r}) has no list of 'passages'")
        answers = list(_get(item, "answers", None) or [])
        ids = _get(item, "ids")
        if need_ids:
            if ids is None:
                raise ValueError(
                    f"{what}[{n}] (id {ex_id!r}) has no target 'ids' (a silver passage sequence)"
                )
            bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < len(passages)]
            if bad:
                raise ValueError(
                    f"{what}[{n}] (id {ex_id!r}): target ids {list(ids)} name passage {bad[0]}, but the record "
                    f"has {len(passages)} passages"
                )
        out.append(
            TrainExample(ex_id, question, list(passages), answers, list(ids) if ids is not None else None)
        )
    return out


def split_dev(
    examples: list[TrainExample], dev_fraction: float, seed: int
) -> tuple[list[TrainExample], list[TrainExample]]:
    """A deterministic (by ``seed``) train/dev split; dev gets round(fraction * n), at least 1 if fraction > 0."""
    if dev_fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_dev = min(len(examples) - 1, max(1, round(dev_fraction * len(examples))))
    dev = set(order[:n_dev])
    return [e for i, e in enumerate(examples) if i not in dev], [
        e for i, e in enumerate(examples) if i in dev
    ]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def global_batches(order: list[int], per_process: int, world: int, rank: int) -> Iterator[list[int]]:
    """This process's slice of each global batch (``per_process * world`` examples).

    With several processes the last global batch is filled up from the start of the order, so every process
    runs the same number of steps (DDP needs matching backward calls), as ``accelerate``'s even_batches does.
    """
    size = per_process * world
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        if world > 1 and len(chunk) < size:
            chunk = chunk + [order[i % len(order)] for i in range(size - len(chunk))]
        part = chunk[rank * per_process : (rank + 1) * per_process]
        if part:
            yield part


def check_fits(bridge: Any, examples: Sequence[TrainExample], what: str) -> None:
    """Fail before training, with the record named, on inputs the bridge would reject mid-run."""
    cfg = bridge.config
    for n, e in enumerate(examples):
        if len(e.passages) > cfg.max_passages and cfg.overflow == "error":
            raise ValueError(
                f"{what}[{n}] (id {e.id!r}) has {len(e.passages)} passages; the bridge takes at most "
                f"{cfg.max_passages} (BridgeConfig.max_passages)"
            )
        if e.ids is None:
            continue
        if len(e.ids) > cfg.max_output_length:
            raise ValueError(
                f"{what}[{n}] (id {e.id!r}): target has {len(e.ids)} ids; the bridge's max_output_length is "
                f"{cfg.max_output_length}"
            )
        if e.ids and max(e.ids.count(i) for i in set(e.ids)) > cfg.max_repeats:
            raise ValueError(
                f"{what}[{n}] (id {e.id!r}): target {e.ids} repeats a passage more than max_repeats="
                f"{cfg.max_repeats} times"
            )
        if any(i >= cfg.max_passages for i in e.ids) and cfg.overflow == "truncate":
            raise ValueError(f"{what}[{n}] (id {e.id!r}): target {e.ids} names a passage beyond max_passages")
