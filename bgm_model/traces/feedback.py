"""Joining gold answers and feedback, collected later, onto trace records.

Feedback rows are JSONL objects with a ``trace_id`` and/or a ``query``, plus any of ``score``, ``label``,
``comment``, ``source``, ``timestamp`` and ``gold_answers`` (or ``answers``). A row matches by trace id
when it has one, else by query (whitespace- and case-normalised; a query recorded several times gets the row
on every record with it).

:func:`attach_feedback` never edits a file in place: it streams the traces into a temporary file next to the
output and renames it over the output atomically (``os.replace``). With ``in_place=True`` the output is the
traces file itself and the writers' lock (``<file>.lock``) is held throughout, so no record appended by a
live :class:`~bgm_model.traces.TraceWriter` is lost. Lines that are not valid records are copied unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from .schema import Feedback, TraceFormatError, TraceRecord, TraceSchemaVersionError
from .writer import encode_record, lock_path_for

logger = logging.getLogger(__name__)

_FEEDBACK_KEYS = ("score", "label", "comment")


def normalize_query(query: str) -> str:
    return " ".join(query.split()).casefold()


@dataclass
class FeedbackJoinStats:
    traces: int = 0
    traces_updated: int = 0
    rows: int = 0
    rows_matched: int = 0
    #: Line numbers (in the feedback file) of rows that matched no trace.
    unmatched_lines: list[int] = field(default_factory=list)
    #: Lines of the traces file that were not valid records and were copied unchanged.
    copied_lines: int = 0


@dataclass
class _Row:
    line: int
    feedback: Feedback | None
    gold_answers: list[str]
    matched: bool = False


def read_feedback(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """Read a feedback JSONL file as ``(line number, row)`` pairs; malformed rows raise with their line."""
    from bgm_model.data.jsonl import JsonlError, iter_jsonl_rows

    rows = []
    try:
        for lineno, row in iter_jsonl_rows(path, objects=False):
            if not isinstance(row, dict) or not (row.get("trace_id") or row.get("query")):
                raise TraceFormatError(f"{path}:{lineno}: a feedback row needs a 'trace_id' or a 'query'")
            rows.append((lineno, row))
    except JsonlError as e:
        raise TraceFormatError(str(e)) from None
    return rows


class _Index:
    def __init__(self, rows: Iterable[tuple[int, Mapping[str, Any]]], by: str) -> None:
        if by not in ("auto", "trace_id", "query"):
            raise ValueError(f"by must be 'auto', 'trace_id' or 'query', got {by!r}")
        self.rows: list[_Row] = []
        self.by_id: dict[str, list[_Row]] = defaultdict(list)
        self.by_query: dict[str, list[_Row]] = defaultdict(list)
        for lineno, data in rows:
            fb = None
            if any(data.get(k) is not None for k in _FEEDBACK_KEYS):
                fb = Feedback.from_dict(data)
            gold = data.get("gold_answers", data.get("answers")) or []
            if isinstance(gold, str):
                gold = [gold]
            row = _Row(lineno, fb, [str(a) for a in gold])
            self.rows.append(row)
            use_id = by == "trace_id" or (by == "auto" and data.get("trace_id"))
            if use_id:
                if not data.get("trace_id"):
                    raise TraceFormatError(f"feedback line {lineno}: no 'trace_id' (joining by trace id)")
                self.by_id[str(data["trace_id"])].append(row)
            else:
                if not data.get("query"):
                    raise TraceFormatError(f"feedback line {lineno}: no 'query' (joining by query)")
                self.by_query[normalize_query(str(data["query"]))].append(row)

    def apply(self, record: TraceRecord) -> bool:
        changed = False
        for row in self.by_id.get(record.trace_id, []) + self.by_query.get(normalize_query(record.query), []):
            row.matched = True
            # Attaching the same file twice must not duplicate feedback or answers.
            if row.feedback is not None and row.feedback not in record.feedback:
                record.feedback.append(row.feedback)
                changed = True
            for answer in row.gold_answers:
                if answer not in record.gold_answers:
                    record.gold_answers.append(answer)
                    changed = True
        return changed


def join_feedback(
    records: Iterable[TraceRecord],
    feedback_rows: Iterable[tuple[int, Mapping[str, Any]]],
    *,
    by: str = "auto",
    stats: FeedbackJoinStats | None = None,
) -> Iterator[TraceRecord]:
    """Yield ``records`` with matching feedback and gold answers added (records are updated in place)."""
    stats = stats if stats is not None else FeedbackJoinStats()
    index = _Index(feedback_rows, by)
    stats.rows = len(index.rows)
    for record in records:
        stats.traces += 1
        if index.apply(record):
            stats.traces_updated += 1
        yield record
    _finish(index, stats)


def _finish(index: _Index, stats: FeedbackJoinStats) -> None:
    stats.rows_matched = sum(r.matched for r in index.rows)
    stats.unmatched_lines = [r.line for r in index.rows if not r.matched]
    if stats.unmatched_lines:
        logger.warning(
            "%d feedback row(s) matched no trace (lines %s)",
            len(stats.unmatched_lines),
            stats.unmatched_lines[:20],
        )


def attach_feedback(
    traces_path: str | os.PathLike[str],
    feedback_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    *,
    by: str = "auto",
    in_place: bool = False,
) -> FeedbackJoinStats:
    """Write the traces of ``traces_path`` with the feedback of ``feedback_path`` joined on.

    Give ``output_path`` (a new file, written atomically) or ``in_place=True`` (the traces file is replaced
    atomically while the writers' lock is held). Unknown schema versions raise before anything is written.
    """
    src = Path(traces_path)
    if (output_path is None) == (not in_place):
        raise ValueError("give either output_path or in_place=True")
    dst = src if in_place else Path(output_path)  # type: ignore[arg-type]
    if not in_place and dst.resolve() == src.resolve():
        raise ValueError("output_path is the traces file; use in_place=True to replace it")
    index = _Index(read_feedback(feedback_path), by)
    stats = FeedbackJoinStats(rows=len(index.rows))
    dst.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path_for(src))) if in_place else nullcontext()
    with lock:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    if not raw.strip():
                        continue
                    try:
                        record = TraceRecord.from_dict(json.loads(raw))
                    except TraceSchemaVersionError as e:
                        raise TraceSchemaVersionError(f"{src}:{lineno}: {e}") from None
                    except (RecursionError, ValueError, TraceFormatError) as e:
                        # ValueError covers bad JSON and bad UTF-8 too; such a line is kept as it was.
                        logger.warning("%s:%d: not a valid record (%s); copied unchanged", src, lineno, e)
                        stats.copied_lines += 1
                        out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                        continue
                    stats.traces += 1
                    if index.apply(record):
                        stats.traces_updated += 1
                    out.write(encode_record(record))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, src.stat().st_mode & 0o777)  # mkstemp makes 0600; keep the traces file's mode
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _finish(index, stats)
    return stats
