"""LangChain ``Embeddings`` over the packaged all-MiniLM-L6-v2 (offline), for vector stores in demos and apps."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings

from bgm_model.data.retrieval import MiniLMEmbedder


class MiniLMEmbeddings(Embeddings):
    """Unit-norm mean-pooled MiniLM sentence embeddings; the same vectors ``bgm_model.embedding`` computes.

    ``kwargs`` go to :class:`~bgm_model.embedding.MiniLMEmbedder` (``model_path``, ``max_length``, ``device``).
    """

    def __init__(self, embedder: MiniLMEmbedder | None = None, *, batch_size: int = 64, **kwargs: Any) -> None:
        self.embedder = embedder or MiniLMEmbedder(**kwargs)
        self.batch_size = batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.embedder.embed(texts, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed([text])[0].tolist()
