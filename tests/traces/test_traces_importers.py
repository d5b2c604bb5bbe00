"""Importers: OpenInference spans from the real instrumentors, LangSmith runs from a real tracer, datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.tracers.base import BaseTracer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bgm_integrations.langchain import BGMDocumentCompressor, BGMTraceCallbackHandler
from bgm_model.traces import TraceFormatError, read_traces
from bgm_model.traces.importers import (
    import_langsmith,
    import_openinference,
    otlp_json_from_spans,
    records_from_dataset,
    records_from_runs,
)
from tests._helpers import FixedBridge
from tests.traces.conftest import ANSWER, make_rag_chain

DATA = Path("/work/shared/data")


@pytest.fixture()
def exporter():
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    return provider, exp


def _comparable(rec):
    return (rec.query, [(p.id, p.content, p.metadata) for p in rec.passages], rec.bridge, rec.answer)


def test_openinference_langchain_spans_give_the_same_record_as_the_live_handler(
    tmp_path, exporter, retriever
):
    from openinference.instrumentation.langchain import LangChainInstrumentor

    provider, exp = exporter
    bridged = ContextualCompressionRetriever(
        base_compressor=BGMDocumentCompressor(bridge=FixedBridge([3, 1])), base_retriever=retriever
    )
    chain = make_rag_chain(bridged)
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        chain.invoke(
            "who wrote hamlet?", config={"callbacks": [BGMTraceCallbackHandler(tmp_path / "live.jsonl")]}
        )
    finally:
        instrumentor.uninstrument()
    spans_file = tmp_path / "spans.jsonl"
    spans_file.write_text(json.dumps(otlp_json_from_spans(exp.get_finished_spans())) + "\n")

    (imported,) = import_openinference(spans_file)
    (live,) = read_traces(tmp_path / "live.jsonl")
    assert imported.framework == "openinference"
    assert imported.bridge.source_indices == [3, 1]
    assert imported.answer == ANSWER
    assert [m.role for m in imported.llm.messages] == ["system", "user"]
    assert _comparable(imported) == _comparable(live)


def test_openinference_llama_index_spans(tmp_path, exporter, li_index, li_llm):
    from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

    provider, exp = exporter
    qe = li_index.as_query_engine(llm=li_llm, similarity_top_k=3)
    instrumentor = LlamaIndexInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        exp.clear()
        response = qe.query("who wrote hamlet?")
        qe.query("where is paris?")
    finally:
        instrumentor.uninstrument()
    path = tmp_path / "spans.json"
    path.write_text(json.dumps(otlp_json_from_spans(exp.get_finished_spans())))
    records = {r.query: r for r in import_openinference(path)}
    assert set(records) == {"who wrote hamlet?", "where is paris?"}
    rec = records["who wrote hamlet?"]
    assert [p.id for p in rec.passages] == [n.node.node_id for n in response.source_nodes]
    assert [p.score for p in rec.passages] == pytest.approx([n.score for n in response.source_nodes])
    assert rec.answer == str(response)
    assert "who wrote hamlet?" in rec.llm.prompt


def test_openinference_rejects_non_otlp_input(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(TraceFormatError, match="OTLP"):
        import_openinference(path)


class _RunExporter(BaseTracer):
    """Saves root runs with nested child_runs, as a LangSmith export has them."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[dict] = []

    def _persist_run(self, run) -> None:
        def dump(r):
            d = json.loads(r.model_dump_json(exclude={"child_runs", "parent_run", "ls_client", "replicas"}))
            d["child_runs"] = [dump(c) for c in r.child_runs]
            return d

        self.runs.append(dump(run))


def test_langsmith_runs_nested_and_flat(tmp_path, rag_chain, retriever):
    tracer = _RunExporter()
    rag_chain.batch(["who wrote hamlet?", "where is paris?"], config={"callbacks": [tracer]})
    nested = tmp_path / "runs.json"
    nested.write_text(json.dumps(tracer.runs))
    records = {r.query: r for r in import_langsmith(nested)}
    assert set(records) == {"who wrote hamlet?", "where is paris?"}
    rec = records["who wrote hamlet?"]
    assert rec.trace_id == tracer.runs[0]["id"] or rec.trace_id == tracer.runs[1]["id"]
    assert [p.id for p in rec.passages] == [d.id for d in retriever.invoke("who wrote hamlet?")]
    assert rec.answer == ANSWER and rec.llm.model == "fake-list-chat-model"

    def flatten(run):
        yield {k: v for k, v in run.items() if k != "child_runs"}
        for c in run["child_runs"]:
            yield from flatten(c)

    flat = [r for root in tracer.runs for r in flatten(root)]
    flat.reverse()  # order must not matter
    flat_records = {r.query: r for r in records_from_runs(flat)}
    assert _comparable(flat_records["who wrote hamlet?"]) == _comparable(rec)


def test_dataset_fixed_candidates(tmp_path):
    path = DATA / "hotpotqa" / "dev.jsonl"
    first = json.loads(path.open().readline())
    rec = next(records_from_dataset(path))
    assert rec.framework == "dataset"
    assert rec.query == first["question"] and rec.gold_answers == first["answers"]
    assert [p.content for p in rec.passages] == [p["text"] for p in first["passages"]]
    assert rec.passages[0].metadata["title"] == first["passages"][0]["title"]
    assert rec.trace_id == f"hotpotqa/dev:{first['id']}"


def test_dataset_retrieval_format_needs_a_retriever(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text(
        json.dumps(
            {"id": "q1", "question": "capital of france", "answers": ["Paris"], "gold_passage_ids": ["c2"]}
        )
        + "\n"
    )
    with pytest.raises(TraceFormatError, match="retrieve"):
        list(records_from_dataset(q))
    (rec,) = records_from_dataset(
        q, retrieve=lambda question: [("c2", "Paris is the capital of France.", 3.2), ("c1", "x", 1.0)]
    )
    assert [p.id for p in rec.passages] == ["c2", "c1"] and rec.passages[0].score == 3.2
    assert rec.metadata["gold_passage_ids"] == ["c2"] and rec.gold_answers == ["Paris"]
