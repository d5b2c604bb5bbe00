"""BGMDocumentCompressor inside real LangChain retrievers and chains."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from bgm_integrations.langchain import BGMDocumentCompressor
from bgm_model import BridgeModel
from tests._helpers import SAMPLE_TEXTS, FixedBridge, fit_bridge_to, make_tiny_bridge

TEXTS = SAMPLE_TEXTS
QUERY = "who wrote hamlet?"


@pytest.fixture()
def vector_retriever():
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(page_content=t, metadata={"source": f"doc{i}", "nested": {"k": i}}) for i, t in enumerate(TEXTS)])
    return store.as_retriever(search_kwargs={"k": 4})


def test_compression_retriever_returns_copies_in_bridge_order(vector_retriever) -> None:
    retrieved = vector_retriever.invoke(QUERY)
    snapshot = copy.deepcopy(retrieved)
    bridge = FixedBridge([2, 0, 2], scores=[0.9, 0.6, 0.4])
    retriever = ContextualCompressionRetriever(
        base_compressor=BGMDocumentCompressor(bridge=bridge), base_retriever=vector_retriever
    )
    docs = retriever.invoke(QUERY)
    assert bridge.calls == [(QUERY, [d.page_content for d in retrieved])]
    assert [d.page_content for d in docs] == [retrieved[2].page_content, retrieved[0].page_content, retrieved[2].page_content]
    assert [d.metadata["bgm_rank"] for d in docs] == [0, 1, 2]
    assert [d.metadata["bgm_source_index"] for d in docs] == [2, 0, 2]
    assert [d.metadata["relevance_score"] for d in docs] == [0.9, 0.6, 0.4]
    assert docs[0].metadata["source"] == retrieved[2].metadata["source"]  # metadata kept
    assert docs[0] is not docs[2]
    docs[0].metadata["source"] = "changed"  # each copy owns its metadata dict: the retriever's documents are untouched
    assert vector_retriever.invoke(QUERY) == snapshot


async def test_async_and_pipeline_paths(vector_retriever) -> None:
    compressor = BGMDocumentCompressor(bridge=FixedBridge([1, 3]))
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=vector_retriever)
    sync_docs = retriever.invoke(QUERY)
    async_docs = await retriever.ainvoke(QUERY)
    assert [d.page_content for d in async_docs] == [d.page_content for d in sync_docs]
    assert len(sync_docs) == 2

    pipeline = DocumentCompressorPipeline(transformers=[compressor])
    piped = ContextualCompressionRetriever(base_compressor=pipeline, base_retriever=vector_retriever)
    assert [d.page_content for d in piped.invoke(QUERY)] == [d.page_content for d in sync_docs]


def test_real_bridge_in_an_lcel_rag_chain(vector_retriever) -> None:
    passages = [d.page_content for d in vector_retriever.invoke(QUERY)]
    bridge = make_tiny_bridge(seed=11)
    fit_bridge_to(bridge, QUERY, passages, [3, 3])  # select one passage and repeat it
    retriever = ContextualCompressionRetriever(
        base_compressor=BGMDocumentCompressor(bridge=bridge), base_retriever=vector_retriever
    )
    seen_prompts: list[str] = []

    def format_docs(docs: list[Document]) -> str:
        text = "\n\n".join(d.page_content for d in docs)
        seen_prompts.append(text)
        return text

    prompt = ChatPromptTemplate.from_messages([("system", "Context:\n{context}"), ("human", "{question}")])
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | FakeListChatModel(responses=["William Shakespeare"])
        | StrOutputParser()
    )
    assert chain.invoke(QUERY) == "William Shakespeare"
    assert seen_prompts == [f"{passages[3]}\n\n{passages[3]}"]


def test_empty_retrieval_skips_the_bridge() -> None:
    bridge = FixedBridge([0])
    assert BGMDocumentCompressor(bridge=bridge).compress_documents([], QUERY) == []
    assert bridge.calls == []


def test_passthrough_on_model_failure(monkeypatch, caplog) -> None:
    bridge = make_tiny_bridge()

    def broken(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(bridge, "_generate", broken)
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(TEXTS[:3])]
    with pytest.raises(RuntimeError, match="exploded"):
        BGMDocumentCompressor(bridge=bridge).compress_documents(docs, QUERY)
    with caplog.at_level(logging.WARNING):
        out = BGMDocumentCompressor(bridge=bridge, on_error="passthrough").compress_documents(docs, QUERY)
    assert [d.page_content for d in out] == TEXTS[:3]
    assert all("bgm_rank" not in d.metadata for d in out)
    assert "unchanged" in caplog.text


def test_configuration_errors() -> None:
    with pytest.raises(ValidationError):
        BGMDocumentCompressor(bridge=object())  # not a bridge
    with pytest.raises(ValidationError):
        BGMDocumentCompressor(bridge=FixedBridge([0]), top_k=3)  # extra fields are forbidden
    with pytest.raises(TypeError, match="query must be a str"):
        BGMDocumentCompressor(bridge=make_tiny_bridge()).compress_documents([Document(page_content="a")], 123)  # type: ignore[arg-type]


def _undeepcopyable_docs(lock: threading.Lock) -> list[Document]:
    # Neither a lock nor a generator survives copy.deepcopy; both are plausible metadata (clients, streams).
    return [
        Document(page_content=TEXTS[0], metadata={"lock": lock, "source": "a"}),
        Document(page_content=TEXTS[1], metadata={"rows": (r for r in range(3)), "source": "b"}),
    ]


def _assert_copies_share_values(docs: list[Document], out: Sequence[Document], lock: threading.Lock) -> None:
    """``out`` holds the caller's metadata values (identity) in dicts of its own; the caller's are untouched."""
    rows = docs[1].metadata["rows"]
    for d in out:
        source = docs[TEXTS.index(d.page_content)]
        assert d.metadata is not source.metadata
        assert all(d.metadata[k] is v for k, v in source.metadata.items())  # the same lock, the same generator
    assert len({id(d) for d in out}) == len({id(d.metadata) for d in out}) == len(out)
    assert docs[0].metadata == {"lock": lock, "source": "a"}  # no bgm keys added to the caller's documents
    assert docs[1].metadata == {"rows": rows, "source": "b"}


@pytest.mark.parametrize("on_error", ["raise", "passthrough"])
async def test_undeepcopyable_metadata_and_a_repeated_passage(on_error: str) -> None:
    lock = threading.Lock()
    docs = _undeepcopyable_docs(lock)
    compressor = BGMDocumentCompressor(bridge=FixedBridge([1, 1, 0], [0.7, 0.2, 0.1]), on_error=on_error)
    for out in (compressor.compress_documents(docs, QUERY), await compressor.acompress_documents(docs, QUERY)):
        assert [d.metadata["bgm_source_index"] for d in out] == [1, 1, 0]
        assert out[2].metadata["lock"] is lock
        _assert_copies_share_values(docs, out, lock)
        # The two copies of the repeated passage are independent of each other and of the caller.
        out[0].metadata["source"] = "changed"
        out[0].metadata["bgm_rank"] = 99
        assert out[1].metadata["source"] == "b" and out[1].metadata["bgm_rank"] == 1
        assert docs[1].metadata["source"] == "b"


async def test_undeepcopyable_metadata_with_the_real_bridge(tiny_bridge: BridgeModel, monkeypatch) -> None:
    lock = threading.Lock()
    docs = _undeepcopyable_docs(lock)
    out = BGMDocumentCompressor(bridge=tiny_bridge).compress_documents(docs, QUERY)
    assert all("bgm_rank" in d.metadata for d in out)
    _assert_copies_share_values(docs, out, lock)

    def broken(*args, **kwargs):
        raise RuntimeError("model exploded")

    # The passthrough fallback copies the documents too, and must not raise while doing so.
    monkeypatch.setattr(tiny_bridge, "_generate", broken)
    compressor = BGMDocumentCompressor(bridge=tiny_bridge, on_error="passthrough")
    for out in (compressor.compress_documents(docs, QUERY), await compressor.acompress_documents(docs, QUERY)):
        assert [d.page_content for d in out] == TEXTS[:2]
        assert all("bgm_rank" not in d.metadata for d in out)
        _assert_copies_share_values(docs, out, lock)
