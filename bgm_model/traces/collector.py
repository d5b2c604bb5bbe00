"""In-flight state of the live handlers: runs grouped by the query (root run) they belong to.

Both framework handlers feed run starts/ends here. Runs are keyed by their root run id, so interleaved
queries (``batch``, ``asyncio.gather``, threads) stay separate, and a query's state is dropped as soon as its
record is written, so memory is bounded by the number of queries in flight, not by how many were recorded.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .assemble import Run, assemble_record
from .schema import utc_now_iso
from .writer import TraceWriter

logger = logging.getLogger(__name__)


@dataclass
class _Trace:
    root_id: str
    timestamp: str
    runs: dict[str, Run] = field(default_factory=dict)
    root_query: str | None = None
    root_done: bool = False


class TraceCollector:
    """Collects runs per query and writes one record when the query's root run ends.

    Args:
        writer: Where records go.
        framework: Written into each record (``"langchain"``, ``"llama_index"``).
        metadata: Added to every record's ``metadata`` (e.g. an app name or version).
        trace_id_of: Maps a root run id to the record's trace id (default: the root run id itself).
        max_pending: Queries whose root ended while an LLM call still streams wait for that call; past this
            many, the oldest is written without its answer rather than held forever.
    """

    def __init__(
        self,
        writer: TraceWriter,
        framework: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        max_pending: int = 1000,
        trace_id_of: Callable[[str], str] | None = None,
    ) -> None:
        self.writer = writer
        self.framework = framework
        self.metadata = dict(metadata or {})
        self.max_pending = max_pending
        self.trace_id_of = trace_id_of or (lambda root_id: root_id)
        self._lock = threading.RLock()
        self._traces: dict[str, _Trace] = {}
        self._root_of: dict[str, str] = {}
        self._counter = itertools.count()
        self.records_written = 0
        self.queries_skipped = 0
        self.queries_failed = 0

    @property
    def in_flight(self) -> int:
        """Queries whose record is not written yet."""
        with self._lock:
            return len(self._traces)

    def start(self, run_id: str, parent_id: str | None, **fields: Any) -> Run:
        """Register a run; a run whose parent we never saw starts a new query."""
        with self._lock:
            root = self._root_of.get(parent_id) if parent_id is not None else None
            if root is None or root not in self._traces:
                root = run_id
                parent_id = None
                self._traces[root] = _Trace(root_id=root, timestamp=utc_now_iso())
            trace = self._traces[root]
            run = Run(run_id=run_id, parent_id=parent_id, order=next(self._counter), **fields)
            trace.runs[run_id] = run
            self._root_of[run_id] = root
            return run

    def get(self, run_id: str | None) -> Run | None:
        if run_id is None:
            return None
        with self._lock:
            root = self._root_of.get(run_id)
            return None if root is None else self._traces[root].runs.get(run_id)

    def set_root_query(self, run_id: str, query: str) -> None:
        """Remember a query seen on the root's inputs (used when no retriever query is known)."""
        with self._lock:
            root = self._root_of.get(run_id)
            if root is not None and self._traces[root].root_query is None:
                self._traces[root].root_query = query

    def annotate(self, run_id: str, **fields: Any) -> None:
        """Set ``fields`` on a run that is still open (e.g. the bridge announcing itself)."""
        with self._lock:
            root = self._root_of.get(run_id)
            if root is None:
                return
            for k, v in fields.items():
                setattr(self._traces[root].runs[run_id], k, v)

    def end(self, run_id: str, **fields: Any) -> None:
        """Mark a run ended (setting ``fields`` on it); the root's end writes the query's record."""
        ready: _Trace | None = None
        with self._lock:
            root = self._root_of.get(run_id)
            if root is None:
                return
            trace = self._traces[root]
            run = trace.runs[run_id]
            for k, v in fields.items():
                setattr(run, k, v)
            run.end_order = next(self._counter)
            if run_id == root:
                trace.root_done = True
            if trace.root_done and not self._streaming(trace):
                ready = self._pop(root)
            elif trace.root_done and run_id == root:
                ready = self._evict_if_too_many()
        if ready is not None:
            self._write(ready)

    def resolve(self, run_id: str, **fields: Any) -> None:
        """Set ``fields`` on a run that may have ended already (a streamed answer) and clear ``pending``."""
        ready: _Trace | None = None
        with self._lock:
            root = self._root_of.get(run_id)
            if root is None:
                return
            trace = self._traces[root]
            run = trace.runs[run_id]
            for k, v in fields.items():
                setattr(run, k, v)
            run.pending = False
            if trace.root_done and not self._streaming(trace):
                ready = self._pop(root)
        if ready is not None:
            self._write(ready)

    def error(self, run_id: str, error: BaseException | str) -> None:
        """A run failed: a failed root drops its query (no record for a query that did not complete)."""
        with self._lock:
            root = self._root_of.get(run_id)
            if root is None:
                return
            trace = self._traces[root]
            trace.runs[run_id].error = str(error)
            if run_id != root:
                trace.runs[run_id].end_order = next(self._counter)
                return
            self._pop(root)
            self.queries_failed += 1
        logger.warning("query %s failed (%s); no trace recorded", root, error)

    def flush(self) -> None:
        """Write the queries whose root ended but whose streamed LLM answer never finished."""
        with self._lock:
            done = [r for r, t in self._traces.items() if t.root_done]
            ready = [self._pop(r) for r in done]
        for trace in ready:
            self._write(trace)

    def _streaming(self, trace: _Trace) -> bool:
        return any(r.pending and r.error is None for r in trace.runs.values())

    def _evict_if_too_many(self) -> _Trace | None:
        pending = [r for r, t in self._traces.items() if t.root_done]
        if len(pending) <= self.max_pending:
            return None
        logger.warning(
            "more than %d queries wait for a streamed answer; writing the oldest", self.max_pending
        )
        return self._pop(pending[0])

    def _pop(self, root: str) -> _Trace:
        trace = self._traces.pop(root)
        for rid in trace.runs:
            self._root_of.pop(rid, None)
        return trace

    def _write(self, trace: _Trace) -> None:
        try:
            record = assemble_record(
                trace.runs.values(),
                trace_id=self.trace_id_of(trace.root_id),
                framework=self.framework,
                timestamp=trace.timestamp,
                root_query=trace.root_query,
                metadata=self.metadata,
            )
            if record is None:
                self.queries_skipped += 1
                logger.debug("query %s ran no retriever; not a RAG trace, nothing recorded", trace.root_id)
                return
            if self.writer.write(record):
                self.records_written += 1
        except Exception:
            # The user's pipeline must not fail because tracing did; the failure is logged loudly.
            self.queries_failed += 1
            logger.exception("could not record trace %s", trace.root_id)
