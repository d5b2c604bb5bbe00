"""The silver passage sequence of one question (:class:`SilverSequence`), the record of a silver file.

``ids`` are 0-based indices into ``passages`` (the candidates in retriever order), so ``[3, 3]`` means
"candidate 3, twice". :func:`record_problem` says why a JSON object is not such a record.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any


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
        problem = record_problem(data)
        if problem:
            raise ValueError(problem)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def passages_in_order(self) -> list[str]:
        """The silver sequence as passage texts (what the reader is shown)."""
        return [self.passages[i] for i in self.ids]


def _required_fields() -> list[str]:
    return [f.name for f in fields(SilverSequence) if f.default is MISSING and f.default_factory is MISSING]


def record_problem(data: Any) -> str | None:
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
