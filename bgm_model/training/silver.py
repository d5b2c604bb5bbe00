"""Silver passage sequences (SPS): greedy search for the passage sequence the frozen reader answers best from.

This is the supervision of BGM's first training stage (Ke et al., ACL 2024, sec. 3.2). For one question with
candidates ``c_0 .. c_{n-1}`` (retriever order):

1. Start from the empty sequence and score it (no passages is a valid, sometimes best, target).
2. At each step, try appending every candidate that has been used fewer than ``max_repeats`` times (repeats
   are allowed: readers weigh a passage seen twice more, and the bridge may output an id twice).
3. Keep the best extension if it *improves* on the current sequence (with ``secondary_extends=False``, a
   passage after the first must improve the primary reward itself); otherwise stop. Also stop at
   ``max_length`` passages or (by default) as soon as the primary reward reaches its maximum.

**Scores and the tie rule.** Every sequence gets a pair ``(primary, secondary)``: ``primary`` is the reward
(e.g. exact match of the reader's answer), ``secondary`` a dense score that separates sequences the primary
ties on (exact match and containment are 0/1). Comparison is lexicographic:
``a`` beats ``b`` iff ``a.primary > b.primary + 1e-9``, or the primaries are equal (within ``1e-9``) and
``a.secondary > b.secondary + min_gain``. Among the candidates of a step, the first in retriever order wins
any remaining tie (we scan in order and replace the best only when strictly beaten). The same rule decides
continuation: an extension is accepted only if it beats the current sequence.

The default secondary (``"auto"``) is the gold-answer log-likelihood when the reader supports scoring (dense
even when every answer is wrong), else token F1 of the answer; none when the primary is itself one of them.

**Fewer reader calls** (``SilverConfig``; a *call* counts one prompt sent to the reader, generation or
scoring):

* batching: all extensions of one step go to the reader in one ``answer_batch`` (and one ``score_batch``)
  call; they share the prompt prefix (question + current sequence), which the reader can reuse.
* lockstep: ``lockstep`` questions (16) are searched together, one batch per step for all of them, so a
  local reader decodes ~100 prompts at a time instead of ~10; and the gold log-likelihood tie-breaker comes
  from ``Reader.answer_and_score_batch``, which ``HFReader`` computes in each prompt's own prefill pass.
  Neither changes a decision.
* dedupe: prompts with identical passage texts (e.g. duplicate candidates) are evaluated once per question.
* ``stop_at_max``: stop as soon as the primary reaches its maximum (e.g. EM = 1). Lossless when the secondary
  is bounded and then at its maximum too (EM = 1 implies F1 = 1); with the log-likelihood secondary it
  deliberately prefers the shortest sequence that solves the question over polishing the likelihood.
* ``top_m``: after the first step (each candidate alone, which greedy scores anyway), later steps only try
  the ``top_m`` best candidates by that single-passage score. Lossy: a passage useless alone but useful in
  combination (a second hop) is dropped unless it ranks in the top ``m``.

``SilverConfig.naive()`` switches all of them off: one call per prompt, every step scans every candidate.
Each record stores ``reader_calls`` (prompts actually sent) and ``naive_reader_calls``, the prompts naive greedy
sends along the same path: exact when naive greedy takes that path too (as in the toy environment), a lower
bound when ``top_m`` cut a candidate it would have picked or it would keep improving a secondary past the
maximum.

**Output.** :class:`SilverSequence` records; ``ids`` are 0-based indices into ``passages`` (the candidates in
retriever order), so ``[3, 3]`` means "candidate 3, twice". :func:`synthesize_to_file` appends one JSON line
per question as it is done and skips ids already in the file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from bgm_model.data import QAExample
from bgm_model.readers.base import Reader
from bgm_model.rewards import (
    AnswerLogLikelihood,
    RewardFunc,
    answer_loglik,
    get_reward,
    reward_batch,
    reward_max_value,
    reward_name,
    reward_needs_answer,
    token_f1,
)
from bgm_model.training._common import aside_path

logger = logging.getLogger(__name__)

__all__ = [
    "SilverConfig",
    "SilverSequence",
    "SilverSettingsError",
    "SynthesisStats",
    "read_silver",
    "silver_ids",
    "step_targets",
    "synthesize",
    "synthesize_one",
    "synthesize_to_file",
    "write_silver",
]

_EPS = 1e-9


@dataclass
class SilverConfig:
    """Settings of the greedy search (see the module docstring)."""

    max_length: int = field(default=5, metadata={"help": "most passages in a silver sequence"})
    max_repeats: int = field(default=2, metadata={"help": "most times one candidate may appear"})
    secondary: str | RewardFunc | None = field(
        default="auto",
        metadata={"help": "tie-breaking dense score: 'auto', a reward name/callable, or None"},
    )
    min_gain: float = field(default=1e-6, metadata={"help": "smallest secondary gain that counts as better"})
    top_m: int | None = field(
        default=5, metadata={"help": "after step 1 only extend with the top-M single passages (None: all)"}
    )
    stop_at_max: bool = field(
        default=True, metadata={"help": "stop once the primary reward is at its maximum"}
    )
    secondary_extends: bool = field(
        default=True,
        metadata={"help": "whether a secondary gain alone (primary tied) may lengthen a non-empty sequence; "
                  "False: later passages must raise the primary reward (the first may always come from the "
                  "secondary, a best effort where no passage yields a correct answer)"},
    )
    batch: bool = field(default=True, metadata={"help": "one reader call per step instead of one per prompt"})
    dedupe: bool = field(default=True, metadata={"help": "evaluate identical prompts once per question"})
    lockstep: int = field(
        default=16,
        metadata={"help": "questions searched together, their prompts of a step sent in one reader batch (needs "
                  "batch; does not change the results)"},
    )

    def __post_init__(self) -> None:
        if self.max_length < 0:
            raise ValueError("max_length must be >= 0")
        if self.max_repeats < 1:
            raise ValueError("max_repeats must be >= 1")
        if self.top_m is not None and self.top_m < 1:
            raise ValueError("top_m must be >= 1 or None")
        if self.min_gain < 0:
            raise ValueError("min_gain must be >= 0")
        if self.lockstep < 1:
            raise ValueError("lockstep must be >= 1")

    @classmethod
    def naive(cls, **overrides: Any) -> SilverConfig:
        """Plain greedy search: no batching, dedupe, pruning or early stop (the baseline for call counts)."""
        base = cls(top_m=None, stop_at_max=False, batch=False, dedupe=False)
        return replace(base, **overrides)


@dataclass
class SilverSequence:
    """The silver passage sequence of one question, with how it was found."""

    id: str
    question: str
    passages: list[str]
    answers: list[str]
    ids: list[int]
    answer: str | None
    score: float
    secondary_score: float | None
    trajectory: list[dict[str, Any]]
    stop_reason: str
    reward: str
    secondary: str | None
    reader_calls: int
    #: Reader calls this question's prompts went out in (shared with the other questions of a lockstep round).
    reader_batches: int
    naive_reader_calls: int
    source: str | None = None
    #: Every extension each step tried, ``[candidate id, primary, secondary]`` in retriever order (also the
    #: step that found no improvement), so the data can be analysed or re-decided without the reader.
    scanned: list[list[list[float]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SilverSequence:
        """A record from its JSON form; ``ValueError`` naming missing fields (rather than a ``TypeError``)."""
        problem = _record_problem(data)
        if problem:
            raise ValueError(problem)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def passages_in_order(self) -> list[str]:
        """The silver sequence as passage texts (what the reader is shown)."""
        return [self.passages[i] for i in self.ids]


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


@dataclass
class SynthesisStats:
    """Totals of a :func:`synthesize_to_file` run (questions already in the file are not counted)."""

    written: int = 0
    skipped_done: int = 0
    skipped_no_answers: int = 0
    reader_calls: int = 0
    #: Reader method calls of the run (a lockstep round's call counts once, not once per question in it).
    reader_batches: int = 0
    naive_reader_calls: int = 0

    @property
    def call_reduction(self) -> float:
        """1 - calls / naive calls (0 when nothing was done)."""
        return 1.0 - self.reader_calls / self.naive_reader_calls if self.naive_reader_calls else 0.0


class _CountingReader(Reader):
    """Delegates to a reader and counts prompts and calls (so rewards that call the reader are counted too)."""

    def __init__(self, inner: Reader) -> None:
        super().__init__(inner.name, inner.template, cache=False)
        self.inner = inner
        self.prompts = 0
        self.calls = 0

    def answer_batch(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        self.prompts += len(questions)
        self.calls += 1
        answers = self.inner.answer_batch(questions, passage_lists)
        if len(answers) != len(questions):
            raise RuntimeError(
                f"reader {self.name} returned {len(answers)} answers for {len(questions)} prompts"
            )
        return answers

    @property
    def supports_scoring(self) -> bool:
        return self.inner.supports_scoring

    def score_batch(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> list[float]:
        self.prompts += len(questions)
        self.calls += 1
        return self.inner.score_batch(questions, passage_lists, answers)

    def answer_and_score_batch(
        self,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        targets: Sequence[Sequence[str]],
    ) -> tuple[list[str], list[list[float]]]:
        # Counted as the two calls it replaces.
        self.prompts += len(questions) + sum(map(len, targets))
        self.calls += 2
        return self.inner.answer_and_score_batch(questions, passage_lists, targets)


def _resolve_secondary(
    spec: str | RewardFunc | None, primary: RewardFunc, reader: Reader
) -> RewardFunc | None:
    if spec is None:
        return None
    if spec == "auto":
        dense = answer_loglik if reader.supports_scoring else token_f1
        return None if dense is primary or primary is answer_loglik else dense
    secondary = get_reward(spec) if isinstance(spec, str) else spec
    return None if secondary is primary else secondary


@dataclass
class _Eval:
    primary: float
    secondary: float
    answer: str | None


def _beats(a: _Eval, b: _Eval, min_gain: float) -> bool:
    if a.primary > b.primary + _EPS:
        return True
    return abs(a.primary - b.primary) <= _EPS and a.secondary > b.secondary + min_gain


#: What a search asks of the evaluator: the passage-text tuples to evaluate (an empty one is the empty sequence).
_Request = list[tuple[str, ...]]


@dataclass
class _Outcome:
    ids: list[int]
    final: _Eval
    trajectory: list[dict[str, Any]]
    stop: str
    naive_states: int
    scanned: list[list[list[float]]]


class _Search:
    """Greedy search for one example, as a generator of evaluation requests (so that many searches can share
    the reader's batches: see :class:`_Evaluator`); keeps the per-question prompt memo and its reader cost."""

    def __init__(
        self, example: QAExample, secondary: RewardFunc | None, config: SilverConfig, max_value: float | None
    ) -> None:
        self.ex = example
        self.secondary = secondary
        self.config = config
        self.max_value = max_value
        self.memo: dict[tuple[str, ...], _Eval] = {}
        self.states_sent = 0  # prompts-worth of states evaluated after dedupe
        self.prompts = 0.0  # reader prompts spent on this question (its share of shared batches)
        self.batches = 0  # reader calls this question took part in

    def _evaluate(self, states: list[tuple[int, ...]]) -> Generator[_Request, list[_Eval], list[_Eval]]:
        keys = [tuple(self.ex.passages[i] for i in s) for s in states]
        todo = list(dict.fromkeys(k for k in keys if k not in self.memo)) if self.config.dedupe else keys
        self.states_sent += len(todo)
        results = (yield todo) if todo else []
        if self.config.dedupe:
            self.memo.update(zip(todo, results, strict=True))
            return [self.memo[k] for k in keys]
        return results

    def run(self) -> Generator[_Request, list[_Eval], _Outcome]:
        cfg = self.config
        n = len(self.ex.passages)
        state: tuple[int, ...] = ()
        counts: Counter[int] = Counter()
        current = (yield from self._evaluate([state]))[0]
        trajectory = [self._step_record(state, current, evaluated=1)]
        naive_states = 1
        pool = list(range(n))
        scanned: list[list[list[float]]] = []

        def solved(e: _Eval) -> bool:
            return cfg.stop_at_max and self.max_value is not None and e.primary >= self.max_value - _EPS

        stop = "solved" if solved(current) else "max_length"
        if stop != "solved":
            for step in range(1, cfg.max_length + 1):
                naive_states += sum(1 for i in range(n) if counts[i] < cfg.max_repeats)
                candidates = [i for i in pool if counts[i] < cfg.max_repeats]
                if not candidates:
                    stop = "no_candidates"
                    break
                results = yield from self._evaluate([state + (i,) for i in candidates])
                scanned.append([[i, r.primary, r.secondary] for i, r in zip(candidates, results, strict=True)])
                best_i, best = candidates[0], results[0]
                for i, r in zip(candidates[1:], results[1:], strict=True):
                    if _beats(r, best, cfg.min_gain):  # strict, so the earliest candidate wins ties
                        best_i, best = i, r
                if step == 1 and cfg.top_m is not None and cfg.top_m < len(candidates):
                    pool = self._top_m(candidates, results, cfg.top_m)
                if not _beats(best, current, cfg.min_gain) or (
                    state and not cfg.secondary_extends and best.primary <= current.primary + _EPS
                ):
                    stop = "no_improvement"
                    break
                state, current = state + (best_i,), best
                counts[best_i] += 1
                trajectory.append(self._step_record(state, current, evaluated=len(candidates)))
                if solved(current):
                    stop = "solved"
                    break
        return _Outcome(list(state), current, trajectory, stop, naive_states, scanned)

    def _top_m(self, candidates: list[int], results: list[_Eval], m: int) -> list[int]:
        # Rank with the same lexicographic rule (primary, secondary, earlier first); keep retriever order.
        ranked = sorted(range(len(candidates)), key=lambda j: (-results[j].primary, -results[j].secondary, j))
        return sorted(candidates[j] for j in ranked[:m])

    def _step_record(self, state: tuple[int, ...], e: _Eval, *, evaluated: int) -> dict[str, Any]:
        return {
            "ids": list(state),
            "answer": e.answer,
            "primary": e.primary,
            "secondary": e.secondary if self.secondary is not None else None,
            "evaluated": evaluated,
        }


class _Evaluator:
    """Evaluates the requests of many searches: with ``config.batch`` all their prompts go to the reader in
    one ``answer_batch`` (and one scoring call), else one call per prompt.

    When the reader can, answers and the gold log-likelihood tie-breaker come from one
    :meth:`~bgm_model.readers.base.Reader.answer_and_score_batch` (a local reader then scores the golds in
    the prompt's own forward pass). Each search is charged its share of the reader prompts of a batch (exact
    for rewards whose reader prompts are one answer and/or one score per gold).
    """

    def __init__(
        self, reader: Reader, primary: RewardFunc, secondary: RewardFunc | None, config: SilverConfig
    ) -> None:
        self.reader = _CountingReader(reader)
        self.primary = primary
        self.secondary = secondary
        self.config = config
        self.needs_answer = reward_needs_answer(primary) or (
            secondary is not None and reward_needs_answer(secondary)
        )
        loglik = [r for r in (primary, secondary) if isinstance(r, AnswerLogLikelihood)]
        self.fused = self.needs_answer and secondary in loglik and primary not in loglik and reader.supports_scoring
        self.scores_golds = bool(loglik)

    def __call__(self, requests: list[tuple[_Search, _Request]]) -> list[list[_Eval]]:
        items = [(search, key) for search, keys in requests for key in keys]
        chunks = [items] if self.config.batch else [[item] for item in items]
        evals = [e for chunk in chunks if chunk for e in self._evaluate(chunk)]
        out, at = [], 0
        for _, keys in requests:
            out.append(evals[at : at + len(keys)])
            at += len(keys)
        return out

    def _evaluate(self, items: list[tuple[_Search, tuple[str, ...]]]) -> list[_Eval]:
        prompts_before, calls_before = self.reader.prompts, self.reader.calls
        n = len(items)
        questions = [search.ex.question for search, _ in items]
        golds = [search.ex.answers for search, _ in items]
        passage_lists = [list(key) for _, key in items]
        secondary: list[float] | None = None
        if self.fused:
            targets = AnswerLogLikelihood.targets(golds)
            answers, target_scores = self.reader.answer_and_score_batch(questions, passage_lists, targets)
            secondary = AnswerLogLikelihood.best(target_scores)
        elif self.needs_answer:
            answers = self.reader.answer_batch(questions, passage_lists)
        else:
            answers = [""] * n

        def score(reward: RewardFunc) -> list[float]:
            return reward_batch(
                reward, answers, golds, questions=questions, passage_lists=passage_lists, reader=self.reader
            )

        primary = score(self.primary)
        if secondary is None:
            secondary = score(self.secondary) if self.secondary is not None else [0.0] * n
        self._charge(items, self.reader.prompts - prompts_before, self.reader.calls - calls_before)
        return [
            _Eval(float(p), float(s), a if self.needs_answer else None)
            for p, s, a in zip(primary, secondary, answers, strict=True)
        ]

    def _charge(self, items: list[tuple[_Search, tuple[str, ...]]], prompts: int, calls: int) -> None:
        golds = AnswerLogLikelihood.targets([s.ex.answers for s, _ in items]) if self.scores_golds else None
        weights = [int(self.needs_answer) + (len(golds[j]) if golds else 0) for j in range(len(items))]
        if not sum(weights):
            weights = [1] * len(items)
        for (search, _), w in zip(items, weights, strict=True):
            search.prompts += prompts * w / sum(weights)
        for search in {id(s): s for s, _ in items}.values():
            search.batches += calls


def _run_searches(
    examples: Iterable[QAExample],
    reader: Reader,
    primary: RewardFunc,
    secondary: RewardFunc | None,
    config: SilverConfig,
) -> Iterator[tuple[_Search, _Outcome]]:
    """Run the searches of ``examples`` in lockstep, ``config.lockstep`` at a time, and yield them in order.

    Each round sends the current requests of every running search to the reader together, so the reader's
    batches hold the prompts of many questions (on a CPU, batched decoding of ~50 rows costs little more
    per step than of ~5). A finished search's place goes to the next question at once. Lockstep changes which
    prompts share a batch, never a search's decisions.
    """
    evaluate = _Evaluator(reader, primary, secondary, config)
    max_value = reward_max_value(primary)
    width = config.lockstep if config.batch else 1
    queue = iter(examples)
    running: list[tuple[int, _Search, Generator[_Request, list[_Eval], _Outcome], _Request]] = []
    finished: dict[int, tuple[_Search, _Outcome]] = {}
    started = emitted = 0

    def start(index: int, search: _Search, steps: Generator[_Request, list[_Eval], _Outcome], reply: Any) -> None:
        try:
            running.append((index, search, steps, steps.send(reply)))
        except StopIteration as done:
            finished[index] = (search, done.value)

    while True:
        while len(running) < width:
            example = next(queue, None)
            if example is None:
                break
            search = _Search(example, secondary, config, max_value)
            start(started, search, search.run(), None)
            started += 1
        while emitted in finished:
            yield finished.pop(emitted)
            emitted += 1
        if not running:
            return
        replies = evaluate([(search, request) for _, search, _, request in running])
        advancing, running[:] = list(running), []
        for (index, search, steps, _), reply in zip(advancing, replies, strict=True):
            start(index, search, steps, reply)


def _naive_steps_after(stop: str, length: int, max_length: int) -> bool:
    """Whether naive greedy would scan one more step than we did (it has no early stop at the maximum)."""
    return stop == "solved" and length < max_length


def _record(search: _Search, outcome: _Outcome, primary: RewardFunc, config: SilverConfig) -> SilverSequence:
    example, secondary = search.ex, search.secondary
    naive_states = outcome.naive_states
    if _naive_steps_after(outcome.stop, len(outcome.ids), config.max_length):
        # Naive greedy does not stop at the maximum: it scans one more step and finds no improvement.
        counts = Counter(outcome.ids)
        naive_states += sum(1 for i in range(len(example.passages)) if counts[i] < config.max_repeats)
    # Every state costs the same prompts (one generation and/or one scoring per gold), so scale by that.
    prompts_per_state = search.prompts / search.states_sent if search.states_sent else 0.0
    return SilverSequence(
        id=example.id,
        question=example.question,
        passages=list(example.passages),
        answers=list(example.answers),
        ids=outcome.ids,
        answer=outcome.final.answer,
        score=outcome.final.primary,
        secondary_score=outcome.final.secondary if secondary is not None else None,
        trajectory=outcome.trajectory,
        stop_reason=outcome.stop,
        reward=reward_name(primary),
        secondary=reward_name(secondary) if secondary is not None else None,
        reader_calls=round(search.prompts),
        reader_batches=search.batches,
        naive_reader_calls=round(naive_states * prompts_per_state),
        source=example.source,
        scanned=outcome.scanned,
    )


def synthesize_one(
    example: QAExample,
    reader: Reader,
    *,
    reward: str | RewardFunc = "em",
    config: SilverConfig | None = None,
) -> SilverSequence:
    """The silver sequence of one example (see the module docstring for the search and tie rule)."""
    if not example.answers:
        raise ValueError(f"example {example.id!r} has no gold answers; a silver sequence needs them")
    return next(synthesize([example], reader, reward=reward, config=config))


def synthesize(
    examples: Iterable[QAExample],
    reader: Reader,
    *,
    reward: str | RewardFunc = "em",
    config: SilverConfig | None = None,
    skip_ids: Iterable[str] = (),
) -> Iterator[SilverSequence]:
    """Silver sequences of ``examples``, lazily and in order (searched ``config.lockstep`` at a time).

    Examples whose id is in ``skip_ids`` are skipped silently, those without gold answers with a warning.
    Duplicate ids raise ``ValueError`` (files resume by id, so a duplicate would be lost).
    """
    config = config or SilverConfig()
    primary = get_reward(reward) if isinstance(reward, str) else reward
    secondary = _resolve_secondary(config.secondary, primary, reader)
    skip = set(skip_ids)

    def todo() -> Iterator[QAExample]:
        seen: set[str] = set()
        for ex in examples:
            if ex.id in seen:
                raise ValueError(f"duplicate example id {ex.id!r}")
            seen.add(ex.id)
            if ex.id in skip:
                continue
            if not ex.answers:
                logger.warning("skipping example %r: no gold answers", ex.id)
                continue
            yield ex

    for search, outcome in _run_searches(todo(), reader, primary, secondary, config):
        yield _record(search, outcome, primary, config)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def _repair_tail(path: Path) -> None:
    """Drop a partial last line (a crash mid-write) so appended records start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a truncated last line (%d bytes)", path, len(data) - cut)
        f.truncate(cut)


def write_silver(records: Iterable[SilverSequence], path: str | os.PathLike[str]) -> int:
    """Append records to a JSON Lines file, one flushed line each (a crash loses at most the current one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            n += 1
    return n


def _required_fields() -> list[str]:
    return [f.name for f in fields(SilverSequence) if f.default is MISSING and f.default_factory is MISSING]


def _record_problem(data: Any) -> str | None:
    """Why ``data`` is not a silver record (``None`` if it is one), with a hint when it is a trace record."""
    if not isinstance(data, dict):
        return f"expected a JSON object (a silver record), got {type(data).__name__}"
    missing = [k for k in _required_fields() if k not in data]
    if not missing:
        return None
    problem = f"missing field{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}"
    if "trace_id" in data or "schema_version" in data:
        problem += (
            " (is this a traces file? build silver sequences from traces with "
            "`bgm synthesize TRACES.jsonl --traces -o SILVER.jsonl`)"
        )
    return problem


def _iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a silver file; a line that is not one raises ``ValueError`` naming file and line."""
    with open(path, "rb") as f:
        lines = f.readlines()
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        truncated = lineno == len(lines) and not raw.endswith(b"\n")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if truncated:
                logger.warning("%s: ignoring a truncated last line", path)
                return
            reason = e.msg if isinstance(e, json.JSONDecodeError) else f"not UTF-8: {e.reason}"
            raise ValueError(f"{path}:{lineno}: not valid JSON ({reason})") from e
        except (RecursionError, ValueError) as e:
            # Complete JSON that Python cannot decode ("[[[[...]]]]" past the recursion limit, huge integers).
            raise ValueError(f"{path}:{lineno}: cannot decode the JSON ({type(e).__name__})") from None
        problem = _record_problem(data)
        if problem:
            raise ValueError(f"{path}:{lineno}: {problem}")
        yield data


def read_silver(path: str | os.PathLike[str]) -> list[SilverSequence]:
    """All records of a silver file (a truncated last line from a crash is ignored with a warning).

    A line that is not a silver record (not a JSON object, missing fields, e.g. a traces file) raises
    ``ValueError`` naming the file, the line and the missing fields.
    """
    return [SilverSequence.from_dict(d) for d in _iter_records(Path(path))]


def silver_ids(path: str | os.PathLike[str]) -> set[str]:
    """Ids already in a silver file (empty if it does not exist).

    Checks every line as :func:`read_silver` does, so resuming into a file that is not a silver file fails
    before any reader call rather than after the whole run.
    """
    path = Path(path)
    return {str(d["id"]) for d in _iter_records(path)} if path.exists() else set()


class SilverSettingsError(ValueError):
    """A silver file was made with other search settings than the ones asked for."""


def settings_path(path: str | os.PathLike[str]) -> Path:
    """Where the search settings of the silver file ``path`` are kept."""
    path = Path(path)
    return path.with_name(f"{path.stem}.settings.json")


def _settings(reward: str | RewardFunc, config: SilverConfig) -> dict[str, Any]:
    primary = get_reward(reward) if isinstance(reward, str) else reward
    data = asdict(config)
    del data["lockstep"]  # how many questions share a batch changes the speed, not the sequences
    secondary = data["secondary"]
    data["secondary"] = secondary if secondary is None or isinstance(secondary, str) else reward_name(secondary)
    return {"reward": reward_name(primary), **data}


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    sidecar = settings_path(path)
    if sidecar.exists():
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
        if saved != settings:
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            diff = ", ".join(f"{k}: {saved.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
            raise SilverSettingsError(
                f"{path} was made with other search settings ({diff}); resume it with those settings, or "
                "write to another file"
            )
        return
    if path.exists() and path.stat().st_size:
        logger.warning("%s has no %s: assuming it was made with the current settings", path, sidecar.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def synthesize_to_file(
    examples: Iterable[QAExample],
    reader: Reader,
    path: str | os.PathLike[str],
    *,
    reward: str | RewardFunc = "em",
    config: SilverConfig | None = None,
    resume: bool = True,
    set_aside_mismatched: bool = False,
    log_every: int = 10,
) -> SynthesisStats:
    """Synthesize and append to ``path`` question by question, skipping ids already there if ``resume``.

    The search settings (reward and :class:`SilverConfig`) are kept beside the file in
    ``<stem>.settings.json``; resuming a file made with other settings raises :class:`SilverSettingsError`
    rather than mixing two kinds of targets in one file (a file without one is assumed to match). With
    ``set_aside_mismatched`` such a file is renamed to ``<stem>.<n>.jsonl`` (kept, with its settings) and a
    new one is started: what a pipeline re-run with changed settings wants (the reader cache still has its
    calls).
    """
    path = Path(path)
    if path.exists() and not resume:
        raise FileExistsError(f"{path} exists; pass resume=True to continue it or choose another path")
    if resume and path.exists():
        silver_ids(path)  # a file that is not a silver file fails here, before a settings file is written
    config = config or SilverConfig()
    settings = _settings(reward, config)
    try:
        _check_settings(path, settings)
    except SilverSettingsError as e:
        if not set_aside_mismatched:
            raise
        aside = aside_path(path)
        if path.exists():
            path.rename(aside)
        settings_path(path).rename(settings_path(aside))
        logger.warning("%s; moved it to %s and starting a new file", e, aside)
        _check_settings(path, settings)
    examples = list(examples)
    done = silver_ids(path) if resume else set()
    stats = SynthesisStats(skipped_done=sum(1 for ex in examples if ex.id in done))
    stats.skipped_no_answers = sum(1 for ex in examples if ex.id not in done and not ex.answers)
    if stats.skipped_done:
        logger.info("%s: %d of %d questions already done, resuming", path, stats.skipped_done, len(examples))
    todo = len(examples) - stats.skipped_done - stats.skipped_no_answers

    counting = _CountingReader(reader)

    def counted() -> Iterator[SilverSequence]:
        from tqdm.auto import tqdm

        records = synthesize(examples, counting, reward=reward, config=config, skip_ids=done)
        for rec in tqdm(records, total=todo, desc="silver sequences", unit="q"):
            stats.written += 1
            stats.reader_calls += rec.reader_calls
            stats.reader_batches = counting.calls
            stats.naive_reader_calls += rec.naive_reader_calls
            if log_every and stats.written % log_every == 0:
                logger.info(
                    "%d/%d silver sequences, %d reader calls (naive greedy: %d)",
                    stats.written,
                    todo,
                    stats.reader_calls,
                    stats.naive_reader_calls,
                )
            yield rec

    write_silver(counted(), path)
    stats.reader_batches = counting.calls
    logger.info(
        "wrote %d silver sequences to %s: %d reader calls in %d batches (naive greedy: %d, -%.0f%%)",
        stats.written,
        path,
        stats.reader_calls,
        stats.reader_batches,
        stats.naive_reader_calls,
        100 * stats.call_reduction,
    )
    return stats
