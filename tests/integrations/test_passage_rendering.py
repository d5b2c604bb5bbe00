"""No train/serve skew: a titled document reaches the bridge as one string, whichever way it comes.

The LangChain adapter, the LlamaIndex adapter, the dataset loader (``load_examples``) and a trace recorded
from either framework and turned into training examples (``examples_from_traces``) all give the bridge
``"(Title: <title>) <text>"`` (:mod:`bgm_model.passages`, the training convention).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import Document as LIDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

from bgm_integrations.langchain import BGMDocumentCompressor, BGMTraceCallbackHandler
from bgm_integrations.llama_index import BGMNodePostprocessor, BGMTraceHandler
from bgm_model import BridgeModel, BridgeResult
from bgm_model.data import PASSAGE_FORMAT, examples_from_traces, load_examples, render_passage
from bgm_model.passages import render_document
from bgm_model.traces import read_traces

QUERY = "who wrote hamlet?"
#: (title, text) of each document; the text has a newline, which training data turns into a space.
DOCS = [
    ("Hamlet", "Hamlet is a tragedy\nwritten by William Shakespeare."),
    ("Paris", "Paris is the capital of France."),
    ("", "An untitled note about the Eiffel Tower."),
]
EXPECTED = {
    "(Title: Hamlet) Hamlet is a tragedy written by William Shakespeare.",
    "(Title: Paris) Paris is the capital of France.",
    "An untitled note about the Eiffel Tower.",
}


class _Spy:
    """The real bridge, recording the passage strings it is given."""

    def __init__(self, bridge: BridgeModel) -> None:
        self.inner = bridge
        self.seen: list[list[str]] = []

    def bridge(self, query: str, passages: Sequence[str], *, on_error: str = "raise") -> BridgeResult:
        self.seen.append(list(passages))
        return self.inner.bridge(query, passages, on_error=on_error)


def _metadata(title: str) -> dict[str, str]:
    return {"title": title, "source": "wiki"} if title else {"source": "wiki"}


def _through_langchain(spy: _Spy, traces: Path) -> list[str]:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents([LCDocument(page_content=text, metadata=_metadata(title)) for title, text in DOCS])
    retriever = ContextualCompressionRetriever(
        base_compressor=BGMDocumentCompressor(bridge=spy), base_retriever=store.as_retriever(search_kwargs={"k": 3})
    )
    retriever.invoke(QUERY, config={"callbacks": [BGMTraceCallbackHandler(traces)]})
    return spy.seen[-1]


def _through_llama_index(spy: _Spy, traces: Path) -> list[str]:
    docs = [LIDocument(text=text, metadata=_metadata(title)) for title, text in DOCS]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=3, node_postprocessors=[BGMNodePostprocessor(bridge=spy)])
    with BGMTraceHandler(traces):
        engine.query(QUERY)
    return spy.seen[-1]


def _through_the_dataset_loader(tmp_path: Path) -> list[str]:
    path = tmp_path / "dev.jsonl"
    record = {"id": "q1", "question": QUERY, "answers": ["Shakespeare"],
              "passages": [{"title": title, "text": text} for title, text in DOCS]}  # fmt: skip
    path.write_text(json.dumps(record) + "\n")
    return load_examples(path)[0].passages


def _from_traces(path: Path) -> list[str]:
    (example,) = examples_from_traces(read_traces(path), require_answers=False)
    return example.passages


def test_the_same_document_reaches_the_bridge_as_the_same_string_every_way(tiny_bridge, tmp_path) -> None:
    spy = _Spy(tiny_bridge)
    routes = {
        "langchain adapter": _through_langchain(spy, tmp_path / "lc.jsonl"),
        "llama_index adapter": _through_llama_index(spy, tmp_path / "li.jsonl"),
        "dataset loader": _through_the_dataset_loader(tmp_path),
        "langchain trace -> training": _from_traces(tmp_path / "lc.jsonl"),
        "llama_index trace -> training": _from_traces(tmp_path / "li.jsonl"),
    }
    for name, passages in routes.items():
        assert set(passages) == EXPECTED, name  # retriever order differs between the fake embeddings
    # Each trace replays, in order, exactly what its adapter gave the bridge.
    assert routes["langchain trace -> training"] == routes["langchain adapter"]
    assert routes["llama_index trace -> training"] == routes["llama_index adapter"]


def test_title_key_selects_the_metadata_key_and_none_turns_titles_off() -> None:
    calls: list[list[str]] = []

    class Recorder:
        def bridge(self, query, passages, *, on_error="raise"):
            calls.append(list(passages))
            return BridgeResult(ids=[0], scores=[1.0])

    doc = LCDocument(page_content="Some text.", metadata={"title": "T", "heading": "H"})
    for title_key in ("heading", None):
        BGMDocumentCompressor(bridge=Recorder(), title_key=title_key).compress_documents([doc], QUERY)
    assert calls == [["(Title: H) Some text."], ["Some text."]]
    assert render_document("Some text.", {"heading": "H"}, title_key="heading") == "(Title: H) Some text."


@pytest.mark.parametrize(
    "text, metadata, expected",
    [
        ("a\n b", {"title": "T"}, "(Title: T) a b"),
        ("(Title: T) a b", {"title": "T"}, "(Title: T) a b"),  # rendered upstream: not prefixed twice
        ("(Title: Other) a b", {"title": "T"}, "(Title: T) (Title: Other) a b"),
        ("a b", {"title": None}, "a b"),
        ("a b", {"title": 1999}, "(Title: 1999) a b"),
        ("a b", None, "a b"),
    ],
)
def test_render_document(text, metadata, expected) -> None:
    assert render_document(text, metadata) == expected


def test_the_data_package_re_exports_the_core_rendering() -> None:
    from bgm_model import passages

    assert render_passage is passages.render_passage and PASSAGE_FORMAT == passages.PASSAGE_FORMAT
    assert render_passage("Paris", "Capital of\nFrance.") == render_document("Capital of\nFrance.", {"title": "Paris"})
