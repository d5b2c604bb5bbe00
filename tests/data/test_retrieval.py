"""The sentence-transformers embedder and retriever: same vectors and rankings as the code they replaced, one cache."""

from __future__ import annotations

import json
import shutil
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bgm_model.assets import minilm_path
from bgm_model.data.retrieval import DenseRetriever, MiniLMEmbedder, corpus_cache_path, embed_corpus

FIXTURE = Path(__file__).with_name("minilm_reference.npz")

#: The texts of the fixture: ASCII, accents, CJK, Cyrillic, emoji, an empty string, odd whitespace, and a text of
#: ~960 tokens that only the first ``max_length`` tokens of may shape.
REFERENCE_TEXTS = [
    "Paris is the capital of France.",
    "The stock market fell sharply today.",
    "short",
    "",
    "Zürich, São Paulo and Kraków are cities; naïve café owners say ¡hola!",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "emoji 🚀🔥 and math ∑x² ≤ ∞",
    "(Title: Hamlet) Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601.",
    "   leading and trailing   whitespace\tand\ttabs\nnewline   ",
    " ".join(f"The river number {i} flows through valley {i % 7} before joining the sea near town {i % 13}."
             for i in range(60)),
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


class TableEmbedder:
    """Fixed unit vectors per text (an unknown text gets a seeded random one); counts its calls."""

    fingerprint = "table-v1"

    def __init__(self, table: dict[str, np.ndarray] | None = None, dim: int = 8) -> None:
        self.table = dict(table or {})
        self.dim = dim
        self.calls = 0

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        rows = []
        for t in texts:
            if t not in self.table:
                v = np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim)
                self.table[t] = v / np.linalg.norm(v)
            rows.append(self.table[t])
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)


def test_minilm_embeddings_equal_the_hand_rolled_mean_pooling_they_replaced(minilm: MiniLMEmbedder) -> None:
    # tests/data/minilm_reference.npz was written by the previous MiniLMEmbedder (transformers AutoModel, mean
    # pooling over the attention mask, L2 norm, truncation at max_length tokens), at 256 and 32 tokens.
    reference = np.load(FIXTURE, allow_pickle=False)
    assert [str(t) for t in reference["texts"]] == REFERENCE_TEXTS
    assert len(minilm.model.tokenizer(REFERENCE_TEXTS[-1])["input_ids"]) > 512  # truncation is exercised
    for max_length, batch_size in ((256, 4), (32, 64)):
        embedder = minilm if max_length == 256 else MiniLMEmbedder(max_length=max_length)
        vectors = embedder.embed(REFERENCE_TEXTS, batch_size=batch_size)
        assert vectors.dtype == np.float32 and vectors.shape == (len(REFERENCE_TEXTS), 384)
        diff = float(np.abs(vectors - reference[f"max_length_{max_length}"]).max())
        assert diff < 1e-5, f"max_length={max_length}: max abs diff {diff:.2e}"
    # The long text really is cut: without truncation at 256 tokens its vector would differ.
    assert np.abs(reference["max_length_256"][-1] - reference["max_length_32"][-1]).max() > 1e-2
    assert minilm.embed([]).shape == (0, 384)


def test_embedding_shows_a_progress_bar_for_large_inputs(minilm: MiniLMEmbedder, monkeypatch) -> None:
    seen: list[bool] = []

    def encode(texts, **kwargs):
        seen.append(kwargs["show_progress_bar"])
        assert kwargs["normalize_embeddings"] is True
        return np.zeros((len(texts), 384), dtype=np.float32)

    monkeypatch.setattr(minilm.model, "encode", encode)
    minilm.embed(["a"] * 10)
    minilm.embed(["a"] * 1000)
    monkeypatch.setattr(minilm, "show_progress_bar", False)
    minilm.embed(["a"] * 5000)
    assert seen == [False, True, False]


def test_fingerprint_follows_max_length_and_the_folders_pooling(tmp_path: Path, minilm: MiniLMEmbedder) -> None:
    assert MiniLMEmbedder(max_length=128).fingerprint != minilm.fingerprint
    # The same weights with CLS pooling: a different model, so a different cache key and different vectors.
    source = Path(minilm_path())
    for p in source.rglob("*"):
        target = tmp_path / p.relative_to(source)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif p.name == "model.safetensors":
            target.symlink_to(p)
        else:
            shutil.copyfile(p, target)
    pooling = tmp_path / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**config, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    cls = MiniLMEmbedder(tmp_path)
    assert cls.fingerprint != minilm.fingerprint
    assert np.abs(cls.embed(["Paris"]) - minilm.embed(["Paris"])).max() > 1e-2


def _brute_force(q: np.ndarray, matrix: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """The previous DenseRetriever's search: inner products, best first, ties by corpus index."""
    scores = q @ matrix.T
    return [[(i, float(row[i])) for i in sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]] for row in scores]


def test_semantic_search_gives_the_brute_force_ranking_and_scores() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8))
    vectors[7] = vectors[3]  # a tie: equal scores come in corpus order
    vectors[30] = -vectors[0]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    corpus = [f"p{i}" for i in range(40)]
    queries = ["q-near-3", "q-near-0", "q-random"]
    table = {t: v for t, v in zip(corpus, vectors, strict=True)}
    table["q-near-3"] = vectors[3]
    table["q-near-0"] = vectors[0]
    embedder = TableEmbedder(table)
    retriever = DenseRetriever(corpus, embedder)
    q = embedder.embed(queries)
    for k in (1, 2, 3, 10, 40, 55):
        got = retriever.search_batch(queries, k)
        full = _brute_force(q, retriever.matrix, 40)
        for g, w in zip(got, full, strict=True):
            np.testing.assert_allclose([s for _, s in g], [s for _, s in w[:k]], atol=1e-6)
            if k >= 40 or w[k - 1][1] != w[k][1]:  # no tie cut by k: the very same passages, in the same order
                assert [i for i, _ in g] == [i for i, _ in w[:k]]
    top = retriever.search("q-near-3", k=2)
    assert [i for i, _ in top] == [3, 7] and top[0][1] == pytest.approx(1.0, abs=1e-6)
    assert retriever.search("q-near-0", k=40)[-1][0] == 30


def test_one_cache_for_the_retriever_and_the_langchain_embeddings(tmp_path: Path) -> None:
    from langchain_core.vectorstores import InMemoryVectorStore

    from bgm_integrations.langchain.embeddings import MiniLMEmbeddings

    passages = ["apple fruit", "car wheel", "banana split"]
    embedder = TableEmbedder()
    retriever = DenseRetriever(passages, embedder, cache_dir=tmp_path)
    assert embedder.calls == 1 and retriever.cache_path == corpus_cache_path(tmp_path, embedder, passages)
    assert [p.name for p in tmp_path.iterdir()] == [retriever.cache_path.name]

    # A LangChain vector store over the same pool reads the retriever's file: no second embedding, no second cache.
    store = InMemoryVectorStore(MiniLMEmbeddings(embedder, cache_dir=tmp_path))
    store.add_texts(passages)
    assert embedder.calls == 1 and len(list(tmp_path.iterdir())) == 1
    stored = np.array([store.store[i]["vector"] for i in store.store])
    np.testing.assert_array_equal(stored, retriever.matrix)

    # And the other way round: what the vector store embedded, a retriever later loads.
    fresh = TableEmbedder(embedder.table)
    MiniLMEmbeddings(fresh, cache_dir=tmp_path / "other").embed_documents(["x", "y"])
    DenseRetriever(["x", "y"], fresh, cache_dir=tmp_path / "other")
    assert fresh.calls == 1
    assert MiniLMEmbeddings(fresh).embed_documents([]) == []


def test_a_bad_cache_file_is_recomputed_not_trusted(tmp_path: Path) -> None:
    embedder = TableEmbedder()
    path = corpus_cache_path(tmp_path, embedder, ["a", "b"])
    path.write_bytes(b"not an npy file")
    assert embed_corpus(["a", "b"], embedder, cache_dir=tmp_path).shape == (2, 8) and embedder.calls == 1
    np.save(path, np.zeros((3, 8), dtype=np.float32))  # the wrong number of rows
    assert embed_corpus(["a", "b"], embedder, cache_dir=tmp_path).shape == (2, 8) and embedder.calls == 2
    assert embed_corpus(["a", "b"], embedder, cache_dir=tmp_path).shape == (2, 8) and embedder.calls == 2


def test_missing_sentence_transformers_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r'pip install "bgm-bridge\[train\]"'):
        MiniLMEmbedder()
    with pytest.raises(ImportError, match=r'pip install "bgm-bridge\[train\]"'):
        DenseRetriever(["a"], TableEmbedder())
