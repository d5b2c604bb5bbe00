"""The trace record: one line of a traces JSONL file, one RAG query.

A record says what a real pipeline did for one query: the passages the retriever returned (in retriever
order), what the bridge selected (if one ran), what was sent to the LLM and what it answered, plus gold
answers and feedback attached later. Training reads these records; see ``docs/traces.md``.

Passage fields use the OpenInference document names in JSON (``document.id``, ``document.content``,
``document.score``, ``document.metadata``) so records line up with OpenInference / Phoenix spans.
"""

from __future__ import annotations

import math
import numbers
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

#: Version written into every record. Readers reject versions they do not know.
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS: frozenset[int] = frozenset({1})

#: Top-level keys that a record must have.
REQUIRED_FIELDS: tuple[str, ...] = (
    "schema_version",
    "trace_id",
    "framework",
    "timestamp",
    "query",
    "passages",
)

DOC_ID = "document.id"
DOC_CONTENT = "document.content"
DOC_SCORE = "document.score"
DOC_METADATA = "document.metadata"


class TraceFormatError(ValueError):
    """A record (or a file of records) does not follow the trace schema."""


class TraceSchemaVersionError(TraceFormatError):
    """A record carries a schema version that this version of bgm-bridge cannot read."""


def new_trace_id() -> str:
    return str(uuid.uuid4())


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def _json_safe(value: Any) -> Any:
    """Make metadata JSON-serialisable without dropping it: unknown objects become their ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _json_safe(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def optional_float(value: Any) -> float | None:
    """A finite float, or ``None`` for a missing, non-numeric or non-finite (NaN, inf) score."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    """A text field that may be absent or null; any other type is a format error (not passed through)."""
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TraceFormatError(f"{where}{key!r} must be a string or null, got {type(value).__name__}")


def _list(data: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
    """A list field that may be absent or null; a string or object here would be iterated silently."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise TraceFormatError(f"{where}{key!r} must be a list, got {type(value).__name__}")
    return value


def _dict(data: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """A metadata object that may be absent or null (``dict()`` of a list of pairs would pass silently)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TraceFormatError(f"{where}{key!r} must be an object, got {type(value).__name__}")
    return dict(value)


def _is_int(value: Any) -> bool:
    # bool is an int subclass; ``true`` is not a version or an index.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class TracePassage:
    """One retrieved passage, as the retriever returned it."""

    id: str | None
    content: str
    #: The retriever's score. Written as JSON ``null`` (score unknown) when it is not a finite number
    #: (NaN, inf): JSON has no NaN, and a record must not be lost for its score.
    score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            DOC_ID: self.id,
            DOC_CONTENT: self.content,
            DOC_SCORE: optional_float(self.score),
            DOC_METADATA: _json_safe(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TracePassage:
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"a passage must be a JSON object, got {type(data).__name__}")
        if DOC_CONTENT not in data:
            raise TraceFormatError(f"passage misses {DOC_CONTENT!r}")
        pid = data.get(DOC_ID)
        return cls(
            id=None if pid is None else str(pid),
            content=str(data[DOC_CONTENT]),
            score=optional_float(data.get(DOC_SCORE)),
            metadata=_dict(data, DOC_METADATA, "passage "),
        )


@dataclass
class BridgeTrace:
    """What the bridge output: passage ids in bridge order and their indices into ``TraceRecord.passages``.

    A repeated passage appears again (the bridge may repeat). ``scores`` are the bridge's scores when known;
    a score that is not a finite number (NaN, inf) is written as JSON ``null`` (unknown). ``alternatives``
    (when the adapter reported them): per output, the strongest alternative at that step as
    ``[source index or None for "end", probability]`` — why the bridge chose what it chose.
    """

    ids: list[str | None]
    source_indices: list[int]
    scores: list[float | None] = field(default_factory=list)
    model: str | None = None
    alternatives: list[tuple[int | None, float | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": list(self.ids),
            # int(): numpy / torch integers are valid indices but not JSON-serialisable.
            "source_indices": [int(i) for i in self.source_indices],
            "scores": [optional_float(s) for s in self.scores],
            "model": self.model,
            "alternatives": [[None if i is None else int(i), optional_float(p)] for i, p in self.alternatives],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BridgeTrace:
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"'bridge' must be a JSON object, got {type(data).__name__}")
        if "source_indices" not in data:
            raise TraceFormatError("bridge misses 'source_indices'")
        indices = _list(data, "source_indices", "bridge ")
        if not all(_is_int(i) for i in indices):
            # int() would quietly turn 1.7 into 1 and true into 1: a different passage.
            raise TraceFormatError(f"bridge 'source_indices' must be integers, got {indices!r:.80}")
        return cls(
            ids=[None if i is None else str(i) for i in _list(data, "ids", "bridge ")],
            source_indices=indices,
            scores=[optional_float(s) for s in _list(data, "scores", "bridge ")],
            model=_opt_str(data, "model", "bridge "),
            alternatives=_alternatives(data.get("alternatives")),
        )


def _alternatives(value: Any) -> list[tuple[int | None, float | None]]:
    if value is None:  # written before alternatives were recorded
        return []
    if not isinstance(value, list) or not all(
        isinstance(a, list) and len(a) == 2 and (a[0] is None or _is_int(a[0])) for a in value
    ):
        raise TraceFormatError(f"bridge 'alternatives' must be [index or null, probability] pairs, got {value!r:.80}")
    return [(a[0], optional_float(a[1])) for a in value]


@dataclass
class ChatMessage:
    role: str
    content: str

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatMessage:
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"a chat message must be a JSON object, got {type(data).__name__}")
        return cls(role=str(data.get("role", "user")), content=str(data.get("content", "")))


@dataclass
class LLMCall:
    """The (last) LLM call of the query: chat ``messages`` or a text ``prompt``, the ``answer`` and the model.

    When a pipeline calls the LLM more than once (e.g. refine synthesis), the last call is kept here and
    ``TraceRecord.metadata["llm_calls"]`` counts them.
    """

    messages: list[ChatMessage] = field(default_factory=list)
    prompt: str | None = None
    answer: str | None = None
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": [m.to_dict() for m in self.messages],
            "prompt": self.prompt,
            "answer": self.answer,
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LLMCall:
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"'llm' must be a JSON object, got {type(data).__name__}")
        return cls(
            messages=[ChatMessage.from_dict(m) for m in _list(data, "messages", "llm ")],
            prompt=_opt_str(data, "prompt", "llm "),
            answer=_opt_str(data, "answer", "llm "),
            model=_opt_str(data, "model", "llm "),
        )


@dataclass
class Feedback:
    """Feedback on the answer: a ``score`` (e.g. 0/1 or a rating), a ``label`` and/or a free ``comment``."""

    #: Written as JSON ``null`` (unknown) when it is not a finite number (NaN, inf).
    score: float | None = None
    label: str | None = None
    comment: str | None = None
    source: str | None = None
    timestamp: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": optional_float(self.score),
            "label": self.label,
            "comment": self.comment,
            "source": self.source,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Feedback:
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"feedback must be a JSON object, got {type(data).__name__}")
        label = data.get("label")
        return cls(
            score=optional_float(data.get("score")),
            label=None if label is None else str(label),
            comment=_opt_str(data, "comment", "feedback "),
            source=_opt_str(data, "source", "feedback "),
            timestamp=_opt_str(data, "timestamp", "feedback "),
        )


@dataclass
class TraceRecord:
    """One RAG query as a pipeline ran it. See ``docs/traces.md`` for the JSON layout."""

    query: str
    passages: list[TracePassage]
    framework: str
    trace_id: str = field(default_factory=new_trace_id)
    timestamp: str = field(default_factory=utc_now_iso)
    bridge: BridgeTrace | None = None
    llm: LLMCall | None = None
    gold_answers: list[str] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def answer(self) -> str | None:
        """The LLM's answer, or ``None`` when no LLM ran."""
        return None if self.llm is None else self.llm.answer

    def bridge_passages(self) -> list[TracePassage]:
        """The passages in bridge order (repeats included); empty when no bridge ran."""
        if self.bridge is None:
            return []
        return [self.passages[i] for i in self.bridge.source_indices]

    def validate(self) -> None:
        """Raise :class:`TraceFormatError` if the record is inconsistent."""
        if not isinstance(self.query, str):
            raise TraceFormatError(f"query must be a string, got {type(self.query).__name__}")
        if not _is_int(self.schema_version):
            raise TraceFormatError(
                f"schema version must be an integer, got {type(self.schema_version).__name__}"
            )
        if self.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            raise TraceSchemaVersionError(
                f"schema version {self.schema_version!r} is not supported "
                f"(this bgm-bridge reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
            )
        if self.bridge is not None:
            if not all(_is_int(i) for i in self.bridge.source_indices):
                raise TraceFormatError(
                    f"bridge source indices must be integers, got {self.bridge.source_indices!r:.80}"
                )
            bad = [i for i in self.bridge.source_indices if not 0 <= i < len(self.passages)]
            if bad:
                raise TraceFormatError(
                    f"bridge source indices {bad} are out of range for {len(self.passages)} passages"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "trace_id": self.trace_id,
            "framework": self.framework,
            "timestamp": self.timestamp,
            "query": self.query,
            "passages": [p.to_dict() for p in self.passages],
            "bridge": None if self.bridge is None else self.bridge.to_dict(),
            "llm": None if self.llm is None else self.llm.to_dict(),
            "gold_answers": list(self.gold_answers),
            "feedback": [f.to_dict() for f in self.feedback],
            "metadata": _json_safe(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraceRecord:
        """Build a record from its JSON form; raise :class:`TraceFormatError` naming what is wrong.

        A field of the wrong type (``"passages": 5``, ``"schema_version": "1"``, ``"gold_answers": "x"``)
        is a :class:`TraceFormatError` too, never a ``TypeError``; only an unknown *integer* schema
        version raises :class:`TraceSchemaVersionError`.
        """
        if not isinstance(data, Mapping):
            raise TraceFormatError(f"a record must be a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED_FIELDS if k not in data]
        if missing:
            raise TraceFormatError(f"missing required field(s): {', '.join(missing)}")
        version = data["schema_version"]
        if not _is_int(version):
            # A string, float, bool or list is a broken record, not a newer version: skippable.
            raise TraceFormatError(f"schema_version must be an integer, got {version!r:.40}")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise TraceSchemaVersionError(
                f"schema version {version!r} is not supported (this bgm-bridge reads "
                f"{sorted(SUPPORTED_SCHEMA_VERSIONS)}); upgrade bgm-bridge to read this file"
            )
        if not isinstance(data["passages"], list):
            raise TraceFormatError("'passages' must be a list")
        try:
            record = cls(
                schema_version=int(version),
                trace_id=str(data["trace_id"]),
                framework=str(data["framework"]),
                timestamp=str(data["timestamp"]),
                query=data["query"],
                passages=[TracePassage.from_dict(p) for p in data["passages"]],
                bridge=None if data.get("bridge") is None else BridgeTrace.from_dict(data["bridge"]),
                llm=None if data.get("llm") is None else LLMCall.from_dict(data["llm"]),
                gold_answers=[str(a) for a in _list(data, "gold_answers")],
                feedback=[Feedback.from_dict(f) for f in _list(data, "feedback")],
                metadata=_dict(data, "metadata"),
            )
        except (TypeError, ValueError, AttributeError, RecursionError) as e:
            if isinstance(e, TraceFormatError):
                raise
            raise TraceFormatError(f"malformed record: {e}") from e
        record.validate()
        return record
