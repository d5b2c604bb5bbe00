"""BGMTraceCallbackHandler on real LCEL chains (fake chat model, in-memory vector store)."""

from __future__ import annotations

import asyncio

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from bgm_integrations.langchain import BGMDocumentCompressor, BGMTraceCallbackHandler
from bgm_model.traces import TraceWriter, read_traces
from tests._helpers import FixedBridge
from tests.traces.conftest import ANSWER, PROMPT, TEXTS, format_docs, make_rag_chain


def test_invoke_records_query_passages_in_retriever_order_messages_and_answer(tmp_path, rag_chain, retriever):
    path = tmp_path / "t.jsonl"
    handler = BGMTraceCallbackHandler(path)
    out = rag_chain.invoke("who wrote hamlet?", config={"callbacks": [handler]})
    assert out == ANSWER
    (rec,) = read_traces(path)
    expected = retriever.invoke("who wrote hamlet?")
    assert rec.framework == "langchain"
    assert rec.query == "who wrote hamlet?"
    assert [p.id for p in rec.passages] == [d.id for d in expected]
    assert [p.content for p in rec.passages] == [d.page_content for d in expected]
    assert rec.passages[0].metadata["source"] == expected[0].metadata["source"]
    assert rec.bridge is None
    assert rec.llm.answer == ANSWER and rec.llm.model == "fake-list-chat-model"
    assert [m.role for m in rec.llm.messages] == ["system", "user"]
    assert format_docs(expected) in rec.llm.messages[1].content
    assert handler.in_flight == 0


def test_batch_and_gather_of_20_keep_queries_separate(tmp_path, retriever):
    path = tmp_path / "t.jsonl"
    handler = BGMTraceCallbackHandler(path)
    # The chat model echoes the question, so a record mixing two queries would show it.
    echo = RunnableLambda(lambda pv: pv.to_messages()[-1].content.rsplit("Question: ", 1)[1])
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | echo
    chain_llm = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | GenericFakeChatModel(messages=iter([f"a{i}" for i in range(100)]))
        | StrOutputParser()
    )

    chain.batch([f"batch {i}" for i in range(5)], config={"callbacks": [handler]})

    async def run_all():
        await asyncio.gather(
            *(chain_llm.ainvoke(f"query {i}", config={"callbacks": [handler]}) for i in range(20))
        )

    asyncio.run(run_all())
    records = read_traces(path)
    assert len(records) == 25
    assert sorted(r.query for r in records) == sorted(
        [f"batch {i}" for i in range(5)] + [f"query {i}" for i in range(20)]
    )
    assert len({r.trace_id for r in records}) == 25
    for r in records:
        assert len(r.passages) == 4
        if r.query.startswith("query"):
            # Each record's prompt is its own query's prompt with its own passages.
            assert r.llm.messages[-1].content.endswith(f"Question: {r.query}")
            assert (
                format_docs([Document(page_content=p.content) for p in r.passages])
                in r.llm.messages[-1].content
            )
    answers = sorted(r.answer for r in records if r.query.startswith("query"))
    assert answers == sorted(f"a{i}" for i in range(20))
    assert handler.in_flight == 0


async def test_ainvoke_and_astream_record_the_full_answer(tmp_path, retriever):
    path = tmp_path / "t.jsonl"
    handler = BGMTraceCallbackHandler(path)
    llm = GenericFakeChatModel(messages=iter(["streamed answer here", "second answer"]))
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | llm
        | StrOutputParser()
    )
    chunks = [c async for c in chain.astream("stream q", config={"callbacks": [handler]})]
    assert len(chunks) > 1
    await chain.ainvoke("plain q", config={"callbacks": [handler]})
    recs = {r.query: r for r in read_traces(path)}
    assert recs["stream q"].answer == "streamed answer here"
    assert recs["plain q"].answer == "second answer"
    assert len(recs["stream q"].passages) == 4


def test_retriever_scores_come_from_metadata_when_present(tmp_path):
    from langchain_core.retrievers import BaseRetriever

    class ScoredRetriever(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return [
                Document(page_content=t, metadata={"score": 1.0 - i / 10}) for i, t in enumerate(TEXTS[:3])
            ]

    path = tmp_path / "t.jsonl"
    make_rag_chain(ScoredRetriever()).invoke("q", config={"callbacks": [BGMTraceCallbackHandler(path)]})
    (rec,) = read_traces(path)
    assert [p.score for p in rec.passages] == [1.0, 0.9, 0.8]
    assert rec.passages[0].id.startswith("sha1:")  # no id given: a stable content id


def test_with_the_bridge_compressor_records_bridge_ids_and_source_indices(tmp_path, retriever):
    path = tmp_path / "t.jsonl"
    compressor = BGMDocumentCompressor(bridge=FixedBridge([2, 0, 2], scores=[0.9, 0.8, 0.7]))
    bridged = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=retriever)
    make_rag_chain(bridged).invoke("who wrote hamlet?", config={"callbacks": [BGMTraceCallbackHandler(path)]})
    (rec,) = read_traces(path)
    retrieved = retriever.invoke("who wrote hamlet?")
    # passages: what the retriever returned (the bridge's input), not the bridge output
    assert [p.id for p in rec.passages] == [d.id for d in retrieved]
    assert rec.bridge is not None
    assert rec.bridge.source_indices == [2, 0, 2]
    assert rec.bridge.ids == [retrieved[2].id, retrieved[0].id, retrieved[2].id]
    assert rec.bridge.scores == pytest.approx([0.9, 0.8, 0.7])
    # the LLM saw the bridge's output, repeat included
    assert rec.llm.messages[-1].content.count(retrieved[2].page_content) == 2


def test_with_the_tiny_bridge(tmp_path, retriever, tiny_bridge):
    path = tmp_path / "t.jsonl"
    bridged = ContextualCompressionRetriever(
        base_compressor=BGMDocumentCompressor(bridge=tiny_bridge), base_retriever=retriever
    )
    out_docs = bridged.invoke("who wrote hamlet?")
    make_rag_chain(bridged).invoke("who wrote hamlet?", config={"callbacks": [BGMTraceCallbackHandler(path)]})
    (rec,) = read_traces(path)
    assert [p.content for p in rec.passages] == [
        d.page_content for d in retriever.invoke("who wrote hamlet?")
    ]
    # Whatever the random bridge chose (possibly nothing), the record holds exactly that.
    assert rec.bridge is not None
    assert rec.bridge.source_indices == [d.metadata["bgm_source_index"] for d in out_docs]
    assert [rec.passages[i].content for i in rec.bridge.source_indices] == [d.page_content for d in out_docs]


async def test_an_empty_bridge_output_is_recorded_as_the_bridges_choice(tmp_path, retriever):
    path = tmp_path / "t.jsonl"
    bridged = ContextualCompressionRetriever(
        base_compressor=BGMDocumentCompressor(bridge=FixedBridge([])), base_retriever=retriever
    )
    handler = BGMTraceCallbackHandler(path)
    make_rag_chain(bridged).invoke("who wrote hamlet?", config={"callbacks": [handler]})
    await make_rag_chain(bridged).ainvoke("who wrote hamlet?", config={"callbacks": [handler]})
    records = read_traces(path)
    assert len(records) == 2
    for rec in records:
        assert len(rec.passages) == len(retriever.invoke("who wrote hamlet?")) > 0
        assert rec.bridge is not None and rec.bridge.ids == [] and rec.bridge.source_indices == []


def test_a_plain_empty_retrieval_is_not_a_bridge_output(tmp_path):
    from langchain_core.retrievers import BaseRetriever

    class Nothing(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return []

    path = tmp_path / "t.jsonl"
    make_rag_chain(Nothing()).invoke("q", config={"callbacks": [BGMTraceCallbackHandler(path)]})
    (rec,) = read_traces(path)
    assert rec.passages == [] and rec.bridge is None


def test_a_failing_invocation_writes_nothing_and_frees_its_state(tmp_path, retriever):
    path = tmp_path / "t.jsonl"
    handler = BGMTraceCallbackHandler(path)

    def boom(_):
        raise ValueError("LLM down")

    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | RunnableLambda(boom)
    )
    with pytest.raises(ValueError):
        chain.invoke("q", config={"callbacks": [handler]})
    assert handler.in_flight == 0
    assert not path.exists() or read_traces(path) == []


def test_chain_without_retriever_records_nothing_and_a_shared_writer_works(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(path)
    handler = BGMTraceCallbackHandler(writer)
    (PROMPT | GenericFakeChatModel(messages=iter(["x"]))).invoke(
        {"context": "c", "question": "q"}, config={"callbacks": [handler]}
    )
    assert handler.in_flight == 0 and handler.records_written == 0
    with pytest.raises(TypeError):
        BGMTraceCallbackHandler(42)  # type: ignore[arg-type]


def test_memory_does_not_grow_with_queries(tmp_path, rag_chain):
    handler = BGMTraceCallbackHandler(tmp_path / "t.jsonl")
    rag_chain.batch([f"q{i}" for i in range(30)], config={"callbacks": [handler]})
    assert handler.records_written == 30
    assert handler._collector._traces == {} and handler._collector._root_of == {}
