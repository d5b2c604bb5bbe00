"""Downstream rewards: how good a reader's answer is, as plain callables.

Every reward has the signature ``reward(answer, gold_answers, **context) -> float`` (in the spirit of TRL's
reward functions), so user functions plug in unchanged. ``context`` carries what a reward may need besides the
answer: ``question``, ``passages`` (the ordered passage texts the reader saw) and ``reader``. Rewards that do
not need them ignore them.

Ready-made rewards (names as in :func:`get_reward`):

=============  ======================================================================  =========
name           meaning                                                                  range
=============  ======================================================================  =========
``em``         exact match after SQuAD normalisation, max over golds                    {0, 1}
``f1``         SQuAD token F1, max over golds                                           [0, 1]
``contains``   a normalised gold appears in the normalised answer (on word boundaries)  {0, 1}
``bleu``       sentence BLEU (sacrebleu) against all golds, divided by 100              [0, 1]
``rougeL``     ROUGE-L F-measure (rouge-score, over normalised tokens), max over golds  [0, 1]
``loglik``     mean per-token log-likelihood of the best gold answer under the reader  (-inf, 0]
=============  ======================================================================  =========

Optional attributes a search (e.g. silver-sequence synthesis) reads with ``getattr`` and sensible defaults:

* ``max_value`` (float): the best value the reward can take, so a search can stop once it is reached.
* ``needs_answer`` (bool, default True): whether the reader's generated answer is used at all (``loglik``
  scores the *gold* answers, so no generation is needed).
* ``needs_reader`` (bool, default False): whether ``reader`` must be in the context.
* ``batch(answers, gold_answers, *, questions, passage_lists, reader)``: the batched form (see
  :class:`BatchReward`); use :func:`reward_batch` to call any reward batched.

Composition: :func:`combine` / :func:`weighted` build a weighted sum; :func:`get_reward` also parses
``"em+0.5*f1"``.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bgm_model.readers.base import Reader

__all__ = [
    "AnswerLogLikelihood",
    "BatchReward",
    "RewardFunc",
    "WeightedReward",
    "answer_contains",
    "answer_loglik",
    "available_rewards",
    "bleu",
    "combine",
    "exact_match",
    "get_reward",
    "normalize_answer",
    "reward_batch",
    "reward_max_value",
    "reward_name",
    "reward_needs_answer",
    "reward_needs_reader",
    "rouge_l",
    "token_f1",
    "weighted",
]

#: ``(answer, gold_answers, **context) -> float``
RewardFunc = Callable[..., float]


@runtime_checkable
class BatchReward(Protocol):
    """A reward that is cheaper to compute for many answers at once (e.g. one reader call)."""

    def __call__(self, answer: str, gold_answers: Sequence[str], **context: Any) -> float: ...

    def batch(
        self,
        answers: Sequence[str],
        gold_answers: Sequence[Sequence[str]],
        *,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        reader: Reader | None = None,
    ) -> list[float]: ...


# --------------------------------------------------------------------------------------------------
# Normalisation (SQuAD v1.1 evaluation script)
# --------------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(gold_answers: Sequence[str]) -> list[str]:
    if isinstance(gold_answers, str):
        # A bare string would silently be iterated character by character.
        raise TypeError("gold_answers must be a sequence of strings, not a single string")
    return list(gold_answers)


def _bounded(max_value: float) -> Callable[[RewardFunc], RewardFunc]:
    def mark(fn: RewardFunc) -> RewardFunc:
        fn.max_value = max_value  # type: ignore[attr-defined]
        return fn

    return mark


# --------------------------------------------------------------------------------------------------
# Answer-only rewards
# --------------------------------------------------------------------------------------------------
@_bounded(1.0)
def exact_match(answer: str, gold_answers: Sequence[str], **context: Any) -> float:
    """1.0 if the normalised answer equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(answer)
    return float(any(pred == normalize_answer(g) for g in _golds(gold_answers)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        # SQuAD convention: two empty answers agree, one empty answer scores 0.
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


@_bounded(1.0)
def token_f1(answer: str, gold_answers: Sequence[str], **context: Any) -> float:
    """SQuAD token-level F1 between the normalised answer and each gold; the maximum over golds."""
    pred = normalize_answer(answer).split()
    return max((_f1(pred, normalize_answer(g).split()) for g in _golds(gold_answers)), default=0.0)


@_bounded(1.0)
def answer_contains(answer: str, gold_answers: Sequence[str], **context: Any) -> float:
    """1.0 if some normalised gold occurs in the normalised answer as whole words, else 0.0.

    Whole words, so the gold "no" is not found in "november". Empty golds never match.
    """
    pred = f" {normalize_answer(answer)} "
    for gold in _golds(gold_answers):
        norm = normalize_answer(gold)
        if norm and f" {norm} " in pred:
            return 1.0
    return 0.0


@_bounded(1.0)
def bleu(answer: str, gold_answers: Sequence[str], **context: Any) -> float:
    """Sentence BLEU of the answer against all gold answers (multi-reference), scaled to [0, 1].

    Uses sacrebleu with exponential smoothing (its ``sentence_bleu`` default); short answers score low by
    nature, so prefer ``f1`` or ``em`` for short-answer QA.
    """
    try:
        import sacrebleu
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The 'bleu' reward needs sacrebleu: pip install sacrebleu (or pip install 'bgm-bridge[train]')"
        ) from e
    golds = [g for g in _golds(gold_answers) if g.strip()]
    if not golds:
        return 0.0
    return float(sacrebleu.sentence_bleu(answer, golds).score) / 100.0


class _NormalisedTokens:
    """rouge-score's tokenizer interface over the SQuAD normalisation, so ROUGE-L, EM and F1 agree on tokens."""

    def tokenize(self, text: str) -> list[str]:
        return normalize_answer(text).split()


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer() -> Any:
    # Built once: the reward runs for every sampled answer in RL and silver search.
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ImportError(
            "The 'rougeL' reward needs rouge-score: pip install rouge-score (or pip install 'bgm-bridge[train]')"
        ) from e
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_NormalisedTokens())


@_bounded(1.0)
def rouge_l(answer: str, gold_answers: Sequence[str], **context: Any) -> float:
    """ROUGE-L F1 (beta = 1) of normalised tokens, computed by the ``rouge-score`` package; max over golds."""
    scorer = _rouge_l_scorer()
    pred = normalize_answer(answer).split()
    best = 0.0
    for gold in _golds(gold_answers):
        if not pred or not normalize_answer(gold).split():
            best = max(best, float(pred == normalize_answer(gold).split()))
            continue
        best = max(best, float(scorer.score(gold, answer)["rougeL"].fmeasure))
    return best


# --------------------------------------------------------------------------------------------------
# Reader-based reward
# --------------------------------------------------------------------------------------------------
class AnswerLogLikelihood:
    """Mean per-token log-likelihood of the gold answer given the prompt; the best over golds.

    Needs ``reader`` (with ``supports_scoring``), ``question`` and ``passages`` in the context. The generated
    ``answer`` is ignored. Prefer :meth:`batch`: it scores all (prompt, gold) pairs in one ``score_batch``
    call, which lets the reader share the prompt prefix.
    """

    name = "loglik"
    max_value = 0.0
    needs_answer = False
    needs_reader = True

    def __call__(self, answer: str, gold_answers: Sequence[str], **context: Any) -> float:
        missing = [k for k in ("reader", "question", "passages") if context.get(k) is None]
        if missing:
            raise ValueError(f"the 'loglik' reward needs {', '.join(missing)} in its context")
        return self.batch(
            [answer],
            [gold_answers],
            questions=[context["question"]],
            passage_lists=[context["passages"]],
            reader=context["reader"],
        )[0]

    def batch(
        self,
        answers: Sequence[str],
        gold_answers: Sequence[Sequence[str]],
        *,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        reader: Reader | None = None,
    ) -> list[float]:
        if reader is None:
            raise ValueError("the 'loglik' reward needs a reader")
        if not reader.supports_scoring:
            raise ValueError(
                f"the 'loglik' reward needs a reader that can score answers; "
                f"{type(reader).__name__} has supports_scoring=False (use a local Hugging Face reader)"
            )
        if not (len(answers) == len(gold_answers) == len(questions) == len(passage_lists)):
            raise ValueError("answers, gold_answers, questions and passage_lists must have the same length")
        targets = self.targets(gold_answers)
        owners = [i for i, ts in enumerate(targets) for _ in ts]
        flat = [t for ts in targets for t in ts]
        scores = reader.score_batch([questions[i] for i in owners], [passage_lists[i] for i in owners], flat) if flat else []
        per_item: list[list[float]] = [[] for _ in targets]
        for i, s in zip(owners, scores, strict=True):
            per_item[i].append(float(s))
        return self.best(per_item)

    @staticmethod
    def targets(gold_answers: Sequence[Sequence[str]]) -> list[list[str]]:
        """The answers to score after each item's prompt: its distinct non-blank golds (in order)."""
        out = []
        for i, gs in enumerate(gold_answers):
            unique = list(dict.fromkeys(g for g in _golds(gs) if g.strip()))
            if not unique:
                raise ValueError(f"the 'loglik' reward needs a non-empty gold answer (item {i})")
            out.append(unique)
        return out

    @staticmethod
    def best(scores: Sequence[Sequence[float]]) -> list[float]:
        """The reward of each item from the scores of its :meth:`targets`: the best over its golds."""
        return [max((float(s) for s in ss), default=-math.inf) for ss in scores]

    def __repr__(self) -> str:
        return "answer_loglik"


#: The ready-made instance registered as ``"loglik"``.
answer_loglik = AnswerLogLikelihood()


# --------------------------------------------------------------------------------------------------
# Introspection helpers
# --------------------------------------------------------------------------------------------------
def reward_needs_reader(reward: RewardFunc) -> bool:
    return bool(getattr(reward, "needs_reader", False))


def reward_needs_answer(reward: RewardFunc) -> bool:
    return bool(getattr(reward, "needs_answer", True))


def reward_max_value(reward: RewardFunc) -> float | None:
    """The best value ``reward`` can take, or None when unknown (plain user functions)."""
    value = getattr(reward, "max_value", None)
    return None if value is None else float(value)


def reward_name(reward: RewardFunc) -> str:
    for name, fn in _REGISTRY.items():
        if fn is reward:
            return name
    return str(getattr(reward, "name", None) or getattr(reward, "__name__", None) or repr(reward))


def reward_batch(
    reward: RewardFunc,
    answers: Sequence[str],
    gold_answers: Sequence[Sequence[str]],
    *,
    questions: Sequence[str],
    passage_lists: Sequence[Sequence[str]],
    reader: Reader | None = None,
) -> list[float]:
    """Compute ``reward`` for many answers: its ``batch`` method if it has one, else one call per item."""
    batch = getattr(reward, "batch", None)
    if callable(batch):
        return list(
            batch(answers, gold_answers, questions=questions, passage_lists=passage_lists, reader=reader)
        )
    return [
        float(reward(a, g, question=q, passages=p, reader=reader))
        for a, g, q, p in zip(answers, gold_answers, questions, passage_lists, strict=True)
    ]


# --------------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightedReward:
    """A weighted sum of rewards; batched when any part is (each part computed with :func:`reward_batch`)."""

    parts: tuple[tuple[RewardFunc, float], ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a weighted reward needs at least one part")
        for fn, w in self.parts:
            if not callable(fn):
                raise TypeError(f"reward {fn!r} is not callable")
            if not isinstance(w, (int, float)) or math.isnan(w):
                raise TypeError(f"weight {w!r} of {reward_name(fn)} is not a number")

    @property
    def needs_reader(self) -> bool:
        return any(reward_needs_reader(fn) for fn, _ in self.parts)

    @property
    def needs_answer(self) -> bool:
        return any(reward_needs_answer(fn) for fn, _ in self.parts)

    @property
    def max_value(self) -> float | None:
        total = 0.0
        for fn, w in self.parts:
            m = reward_max_value(fn)
            if m is None or w < 0:
                return None  # a negative weight turns a max into a min we do not know
            total += w * m
        return total

    @property
    def name(self) -> str:
        return "+".join(f"{w:g}*{reward_name(fn)}" for fn, w in self.parts)

    def __call__(self, answer: str, gold_answers: Sequence[str], **context: Any) -> float:
        return float(sum(w * fn(answer, gold_answers, **context) for fn, w in self.parts))

    def batch(
        self,
        answers: Sequence[str],
        gold_answers: Sequence[Sequence[str]],
        *,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        reader: Reader | None = None,
    ) -> list[float]:
        total = [0.0] * len(answers)
        for fn, w in self.parts:
            values = reward_batch(
                fn, answers, gold_answers, questions=questions, passage_lists=passage_lists, reader=reader
            )
            total = [t + w * v for t, v in zip(total, values, strict=True)]
        return total


def _resolve(reward: RewardFunc | str) -> RewardFunc:
    return get_reward(reward) if isinstance(reward, str) else reward


def combine(weights: Mapping[RewardFunc | str, float]) -> WeightedReward:
    """``combine({"em": 1.0, token_f1: 0.5})``: the weighted sum of rewards given by name or callable."""
    return WeightedReward(tuple((_resolve(fn), float(w)) for fn, w in weights.items()))


def weighted(*parts: tuple[RewardFunc | str, float]) -> WeightedReward:
    """``weighted(("em", 1.0), (token_f1, 0.5))``: like :func:`combine` but keeps duplicates and order."""
    return WeightedReward(tuple((_resolve(fn), float(w)) for fn, w in parts))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, RewardFunc] = {
    "em": exact_match,
    "f1": token_f1,
    "contains": answer_contains,
    "bleu": bleu,
    "rougeL": rouge_l,
    "loglik": answer_loglik,
}

_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*$")


def available_rewards() -> list[str]:
    return list(_REGISTRY)


def get_reward(name: str) -> RewardFunc:
    """A reward by name (``em``, ``f1``, ``contains``, ``bleu``, ``rougeL``, ``loglik``) or a weighted sum
    written ``"em+0.5*f1"`` (non-negative weights)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "+" in name or "*" in name:
        parts: list[tuple[RewardFunc | str, float]] = []
        for term in name.split("+"):
            m = _TERM.match(term)
            if not m or m.group(2) not in _REGISTRY:
                raise ValueError(f"cannot parse reward term {term.strip()!r} in {name!r}; {_choices()}")
            parts.append((m.group(2), float(m.group(1)) if m.group(1) else 1.0))
        return weighted(*parts)
    raise ValueError(f"unknown reward {name!r}; {_choices()}")


def _choices() -> str:
    return f"choose from {', '.join(_REGISTRY)} or a sum such as 'em+0.5*f1'"
