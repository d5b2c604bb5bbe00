"""LangChain ``Embeddings`` over the packaged all-MiniLM-L6-v2 (offline), for vector stores in demos and apps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from bgm_model.data.retrieval import Embedder, MiniLMEmbedder, embed_corpus


class MiniLMEmbeddings(Embeddings):
    """Unit-norm MiniLM sentence embeddings; the same vectors :class:`~bgm_model.data.retrieval.MiniLMEmbedder`
    computes for the dense retriever.

    With ``cache_dir``, each ``embed_documents`` call goes through the project's one corpus-embedding cache
    (:func:`~bgm_model.data.retrieval.embed_corpus`): a vector store filled with a passage pool reads and writes
    the very file a ``DenseRetriever`` (or ``load_examples``) over the same pool uses. Queries are not cached.

    ``kwargs`` go to :class:`~bgm_model.data.retrieval.MiniLMEmbedder` (``model_path``, ``max_length``,
    ``device``, ``show_progress_bar``).
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        batch_size: int = 64,
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.embedder = embedder or MiniLMEmbedder(**kwargs)
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return embed_corpus(texts, self.embedder, cache_dir=self.cache_dir, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed([text])[0].tolist()
