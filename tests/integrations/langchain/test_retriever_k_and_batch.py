"""``BGMRetriever``'s ``k`` and batching, scores beside upstream scores, and overflow in real LangChain retrievers."""

from __future__ import annotations

import json

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore

from bgm_integrations.langchain import BGMDocumentCompressor, BGMRetriever, BGMTraceCallbackHandler
from bgm_model import BridgeModel
from bgm_model.traces import read_traces
from tests._helpers import FixedBridge, make_tiny_bridge
from tests.integrations.conftest import MAX_PASSAGES

TEXTS = [f"Document {i}: a short passage about subject number {i}." for i in range(20)]
QUERIES = ["who wrote hamlet?", "where is paris?", "how high is everest?"]


def _retriever(k: int, n: int = len(TEXTS)) -> BaseRetriever:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(page_content=t, metadata={"source": f"doc{i}"}, id=f"doc{i}") for i, t in enumerate(TEXTS[:n])])
    return store.as_retriever(search_kwargs={"k": k})


def _choices(results: list[list[Document]]) -> list[list[tuple]]:
    return [[(d.id, d.metadata["bgm_source_index"], d.metadata["bgm_origin"]) for d in docs] for docs in results]


def _scores(results: list[list[Document]]) -> list[float]:
    return [d.metadata["relevance_score"] for docs in results for d in docs]


class _Calls(list):
    keywords: list[dict]


def _count_bridge_batch(bridge: BridgeModel, monkeypatch: pytest.MonkeyPatch) -> _Calls:
    """Queries per ``bridge_batch`` call on the real bridge (``bridge()`` goes through it too)."""
    calls = _Calls()
    calls.keywords = []
    real = bridge.bridge_batch

    def counting(queries, passages_per_query, **kwargs):
        calls.append(len(queries))
        calls.keywords.append(kwargs)
        return real(queries, passages_per_query, **kwargs)

    monkeypatch.setattr(bridge, "bridge_batch", counting)
    return calls


# ---------------------------------------------------------------------------------------------- k
@pytest.mark.parametrize("k", [1, 3, 6])
def test_k_is_the_number_of_documents_back_with_a_real_bridge(k: int) -> None:
    compressor = BGMDocumentCompressor(bridge=make_tiny_bridge(seed=5))
    retriever = BGMRetriever(base_compressor=compressor, base_retriever=_retriever(k=8), k=k)
    docs = retriever.invoke(QUERIES[0])
    assert len(docs) == k
    assert len(retriever.invoke(QUERIES[0], k=2)) == 2  # per call
    origins = [d.metadata["bgm_origin"] for d in docs]
    assert origins == sorted(origins, key=["bridge", "fill"].index)  # the bridge's choice first, then fill-up


def test_k_larger_than_the_candidates_returns_every_candidate_once() -> None:
    bridge = make_tiny_bridge(seed=5)
    bridge.config.max_repeats = 1
    retriever = BGMRetriever(base_compressor=BGMDocumentCompressor(bridge=bridge), base_retriever=_retriever(k=2), k=5)
    docs = retriever.invoke(QUERIES[0])
    assert sorted(d.metadata["bgm_source_index"] for d in docs) == [0, 1]


def test_k_none_leaves_the_count_to_the_compressor_and_other_keywords_reach_the_base_retriever() -> None:
    compressor = BGMDocumentCompressor(bridge=FixedBridge([0, 1, 2]), top_n=2)
    retriever = BGMRetriever(base_compressor=compressor, base_retriever=_retriever(k=8))
    assert len(retriever.invoke(QUERIES[0])) == 2
    assert compressor.bridge.calls[-1][1].__len__() == 8
    retriever.invoke(QUERIES[0], search_type="mmr", fetch_k=10)  # forwarded to the vector store
    with pytest.raises(ValueError, match="k must be >= 1"):
        retriever.invoke(QUERIES[0], k=0)


def test_the_compression_retriever_with_top_n_and_min_n_returns_a_fixed_count(tiny_bridge) -> None:
    """The plain ContextualCompressionRetriever gets a fixed count from the compressor's settings."""
    for n in (1, 3):
        retriever = ContextualCompressionRetriever(
            base_compressor=BGMDocumentCompressor(bridge=tiny_bridge, top_n=n, min_n=n), base_retriever=_retriever(k=6)
        )
        assert len(retriever.invoke(QUERIES[0])) == n


# ---------------------------------------------------------------------------------------------- batch
def test_batch_sends_all_queries_to_bridge_batch_at_once(monkeypatch, tmp_path) -> None:
    bridge = make_tiny_bridge(seed=6)
    calls = _count_bridge_batch(bridge, monkeypatch)
    compressor = BGMDocumentCompressor(bridge=bridge)
    retriever = BGMRetriever(base_compressor=compressor, base_retriever=_retriever(k=5), k=2)
    one_by_one = [retriever.invoke(q) for q in QUERIES]
    assert calls == [1, 1, 1]

    calls.clear()
    handler = BGMTraceCallbackHandler(tmp_path / "traces.jsonl")
    batched = retriever.batch(QUERIES, config={"callbacks": [handler]})
    assert calls == [3]
    # The same choices as one query at a time (scores up to float noise from padding in a batch).
    assert _choices(batched) == _choices(one_by_one)
    assert _scores(batched) == pytest.approx(_scores(one_by_one), abs=1e-5)
    # Each query still has its own retriever run: one trace per query, with its own bridge output.
    records = {r.query: r for r in read_traces(tmp_path / "traces.jsonl")}
    assert set(records) == set(QUERIES)
    for query, docs in zip(QUERIES, batched):
        chosen = [d.metadata["bgm_source_index"] for d in docs if d.metadata["bgm_origin"] == "bridge"]
        assert records[query].bridge is not None and records[query].bridge.source_indices == chosen

    # The plain compression retriever cannot batch: LangChain calls the compressor once per query.
    calls.clear()
    ContextualCompressionRetriever(base_compressor=compressor, base_retriever=_retriever(k=5)).batch(QUERIES)
    assert sorted(calls) == [1, 1, 1]


async def test_abatch_sends_all_queries_to_bridge_batch_at_once(monkeypatch) -> None:
    bridge = make_tiny_bridge(seed=6)
    calls = _count_bridge_batch(bridge, monkeypatch)
    retriever = BGMRetriever(base_compressor=BGMDocumentCompressor(bridge=bridge, batch_size=2), base_retriever=_retriever(k=5), k=2)
    batched = await retriever.abatch(QUERIES)
    assert calls == [3]  # one call; the bridge runs batch_size=2 queries per forward pass inside it
    assert calls.keywords == [{"batch_size": 2, "on_error": "raise"}]
    one_by_one = [await retriever.ainvoke(q) for q in QUERIES]
    assert _choices(batched) == _choices(one_by_one)
    assert _scores(batched) == pytest.approx(_scores(one_by_one), abs=1e-5)


def test_batch_with_a_failing_query_returns_or_raises_its_error() -> None:
    class Failing(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            if "paris" in query:
                raise RuntimeError("index offline")
            return [Document(page_content=t) for t in TEXTS[:3]]

    retriever = BGMRetriever(base_compressor=BGMDocumentCompressor(bridge=FixedBridge([1])), base_retriever=Failing())
    out = retriever.batch(QUERIES, return_exceptions=True)
    assert isinstance(out[1], RuntimeError) and [d.page_content for d in out[0]] == [TEXTS[1]]
    with pytest.raises(RuntimeError, match="index offline"):
        retriever.batch(QUERIES)


# ---------------------------------------------------------------------------------------------- scores
def test_an_upstream_relevance_score_moves_to_retrieval_score() -> None:
    docs = [
        Document(page_content=TEXTS[0], metadata={"relevance_score": 0.91}),
        Document(page_content=TEXTS[1], metadata={"relevance_score": 0.42, "retrieval_score": 12.5}),
        Document(page_content=TEXTS[2]),
    ]
    out = BGMDocumentCompressor(bridge=FixedBridge([0, 1, 2], [0.6, 0.3, 0.1])).compress_documents(docs, QUERIES[0])
    assert [d.metadata["relevance_score"] for d in out] == [0.6, 0.3, 0.1]  # the bridge's (LangChain's reranker key)
    assert out[0].metadata["retrieval_score"] == 0.91  # the retriever's, kept beside it
    assert out[1].metadata["retrieval_score"] == 12.5  # an earlier retrieval_score is not overwritten
    assert "retrieval_score" not in out[2].metadata
    assert docs[0].metadata == {"relevance_score": 0.91}  # the caller's documents are untouched


# ---------------------------------------------------------------------------------------------- overflow
@pytest.mark.parametrize("on_error", ["raise", "passthrough"])
def test_k20_into_a_16_passage_bridge_works_in_a_compression_retriever(on_error, saved_bridge_path) -> None:
    compressor = BGMDocumentCompressor(model=saved_bridge_path, device="cpu", on_error=on_error, overflow_rest="append")
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=_retriever(k=20))
    docs = retriever.invoke(QUERIES[0])
    tail = [d for d in docs if d.metadata["bgm_origin"] == "overflow"]
    assert [d.metadata["bgm_source_index"] for d in tail] == list(range(MAX_PASSAGES, 20))
    assert all(d.metadata["bgm_source_index"] < MAX_PASSAGES for d in docs if d.metadata["bgm_origin"] == "bridge")
    json.dumps([d.metadata for d in docs])  # plain JSON metadata
