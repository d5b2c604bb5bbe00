"""The frozen reader (LLM) interface that silver-sequence search, RL and evaluation call.

A reader answers a question from an *ordered* list of passages. Everything that trains or evaluates the
bridge talks to readers only through :class:`Reader`, so a local Hugging Face model, a LangChain chat model,
a LlamaIndex LLM or a plain function are interchangeable.

Prompt layout (shared part first, so calls can reuse a cached prefix): system text, then the question,
then the passages in order, then the answer cue. Two prompts for the same question whose passage lists share
a prefix therefore share a token prefix too.

Every public call goes through :class:`~bgm_model.readers.call_cache.CallCache` (persistent, keyed by the
reader's ``name``, the call kind and the full prompt) and is de-duplicated within the batch; only the misses
reach the subclass hooks :meth:`Reader._answer_uncached` / :meth:`Reader._score_uncached`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from abc import ABC
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from bgm_model.readers.call_cache import CallCache, call_key, resolve_cache
from bgm_model.readers.templates import ReaderPrompt
from bgm_model.validation import check_unicode

logger = logging.getLogger(__name__)

CacheSpec = CallCache | str | os.PathLike[str] | bool | None


@dataclass(frozen=True)
class PromptTemplate:
    """How a question and its ordered passages become the reader's prompt.

    ``render`` returns plain text; chat readers send ``system`` as the system message and the rest as the
    user message. Passages are numbered from 1 in the order given (a repeated passage appears twice).
    """

    system: str = (
        "You answer questions using the given passages. Reply with the short answer only, "
        "a few words, no explanation."
    )
    question_format: str = "Question: {question}\n"
    passage_format: str = "Passage {number}: {text}\n"
    no_passages_text: str = ""
    answer_cue: str = "Question: {question}\nShort answer:"

    def user_message(self, question: str, passages: Sequence[str]) -> str:
        parts = [self.question_format.format(question=question)]
        if passages:
            parts += [self.passage_format.format(number=i + 1, text=p) for i, p in enumerate(passages)]
        elif self.no_passages_text:
            parts.append(self.no_passages_text)
        parts.append(self.answer_cue.format(question=question))
        return "".join(parts)

    def render(self, question: str, passages: Sequence[str]) -> str:
        return f"{self.system}\n\n{self.user_message(question, passages)}"

    def messages(self, question: str, passages: Sequence[str]) -> list[dict[str, str]]:
        """Chat messages (``role``/``content``): the system text, then the user message."""
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user_message(question, passages)},
        ]


@dataclass
class ReaderStats:
    """What a reader has spent. ``new_tokens`` (tokens actually run through the model) is the real cost."""

    calls: int = 0
    """Calls requested through the public methods (answers and scores)."""
    cache_hits: int = 0
    """Calls answered by the persistent cache."""
    computed: int = 0
    """Calls that reached the model (after the cache and de-duplication within a batch)."""
    prompt_tokens: int = 0
    """Tokens of the computed calls' full inputs (prompt, plus the answer when scoring); local readers only."""
    new_tokens: int = 0
    """Tokens the model processed for them: prompt tokens not served by a reused prefix, plus decoding steps."""
    reused_tokens: int = 0
    """Prompt tokens served by a reused KV-cache prefix."""
    generated_tokens: int = 0
    """Tokens produced by greedy decoding."""
    seconds: float = 0.0
    """Wall time spent in the model (computed calls only)."""

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_answer(text: str) -> str:
    """The reply's first non-empty line, stripped: the template asks for a short answer, so anything after a
    line break is commentary (and stopping there saves decoding steps)."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def check_inputs(
    questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str] | None = None
) -> None:
    """Check the arguments of a batched reader call: one passage list (and answer) per question, all strings.

    Raises ``TypeError`` / ``ValueError`` naming the bad entry.
    """
    # Fail here with a readable message rather than deep inside a tokenizer or torch.
    if isinstance(questions, str) or isinstance(passage_lists, str):
        raise TypeError(
            "questions and passage_lists must be sequences (one entry per call), not a single string"
        )
    if len(questions) != len(passage_lists):
        raise ValueError(f"got {len(questions)} questions but {len(passage_lists)} passage lists")
    if answers is not None:
        if isinstance(answers, str):
            raise TypeError("answers must be a sequence of strings (one per call), not a single string")
        if len(answers) != len(questions):
            raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    for i, (q, ps) in enumerate(zip(questions, passage_lists, strict=True)):
        if not isinstance(q, str):
            raise TypeError(f"questions[{i}] must be a str, got {type(q).__name__}")
        check_unicode(q, f"questions[{i}]")
        if isinstance(ps, str) or not isinstance(ps, Sequence):
            raise TypeError(f"passage_lists[{i}] must be a list of passage strings, got {type(ps).__name__}")
        for j, p in enumerate(ps):
            if not isinstance(p, str):
                raise TypeError(f"passage_lists[{i}][{j}] must be a str, got {type(p).__name__}")
            check_unicode(p, f"passage_lists[{i}][{j}]")
    if answers is not None:
        for i, a in enumerate(answers):
            if not isinstance(a, str):
                raise TypeError(f"answers[{i}] must be a str, got {type(a).__name__}")
            check_unicode(a, f"answers[{i}]")
            if not a.strip():
                raise ValueError(f"answers[{i}] is empty: an empty answer has no log-likelihood to score")


class Reader(ABC):
    """A frozen LLM that answers ``question`` given ``passages`` (in that order).

    Subclasses implement :meth:`_answer_uncached` (and optionally :meth:`_score_uncached`); the public
    methods add input checks, de-duplication within a batch and the persistent call cache.

    Args:
        name: a stable identifier of the model *and* its decoding settings; part of every cache key.
        template: how prompts are laid out: the default :class:`PromptTemplate`, or any
            :class:`~bgm_model.readers.templates.ReaderPrompt` (the user's own RAG prompt).
        cache: a :class:`CallCache`, a directory for one, ``True`` (default directory: ``$BGM_CACHE_DIR`` or
            ``~/.cache/bgm-bridge/reader``) or ``False``/``None`` (no persistent cache).
        first_line_only: keep only the first non-empty line of each answer (see :func:`clean_answer`).
    """

    #: A stable identifier of the model *and* its decoding settings; part of every cache key.
    name: str
    template: ReaderPrompt

    def __init__(
        self,
        name: str,
        template: ReaderPrompt | None = None,
        *,
        cache: CacheSpec = True,
        first_line_only: bool = True,
    ) -> None:
        if not name:
            raise ValueError("a reader needs a non-empty name: it is part of every cache key")
        if template is not None and not isinstance(template, ReaderPrompt):
            raise TypeError(
                f"template must have render(question, passages) and messages(question, passages), got "
                f"{type(template).__name__}; wrap a LangChain or LlamaIndex prompt in LangChainPrompt / "
                "LlamaIndexPrompt (bgm_integrations)"
            )
        self.name = name
        self.template = template if template is not None else PromptTemplate()
        self.cache: CallCache | None = resolve_cache(cache)
        self.first_line_only = first_line_only
        self.stats = ReaderStats()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, cache={getattr(self, 'cache', None)!r})"

    # -- hooks -------------------------------------------------------------------------------------------

    def prompt_text(self, question: str, passages: Sequence[str]) -> str:
        """The full prompt exactly as the model sees it; the cache key is built from it."""
        return self.template.render(question, passages)

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must implement _answer_uncached")

    def _score_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> list[float]:
        raise NotImplementedError(
            f"{type(self).__name__} cannot score answers; use a local reader or a served one whose server "
            "returns prompt log-probabilities"
        )

    def _answer_and_score_uncached(
        self,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        targets: Sequence[Sequence[str]],
    ) -> tuple[list[str], list[list[float]]]:
        """Greedy answers and the scores of ``targets[i]`` after prompt ``i``; readers that can do both in one
        pass over each prompt override this (the default runs the two hooks one after the other)."""
        answers = self._answer_uncached(questions, passage_lists)
        return list(answers), self._score_targets(questions, passage_lists, targets)

    def _score_targets(
        self,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        targets: Sequence[Sequence[str]],
    ) -> list[list[float]]:
        """The scores of ``targets[i]`` after prompt ``i``, through one flat :meth:`_score_uncached` call."""
        owners = [i for i, ts in enumerate(targets) for _ in ts]
        flat = self._score_uncached(
            [questions[i] for i in owners], [passage_lists[i] for i in owners], [t for ts in targets for t in ts]
        )
        scores: list[list[float]] = [[] for _ in targets]
        for i, s in zip(owners, flat, strict=True):
            scores[i].append(float(s))
        return scores

    # -- public API ----------------------------------------------------------------------------------------

    def answer_batch(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        """Greedy answers, one per (question, passages) pair, in input order."""
        check_inputs(questions, passage_lists)
        prompts = [self.prompt_text(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        keys = [call_key(self.name, "answer", p) for p in prompts]

        def compute(idx: list[int]) -> list[Any]:
            out = self._answer_uncached([questions[i] for i in idx], [passage_lists[i] for i in idx])
            return self._clean(out, len(idx))

        return self._through_cache(keys, compute)

    def answer(self, question: str, passages: Sequence[str]) -> str:
        return self.answer_batch([question], [passages])[0]

    @property
    def supports_scoring(self) -> bool:
        """Whether :meth:`score_batch` is available (local models; a served model where the server returns
        prompt log-probabilities)."""
        return type(self)._score_uncached is not Reader._score_uncached

    def score_batch(
        self,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        answers: Sequence[str],
    ) -> list[float]:
        """Mean per-token log-likelihood of ``answers[i]`` as the reply to prompt ``i``."""
        if not self.supports_scoring:
            raise NotImplementedError(
            f"{type(self).__name__} cannot score answers; use a local reader or a served one whose server "
            "returns prompt log-probabilities"
        )
        check_inputs(questions, passage_lists, answers)
        keys = [
            call_key(self.name, "score", self.prompt_text(q, ps), a)
            for q, ps, a in zip(questions, passage_lists, answers, strict=True)
        ]

        def compute(idx: list[int]) -> list[Any]:
            out = self._score_uncached(
                [questions[i] for i in idx], [passage_lists[i] for i in idx], [answers[i] for i in idx]
            )
            if len(out) != len(idx):
                raise RuntimeError(f"{type(self).__name__} returned {len(out)} scores for {len(idx)} calls")
            return [float(s) for s in out]

        scores = self._through_cache(keys, compute)
        return [float(s) if s is not None else -math.inf for s in scores]

    def answer_and_score_batch(
        self,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        targets: Sequence[Sequence[str]],
    ) -> tuple[list[str], list[list[float]]]:
        """:meth:`answer_batch` and :meth:`score_batch` of the same prompts in one call.

        Returns the greedy answer of every prompt and, for every prompt ``i``, the score of each string in
        ``targets[i]`` (e.g. its gold answers) as the reply to it: the two things silver-sequence search asks
        of each prompt. Results and cache entries are those of the two separate calls; a local reader with
        prefix reuse computes both from one pass over each prompt instead of running it again to score.
        """
        if not self.supports_scoring:
            raise NotImplementedError(
            f"{type(self).__name__} cannot score answers; use a local reader or a served one whose server "
            "returns prompt log-probabilities"
        )
        check_inputs(questions, passage_lists)
        if isinstance(targets, str) or len(targets) != len(questions):
            raise ValueError("targets must be a sequence with one list of strings per prompt")
        for i, ts in enumerate(targets):
            if isinstance(ts, str):
                raise TypeError(f"targets[{i}] must be a list of strings, not a single string")
            check_inputs([questions[i]] * len(ts), [passage_lists[i]] * len(ts), ts)
        prompts = [self.prompt_text(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        answer_keys = [call_key(self.name, "answer", p) for p in prompts]
        score_keys = [[call_key(self.name, "score", p, t) for t in ts] for p, ts in zip(prompts, targets, strict=True)]
        found_a, todo_a = self._lookup(answer_keys)
        found_s, todo_s = self._lookup([k for ks in score_keys for k in ks])
        # Prompts to run (once per distinct prompt), with the union of the targets still to score after each.
        need: dict[str, int] = dict(todo_a)
        missing: dict[str, list[str]] = {k: [] for k in need}
        for i, (ks, ts) in enumerate(zip(score_keys, targets, strict=True)):
            for k, t in zip(ks, ts, strict=True):
                if k in todo_s and t not in missing.setdefault(answer_keys[i], []):
                    need.setdefault(answer_keys[i], i)
                    missing[answer_keys[i]].append(t)
        if need:
            idx = list(need.values())
            start = time.perf_counter()
            answers, scores = self._answer_and_score_uncached(
                [questions[i] for i in idx], [passage_lists[i] for i in idx], [missing[k] for k in need]
            )
            answers = self._clean(answers, len(idx))
            if len(scores) != len(idx) or any(len(s) != len(missing[k]) for s, k in zip(scores, need)):
                raise RuntimeError(f"{type(self).__name__} returned scores that do not match the targets")
            seconds = time.perf_counter() - start
            new_s = {
                call_key(self.name, "score", prompts[i], t): float(s)
                for i, k, ss in zip(idx, need, scores, strict=True)
                for t, s in zip(missing[k], ss, strict=True)
            }
            got_a = {k: a for k, a in zip(need, answers, strict=True) if k in todo_a}
            self._store(found_a, {k: todo_a[k] for k in got_a}, list(got_a.values()), seconds)
            self._store(found_s, {k: todo_s[k] for k in todo_s}, [new_s[k] for k in todo_s], 0.0)
        found_scores = [[found_s[k] for k in ks] for ks in score_keys]
        return (
            [found_a[k] for k in answer_keys],
            [[float(s) if s is not None else -math.inf for s in ss] for ss in found_scores],
        )

    async def aanswer_batch(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]
    ) -> list[str]:
        """Async :meth:`answer_batch` (same cache); remote readers run their calls concurrently."""
        check_inputs(questions, passage_lists)
        prompts = [self.prompt_text(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        keys = [call_key(self.name, "answer", p) for p in prompts]
        found, todo = self._lookup(keys)
        if todo:
            idx = list(todo.values())
            start = time.perf_counter()
            out = await self._aanswer_uncached([questions[i] for i in idx], [passage_lists[i] for i in idx])
            self._store(found, todo, self._clean(out, len(idx)), time.perf_counter() - start)
        return [found[k] for k in keys]

    async def _aanswer_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]
    ) -> list[str]:
        # Local models: run in a worker thread so the event loop stays free.
        return await asyncio.to_thread(self._answer_uncached, questions, passage_lists)

    def _clean(self, answers: Sequence[str], expected: int) -> list[str]:
        if len(answers) != expected:
            raise RuntimeError(f"{type(self).__name__} returned {len(answers)} answers for {expected} calls")
        return [clean_answer(a) if self.first_line_only else a for a in answers]

    def _lookup(self, keys: list[str]) -> tuple[dict[str, Any], dict[str, int]]:
        """Cached values, and the first index of each distinct key still to compute (in first-seen order)."""
        stats = self._stats()
        stats.calls += len(keys)
        cache = getattr(self, "cache", None)
        found: dict[str, Any] = cache.get_many(keys) if cache is not None else {}
        stats.cache_hits += sum(k in found for k in keys)
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in found and k not in todo:
                todo[k] = i
        return found, todo

    def _store(self, found: dict[str, Any], todo: dict[str, int], values: list[Any], seconds: float) -> None:
        stats = self._stats()
        stats.seconds += seconds
        stats.computed += len(todo)
        new = dict(zip(todo, values, strict=True))
        cache = getattr(self, "cache", None)
        if cache is not None:
            # -inf (an impossible answer) is not valid JSON; store it as null.
            cache.put_many(
                {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in new.items()}
            )
        found.update(new)

    def _through_cache(self, keys: list[str], compute: Callable[[list[int]], list[Any]]) -> list[Any]:
        """Look ``keys`` up, compute each distinct miss once, store, and return values in key order."""
        found, todo = self._lookup(keys)
        if todo:
            start = time.perf_counter()
            values = compute(list(todo.values()))
            self._store(found, todo, values, time.perf_counter() - start)
        return [found[k] for k in keys]

    def _stats(self) -> ReaderStats:
        # Subclasses written before the stats existed may not call ``Reader.__init__``.
        if not hasattr(self, "stats"):
            self.stats = ReaderStats()
        return self.stats


@dataclass
class ReaderAgreement:
    """How far two readers agree on a fixed set of prompts (see :func:`reader_agreement`)."""

    calls: int
    """Prompts compared."""
    answer_agreement: float
    """Share of prompts whose greedy answers are identical (after cleaning), in [0, 1]."""
    scored: int
    """Prompts whose reference answer was scored by both readers (non-empty answers; 0 without scoring)."""
    max_score_diff: float | None
    """Largest |difference| of the two readers' ``score_batch`` (mean answer-token log-likelihood)."""
    mean_score_diff: float | None
    """Mean |difference| of those scores."""
    differing: list[int]
    """Indices of the prompts whose answers differ."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reader_agreement(
    reference: Reader,
    other: Reader,
    questions: Sequence[str],
    passage_lists: Sequence[Sequence[str]],
    answers: Sequence[str] | None = None,
) -> ReaderAgreement:
    """Compare two readers on the same prompts: greedy answer agreement, and score differences.

    Both readers answer every ``(question, passages)`` prompt. When both support scoring, both score the
    same answers (``answers`` if given, else the reference reader's own non-empty answers) and the max and
    mean absolute differences of the scores are reported (``None`` otherwise).
    """
    check_inputs(questions, passage_lists, answers)
    ref_answers = reference.answer_batch(questions, passage_lists)
    other_answers = other.answer_batch(questions, passage_lists)
    differing = [i for i, (a, b) in enumerate(zip(ref_answers, other_answers, strict=True)) if a != b]
    n = len(ref_answers)
    max_diff = mean_diff = None
    scored = 0
    if reference.supports_scoring and other.supports_scoring:
        targets = list(answers) if answers is not None else ref_answers
        idx = [i for i, a in enumerate(targets) if a.strip()]
        if idx:
            qs, ps, ts = [questions[i] for i in idx], [passage_lists[i] for i in idx], [targets[i] for i in idx]
            diffs = [
                abs(x - y)
                for x, y in zip(reference.score_batch(qs, ps, ts), other.score_batch(qs, ps, ts), strict=True)
            ]
            scored, max_diff, mean_diff = len(idx), max(diffs), sum(diffs) / len(diffs)
    return ReaderAgreement(
        calls=n,
        answer_agreement=(n - len(differing)) / n if n else 1.0,
        scored=scored,
        max_score_diff=max_diff,
        mean_score_diff=mean_diff,
        differing=differing,
    )
