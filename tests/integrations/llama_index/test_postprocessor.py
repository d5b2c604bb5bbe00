"""BGMNodePostprocessor inside real LlamaIndex query engines, and parity with the LangChain adapter."""

from __future__ import annotations

import threading

import pytest
from langchain_core.documents import Document as LCDocument
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from bgm_integrations.langchain import BGMDocumentCompressor
from bgm_integrations.llama_index import BGMNodePostprocessor
from bgm_model import BridgeModel
from tests._helpers import FixedBridge, fit_bridge_to, make_tiny_bridge

TEXTS = [
    "Hamlet is a tragedy written by William Shakespeare.",
    "Paris is the capital of France.",
    "The Eiffel Tower was completed in 1889.",
    "Shakespeare was born in Stratford-upon-Avon.",
]
QUERY = "who wrote hamlet?"


class _RerankEvents(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "RerankEvents"

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
            self.events.append(event)


@pytest.fixture()
def index() -> VectorStoreIndex:
    docs = [Document(text=t, metadata={"source": f"doc{i}"}) for i, t in enumerate(TEXTS)]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


def _nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=t, metadata={"source": f"doc{i}"}), score=1.0 - i / 10) for i, t in enumerate(TEXTS)]


def test_query_engine_uses_the_bridge_order_and_emits_rerank_events(index: VectorStoreIndex) -> None:
    handler = _RerankEvents(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        engine = index.as_query_engine(
            llm=MockLLM(), similarity_top_k=4, node_postprocessors=[BGMNodePostprocessor(bridge=FixedBridge([3, 1, 3], [0.8, 0.5, 0.3]))]
        )
        response = engine.query(QUERY)
    finally:
        root.event_handlers.remove(handler)
    retrieved = index.as_retriever(similarity_top_k=4).retrieve(QUERY)
    texts = [n.node.get_content() for n in response.source_nodes]
    expected = [retrieved[i].node.get_content() for i in (3, 1, 3)]
    assert texts == expected
    assert [n.score for n in response.source_nodes] == [0.8, 0.5, 0.3]
    assert [n.node.metadata["bgm_source_index"] for n in response.source_nodes] == [3, 1, 3]
    assert [type(e) for e in handler.events] == [ReRankStartEvent, ReRankEndEvent]
    assert len(handler.events[1].nodes) == 3
    # Bookkeeping metadata stays out of what the LLM reads.
    assert "bgm_rank" not in response.source_nodes[0].node.get_content(metadata_mode=MetadataMode.LLM)


async def test_retriever_query_engine_sync_and_async_with_a_real_bridge(index: VectorStoreIndex) -> None:
    retriever = index.as_retriever(similarity_top_k=4)
    passages = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in retriever.retrieve(QUERY)]
    bridge = make_tiny_bridge(seed=12)
    fit_bridge_to(bridge, QUERY, passages, [1, 0, 1])
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[BGMNodePostprocessor(bridge=bridge)])
    sync = engine.query(QUERY)
    asynchronous = await engine.aquery(QUERY)
    expected = [passages[i] for i in (1, 0, 1)]
    assert [n.node.get_content() for n in sync.source_nodes] == expected
    assert [n.node.get_content() for n in asynchronous.source_nodes] == expected


def test_caller_nodes_are_never_mutated() -> None:
    nodes = _nodes()
    before = [(n.node.model_dump(), n.score) for n in nodes]
    out = BGMNodePostprocessor(bridge=FixedBridge([0, 0])).postprocess_nodes(nodes, query_str=QUERY)
    assert [(n.node.model_dump(), n.score) for n in nodes] == before
    assert out[0].node is not nodes[0].node and out[0].node is not out[1].node


def test_empty_nodes_and_missing_query() -> None:
    bridge = FixedBridge([0])
    post = BGMNodePostprocessor(bridge=bridge)
    assert post.postprocess_nodes([], query_str=QUERY) == []
    assert bridge.calls == []
    with pytest.raises(ValueError, match="needs the query"):
        post.postprocess_nodes(_nodes())
    with pytest.raises(TypeError, match="bridge"):
        BGMNodePostprocessor(bridge=object())  # type: ignore[arg-type]


def test_both_adapters_make_the_same_selection() -> None:
    bridge = make_tiny_bridge(seed=13)
    fit_bridge_to(bridge, QUERY, TEXTS, [2, 3, 2])
    lc = BGMDocumentCompressor(bridge=bridge).compress_documents([LCDocument(page_content=t) for t in TEXTS], QUERY)
    li = BGMNodePostprocessor(bridge=bridge).postprocess_nodes(_nodes(), query_bundle=QueryBundle(QUERY))
    lc_sel = [(d.metadata["bgm_source_index"], d.metadata["relevance_score"]) for d in lc]
    li_sel = [(n.node.metadata["bgm_source_index"], n.score) for n in li]
    assert lc_sel == li_sel
    assert [i for i, _ in lc_sel] == [2, 3, 2]
    # And a second, untrained bridge: whatever it picks, both adapters agree.
    other = make_tiny_bridge(seed=14)
    lc2 = BGMDocumentCompressor(bridge=other).compress_documents([LCDocument(page_content=t) for t in TEXTS], QUERY)
    li2 = BGMNodePostprocessor(bridge=other).postprocess_nodes(_nodes(), query_str=QUERY)
    assert [d.metadata["bgm_source_index"] for d in lc2] == [n.node.metadata["bgm_source_index"] for n in li2]


def _undeepcopyable_nodes(lock: threading.Lock) -> list[NodeWithScore]:
    # Neither a lock nor a generator survives model_copy(deep=True); both are plausible metadata.
    first = TextNode(
        text=TEXTS[0], metadata={"lock": lock, "source": "a"}, excluded_llm_metadata_keys=["lock"],
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc-a")},
    )
    second = TextNode(text=TEXTS[1], metadata={"rows": (r for r in range(3)), "source": "b"})
    return [NodeWithScore(node=first, score=0.9), NodeWithScore(node=second, score=0.8)]


def _assert_copies_share_values(nodes: list[NodeWithScore], out: list[NodeWithScore]) -> None:
    """``out`` holds the caller's metadata values (identity) in containers of its own."""
    for n in out:
        source = nodes[TEXTS.index(n.node.get_content(metadata_mode=MetadataMode.NONE))].node
        assert n.node is not source
        assert all(n.node.metadata[k] is v for k, v in source.metadata.items())  # the same lock, generator
        for name in ("metadata", "excluded_llm_metadata_keys", "excluded_embed_metadata_keys", "relationships"):
            assert getattr(n.node, name) is not getattr(source, name)
    assert len({id(n.node) for n in out}) == len({id(n.node.metadata) for n in out}) == len(out)


def _snapshot(nodes: list[NodeWithScore]) -> list[tuple]:
    # Built by hand: model_dump would deep-copy the lock too.
    return [
        (dict(n.node.metadata), list(n.node.excluded_llm_metadata_keys), list(n.node.excluded_embed_metadata_keys),
         dict(n.node.relationships), n.score)
        for n in nodes
    ]


@pytest.mark.parametrize("on_error", ["raise", "passthrough"])
async def test_undeepcopyable_metadata_and_a_repeated_passage(on_error: str) -> None:
    lock = threading.Lock()
    nodes = _undeepcopyable_nodes(lock)
    before = _snapshot(nodes)
    post = BGMNodePostprocessor(bridge=FixedBridge([1, 1, 0], [0.7, 0.2, 0.1]), on_error=on_error)
    for out in (post.postprocess_nodes(nodes, query_str=QUERY), await post.apostprocess_nodes(nodes, query_str=QUERY)):
        assert [n.node.metadata["bgm_source_index"] for n in out] == [1, 1, 0]
        assert out[2].node.metadata["lock"] is lock
        assert out[2].node.relationships[NodeRelationship.SOURCE].node_id == "doc-a"
        _assert_copies_share_values(nodes, out)
        assert _snapshot(nodes) == before  # no bgm keys in the caller's metadata or exclusion lists
        # The two copies of the repeated passage are independent of each other and of the caller.
        out[0].node.metadata["source"] = "changed"
        out[0].node.excluded_llm_metadata_keys.append("source")
        assert out[1].node.metadata["source"] == "b" and "source" not in out[1].node.excluded_llm_metadata_keys
        assert _snapshot(nodes) == before


async def test_undeepcopyable_metadata_with_the_real_bridge(tiny_bridge: BridgeModel, monkeypatch) -> None:
    lock = threading.Lock()
    nodes = _undeepcopyable_nodes(lock)
    before = _snapshot(nodes)
    out = BGMNodePostprocessor(bridge=tiny_bridge).postprocess_nodes(nodes, query_str=QUERY)
    assert all("bgm_rank" in n.node.metadata for n in out)
    _assert_copies_share_values(nodes, out)
    assert _snapshot(nodes) == before

    def broken(*args, **kwargs):
        raise RuntimeError("model exploded")

    # The passthrough fallback copies the nodes too, and must not raise while doing so.
    monkeypatch.setattr(tiny_bridge, "_generate", broken)
    post = BGMNodePostprocessor(bridge=tiny_bridge, on_error="passthrough")
    for out in (post.postprocess_nodes(nodes, query_str=QUERY), await post.apostprocess_nodes(nodes, query_str=QUERY)):
        assert [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in out] == TEXTS[:2]
        assert [n.score for n in out] == [0.9, 0.8]
        assert all("bgm_rank" not in n.node.metadata for n in out)
        _assert_copies_share_values(nodes, out)
        assert _snapshot(nodes) == before
