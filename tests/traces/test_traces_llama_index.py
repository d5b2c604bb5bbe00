"""BGMTraceHandler on a real LlamaIndex query engine (MockLLM, MockEmbedding)."""

from __future__ import annotations

import asyncio

from llama_index.core.instrumentation import get_dispatcher

from bgm_integrations.llama_index import BGMNodePostprocessor, BGMTraceHandler
from bgm_model.traces import read_traces
from tests._helpers import FixedBridge


def test_query_engine_run_becomes_one_record(tmp_path, li_index, li_llm):
    path = tmp_path / "t.jsonl"
    qe = li_index.as_query_engine(llm=li_llm, similarity_top_k=3)
    with BGMTraceHandler(path) as handler:
        response = qe.query("who wrote hamlet?")
    (rec,) = read_traces(path)
    assert rec.framework == "llama_index"
    assert rec.query == "who wrote hamlet?"
    assert [p.id for p in rec.passages] == [n.node.node_id for n in response.source_nodes]
    assert [p.content for p in rec.passages] == [n.node.get_content() for n in response.source_nodes]
    assert [p.score for p in rec.passages] == [n.score for n in response.source_nodes]
    assert rec.bridge is None
    assert rec.llm.answer == str(response)
    assert "who wrote hamlet?" in rec.llm.prompt and rec.passages[0].content in rec.llm.prompt
    assert handler.in_flight == 0 and not handler.attached


async def test_twenty_concurrent_async_queries_stay_separate(tmp_path, li_index, li_llm):
    path = tmp_path / "t.jsonl"
    qe = li_index.as_query_engine(llm=li_llm, similarity_top_k=2)
    with BGMTraceHandler(path) as handler:
        await asyncio.gather(*(qe.aquery(f"question number {i}") for i in range(20)))
    records = read_traces(path)
    assert sorted(r.query for r in records) == sorted(f"question number {i}" for i in range(20))
    assert len({r.trace_id for r in records}) == 20
    for r in records:
        assert len(r.passages) == 2
        assert f"Query: {r.query}\n" in r.llm.prompt  # its own prompt, not another query's
    assert handler.in_flight == 0


def test_detach_stops_recording(tmp_path, li_index, li_llm):
    path = tmp_path / "t.jsonl"
    qe = li_index.as_query_engine(llm=li_llm)
    handler = BGMTraceHandler(path).attach()
    qe.query("first")
    handler.detach()
    root = get_dispatcher()
    assert (
        handler._span_handler not in root.span_handlers and handler._event_handler not in root.event_handlers
    )
    qe.query("second")
    assert [r.query for r in read_traces(path)] == ["first"]


def test_with_the_bridge_postprocessor(tmp_path, li_index, li_llm):
    path = tmp_path / "t.jsonl"
    post = BGMNodePostprocessor(bridge=FixedBridge([1, 0, 1], scores=[0.9, 0.6, 0.3]))
    qe = li_index.as_query_engine(llm=li_llm, similarity_top_k=3, node_postprocessors=[post])
    with BGMTraceHandler(path):
        response = qe.query("who wrote hamlet?")
    (rec,) = read_traces(path)
    retrieved = li_index.as_retriever(similarity_top_k=3).retrieve("who wrote hamlet?")
    assert [p.id for p in rec.passages] == [n.node.node_id for n in retrieved]
    assert rec.bridge.source_indices == [1, 0, 1]
    assert rec.bridge.ids == [retrieved[1].node.node_id, retrieved[0].node.node_id, retrieved[1].node.node_id]
    assert rec.bridge.scores == [n.score for n in response.source_nodes]
    assert rec.bridge.model == post.model_name


def test_with_the_tiny_bridge(tmp_path, li_index, li_llm, tiny_bridge):
    path = tmp_path / "t.jsonl"
    qe = li_index.as_query_engine(
        llm=li_llm, similarity_top_k=3, node_postprocessors=[BGMNodePostprocessor(bridge=tiny_bridge)]
    )
    with BGMTraceHandler(path):
        response = qe.query("who wrote hamlet?")
    (rec,) = read_traces(path)
    assert len(rec.passages) == 3
    # Whatever the random bridge chose (possibly nothing), the record holds exactly that.
    assert rec.bridge is not None
    assert rec.bridge.source_indices == [n.node.metadata["bgm_source_index"] for n in response.source_nodes]


def test_an_empty_bridge_output_is_recorded_as_the_bridges_choice(tmp_path, li_index, li_llm):
    path = tmp_path / "t.jsonl"
    qe = li_index.as_query_engine(
        llm=li_llm, similarity_top_k=3, node_postprocessors=[BGMNodePostprocessor(bridge=FixedBridge([]))]
    )
    with BGMTraceHandler(path):
        qe.query("who wrote hamlet?")
    (rec,) = read_traces(path)
    assert len(rec.passages) == 3
    assert rec.bridge is not None and rec.bridge.ids == [] and rec.bridge.source_indices == []
