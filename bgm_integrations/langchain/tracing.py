"""Record LangChain RAG runs as bgm-bridge training traces (one record per query).

Pass the handler in the run config: ``chain.invoke(q, config={"callbacks": [BGMTraceCallbackHandler(path)]})``.
It links the runs of one invocation by ``run_id`` / ``parent_run_id``: the retriever run gives the query and
the passages in retriever order, a run whose documents carry ``bgm_source_index`` (the bridge compressor's
output inside ``ContextualCompressionRetriever``) gives the bridge output, and the last LLM / chat-model run
gives the prompt or messages, the answer and the model name. Works for ``invoke``, ``ainvoke``, ``batch``,
``abatch``, ``stream`` and ``astream``, with or without a bridge.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from bgm_model.traces.assemble import LLM, OTHER, RETRIEVER, make_passage, message_role
from bgm_model.traces.collector import TraceCollector
from bgm_model.traces.schema import ChatMessage, TracePassage
from bgm_model.traces.writer import Redactor, TraceWriter, as_writer

from .compressor import BRIDGE_EVENT

logger = logging.getLogger(__name__)

__all__ = ["BGMTraceCallbackHandler"]


def _doc_to_passage(doc: Document) -> TracePassage:
    return make_passage(doc.page_content, id=getattr(doc, "id", None), metadata=doc.metadata)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal content blocks: keep the text parts
        parts = [
            b if isinstance(b, str) else b.get("text", "") for b in content if isinstance(b, (str, dict))
        ]
        return "".join(parts)
    return json.dumps(content, default=str)


def _message(m: BaseMessage) -> ChatMessage:
    return ChatMessage(role=message_role(m.type), content=_content_text(m.content))


def _model_name(
    serialized: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None, kwargs: Mapping[str, Any]
) -> str | None:
    params = kwargs.get("invocation_params") or {}
    for value in (
        (metadata or {}).get("ls_model_name"),
        params.get("model"),
        params.get("model_name"),
        params.get("_type"),
        kwargs.get("name"),
        (serialized or {}).get("name"),
    ):
        if value:
            return str(value)
    return None


def _root_query(inputs: Any) -> str | None:
    if isinstance(inputs, str):
        return inputs
    if isinstance(inputs, Mapping):
        for key in ("question", "query", "input"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
    return None


class BGMTraceCallbackHandler(BaseCallbackHandler):
    """A LangChain callback handler that writes one :class:`~bgm_model.traces.TraceRecord` per query.

    Args:
        writer_or_path: A :class:`~bgm_model.traces.TraceWriter` or the path of a JSONL file.
        redact: Redaction hook for a writer created from a path (see ``TraceWriter``).
        metadata: Added to every record's ``metadata``.

    Only invocations in which a retriever ran produce a record. A failed invocation produces none.
    """

    # Called directly on the event loop in async runs: the work is small and this keeps run order exact.
    run_inline = True

    def __init__(
        self,
        writer_or_path: TraceWriter | str | os.PathLike[str],
        *,
        redact: Redactor | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.writer = as_writer(writer_or_path, **({"redact": redact} if redact is not None else {}))
        self._collector = TraceCollector(self.writer, "langchain", metadata=metadata)

    @property
    def records_written(self) -> int:
        return self._collector.records_written

    @property
    def in_flight(self) -> int:
        """Invocations still running (their state is dropped once their record is written)."""
        return self._collector.in_flight

    def _start(self, run_id: UUID, parent_run_id: UUID | None, **fields: Any) -> None:
        self._collector.start(str(run_id), None if parent_run_id is None else str(parent_run_id), **fields)

    # --- chains and tools: only their place in the tree matters -------------------------------------------
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, parent_run_id, kind=OTHER, name=kwargs.get("name"))
        if parent_run_id is None:
            query = _root_query(inputs)
            if query is not None:
                self._collector.set_root_query(str(run_id), query)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        fields: dict[str, Any] = {}
        # A chain step that returns bridge output (a compressor called from a RunnableLambda) counts too.
        if isinstance(outputs, list) and outputs and all(isinstance(d, Document) for d in outputs):
            fields["documents"] = [_doc_to_passage(d) for d in outputs]
        self._collector.end(str(run_id), **fields)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._collector.error(str(run_id), error)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, parent_run_id, kind=OTHER, name=kwargs.get("name"))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._collector.end(str(run_id))

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._collector.error(str(run_id), error)

    # --- retrievers -----------------------------------------------------------------------------------------
    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, parent_run_id, kind=RETRIEVER, name=kwargs.get("name"), query=query)

    def on_retriever_end(self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any) -> None:
        self._collector.end(str(run_id), documents=[_doc_to_passage(d) for d in documents])

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._collector.error(str(run_id), error)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        # BGMDocumentCompressor announces each bridge call on its parent run, so an empty output is still
        # recorded as the bridge's (empty) choice rather than as "no bridge".
        if name == BRIDGE_EVENT:
            self._collector.annotate(str(run_id), bridge_ran=True)

    # --- LLMs and chat models -------------------------------------------------------------------------------
    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(
            run_id,
            parent_run_id,
            kind=LLM,
            prompt=prompts[0] if prompts else None,
            model=_model_name(serialized, metadata, kwargs),
        )

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(
            run_id,
            parent_run_id,
            kind=LLM,
            messages=[_message(m) for m in (messages[0] if messages else [])],
            model=_model_name(serialized, metadata, kwargs),
        )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        answer = None
        if response.generations and response.generations[0]:
            answer = response.generations[0][0].text
        fields: dict[str, Any] = {"answer": answer}
        run = self._collector.get(str(run_id))
        model = (response.llm_output or {}).get("model_name") or (response.llm_output or {}).get("model")
        if model and run is not None and run.model is None:
            fields["model"] = str(model)
        self._collector.end(str(run_id), **fields)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._collector.error(str(run_id), error)
