"""LlamaIndex adapter: the bridge as a node postprocessor.

Only translates types: each node's raw text goes to the core, and new ``NodeWithScore`` objects (with copied
nodes) come back in bridge order, a repeated passage appearing again. The caller's nodes are never mutated.
"""

from __future__ import annotations

from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from bgm_model.outputs import BridgeResult
from bgm_model.protocols import SupportsBridge

dispatcher = get_dispatcher(__name__)

RANK_KEY = "bgm_rank"
SOURCE_INDEX_KEY = "bgm_source_index"
_ADDED_KEYS = [RANK_KEY, SOURCE_INDEX_KEY]
#: Tag on the rerank events of every bridge call (read by ``BGMTraceHandler``).
BRIDGE_EVENT_TAG = "bgm_bridge"


class BGMNodePostprocessor(BaseNodePostprocessor):
    """Selects, reorders and repeats retrieved nodes with a BGM bridge model.

    ``index.as_query_engine(node_postprocessors=[BGMNodePostprocessor(bridge=bridge)])``. Each returned node
    is a shallow copy (its own metadata dict, the values shared with the caller's node) whose ``score`` is
    the bridge's probability for that choice; ``bgm_rank`` and
    ``bgm_source_index`` are added to its metadata but hidden from the LLM and embedding text.
    """

    on_error: Literal["raise", "passthrough"] = Field(
        default="raise",
        description="On a failure inside the model: 'raise', or 'passthrough' the nodes unchanged (logged).",
    )
    model_name: str = Field(default="bgm-bridge", description="Name reported in rerank events.")
    _bridge: SupportsBridge = PrivateAttr()

    def __init__(self, bridge: SupportsBridge, **kwargs: Any) -> None:
        if not isinstance(bridge, SupportsBridge):
            raise TypeError(f"bridge must have a .bridge(query, passages) method, got {type(bridge).__name__}")
        super().__init__(**kwargs)
        self._bridge = bridge

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> BGMNodePostprocessor:
        """Load a saved bridge and wrap it; ``kwargs`` go to the postprocessor."""
        from bgm_model import BridgeModel

        return cls(bridge=BridgeModel.from_pretrained(name_or_path), **kwargs)

    @property
    def bridge(self) -> SupportsBridge:
        return self._bridge

    @classmethod
    def class_name(cls) -> str:
        return "BGMNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("BGMNodePostprocessor needs the query: pass query_bundle= or query_str=.")
        if not nodes:
            return []
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=len(nodes), model_name=self.model_name,
                tags={BRIDGE_EVENT_TAG: True},
            )
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model_name,
                EventPayload.QUERY_STR: query_bundle.query_str,
            },
        ) as event:
            passages = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
            result = self._bridge.bridge(query_bundle.query_str, passages, on_error=self.on_error)
            new_nodes = _nodes_in_bridge_order(nodes, result)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes, tags={BRIDGE_EVENT_TAG: not result.fallback}))
        return new_nodes


def _copy_node(node: BaseNode) -> BaseNode:
    """A shallow copy of ``node`` with its own metadata dict, exclusion lists and relationships dict.

    Not ``model_copy(deep=True)``: a metadata value may not be deep-copyable (a lock, a client, a generator).
    Owning the containers is what keeps the caller's node free of the keys added here, and keeps two copies
    of a repeated passage independent.
    """
    return node.model_copy(
        update={
            "metadata": dict(node.metadata),
            "excluded_llm_metadata_keys": list(node.excluded_llm_metadata_keys),
            "excluded_embed_metadata_keys": list(node.excluded_embed_metadata_keys),
            "relationships": dict(node.relationships),
        }
    )


def _nodes_in_bridge_order(nodes: list[NodeWithScore], result: BridgeResult) -> list[NodeWithScore]:
    if result.fallback:
        return [NodeWithScore(node=_copy_node(n.node), score=n.score) for n in nodes]
    out = []
    for rank, (index, score) in enumerate(zip(result.ids, result.scores)):
        node = _copy_node(nodes[index].node)
        node.metadata[RANK_KEY] = rank
        node.metadata[SOURCE_INDEX_KEY] = index
        # Bookkeeping keys must not leak into what the LLM reads or what gets embedded.
        node.excluded_llm_metadata_keys = [*node.excluded_llm_metadata_keys, *_ADDED_KEYS]
        node.excluded_embed_metadata_keys = [*node.excluded_embed_metadata_keys, *_ADDED_KEYS]
        out.append(NodeWithScore(node=node, score=score))
    return out
