"""Passage arrangements: what goes into the LLM's prompt, as passage-ID sequences.

A bridge is one arrangement; the others here are what a user would do without one (the baselines of
``bgm evaluate`` and the quality benchmark). Every arrangement maps a batch of examples to one ID sequence
per example, indices into ``example.passages`` (retriever order), repeats allowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bgm_model.data import QAExample
    from bgm_model.modeling import BridgeModel

ArrangeFn = Callable[[Sequence["QAExample"]], list[list[int]]]


@dataclass
class Arrangement:
    """A named way to arrange passages. ``seconds`` accumulates the time spent arranging (latency)."""

    name: str
    arrange: ArrangeFn
    seconds: float = field(default=0.0, compare=False)

    def __call__(self, examples: Sequence[QAExample]) -> list[list[int]]:
        start = time.perf_counter()
        ids = self.arrange(examples)
        self.seconds += time.perf_counter() - start
        if len(ids) != len(examples):
            raise RuntimeError(f"arrangement {self.name!r} returned {len(ids)} sequences for {len(examples)} examples")
        return ids


def _per_example(fn: Callable[[QAExample], list[int]]) -> ArrangeFn:
    return lambda examples: [fn(ex) for ex in examples]


def no_retrieval() -> Arrangement:
    return Arrangement("no retrieval", _per_example(lambda ex: []))


def retriever_order() -> Arrangement:
    return Arrangement("all, retriever order", _per_example(lambda ex: list(range(len(ex.passages)))))


def reversed_order() -> Arrangement:
    """All passages, best last (closest to the question in a passages-then-question prompt)."""
    return Arrangement("all, reversed", _per_example(lambda ex: list(range(len(ex.passages)))[::-1]))


Ranker = Callable[[Sequence["QAExample"]], list[list[int]]]
"""Maps a batch of examples to each example's passage indices, best first."""


def _retriever_ranking(examples: Sequence[QAExample]) -> list[list[int]]:
    return [list(range(len(ex.passages))) for ex in examples]


def top_k(
    k: int,
    *,
    reverse: bool = False,
    repeat_top: bool = False,
    ranker: Ranker | None = None,
    label: str | None = None,
) -> Arrangement:
    """The first ``k`` passages of a ranking (default: retriever order); ``reverse`` puts the best last;
    ``repeat_top`` shows the best one twice (first and last; with ``reverse``, last twice).

    ``ranker``/``label`` turn it into a reranker baseline, e.g. ``label="cross-encoder"`` gives
    "cross-encoder, top-3, reversed".
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rank = ranker or _retriever_ranking

    def arrange(examples: Sequence[QAExample]) -> list[list[int]]:
        if isinstance(rank, SharedRanking):
            orders, reused_seconds = rank.rankings(examples)
            arrangement.seconds += reused_seconds  # this variant's latency includes the ranking it reused
        else:
            orders = rank(examples)
        out = []
        for order in orders:
            ids = list(order[:k])
            if repeat_top and ids:
                ids = [*ids, ids[0]] if not reverse else [ids[0], *ids]
            out.append(ids[::-1] if reverse else ids)
        return out

    name = (f"{label}, " if label else "") + f"top-{k}" + (", reversed" if reverse else "")
    name += ", top repeated" if repeat_top else ""
    arrangement = Arrangement(name, arrange)
    return arrangement


class SharedRanking:
    """One ranker shared by several top-k variants: the batch it last ranked is kept, so variants called on
    the same batch one after another rank it once. Each variant is still charged the ranking's time, so its
    ``arrange_ms`` stays the latency a user of that variant alone would see."""

    def __init__(self, ranker: Ranker) -> None:
        self.ranker = ranker
        self._batch: list[QAExample] = []
        self._orders: list[list[int]] = []
        self._seconds = 0.0

    def rankings(self, examples: Sequence[QAExample]) -> tuple[list[list[int]], float]:
        """(rankings, seconds of an earlier identical ranking reused: 0.0 when ranked now)."""
        if len(examples) == len(self._batch) and all(a is b for a, b in zip(examples, self._batch)):
            return self._orders, self._seconds
        start = time.perf_counter()
        orders = self.ranker(examples)
        self._batch, self._orders, self._seconds = list(examples), orders, time.perf_counter() - start
        return orders, 0.0

    def __call__(self, examples: Sequence[QAExample]) -> list[list[int]]:
        return self.rankings(examples)[0]


def top_k_variants(
    ks: Sequence[int], *, ranker: Ranker | None = None, label: str | None = None
) -> list[Arrangement]:
    """Every top-k heuristic for ``k`` in ``ks``: plain, reversed, and each with the top passage repeated.
    A ``ranker`` runs once per batch for all of them (:class:`SharedRanking`)."""
    if ranker is not None and not isinstance(ranker, SharedRanking):
        ranker = SharedRanking(ranker)
    methods = []
    for k in ks:
        methods += [top_k(k, ranker=ranker, label=label), top_k(k, repeat_top=True, ranker=ranker, label=label)]
        if k > 1:  # reversing one passage changes nothing
            methods += [top_k(k, reverse=True, ranker=ranker, label=label),
                        top_k(k, reverse=True, repeat_top=True, ranker=ranker, label=label)]
    return methods


def long_context_order(n: int) -> list[int]:
    """"Lost in the middle" reordering of ``n`` passages in retriever order: the best at both ends.

    The same order as LangChain's and LlamaIndex's ``LongContextReorder`` (tested against the latter).
    """
    result: list[int] = []
    for i, index in enumerate(range(n - 1, -1, -1)):  # least relevant first
        if i % 2 == 0:
            result.insert(0, index)
        else:
            result.append(index)
    return result


def long_context_reorder() -> Arrangement:
    return Arrangement("long-context reorder", _per_example(lambda ex: long_context_order(len(ex.passages))))


def embedding_ranker(embedder: Any) -> Ranker:
    """Rank by cosine similarity of question and passage embeddings (e.g. MiniLM)."""

    def rank(examples: Sequence[QAExample]) -> list[list[int]]:
        out: list[list[int]] = []
        for ex in examples:
            if not ex.passages:
                out.append([])
                continue
            vectors = embedder.embed([ex.question, *ex.passages])
            sims = vectors[1:] @ vectors[0]
            out.append([int(i) for i in np.argsort(-sims, kind="stable")])
        return out

    return rank


def embedding_rerank(embedder: Any, k: int) -> Arrangement:
    """Rerank by cosine similarity of question and passage embeddings (e.g. MiniLM), keep the top ``k``."""
    return top_k(k, ranker=embedding_ranker(embedder), label="embedding rerank")


def scored_rerank(name: str, score_fn: Callable[[str, Sequence[str]], Sequence[float]], k: int) -> Arrangement:
    """Rerank with any ``score_fn(question, passages) -> scores`` (e.g. a cross-encoder), keep the top ``k``."""

    def arrange(ex: QAExample) -> list[int]:
        if not ex.passages:
            return []
        scores = np.asarray(score_fn(ex.question, ex.passages), dtype=float)
        return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]

    return Arrangement(name, _per_example(arrange))


def bridge_arrangement(bridge: BridgeModel, name: str = "BGM bridge", batch_size: int = 16) -> Arrangement:
    def arrange(examples: Sequence[QAExample]) -> list[list[int]]:
        results = bridge.bridge_batch([ex.question for ex in examples], [ex.passages for ex in examples],
                                      batch_size=batch_size)
        return [r.ids for r in results]

    return Arrangement(name, arrange)


def fixed_sequences(name: str, sequences: dict[str, list[int]]) -> Arrangement:
    """Known sequences by example id, e.g. the silver sequences (an oracle: it used the gold answers)."""

    def arrange(ex: QAExample) -> list[int]:
        if ex.id not in sequences:
            raise KeyError(f"{name}: no sequence for example {ex.id!r}")
        return sequences[ex.id]

    return Arrangement(name, _per_example(arrange))


def gold_passage(copies: int = 1) -> Arrangement:
    """The first gold candidate (:attr:`QAExample.gold`), shown ``copies`` times: a reference for what choosing
    (and repeating) the right passage could gain, not a method — it reads the gold labels. An example without a
    gold candidate gets the retriever's top-1, so the row stays comparable with top-1; one without any gold
    labels raises (use it only on labelled data)."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")

    def arrange(ex: QAExample) -> list[int]:
        if ex.gold is None:
            raise ValueError(f"example {ex.id!r} has no gold-passage labels: the gold-passage reference needs them")
        if not ex.passages:
            return []
        return [next((i for i, g in enumerate(ex.gold) if g), 0)] * copies

    name = "gold passage " + {1: "alone", 2: "twice"}.get(copies, f"x{copies}")
    return Arrangement(name, _per_example(arrange))


def baseline_arrangements(ks: Sequence[int] = (1, 2, 3, 5)) -> list[Arrangement]:
    """The fixed heuristics a user could pick without training anything."""
    return [no_retrieval(), retriever_order(), reversed_order(), long_context_reorder(), *top_k_variants(ks)]
