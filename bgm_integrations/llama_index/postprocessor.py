"""LlamaIndex adapter: the bridge as a node postprocessor.

Only translates types: each node's text (with its title, :func:`bgm_model.passages.render_document`) goes to
the core, and the core's selection (:mod:`bgm_model.selection`: overflow, fill-up, cap, passthrough) comes
back as new ``NodeWithScore`` objects (with copied nodes) in bridge order, a repeated passage appearing
again. The caller's nodes are never mutated.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Literal

from llama_index.core.bridge.pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from bgm_model.adapter_config import collect_settings, load_bridge, resolve_bridge
from bgm_model.passages import render_document
from bgm_model.protocols import SupportsBridge
from bgm_model.selection import (
    ORIGIN_KEY,
    RANK_KEY,
    RETRIEVAL_SCORE_KEY,
    SOURCE_INDEX_KEY,
    Selection,
    SelectionSettings,
    bookkeeping,
    kept_score,
    select,
)

dispatcher = get_dispatcher(__name__)
logger = logging.getLogger(__name__)

__all__ = ["BRIDGE_EVENT_TAG", "ORIGIN_KEY", "RANK_KEY", "RETRIEVAL_SCORE_KEY", "SOURCE_INDEX_KEY", "BGMNodePostprocessor"]

#: Tag on the rerank events of every bridge call (read by ``BGMTraceHandler``).
BRIDGE_EVENT_TAG = "bgm_bridge"
_DEFAULTS = SelectionSettings()


class BGMNodePostprocessor(BaseNodePostprocessor):
    """Selects, reorders and repeats retrieved nodes with a BGM bridge model.

    ``index.as_query_engine(similarity_top_k=20, node_postprocessors=[BGMNodePostprocessor(model=path,
    top_n=5)])``, or ``BGMNodePostprocessor(bridge=bridge)``. Each returned node is a shallow copy (its own
    metadata dict, the values shared with the caller's node) whose ``score`` is the bridge's probability for
    that choice (0.0 for nodes added by ``min_n`` / ``overflow_rest="append"``). The score a node arrived
    with is kept in its metadata as ``retrieval_score`` (unless it already has one); ``retrieval_score``,
    ``bgm_rank``, ``bgm_source_index`` and ``bgm_origin`` are hidden from the LLM and embedding text. With
    ``on_error="passthrough"`` a failure returns plain copies of the input nodes with their scores.

    ``to_dict`` / ``from_dict`` and pickle keep ``model`` and the settings, never the bridge object; see
    :mod:`bgm_model.adapter_config`.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str | None = Field(
        default=None,
        description="Path or hub id of a saved bridge, loaded once when the postprocessor is built "
        "(what serialisation keeps). Give this or bridge=.",
    )
    device: str | None = Field(
        default=None, description="Where model is loaded (None: CUDA when available, else CPU)."
    )
    bridge_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Bridge settings applied when loading model (e.g. {'max_repeats': 1}); may be given flat.",
    )
    top_n: int | None = Field(default=_DEFAULTS.top_n, description="At most this many nodes come back (None: no cap).")
    min_n: int = Field(
        default=_DEFAULTS.min_n,
        description="At least this many come back when the input allows: the best-ranked unchosen nodes are appended.",
    )
    overflow_rest: Literal["drop", "append"] = Field(
        default=_DEFAULTS.overflow_rest,
        description="Nodes beyond the bridge's max_passages (it reads the first ones): drop them, or append them.",
    )
    on_error: Literal["raise", "passthrough"] = Field(
        default=_DEFAULTS.on_error,
        description="On a failure in the bridge call: 'raise', or 'passthrough' the nodes unchanged (logged).",
    )
    batch_size: int = Field(default=_DEFAULTS.batch_size, description="Queries per bridge forward pass.")
    title_key: str | None = Field(
        default=_DEFAULTS.title_key,
        description="Metadata key of a node's title, given to the bridge as '(Title: ...) text' like in training.",
    )
    max_context_tokens: int | None = Field(
        default=_DEFAULTS.max_context_tokens,
        description="Token budget of the returned nodes (the bridge's tokenizer counts): the bridge never picks "
        "a node that would go past it. None: no budget.",
    )
    min_score: float | None = Field(
        default=_DEFAULTS.min_score,
        description="The bridge stops at the first node whose probability is below this (None: off).",
    )
    model_name: str = Field(default="bgm-bridge", description="Name reported in rerank events.")
    _bridge: SupportsBridge = PrivateAttr()

    def __init__(self, bridge: SupportsBridge | None = None, **kwargs: Any) -> None:
        if bridge is not None and not isinstance(bridge, SupportsBridge):
            raise TypeError(f"bridge must have a .bridge(query, passages) method, got {type(bridge).__name__}")
        super().__init__(**kwargs)
        self._bridge = resolve_bridge(bridge, self.model, self.device, self.bridge_overrides, owner=type(self).__name__)

    @model_validator(mode="before")
    @classmethod
    def _collect_settings(cls, data: Any) -> Any:
        # class_name is what to_dict() adds; from_dict drops it, model_validate(to_dict()) should too.
        return collect_settings(data, cls.model_fields, ignore=("class_name",))

    @model_validator(mode="after")
    def _check_settings(self) -> BGMNodePostprocessor:
        self.settings()
        return self

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | None = None, **kwargs: Any) -> BGMNodePostprocessor:
        """Load a saved bridge and wrap it: ``kwargs`` are postprocessor settings or bridge settings
        (``max_repeats=1``, ``overflow="truncate"``), the latter forwarded to ``BridgeModel.from_pretrained``."""
        return cls(model=name_or_path, device=device, **kwargs)

    @property
    def bridge(self) -> SupportsBridge:
        return self._bridge

    @classmethod
    def class_name(cls) -> str:
        return "BGMNodePostprocessor"

    def settings(self) -> SelectionSettings:
        return SelectionSettings.from_attributes(self)

    def __getstate__(self) -> dict[Any, Any]:
        # BaseComponent's would pickle the bridge once just to test it (the whole model). Its policy is kept
        # for the plain fields (an unpicklable one, e.g. a callback manager, is dropped and rebuilt as its
        # default); with a model path the pickle holds the path, not the weights.
        state = BaseModel.__getstate__(self)
        fields = {}
        for key, value in state["__dict__"].items():
            try:
                pickle.dumps(value)
            except Exception:
                logger.warning("Not pickling %s.%s (unpicklable); it gets its default", type(self).__name__, key)
                continue
            fields[key] = value
        private = dict(state.get("__pydantic_private__") or {})
        if self.model is not None:
            private["_bridge"] = None
        return {**state, "__dict__": fields, "__pydantic_private__": private}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        BaseModel.__setstate__(self, state)
        for name, info in type(self).model_fields.items():
            if name not in self.__dict__:
                self.__dict__[name] = info.get_default(call_default_factory=True)
        if self._bridge is None and self.model is not None:
            self._bridge = load_bridge(self.model, self.device, self.bridge_overrides)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("BGMNodePostprocessor needs the query: pass query_bundle= or query_str=.")
        if not nodes:
            return []
        settings = self.settings()
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=settings.top_n or len(nodes), model_name=self.model_name,
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
            passages = [
                render_document(
                    n.node.get_content(metadata_mode=MetadataMode.NONE), n.node.metadata, title_key=settings.title_key
                )
                for n in nodes
            ]
            selection = select(self._bridge, query_bundle.query_str, passages, settings)
            new_nodes = _nodes_in_order(nodes, selection)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes, tags={BRIDGE_EVENT_TAG: not selection.fallback}))
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


def _nodes_in_order(nodes: list[NodeWithScore], selection: Selection) -> list[NodeWithScore]:
    if selection.fallback:
        return [NodeWithScore(node=_copy_node(n.node), score=n.score) for n in nodes]
    out = []
    for rank, pick in enumerate(selection.picks):
        source = nodes[pick.index]
        node = _copy_node(source.node)
        added = {**kept_score(node.metadata, source.score), **bookkeeping(pick, rank)}
        node.metadata.update(added)
        # Bookkeeping keys must not leak into what the LLM reads or what gets embedded.
        node.excluded_llm_metadata_keys += [k for k in added if k not in node.excluded_llm_metadata_keys]
        node.excluded_embed_metadata_keys += [k for k in added if k not in node.excluded_embed_metadata_keys]
        out.append(NodeWithScore(node=node, score=pick.score))
    return out
