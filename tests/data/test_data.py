"""Dataset loading, passage rendering, MiniLM embeddings and the dense retriever."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bgm_model.assets import bundled_dataset
from bgm_model.data import QAExample, examples_from_traces, load_examples, render_passage
from bgm_model.data.retrieval import DenseRetriever, MiniLMEmbedder

HOTPOT_DEV = bundled_dataset("hotpotqa", "dev")  # a copy of /work/shared/data/hotpotqa/dev.jsonl


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


class WordEmbedder:
    """Deterministic bag-of-words embeddings over a fixed vocabulary; counts its calls."""

    fingerprint = "words-v1"

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = list(vocab)
        self.calls = 0

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        m = np.array([[t.lower().count(w) for w in self.vocab] for t in texts], dtype=np.float32) + 1e-3
        return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_render_passage_uses_title_convention_and_stays_on_one_line() -> None:
    assert render_passage("Paris", "Capital of\nFrance.") == "(Title: Paris) Capital of France."
    assert render_passage("", "Just text.") == "Just text."
    assert render_passage(None, " a  b ") == "a b"


def test_fixed_candidate_file_loads_in_order_with_gold_flags(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "set.jsonl",
        [
            {
                "id": "q1",
                "question": "Q?",
                "answers": ["A"],
                "passages": [
                    {"title": "T1", "text": "one", "is_gold": False},
                    {"title": "T2", "text": "two", "is_gold": True},
                ],
            },
            {"id": "q2", "question": "R?", "answers": "B", "passages": []},
        ],
    )
    ex = load_examples(path)
    assert [e.id for e in ex] == ["q1", "q2"]
    assert ex[0].passages == ["(Title: T1) one", "(Title: T2) two"]
    assert ex[0].titles == ["T1", "T2"] and ex[0].gold == [False, True]
    assert ex[1].answers == ["B"] and ex[1].passages == []
    assert ex[0].source == "set.jsonl" or ex[0].source.endswith("/set.jsonl")
    assert len(load_examples(path, limit=1)) == 1


def test_real_hotpotqa_file_loads() -> None:
    ex = load_examples(HOTPOT_DEV, limit=5)
    assert len(ex) == 5
    for e in ex:
        assert e.answers and len(e.passages) >= 2 and e.source == "hotpotqa/dev.jsonl"
        assert e.gold is not None and sum(e.gold) >= 1
        assert all(p.startswith("(Title: ") for p in e.passages)


def test_malformed_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "question": "q", "passages": []}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_examples(path)


def test_example_rejects_misaligned_metadata() -> None:
    with pytest.raises(ValueError, match="titles has 1 items for 2 passages"):
        QAExample(id="x", question="q", answers=["a"], passages=["p", "q"], titles=["t"])


def _retrieval_set(tmp_path: Path) -> tuple[Path, Path]:
    corpus = _write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"id": "p-apple", "title": "Apple", "text": "apple apple fruit"},
            {"id": "p-car", "title": "Car", "text": "car engine wheel"},
            {"id": "p-fruit", "title": "Fruit", "text": "fruit banana"},
        ],
    )
    questions = _write_jsonl(
        tmp_path / "dev.jsonl",
        [
            {"id": "q1", "question": "which apple fruit", "answers": ["x"], "gold_passage_ids": ["p-apple"]},
            {"id": "q2", "question": "car wheel", "answers": ["y"], "gold_passage_ids": ["p-car"]},
        ],
    )
    return corpus, questions


def test_retrieval_set_gets_top_k_candidates_from_the_sibling_corpus(tmp_path: Path) -> None:
    _, questions = _retrieval_set(tmp_path)
    emb = WordEmbedder(["apple", "fruit", "car", "wheel", "banana", "engine"])
    ex = load_examples(questions, top_k=2, embedder=emb, cache_dir=tmp_path / "cache")
    assert ex[0].passage_ids == ["p-apple", "p-fruit"] and ex[0].gold == [True, False]
    assert ex[1].passage_ids[0] == "p-car" and ex[1].gold[0] is True
    assert ex[0].passages[0] == "(Title: Apple) apple apple fruit"
    assert ex[0].scores[0] >= ex[0].scores[1]


def test_corpus_embeddings_are_cached_by_content_and_model(tmp_path: Path) -> None:
    texts = ["apple fruit", "car wheel"]
    emb = WordEmbedder(["apple", "fruit", "car", "wheel"])
    first = DenseRetriever(texts, emb, cache_dir=tmp_path)
    assert emb.calls == 1 and first.cache_path is not None and first.cache_path.exists()
    again = DenseRetriever(texts, emb, cache_dir=tmp_path)
    assert emb.calls == 1  # loaded from the .npy, not re-embedded
    np.testing.assert_array_equal(first.matrix, again.matrix)
    changed = DenseRetriever([*texts, "banana"], emb, cache_dir=tmp_path)
    assert emb.calls == 2 and changed.cache_path != first.cache_path
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file


def test_retriever_search_orders_by_score_and_checks_input() -> None:
    r = DenseRetriever(
        ["apple fruit", "car wheel", "fruit"], WordEmbedder(["apple", "fruit", "car", "wheel"])
    )
    hits = r.search("apple", k=5)
    assert [i for i, _ in hits][0] == 0 and len(hits) == 3
    assert all(a[1] >= b[1] for a, b in zip(hits, hits[1:], strict=False))
    assert r.search_batch([], k=2) == []
    with pytest.raises(TypeError):
        r.search_batch("apple", k=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        r.search("apple", k=0)


def test_missing_corpus_is_a_clear_error(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "q.jsonl", [{"id": "q", "question": "x", "answers": ["a"]}])
    with pytest.raises(FileNotFoundError, match="no corpus was found"):
        load_examples(path, embedder=WordEmbedder(["x"]))


def test_minilm_embedder_is_normalised_and_semantic() -> None:
    emb = MiniLMEmbedder()
    texts = ["Paris is the capital of France.", "The stock market fell sharply today.", "short"]
    vecs = emb.embed(texts, batch_size=2)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Batching and the length sort must not change results.
    np.testing.assert_allclose(emb.embed(texts[::-1], batch_size=3)[::-1], vecs, atol=1e-5)
    r = DenseRetriever(texts[:2], emb)
    assert r.search("What is the French capital city?", k=1)[0][0] == 0


def test_examples_from_traces_maps_fields_and_skips_unlabelled() -> None:
    doc = SimpleNamespace
    traces = [
        SimpleNamespace(
            trace_id="t1", query="q1", passages=[doc(content="p1"), doc(content="p2")], gold_answers=["a"]
        ),
        SimpleNamespace(trace_id="t2", query="q2", passages=[doc(content="p")], gold_answers=[]),
        SimpleNamespace(query="q3", passages=["plain"], gold_answers=["b"]),
    ]
    ex = examples_from_traces(traces)
    assert [e.id for e in ex][0] == "t1" and len(ex) == 2
    assert ex[0].passages == ["p1", "p2"] and ex[0].answers == ["a"] and ex[0].source == "traces"
    assert ex[1].id.startswith("trace-") and ex[1].id == examples_from_traces(traces[2:])[0].id  # stable hash
    assert len(examples_from_traces(traces, require_answers=False)) == 3
    with pytest.raises(ValueError, match="content"):
        examples_from_traces([SimpleNamespace(query="q", passages=[doc(content=None)], gold_answers=["a"])])


def test_examples_from_real_trace_records() -> None:
    from bgm_model.traces.schema import TracePassage, TraceRecord

    rec = TraceRecord(
        query="who?",
        passages=[TracePassage(id="d1", content="text one")],
        framework="test",
        gold_answers=["me"],
    )
    ex = examples_from_traces([rec])[0]
    assert ex.id == rec.trace_id and ex.passages == ["text one"] and ex.answers == ["me"]
