"""What the framework adapters do around a bridge call, written once for both of them.

The adapters only translate types: documents / nodes become passage strings (:mod:`bgm_model.passages`),
:func:`select_batch` turns them into a list of :class:`Pick` s, and each pick becomes a copy of its document.
The policies a user sets on an adapter (:class:`SelectionSettings`) are applied here:

* **overflow**: a bridge reads at most ``bridge.config.max_passages`` passages (its ID capacity). It is shown
  the first ``max_passages`` in retriever order; the rest are dropped (``overflow_rest="drop"``, default) or
  appended after the bridge's choice in retriever order (``"append"``). An overflow never raises.
* **fill-up** (``min_n``): when the bridge returns fewer than ``min_n`` passages, the highest-ranked input
  passages it did not choose are appended in retriever order until there are ``min_n``. Passages are never
  repeated to pad: with fewer than ``min_n`` distinct inputs, every input comes back once (plus the
  bridge's own repeats).
* **cap** (``top_n``): at most ``top_n`` passages come back, the bridge's choice first, then fill-up, then
  appended overflow. A repeated passage counts each time it appears.
* **errors** (``on_error``): ``"raise"`` re-raises; ``"passthrough"`` returns the input unchanged (every
  passage, in retriever order, no cap) for any exception the bridge call raises, with a logged warning.

The bridge's own scores are the probabilities of its choices; passages it did not choose (fill-up, appended
overflow) get 0.0.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import BridgeError
from .outputs import BridgeResult
from .protocols import SupportsBridge

logger = logging.getLogger(__name__)

__all__ = [
    "ALTERNATIVE_KEY",
    "ALTERNATIVE_SCORE_KEY",
    "ORIGIN_KEY",
    "RANK_KEY",
    "RETRIEVAL_SCORE_KEY",
    "SCORE_KEY",
    "SOURCE_INDEX_KEY",
    "Pick",
    "Selection",
    "SelectionSettings",
    "bookkeeping",
    "kept_score",
    "passage_capacity",
    "select",
    "select_batch",
]

OnError = Literal["raise", "passthrough"]
OverflowRest = Literal["drop", "append"]
Origin = Literal["bridge", "fill", "overflow"]

#: Metadata keys the adapters add to every passage they return (not on a passthrough).
RANK_KEY = "bgm_rank"
SOURCE_INDEX_KEY = "bgm_source_index"
ORIGIN_KEY = "bgm_origin"
#: The strongest alternative at the step that chose a passage: its input index (None: ending there) and
#: its probability (the chosen passage's own is the score).
ALTERNATIVE_KEY = "bgm_alternative"
ALTERNATIVE_SCORE_KEY = "bgm_alternative_score"
#: Where the LangChain adapter writes the bridge's score (the key LangChain's rerankers write).
SCORE_KEY = "relevance_score"
#: Where both adapters keep the score a passage arrived with (LangChain: its ``relevance_score``;
#: LlamaIndex: ``NodeWithScore.score``), unless the metadata already has one.
RETRIEVAL_SCORE_KEY = "retrieval_score"


def _check_optional_count(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class SelectionSettings:
    """The adapter settings that shape what comes back around the bridge's choice (see the module docs).

    Both adapters have one field per setting here, with these defaults; :meth:`from_attributes` reads them.
    """

    top_n: int | None = field(
        default=None, metadata={"help": "At most this many passages come back (None: no cap)."}
    )
    min_n: int = field(
        default=0,
        metadata={"help": "At least this many come back when the inputs allow: fewer from the bridge are "
                  "filled up with the best-ranked unchosen inputs, in retriever order."},
    )
    overflow_rest: OverflowRest = field(
        default="drop",
        metadata={"help": "Inputs beyond the bridge's max_passages (it reads the first ones): 'drop' them, "
                  "or 'append' them after the bridge's choice in retriever order."},
    )
    on_error: OnError = field(
        default="raise",
        metadata={"help": "A failure in the bridge call: 'raise', or 'passthrough' the input unchanged (logged)."},
    )
    batch_size: int = field(
        default=16, metadata={"help": "Queries per bridge forward pass when several are bridged at once."}
    )
    title_key: str | None = field(
        default="title",
        metadata={"help": "Metadata key of a passage's title, rendered '(Title: ...) text' as in training "
                  "(None: the text alone)."},
    )
    max_context_tokens: int | None = field(
        default=None,
        metadata={"help": "Token budget of the chosen passages (the bridge's tokenizer counts; a repeat counts "
                  "again): the bridge never emits a passage that would go past it. None: no budget."},
    )
    min_score: float | None = field(
        default=None,
        metadata={"help": "The bridge stops at the first passage whose probability is below this. None: off."},
    )

    def __post_init__(self) -> None:
        _check_optional_count("top_n", self.top_n, 1)
        _check_optional_count("min_n", self.min_n, 0)
        _check_optional_count("batch_size", self.batch_size, 1)
        if self.min_n is None or self.batch_size is None:
            raise TypeError("min_n and batch_size must be ints")
        if self.top_n is not None and self.min_n > self.top_n:
            raise ValueError(f"min_n ({self.min_n}) cannot exceed top_n ({self.top_n})")
        if self.overflow_rest not in ("drop", "append"):
            raise ValueError(f"overflow_rest must be 'drop' or 'append', got {self.overflow_rest!r}")
        if self.on_error not in ("raise", "passthrough"):
            raise ValueError(f"on_error must be 'raise' or 'passthrough', got {self.on_error!r}")
        if self.title_key is not None and not isinstance(self.title_key, str):
            raise TypeError(f"title_key must be a str or None, got {self.title_key!r}")
        _check_optional_count("max_context_tokens", self.max_context_tokens, 0)
        if self.min_score is not None and (
            isinstance(self.min_score, bool) or not isinstance(self.min_score, (int, float))
            or not 0.0 <= self.min_score <= 1.0
        ):
            raise ValueError(f"min_score must be a probability in [0, 1] or None, got {self.min_score!r}")
        if self.max_context_tokens is not None and (self.min_n or self.overflow_rest == "append"):
            # Filling up or appending would add passages the budget does not count.
            raise ValueError(
                "max_context_tokens cannot be combined with min_n > 0 or overflow_rest='append': passages "
                "added after the bridge's choice would not be counted against the budget"
            )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_attributes(cls, obj: Any) -> SelectionSettings:
        """The settings of an adapter (any object with one attribute per setting)."""
        return cls(**{name: getattr(obj, name) for name in cls.names()})

    def with_count(self, k: int | None) -> SelectionSettings:
        """Exactly ``k`` passages when the inputs allow (``top_n = min_n = k``); ``None`` changes nothing."""
        return self if k is None else dataclasses.replace(self, top_n=k, min_n=k)

    def call_options(self) -> dict[str, Any]:
        """Keywords of every bridge call, built in this one place; optional ones only when set, so a simple
        stand-in bridge without them keeps working."""
        options: dict[str, Any] = {"on_error": self.on_error}
        if self.max_context_tokens is not None:
            options["max_context_tokens"] = self.max_context_tokens
        if self.min_score is not None:
            options["min_score"] = self.min_score
        return options


@dataclass(frozen=True)
class Pick:
    """One output passage: its index into the input, its score, and why it is there."""

    index: int
    score: float
    origin: Origin = "bridge"
    #: The strongest alternative at the bridge's step: (input index, or None for "end", probability).
    alternative: tuple[int | None, float] | None = None


@dataclass(frozen=True)
class Selection:
    """What one query's adapter output is made of.

    ``fallback``: the bridge failed and ``on_error="passthrough"`` returned the input unchanged (``picks`` is
    every input in order, each with origin ``"bridge"`` and score 0.0; adapters return plain copies then).
    ``result``: the bridge's own answer (``None`` when the bridge was not called: no passages, or a failure).
    """

    picks: list[Pick]
    result: BridgeResult | None = None
    fallback: bool = False
    #: How many inputs the bridge was shown (the rest overflowed).
    shown: int = 0


def bookkeeping(pick: Pick, rank: int) -> dict[str, Any]:
    """The metadata both adapters add to an output passage: position, source index, origin and, for the
    bridge's own picks, why: the strongest alternative at that step (input index or None for "end", and its
    probability) beside the pick's own probability (the score)."""
    added = {RANK_KEY: rank, SOURCE_INDEX_KEY: pick.index, ORIGIN_KEY: pick.origin}
    if pick.alternative is not None:
        added[ALTERNATIVE_KEY], added[ALTERNATIVE_SCORE_KEY] = pick.alternative
    return added


def kept_score(metadata: Mapping[str, Any], upstream_score: Any) -> dict[str, Any]:
    """``{retrieval_score: upstream_score}`` unless it is ``None`` or the metadata already keeps one."""
    if upstream_score is None or RETRIEVAL_SCORE_KEY in metadata:
        return {}
    return {RETRIEVAL_SCORE_KEY: upstream_score}


def passage_capacity(bridge: Any) -> int | None:
    """The most passages ``bridge`` reads (``bridge.config.max_passages``), or ``None`` when it says nothing."""
    capacity = getattr(getattr(bridge, "config", None), "max_passages", None)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        return None
    return capacity


def _passthrough(n: int) -> Selection:
    return Selection(picks=[Pick(i, 0.0) for i in range(n)], fallback=True, shown=n)


def _checked(result: Any, shown: int) -> BridgeResult:
    if not isinstance(result, BridgeResult):
        raise BridgeError(f"the bridge returned a {type(result).__name__}, not a BridgeResult")
    if len(result.ids) != len(result.scores):
        raise BridgeError(f"the bridge returned {len(result.ids)} ids but {len(result.scores)} scores")
    bad = [i for i in result.ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < shown]
    if bad:
        raise BridgeError(f"the bridge returned passage ids {bad} for {shown} passages")
    return result


def _arrange(result: BridgeResult, n: int, shown: int, settings: SelectionSettings) -> Selection:
    if result.fallback:
        if settings.max_context_tokens is not None:  # the bridge's fallback already left out what does not fit
            return Selection(picks=[Pick(int(i), 0.0) for i in result.ids], fallback=True, shown=shown)
        return _passthrough(n)
    alternatives: list[Any] = list(getattr(result, "alternatives", None) or [])
    alternatives += [None] * (len(result.ids) - len(alternatives))
    picks = [
        Pick(int(i), float(s), alternative=(a[0], float(a[1])) if a is not None else None)
        for i, s, a in zip(result.ids, result.scores, alternatives)
    ]
    chosen = {p.index for p in picks}
    if len(picks) < settings.min_n:
        for i in range(n):
            if len(picks) >= settings.min_n:
                break
            if i not in chosen:
                picks.append(Pick(i, 0.0, "fill"))
                chosen.add(i)
    if settings.overflow_rest == "append":
        picks.extend(Pick(i, 0.0, "overflow") for i in range(shown, n) if i not in chosen)
    if settings.top_n is not None:
        picks = picks[: settings.top_n]
    return Selection(picks=picks, result=result, shown=shown)


def _call(bridge: SupportsBridge, queries: list[str], shown: list[list[str]], settings: SelectionSettings) -> list[Any]:
    options = settings.call_options()
    batch = getattr(bridge, "bridge_batch", None)
    if len(queries) > 1 and callable(batch):
        return list(batch(queries, shown, batch_size=settings.batch_size, **options))
    return [bridge.bridge(q, ps, **options) for q, ps in zip(queries, shown)]


def select_batch(
    bridge: SupportsBridge,
    queries: Sequence[str],
    passages_per_query: Sequence[Sequence[str]],
    settings: SelectionSettings,
) -> list[Selection]:
    """One :class:`Selection` per query; all queries that have passages go to the bridge in one call
    (``bridge_batch`` when the bridge has it, ``settings.batch_size`` queries per forward pass).

    With ``on_error="passthrough"`` a failing batch is retried query by query, so one bad query passes
    through alone.
    """
    if len(queries) != len(passages_per_query):
        raise ValueError(f"{len(queries)} queries but {len(passages_per_query)} passage lists")
    capacity = passage_capacity(bridge)
    out: list[Selection | None] = [None] * len(queries)
    todo: list[int] = []
    for j, passages in enumerate(passages_per_query):
        if passages:
            todo.append(j)
        else:
            out[j] = Selection(picks=[])  # nothing to choose from: the bridge is not called
    shown = {j: list(passages_per_query[j][:capacity]) for j in todo}
    for j in todo:
        if len(shown[j]) < len(passages_per_query[j]):
            logger.info(
                "Bridge reads %d of %d passages (its max_passages); overflow_rest=%r for the other %d",
                len(shown[j]), len(passages_per_query[j]), settings.overflow_rest,
                len(passages_per_query[j]) - len(shown[j]),
            )

    def run(group: list[int]) -> None:
        results = _call(bridge, [queries[j] for j in group], [shown[j] for j in group], settings)
        if len(results) != len(group):
            raise BridgeError(f"the bridge returned {len(results)} results for {len(group)} queries")
        for j, result in zip(group, results):
            out[j] = _arrange(_checked(result, len(shown[j])), len(passages_per_query[j]), len(shown[j]), settings)

    try:
        if todo:
            run(todo)
    except Exception:
        if settings.on_error == "raise":
            raise
        if len(todo) == 1:
            logger.warning(
                "Bridge failed; passing the %d passages through unchanged (on_error='passthrough')",
                len(passages_per_query[todo[0]]), exc_info=True,
            )
            out[todo[0]] = _passthrough(len(passages_per_query[todo[0]]))
        else:
            for j in todo:
                try:
                    run([j])
                except Exception:
                    logger.warning(
                        "Bridge failed on query %d of %d; passing its %d passages through unchanged "
                        "(on_error='passthrough')", j, len(queries), len(passages_per_query[j]), exc_info=True,
                    )
                    out[j] = _passthrough(len(passages_per_query[j]))
    done = [s for s in out if s is not None]
    assert len(done) == len(out)
    return done


def select(
    bridge: SupportsBridge, query: str, passages: Sequence[str], settings: SelectionSettings
) -> Selection:
    """The :class:`Selection` of one query (see :func:`select_batch`)."""
    return select_batch(bridge, [query], [passages], settings)[0]
