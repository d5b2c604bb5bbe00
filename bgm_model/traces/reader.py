"""Reading trace JSONL files back into :class:`TraceRecord` s."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .schema import TraceFormatError, TraceRecord, TraceSchemaVersionError

logger = logging.getLogger(__name__)


@dataclass
class ReadStats:
    """What a read found besides the records: lines skipped as truncated and invalid records."""

    records: int = 0
    truncated_lines: list[int] = field(default_factory=list)
    invalid_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def truncated(self) -> int:
        return len(self.truncated_lines)


class _Truncated(Exception):
    """A line that is not complete JSON: an interrupted write."""


def _parse(raw: bytes) -> TraceRecord:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Truncated from None
    except (RecursionError, ValueError) as e:
        # Complete JSON that Python cannot decode, not an interrupted write: "[[[[...]]]]" past the recursion
        # limit, an integer past the digit limit. An invalid record, so it can be skipped like one.
        raise TraceFormatError(f"cannot decode the JSON ({type(e).__name__}: {e})") from None
    return TraceRecord.from_dict(data)


def iter_traces(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[TraceRecord]:
    """Yield the records of a traces file lazily (constant memory).

    * A line that is not complete JSON (an interrupted write: the last line, or a line a crashed writer
      left before the next writer started a new one) is skipped with a warning and counted in
      ``stats.truncated_lines``.
    * A record with an unknown ``schema_version`` raises :class:`TraceSchemaVersionError` naming the file
      and line, always: reading it as another version could silently misread it.
    * A record that misses required fields or has a field of the wrong type (``"passages": 5``,
      ``"schema_version": "1"``), and a line that is complete JSON but cannot be decoded (nested too deeply,
      an integer too long), raise :class:`TraceFormatError` naming the file and line, or with
      ``skip_invalid=True`` are skipped, logged and listed in ``stats.invalid_lines``: one bad line never
      stops the rest of the file from being read.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = _parse(raw)
            except _Truncated:
                where = "last line" if not raw.endswith(b"\n") else "line"
                logger.warning("%s:%d: skipping a truncated %s (%d bytes)", path, lineno, where, len(raw))
                stats.truncated_lines.append(lineno)
                continue
            except TraceSchemaVersionError as e:
                raise TraceSchemaVersionError(f"{path}:{lineno}: {e}") from None
            except TraceFormatError as e:
                if not skip_invalid:
                    raise TraceFormatError(f"{path}:{lineno}: {e}") from None
                logger.warning("%s:%d: skipping an invalid record: %s", path, lineno, e)
                stats.invalid_lines.append((lineno, str(e)))
                continue
            stats.records += 1
            yield record
    if stats.truncated_lines:
        logger.warning("%s: skipped %d truncated line(s): %s", path, stats.truncated, stats.truncated_lines)


def read_traces(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
) -> list[TraceRecord]:
    """Read all records of a traces file.

    Unlike :func:`iter_traces`, invalid records are all collected before raising, so the error lists
    every bad line number at once (``TraceFormatError``). Truncated lines are skipped with a warning and
    counted in ``stats``; an unknown schema version raises at once. See :func:`iter_traces`.
    """
    stats = stats if stats is not None else ReadStats()
    records = list(iter_traces(path, skip_invalid=True, stats=stats))
    if stats.invalid_lines and not skip_invalid:
        details = "; ".join(f"line {n}: {msg}" for n, msg in stats.invalid_lines[:20])
        more = "" if len(stats.invalid_lines) <= 20 else f"; and {len(stats.invalid_lines) - 20} more"
        raise TraceFormatError(
            f"{path}: {len(stats.invalid_lines)} invalid record(s) ({details}{more}); "
            "pass skip_invalid=True to read the valid ones"
        )
    return records
