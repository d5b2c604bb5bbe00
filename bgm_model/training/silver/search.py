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

**Output.** :class:`~bgm_model.training.silver.sequence.SilverSequence` records; ``ids`` are 0-based indices
into ``passages`` (the candidates in retriever order), so ``[3, 3]`` means "candidate 3, twice".
:func:`~bgm_model.training.silver.records.synthesize_to_file` appends one JSON line per question as it is done
and skips ids already in the file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
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
from bgm_model.training.silver.sequence import SilverSequence

logger = logging.getLogger(__name__)

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


class CountingReader(Reader):
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


def resolve_secondary(
    spec: str | RewardFunc | None, primary: RewardFunc, reader: Reader
) -> RewardFunc | None:
    """The tie-breaking score the search uses: ``"auto"`` is the gold-answer log-likelihood where ``reader``
    can score answers, else token F1; ``None`` where it would only repeat the primary reward."""
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
        self.reader = CountingReader(reader)
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


@dataclass(frozen=True)
class SearchProgress:
    """Where a :func:`synthesize` run stands after one lockstep round (its ``progress`` callback's argument).

    Searches finish out of order (a question solved by its first passage ends rounds before its neighbours)
    while records are yielded in order, so a caller that counts records sees nothing move until the slowest
    question of a lockstep group is done; ``finished`` moves as the work does.
    """

    round: int
    """Lockstep rounds so far (each one reader batch of every running search; more without batching)."""
    finished: int
    """Questions whose search ended in this round."""
    done: int
    """Questions whose search has ended so far (yielded or waiting for an earlier one to end)."""
    running: int
    """Searches still running."""


ProgressCallback = Callable[[SearchProgress], None]


def _run_searches(
    examples: Iterable[QAExample],
    reader: Reader,
    primary: RewardFunc,
    secondary: RewardFunc | None,
    config: SilverConfig,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[_Search, _Outcome]]:
    """Run the searches of ``examples`` in lockstep, ``config.lockstep`` at a time, and yield them in order.

    Each round sends the current requests of every running search to the reader together, so the reader's
    batches hold the prompts of many questions (on a CPU, batched decoding of ~50 rows costs little more
    per step than of ~5). A finished search's place goes to the next question at once. Lockstep changes which
    prompts share a batch, never a search's decisions. ``progress`` is called after every round, before the
    records it completed are yielded.
    """
    evaluate = _Evaluator(reader, primary, secondary, config)
    max_value = reward_max_value(primary)
    width = config.lockstep if config.batch else 1
    queue = iter(examples)
    running: list[tuple[int, _Search, Generator[_Request, list[_Eval], _Outcome], _Request]] = []
    finished: dict[int, tuple[_Search, _Outcome]] = {}
    started = emitted = rounds = done = 0

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
        rounds += 1
        if progress is not None:
            ended = emitted + len(finished) - done  # a search never ends before its first round
            done += ended
            progress(SearchProgress(round=rounds, finished=ended, done=done, running=len(running)))


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
    progress: ProgressCallback | None = None,
) -> Iterator[SilverSequence]:
    """Silver sequences of ``examples``, lazily and in order (searched ``config.lockstep`` at a time).

    Examples whose id is in ``skip_ids`` are skipped silently, those without gold answers with a warning.
    Duplicate ids raise ``ValueError`` (files resume by id, so a duplicate would be lost). ``progress`` is
    called with a :class:`SearchProgress` after every lockstep round, also while the records of the round
    wait for an earlier, slower question (what a progress bar should follow).
    """
    config = config or SilverConfig()
    primary = get_reward(reward) if isinstance(reward, str) else reward
    secondary = resolve_secondary(config.secondary, primary, reader)
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

    for search, outcome in _run_searches(todo(), reader, primary, secondary, config, progress):
        yield _record(search, outcome, primary, config)
