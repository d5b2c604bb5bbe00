"""LangChain adapter: the bridge as a ``BaseDocumentCompressor``.

Only translates types: ``Document.page_content`` goes to the core, the core's passage sequence comes back as
copies of the documents in bridge order (a repeated passage appears again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import Callbacks
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict

from bgm_model.outputs import BridgeResult
from bgm_model.protocols import SupportsBridge

#: Metadata keys the compressor adds to each returned document.
RANK_KEY = "bgm_rank"
SOURCE_INDEX_KEY = "bgm_source_index"
SCORE_KEY = "relevance_score"
#: Name of the custom callback event sent for every bridge call (read by ``BGMTraceCallbackHandler``).
BRIDGE_EVENT = "bgm_bridge"


class BGMDocumentCompressor(BaseDocumentCompressor):
    """Selects, reorders and repeats retrieved documents with a BGM bridge model.

    Use it as ``base_compressor`` of a ``ContextualCompressionRetriever`` or inside a
    ``DocumentCompressorPipeline``. Returned documents are copies, each with its own ``metadata`` dict
    (shallow: the values are the caller's objects); the metadata is kept, and
    ``bgm_rank`` (position in the bridge output), ``bgm_source_index`` (position in the input) and
    ``relevance_score`` (the bridge's probability for that choice) are added.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    bridge: SupportsBridge
    """The bridge model, e.g. ``BridgeModel.from_pretrained(path)``."""
    on_error: Literal["raise", "passthrough"] = "raise"
    """On a failure inside the model: ``"raise"``, or ``"passthrough"`` the documents unchanged (logged)."""

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> BGMDocumentCompressor:
        """Load a saved bridge and wrap it; ``kwargs`` go to the compressor."""
        from bgm_model import BridgeModel

        return cls(bridge=BridgeModel.from_pretrained(name_or_path), **kwargs)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        docs = list(documents)
        if not docs:
            return []
        result = self.bridge.bridge(query, [d.page_content for d in docs], on_error=self.on_error)
        if callbacks is not None and not result.fallback:
            dispatch_custom_event(BRIDGE_EVENT, _event_data(result), config={"callbacks": callbacks})
        return _documents_in_bridge_order(docs, result)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        docs = list(documents)
        if not docs:
            return []
        result = await run_in_executor(
            None, self.bridge.bridge, query, [d.page_content for d in docs], on_error=self.on_error
        )
        if callbacks is not None and not result.fallback:
            await adispatch_custom_event(BRIDGE_EVENT, _event_data(result), config={"callbacks": callbacks})
        return _documents_in_bridge_order(docs, result)


def _event_data(result: BridgeResult) -> dict[str, Any]:
    return {"ids": list(result.ids), "scores": list(result.scores)}


def _documents_in_bridge_order(docs: list[Document], result: BridgeResult) -> list[Document]:
    # Metadata is copied shallowly (a new dict, the same values), as LangChain's own compressors do: a value
    # may not be deep-copyable (a lock, a client, a generator). Each returned document gets its own dict.
    if result.fallback:
        return [d.model_copy(update={"metadata": dict(d.metadata)}) for d in docs]
    out = []
    for rank, (index, score) in enumerate(zip(result.ids, result.scores)):
        source = docs[index]
        metadata = {
            **source.metadata,
            RANK_KEY: rank,
            SOURCE_INDEX_KEY: index,
            SCORE_KEY: score,
        }
        out.append(Document(page_content=source.page_content, metadata=metadata, id=source.id))
    return out
