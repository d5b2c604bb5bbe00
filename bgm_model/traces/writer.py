"""Append-only, process-safe writing of trace records to a JSONL file."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import FileLock

from .schema import TraceFormatError, TraceRecord

logger = logging.getLogger(__name__)

#: A redaction hook: gets the record before it is serialised and returns the record to write
#: (the same object changed in place, or a new one), or ``None`` to drop the record.
Redactor = Callable[[TraceRecord], "TraceRecord | None"]


def lock_path_for(path: str | os.PathLike[str]) -> Path:
    """The lock file that every writer (and ``attach_feedback --in-place``) of ``path`` takes."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


def _replace_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (a valid high/low pair becomes its character)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def encode_record(record: TraceRecord) -> bytes:
    """One complete JSONL line (ending in a newline) for a record.

    Text that cannot be UTF-8 (a lone surrogate such as ``"\\ud800"``, e.g. from bytes decoded with
    ``surrogateescape`` or a broken UTF-16 source) is written with each lone surrogate replaced by U+FFFD,
    in any string of the record (query, passages, answer, metadata keys and values), and one warning
    naming the trace id is logged: the record is kept rather than lost. The record itself is not changed.

    Raises :class:`TraceFormatError` if the record is invalid or cannot be serialised at all (e.g. a
    non-JSON object outside ``metadata``, or nesting too deep / circular).
    """
    record.validate()
    try:
        # ensure_ascii=False keeps non-English text readable; json escapes embedded newlines, so one line.
        text = json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError, RecursionError) as e:
        raise TraceFormatError(f"trace {record.trace_id}: cannot be written as JSON: {e}") from e
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Surrogates occur only inside JSON strings (the syntax is ASCII), so replacing them keeps the line
        # valid JSON.
        # %r: the trace id itself may hold one, and repr escapes it.
        logger.warning(
            "trace %r: text with lone surrogates (not valid Unicode); writing them as U+FFFD", record.trace_id
        )
        return _replace_surrogates(text).encode("utf-8")


class TraceWriter:
    """Append :class:`TraceRecord` s to a JSONL file, one complete line per record.

    Each write takes an inter-process file lock (``<path>.lock``), opens the file in append mode, writes
    the whole line with one ``write`` loop, flushes (and ``fsync`` s if asked) and closes it again, so
    several processes can share one file without interleaving, and a file replaced by
    ``attach_feedback --in-place`` is picked up by the next write. If a crashed writer left a partial
    last line, the next write starts on a new line so the damage stays confined to that line.

    Lone surrogates in any string of a record are written as U+FFFD (with a warning naming the trace id)
    and non-finite scores as ``null``, so such a record is still written; see :func:`encode_record`.

    Args:
        path: The JSONL file (created with its parent folders if missing).
        redact: Called on every record before anything is serialised (e.g. to remove PII); returns the
            record to write or ``None`` to drop it. If it raises, nothing is written.
        fsync: Also ``os.fsync`` after each record (durable across power loss; slower).
        lock_timeout: Seconds to wait for the file lock before raising ``filelock.Timeout`` (-1: forever).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        redact: Redactor | None = None,
        fsync: bool = False,
        lock_timeout: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.redact = redact
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file_lock = FileLock(str(lock_path_for(self.path)), timeout=lock_timeout)
        self._thread_lock = threading.Lock()
        self.records_written = 0
        self.records_dropped = 0

    def write(self, record: TraceRecord) -> bool:
        """Redact, validate and append one record. Returns ``False`` if the redaction hook dropped it."""
        if self.redact is not None:
            redacted = self.redact(record)
            if redacted is None:
                self.records_dropped += 1
                logger.debug("redaction hook dropped trace %s", record.trace_id)
                return False
            record = redacted
        line = encode_record(record)
        with self._thread_lock, self._file_lock:
            self._append(line)
            self.records_written += 1
        return True

    def write_many(self, records: Iterable[TraceRecord]) -> int:
        """Write records one by one (each is its own complete line); returns how many were written."""
        return sum(1 for r in records if self.write(r))

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                logger.warning(
                    "%s ended in a partial line (an interrupted write); starting a new line", self.path
                )
                line = b"\n" + line
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing is held open between writes; kept so a writer can be used as a context manager."""

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceWriter({str(self.path)!r})"


def as_writer(writer_or_path: TraceWriter | str | os.PathLike[str], **kwargs: object) -> TraceWriter:
    """Accept a writer or a path (for the framework handlers)."""
    if isinstance(writer_or_path, TraceWriter):
        if kwargs:
            raise TypeError(f"writer options {sorted(kwargs)} only apply when a path is given")
        return writer_or_path
    if isinstance(writer_or_path, (str, os.PathLike)):
        return TraceWriter(writer_or_path, **kwargs)  # type: ignore[arg-type]
    raise TypeError(f"expected a TraceWriter or a path, got {type(writer_or_path).__name__}")
