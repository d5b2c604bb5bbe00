"""LangChain's standard retriever suite (``langchain-tests`` 1.1.9) on the bridge, with a real saved bridge.

``BGMRetriever`` passes all of it: its ``k`` (constructor or ``invoke(query, k=...)``) is the compressor's
``top_n`` and ``min_n`` at once, so exactly ``k`` documents come back whatever length the bridge chose (cut, or
filled up with the best-ranked unchosen candidates). The plain ``ContextualCompressionRetriever`` passes the
cases that apply to it; the two ``k`` cases cannot, and are marked xfail (strict) with the reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests

from bgm_integrations.langchain import BGMDocumentCompressor, BGMRetriever
from tests._helpers import SAMPLE_TEXTS

TEXTS = SAMPLE_TEXTS


def _vector_retriever() -> BaseRetriever:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(page_content=t, metadata={"title": f"T{i}"}) for i, t in enumerate(TEXTS)])
    return store.as_retriever(search_kwargs={"k": len(TEXTS)})


class _WithSavedBridge(RetrieversIntegrationTests):
    _path: str

    @pytest.fixture(autouse=True)
    def _bridge_path(self, saved_bridge_path: str) -> None:
        type(self)._path = saved_bridge_path

    @property
    def retriever_query_example(self) -> str:
        return "who wrote hamlet?"


class TestBGMRetrieverStandard(_WithSavedBridge):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return BGMRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"base_compressor": BGMDocumentCompressor(model=self._path, device="cpu"), "base_retriever": _vector_retriever()}


class TestContextualCompressionRetrieverStandard(_WithSavedBridge):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return ContextualCompressionRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"base_compressor": BGMDocumentCompressor(model=self._path, device="cpu"), "base_retriever": _vector_retriever()}

    # The suite refuses overridden cases unless they are marked xfail with a reason; strict, and running the
    # suite's own code, so these fail for exactly the reason given (and would be noticed if they passed).
    @pytest.mark.xfail(
        strict=True, raises=AssertionError,
        reason="ContextualCompressionRetriever has no k field (pydantic ignores k=3) and the bridge decides the "
        "count; set it on the compressor (BGMDocumentCompressor(top_n=k, min_n=k), tested in test_retriever_k_and_batch.py) "
        "or use BGMRetriever(k=...), which passes this case",
    )
    def test_k_constructor_param(self) -> None:
        super().test_k_constructor_param()

    @pytest.mark.xfail(
        strict=True, raises=AssertionError,
        reason="ContextualCompressionRetriever passes invoke keywords to its base retriever (k=1 fetches one "
        "candidate) and never to the compressor, so the bridge still decides the count; BGMRetriever passes it",
    )
    def test_invoke_with_k_kwarg(self, retriever: BaseRetriever) -> None:
        super().test_invoke_with_k_kwarg(retriever)
