"""Record LlamaIndex query-engine runs as bgm-bridge training traces (one record per query).

:class:`BGMTraceHandler` attaches a span handler and an event handler to the instrumentation dispatcher.
Spans give the tree of one query (the root span is the query call); the retrieval, rerank and LLM events
inside it give the query, the retrieved nodes in retriever order, the bridge postprocessor's output (nodes
carrying ``bgm_source_index``), the prompt or chat messages, the answer and the model. Concurrent queries
(threads or ``asyncio.gather``) have separate span trees, so their records stay separate.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import Dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.instrumentation.events.query import QueryStartEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent, RetrievalStartEvent
from llama_index.core.instrumentation.span import SimpleSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import PrivateAttr

from bgm_model.traces.assemble import LLM, OTHER, RERANK, RETRIEVER, make_passage, message_role
from bgm_model.traces.collector import TraceCollector
from bgm_model.traces.schema import ChatMessage, TracePassage
from bgm_model.traces.writer import Redactor, TraceWriter, as_writer

from .postprocessor import BRIDGE_EVENT_TAG

logger = logging.getLogger(__name__)

__all__ = ["BGMTraceHandler"]


def _query_text(q: Any) -> str | None:
    if q is None:
        return None
    if isinstance(q, QueryBundle):
        return q.query_str
    return str(q)


def _nodes(nodes: Sequence[NodeWithScore]) -> list[TracePassage]:
    return [
        make_passage(
            n.node.get_content(metadata_mode=MetadataMode.NONE),
            id=n.node.node_id,
            score=n.score,
            metadata=n.node.metadata,
        )
        for n in nodes
    ]


_UUID_TAIL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _span_uuid(span_id: str) -> str:
    """Span ids are ``"Class.method-<uuid4>"``; the uuid alone is the trace id."""
    m = _UUID_TAIL.search(span_id)
    return m.group(0) if m else span_id


def _model(model_dict: Mapping[str, Any] | None) -> str | None:
    md = model_dict or {}
    for key in ("model", "model_name", "class_name"):
        if md.get(key):
            return str(md[key])
    return None


def _role(role: Any) -> str:
    return message_role(str(getattr(role, "value", role)))


class _SpanHandler(BaseSpanHandler[SimpleSpan]):
    _owner: BGMTraceHandler = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        return "BGMTraceSpanHandler"

    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        self._owner._collector.start(
            id_, parent_span_id, kind=OTHER, name=id_[: -len(_span_uuid(id_)) - 1] or id_
        )
        return SimpleSpan(id_=id_, parent_id=parent_span_id, tags=tags or {})

    def prepare_to_exit_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        self._owner._collector.end(id_)
        return self.open_spans.get(id_)

    def prepare_to_drop_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> SimpleSpan | None:
        self._owner._collector.error(id_, err if err is not None else "dropped")
        return self.open_spans.get(id_)


class _EventHandler(BaseEventHandler):
    _owner: BGMTraceHandler = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        return "BGMTraceEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        try:
            self._owner._on_event(event)
        except Exception:
            # The dispatcher swallows handler errors silently; say what went wrong.
            logger.exception("BGMTraceHandler could not handle %s", type(event).__name__)


class BGMTraceHandler:
    """Writes one :class:`~bgm_model.traces.TraceRecord` per LlamaIndex query.

    Use as a context manager (attach on enter, detach on exit), or call :meth:`attach` / :meth:`detach`.

    Args:
        writer_or_path: A :class:`~bgm_model.traces.TraceWriter` or the path of a JSONL file.
        redact: Redaction hook for a writer created from a path (see ``TraceWriter``).
        metadata: Added to every record's ``metadata``.
        dispatcher: The dispatcher to attach to; default the root one (sees every LlamaIndex component).

    A query whose root span is dropped (an exception) produces no record; a query run without a retriever
    produces none either. With a streaming response, the record is written when the stream is consumed.
    """

    def __init__(
        self,
        writer_or_path: TraceWriter | str | os.PathLike[str],
        *,
        redact: Redactor | None = None,
        metadata: Mapping[str, Any] | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.writer = as_writer(writer_or_path, **({"redact": redact} if redact is not None else {}))
        self._collector = TraceCollector(
            self.writer, "llama_index", metadata=metadata, trace_id_of=_span_uuid
        )
        self._dispatcher = dispatcher
        # Fresh containers: BaseSpanHandler's __init__ defaults are shared mutable objects.
        self._span_handler = _SpanHandler(
            open_spans={}, completed_spans=[], dropped_spans=[], current_span_ids={}
        )
        self._span_handler._owner = self
        self._event_handler = _EventHandler()
        self._event_handler._owner = self
        self._attached_to: Dispatcher | None = None

    @property
    def records_written(self) -> int:
        return self._collector.records_written

    @property
    def in_flight(self) -> int:
        """Queries still running (their state is dropped once their record is written)."""
        return self._collector.in_flight

    @property
    def attached(self) -> bool:
        return self._attached_to is not None

    def attach(self) -> BGMTraceHandler:
        """Start recording (idempotent)."""
        if self._attached_to is None:
            d = self._dispatcher or get_dispatcher()
            d.add_span_handler(self._span_handler)
            d.add_event_handler(self._event_handler)
            self._attached_to = d
        return self

    def detach(self) -> None:
        """Stop recording; queries whose streamed answer never finished are written without waiting."""
        d = self._attached_to
        if d is None:
            return
        d.span_handlers = [h for h in d.span_handlers if h is not self._span_handler]
        d.event_handlers = [h for h in d.event_handlers if h is not self._event_handler]
        self._attached_to = None
        self._collector.flush()

    def __enter__(self) -> BGMTraceHandler:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _on_event(self, event: BaseEvent) -> None:
        span_id = event.span_id
        if span_id is None:  # an event outside any span
            return
        run = self._collector.get(span_id)
        if run is None:  # an event outside any span we saw (e.g. before attach)
            return
        if isinstance(event, QueryStartEvent):
            self._collector.set_root_query(span_id, _query_text(event.query) or "")
        elif isinstance(event, RetrievalStartEvent):
            run.kind, run.query = RETRIEVER, _query_text(event.str_or_query_bundle)
        elif isinstance(event, RetrievalEndEvent):
            run.kind, run.documents = RETRIEVER, _nodes(event.nodes)
        elif isinstance(event, ReRankStartEvent):
            run.kind, run.query = RERANK, _query_text(event.query)
            run.input_documents, run.model = _nodes(event.nodes), event.model_name or None
        elif isinstance(event, ReRankEndEvent):
            run.kind, run.documents = RERANK, _nodes(event.nodes)
            # The bridge postprocessor tags its events, so an empty output is still the bridge's choice.
            run.bridge_ran = bool(event.tags.get(BRIDGE_EVENT_TAG))
        elif isinstance(event, LLMChatStartEvent):
            run.kind, run.model, run.pending = LLM, _model(event.model_dict), True
            run.messages = [ChatMessage(_role(m.role), m.content or "") for m in event.messages]
        elif isinstance(event, LLMCompletionStartEvent):
            run.kind, run.model, run.prompt, run.pending = LLM, _model(event.model_dict), event.prompt, True
        elif isinstance(event, LLMChatEndEvent):
            answer = None if event.response is None else event.response.message.content
            self._llm_end(span_id, answer)
        elif isinstance(event, LLMCompletionEndEvent):
            self._llm_end(span_id, event.response.text)

    def _llm_end(self, span_id: str, answer: str | None) -> None:
        # May arrive after the span exited (a streamed answer): resolve() writes the record if it waited.
        self._collector.resolve(span_id, answer=answer)
