"""Evaluate passage arrangements (a bridge, or baselines) with a frozen reader on a QA dataset.

For every example and every arrangement the reader answers from the arranged passages; the answer is scored
with exact match, token F1 and answer containment against the gold answers. Calls are ordered question by
question, so the prompts of one question (which share the system text and the question) follow each other
and a local reader reuses their common prefix; the reader's cache makes a re-run free.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bgm_model.data import QAExample
from bgm_model.readers.base import Reader
from bgm_model.rewards import answer_contains, exact_match, token_f1

from .arrangements import Arrangement

logger = logging.getLogger(__name__)

METRICS = {"em": exact_match, "f1": token_f1, "contains": answer_contains}


@dataclass
class MethodResult:
    """Scores of one arrangement over the evaluated examples."""

    name: str
    em: float
    f1: float
    contains: float
    prompt_tokens: float
    """Mean prompt length in reader tokens (words for readers without a tokenizer)."""
    passages: float
    """Mean number of passages shown (repeats counted)."""
    arrange_ms: float
    """Mean time to arrange one example (the bridge's latency, ~0 for fixed heuristics)."""
    per_example: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def interval(self, metric: str, *, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
        """Bootstrap confidence interval of ``metric``'s mean over examples."""
        return bootstrap_ci([row[metric] for row in self.per_example], samples=samples, seed=seed, level=level)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("per_example")
        return data


@dataclass
class EvaluationReport:
    methods: list[MethodResult]
    n_examples: int
    reader: str
    reader_seconds: float
    reader_calls: int

    def by_name(self, name: str) -> MethodResult:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    def table(self, *, ci_metric: str | None = None) -> str:
        """A Markdown table, one row per method (with a bootstrap CI column for ``ci_metric``)."""
        header = "| method | EM | F1 | contains | prompt tokens | passages | arrange ms |"
        rule = "|---|---|---|---|---|---|---|"
        if ci_metric:
            header = header[:-1] + f"| {ci_metric} 95% CI |"
            rule += "---|"
        rows = [header, rule]
        for m in self.methods:
            row = (f"| {m.name} | {m.em:.3f} | {m.f1:.3f} | {m.contains:.3f} | {m.prompt_tokens:.0f} | "
                   f"{m.passages:.1f} | {m.arrange_ms:.1f} |")
            if ci_metric:
                lo, hi = m.interval(ci_metric)
                row += f" [{lo:.3f}, {hi:.3f}] |"
            rows.append(row)
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_examples": self.n_examples, "reader": self.reader, "reader_seconds": self.reader_seconds,
            "reader_calls": self.reader_calls, "methods": [asdict(m) for m in self.methods],
        }


def bootstrap_ci(values: Sequence[float], *, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (``scipy.stats.bootstrap``); constant values: that value twice."""
    if not values:
        return (float("nan"), float("nan"))
    arr = np.asarray(values, dtype=float)
    if np.all(arr == arr[0]):  # every resample has this mean (and scipy needs two distinct observations)
        return (float(arr[0]), float(arr[0]))
    from scipy.stats import bootstrap

    result = bootstrap(
        (arr,), np.mean, n_resamples=samples, confidence_level=level, method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def prompt_tokens(reader: Reader, question: str, passages: Sequence[str]) -> int:
    """Prompt length in the reader's tokens when it has a tokenizer, else in words."""
    encode = getattr(reader, "encode_prompt", None)
    if callable(encode):
        return len(encode(question, passages))
    return len(reader.template.render(question, passages).split())


def evaluate(
    examples: Sequence[QAExample],
    reader: Reader,
    methods: Sequence[Arrangement],
    *,
    batch_size: int = 32,
    show_progress: bool = True,
) -> EvaluationReport:
    """Answer every example with every arrangement and score the answers.

    ``batch_size`` examples are arranged at a time (the bridge runs batched); their prompts for all
    methods go to the reader in one ``answer_batch`` call, grouped by question.
    """
    if not examples:
        raise ValueError("nothing to evaluate: no examples")
    if not methods:
        raise ValueError("nothing to evaluate: no methods")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    missing = [ex.id for ex in examples if not ex.answers]
    if missing:
        raise ValueError(f"{len(missing)} examples have no gold answers (e.g. {missing[0]!r}); cannot score them")

    rows: dict[str, list[dict[str, Any]]] = {m.name: [] for m in methods}
    for m in methods:
        m.seconds = 0.0
    reader_seconds, calls = 0.0, 0
    progress = _progress(len(examples), show_progress)
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        arranged = {m.name: m(chunk) for m in methods}
        questions, passage_lists, owners = [], [], []
        for j, ex in enumerate(chunk):
            for m in methods:
                ids = arranged[m.name][j]
                questions.append(ex.question)
                passage_lists.append([ex.passages[i] for i in ids])
                owners.append((m.name, j, ids))
        t0 = time.perf_counter()
        answers = reader.answer_batch(questions, passage_lists)
        reader_seconds += time.perf_counter() - t0
        calls += len(answers)
        for (name, j, ids), q, ps, answer in zip(owners, questions, passage_lists, answers):
            ex = chunk[j]
            row = {"id": ex.id, "ids": ids, "answer": answer, "prompt_tokens": prompt_tokens(reader, q, ps)}
            row.update({metric: fn(answer, ex.answers) for metric, fn in METRICS.items()})
            rows[name].append(row)
        progress.update(len(chunk))
    progress.close()

    results = []
    for m in methods:
        r = rows[m.name]
        results.append(
            MethodResult(
                name=m.name,
                em=statistics.fmean(x["em"] for x in r),
                f1=statistics.fmean(x["f1"] for x in r),
                contains=statistics.fmean(x["contains"] for x in r),
                prompt_tokens=statistics.fmean(x["prompt_tokens"] for x in r),
                passages=statistics.fmean(len(x["ids"]) for x in r),
                arrange_ms=1000 * m.seconds / len(examples),
                per_example=r,
            )
        )
    return EvaluationReport(results, len(examples), reader.name, reader_seconds, calls)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit="q", disable=not enabled)
