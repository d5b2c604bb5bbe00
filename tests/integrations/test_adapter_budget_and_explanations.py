"""The token budget, the score threshold and the "why this passage" fields through both real frameworks, and
the alternatives kept in recorded traces."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from bgm_integrations.langchain import BGMDocumentCompressor
from bgm_integrations.llama_index import BGMNodePostprocessor
from bgm_model.selection import ALTERNATIVE_KEY, ALTERNATIVE_SCORE_KEY
from tests._helpers import make_tiny_bridge

TEXTS = [
    "Hamlet is a tragedy written by William Shakespeare around 1600 in London.",
    "Paris is the capital of France.",
    "The Eiffel Tower was completed in 1889 for the World's Fair held in Paris that year.",
    "Shakespeare was born in Stratford-upon-Avon.",
]
QUERY = "who wrote hamlet?"


@pytest.fixture(scope="module")
def bridge():
    from bgm_model import BridgeConfig

    return make_tiny_bridge(BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=32,
                                         max_output_length=6, max_repeats=2))  # fmt: skip


def _tokens(bridge, text: str) -> int:
    return len(bridge.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("budget", [0, 12, 25, 60])
def test_both_adapters_keep_the_chosen_context_within_the_token_budget(bridge, budget: int) -> None:
    docs = BGMDocumentCompressor(bridge=bridge, max_context_tokens=budget).compress_documents(
        [Document(page_content=t) for t in TEXTS], QUERY
    )
    nodes = BGMNodePostprocessor(bridge=bridge, max_context_tokens=budget).postprocess_nodes(
        [NodeWithScore(node=TextNode(text=t), score=1.0) for t in TEXTS], QueryBundle(QUERY)
    )
    assert sum(_tokens(bridge, d.page_content) for d in docs) <= budget
    assert [d.page_content for d in docs] == [n.node.get_content() for n in nodes], "same choice in both"
    # The bridge's own greedy decoding under the same budget is what the adapters return.
    expected = bridge.bridge(QUERY, TEXTS, max_context_tokens=budget).ids
    assert [d.metadata["bgm_source_index"] for d in docs] == expected


def test_the_budget_changes_the_choice_only_when_it_binds(bridge) -> None:
    free = bridge.bridge(QUERY, TEXTS)
    used = sum(_tokens(bridge, TEXTS[i]) for i in free.ids)
    docs = BGMDocumentCompressor(bridge=bridge, max_context_tokens=used).compress_documents(
        [Document(page_content=t) for t in TEXTS], QUERY
    )
    assert [d.metadata["bgm_source_index"] for d in docs] == free.ids


def test_each_document_and_node_says_why_it_was_chosen(bridge) -> None:
    docs = BGMDocumentCompressor(bridge=bridge).compress_documents([Document(page_content=t) for t in TEXTS], QUERY)
    nodes = BGMNodePostprocessor(bridge=bridge).postprocess_nodes(
        [NodeWithScore(node=TextNode(text=t)) for t in TEXTS], QueryBundle(QUERY)
    )
    result = bridge.bridge(QUERY, TEXTS)
    assert docs, "the tiny bridge chooses something"
    for doc, node, (alt_index, alt_score), score in zip(docs, nodes, result.alternatives, result.scores):
        assert doc.metadata[ALTERNATIVE_KEY] == alt_index and doc.metadata[ALTERNATIVE_SCORE_KEY] == alt_score
        assert node.node.metadata[ALTERNATIVE_KEY] == alt_index
        assert doc.metadata["relevance_score"] == score == node.score
        assert alt_score <= score, "greedy: the chosen passage is at least as likely as the alternative"
        # Bookkeeping stays out of what the LLM and the embedder read.
        assert ALTERNATIVE_KEY not in node.node.get_content(metadata_mode="llm")


def test_a_score_threshold_stops_the_bridge(bridge) -> None:
    result = bridge.bridge(QUERY, TEXTS)
    threshold = min(result.scores) + 1e-6
    docs = BGMDocumentCompressor(bridge=bridge, min_score=threshold).compress_documents(
        [Document(page_content=t) for t in TEXTS], QUERY
    )
    assert all(d.metadata["relevance_score"] >= threshold for d in docs)
    assert len(docs) < len(result.ids)


@pytest.mark.parametrize("adapter", [BGMDocumentCompressor, BGMNodePostprocessor])
def test_a_budget_cannot_be_combined_with_fill_up(adapter, bridge) -> None:
    with pytest.raises(ValueError, match="max_context_tokens cannot be combined with min_n"):
        adapter(bridge=bridge, max_context_tokens=10, min_n=2)
    with pytest.raises(ValueError, match="min_score"):
        adapter(bridge=bridge, min_score=1.5)


def test_recorded_traces_keep_the_alternatives(bridge, tmp_path) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from bgm_integrations.langchain import BGMTraceCallbackHandler
    from bgm_model.traces import read_traces

    store = InMemoryVectorStore.from_texts(TEXTS, DeterministicFakeEmbedding(size=16))
    retriever = ContextualCompressionRetriever(
        base_compressor=BGMDocumentCompressor(bridge=bridge), base_retriever=store.as_retriever(search_kwargs={"k": 4})
    )
    handler = BGMTraceCallbackHandler(tmp_path / "traces.jsonl")
    docs = retriever.invoke(QUERY, config={"callbacks": [handler]})
    (record,) = read_traces(tmp_path / "traces.jsonl")
    assert record.bridge is not None and len(record.bridge.alternatives) == len(docs)
    assert record.bridge.alternatives == [(d.metadata[ALTERNATIVE_KEY], d.metadata[ALTERNATIVE_SCORE_KEY]) for d in docs]
