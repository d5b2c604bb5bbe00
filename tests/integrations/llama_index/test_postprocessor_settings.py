"""BGMNodePostprocessor loaded by path in real LlamaIndex query engines: top_n / min_n, overflow, scores."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode

from bgm_integrations.llama_index import BGMNodePostprocessor
from tests._helpers import FixedBridge
from tests.integrations.conftest import MAX_PASSAGES

TEXTS = [f"Document {i}: a short passage about subject number {i}." for i in range(20)]
QUERY = "who wrote hamlet?"
ADDED = ("bgm_rank", "bgm_source_index", "bgm_origin", "retrieval_score")


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    docs = [Document(text=t, metadata={"source": f"doc{i}"}) for i, t in enumerate(TEXTS)]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


@pytest.mark.parametrize("on_error", ["raise", "passthrough"])
def test_similarity_top_k_20_into_a_16_passage_bridge_answers(index, saved_bridge_path, on_error) -> None:
    post = BGMNodePostprocessor(
        model=saved_bridge_path, device="cpu", top_n=3, min_n=3, on_error=on_error, overflow_rest="append"
    )
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=20, node_postprocessors=[post])
    response = engine.query(QUERY)
    assert len(response.source_nodes) == 3  # top_n = min_n = 3: exactly 3
    assert all(n.node.metadata["bgm_source_index"] < MAX_PASSAGES for n in response.source_nodes)


def test_the_node_score_is_the_bridges_and_the_retrievers_is_kept_hidden(index) -> None:
    retrieved = index.as_retriever(similarity_top_k=4).retrieve(QUERY)
    post = BGMNodePostprocessor(bridge=FixedBridge([2, 0], [0.7, 0.2]), min_n=3)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=4, node_postprocessors=[post])
    nodes = engine.query(QUERY).source_nodes
    assert [n.score for n in nodes] == [0.7, 0.2, 0.0]
    assert [n.node.metadata["bgm_origin"] for n in nodes] == ["bridge", "bridge", "fill"]
    assert [n.node.metadata["retrieval_score"] for n in nodes] == [retrieved[i].score for i in (2, 0, 1)]
    for n in nodes:
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            text = n.node.get_content(metadata_mode=mode)
            assert not any(key in text for key in ADDED), text
        assert "source" in n.node.get_content(metadata_mode=MetadataMode.LLM)  # the caller's metadata still shows
