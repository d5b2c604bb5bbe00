"""Question-answering examples with candidate passages, and their loaders.

Two on-disk formats (JSON Lines, one question per line) are supported by :func:`load_examples`:

* **fixed candidates** (HotpotQA, MuSiQue): ``{"id", "question", "answers": [...],
  "passages": [{"title", "text", "is_gold"}, ...]}``; the passages are the retriever's candidates, in order.
* **retrieval** (NQ-open): ``{"id", "question", "answers", "gold_passage_ids"}`` plus a corpus
  ``{"id", "title", "text"}``; the candidates are the ``top_k`` corpus passages by all-MiniLM-L6-v2.

Passage rendering (:mod:`bgm_model.passages`, shared with the adapters and traces): a passage with a title
becomes ``"(Title: <title>) <text>"`` (the convention of "Lost in the Middle", where our NQ passages come
from), without a title just ``<text>``. It stays on one line so that each passage is one ``Passage n:`` line
in the reader's prompt. The same rendering is embedded for retrieval. :attr:`QAExample.passages` holds the
rendered texts; titles and raw ids are kept alongside.

``is_gold`` / ``gold_passage_ids`` become :attr:`QAExample.gold`, for analysis only: training code must not
read it (a real user has no such labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgm_model.data.jsonl import iter_jsonl
from bgm_model.passages import DEFAULT_TITLE_KEY, PASSAGE_FORMAT, render_document, render_passage

if TYPE_CHECKING:
    from bgm_model.data.retrieval import DenseRetriever, Embedder

logger = logging.getLogger(__name__)

__all__ = [
    "PASSAGE_FORMAT",
    "Corpus",
    "QAExample",
    "examples_from_traces",
    "iter_jsonl",
    "load_corpus",
    "load_examples",
    "render_passage",
]

@dataclass
class QAExample:
    """One question with its candidate passages in retriever order.

    Attributes:
        id: unique within a dataset; silver-sequence files use it to resume.
        question: the user query.
        answers: acceptable gold answers (may be empty for unlabelled traces).
        passages: rendered candidate texts (:func:`render_passage`), best retriever rank first.
        titles: the passages' titles, if known.
        passage_ids: corpus ids of the passages, if known.
        gold: per-passage "supporting" flags, for analysis only (never for training).
        scores: retriever scores, if the candidates were retrieved here.
        source: where the example came from, e.g. ``"hotpotqa/dev.jsonl"`` or ``"traces"``.
    """

    id: str
    question: str
    answers: list[str]
    passages: list[str]
    titles: list[str] | None = None
    passage_ids: list[str] | None = None
    gold: list[bool] | None = None
    scores: list[float] | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.answers, str):
            raise TypeError(f"example {self.id!r}: answers must be a list of strings, not a string")
        for name in ("titles", "passage_ids", "gold", "scores"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.passages):
                raise ValueError(
                    f"example {self.id!r}: {name} has {len(value)} items for {len(self.passages)} passages"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QAExample:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Corpus:
    """A passage pool for retrieval (NQ-open's ``corpus.jsonl``)."""

    ids: list[str]
    titles: list[str]
    texts: list[str]
    path: str | None = None

    @property
    def rendered(self) -> list[str]:
        return [render_passage(t, x) for t, x in zip(self.titles, self.texts, strict=True)]


def load_corpus(path: str | os.PathLike[str]) -> Corpus:
    ids, titles, texts = [], [], []
    for i, rec in enumerate(iter_jsonl(path)):
        if "text" not in rec:
            raise ValueError(f"{path}: corpus record {i} has no 'text'")
        ids.append(str(rec.get("id", i)))
        titles.append(str(rec.get("title") or ""))
        texts.append(str(rec["text"]))
    if not ids:
        raise ValueError(f"{path}: empty corpus")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate passage ids")
    return Corpus(ids, titles, texts, str(path))


def _source_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _check_common(rec: dict[str, Any], where: str) -> tuple[str, str, list[str]]:
    for key in ("id", "question"):
        if key not in rec:
            raise ValueError(f"{where}: record has no {key!r}")
    answers = rec.get("answers", [])
    if isinstance(answers, str):
        answers = [answers]
    return str(rec["id"]), str(rec["question"]), [str(a) for a in answers]


def load_examples(
    path: str | os.PathLike[str],
    *,
    corpus: str | os.PathLike[str] | None = None,
    top_k: int = 10,
    embedder: Embedder | None = None,
    retriever: DenseRetriever | None = None,
    cache_dir: str | os.PathLike[str] | None = ".bgm_cache/embeddings",
    limit: int | None = None,
) -> list[QAExample]:
    """Load a dataset file in either format (see the module docstring).

    Args:
        path: the JSON Lines file.
        corpus: the passage pool for retrieval records; default: ``corpus.jsonl`` next to ``path``.
        top_k: candidates per question for retrieval records.
        embedder: the embedder for retrieval (default: :class:`~bgm_model.embedding.MiniLMEmbedder`).
        retriever: a ready retriever over the corpus (overrides ``embedder`` and ``cache_dir``).
        cache_dir: where the corpus embedding matrix is cached (``None``: no cache).
        limit: keep only the first ``limit`` records.
    """
    path = Path(path)
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    records: list[dict[str, Any]] = []
    for rec in iter_jsonl(path):
        if limit is not None and len(records) >= limit:
            break
        records.append(rec)
    source = _source_name(path)

    examples: list[QAExample] = []
    to_retrieve: list[int] = []
    for n, rec in enumerate(records):
        where = f"{path}: record {n}"
        ex_id, question, answers = _check_common(rec, where)
        if "passages" in rec:
            passages = rec["passages"]
            if not isinstance(passages, list):
                raise ValueError(f"{where}: 'passages' must be a list")
            titles = [str(p.get("title") or "") if isinstance(p, dict) else "" for p in passages]
            texts = [str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in passages]
            gold = [bool(p.get("is_gold", False)) if isinstance(p, dict) else False for p in passages]
            ids = [str(p["id"]) if isinstance(p, dict) and "id" in p else None for p in passages]
            examples.append(
                QAExample(
                    id=ex_id,
                    question=question,
                    answers=answers,
                    passages=[render_passage(t, x) for t, x in zip(titles, texts, strict=True)],
                    titles=titles,
                    passage_ids=ids if all(i is not None for i in ids) else None,  # type: ignore[arg-type]
                    gold=gold if any(isinstance(p, dict) and "is_gold" in p for p in passages) else None,
                    source=source,
                )
            )
        else:
            examples.append(
                QAExample(id=ex_id, question=question, answers=answers, passages=[], source=source)
            )
            to_retrieve.append(n)

    if to_retrieve:
        _retrieve_into(examples, records, to_retrieve, path, corpus, top_k, embedder, retriever, cache_dir)
    return examples


def _retrieve_into(
    examples: list[QAExample],
    records: list[dict[str, Any]],
    positions: list[int],
    path: Path,
    corpus_path: str | os.PathLike[str] | None,
    top_k: int,
    embedder: Embedder | None,
    retriever: DenseRetriever | None,
    cache_dir: str | os.PathLike[str] | None,
) -> None:
    from bgm_model.data.retrieval import DenseRetriever, MiniLMEmbedder

    corpus_file = Path(corpus_path) if corpus_path is not None else path.parent / "corpus.jsonl"
    if not corpus_file.exists():
        raise FileNotFoundError(
            f"{path} has records without 'passages' (a retrieval set) but no corpus was found at {corpus_file}; "
            "pass corpus="
        )
    corpus = load_corpus(corpus_file)
    if retriever is None:
        retriever = DenseRetriever(corpus.rendered, embedder or MiniLMEmbedder(), cache_dir=cache_dir)
    elif len(retriever.texts) != len(corpus.ids):
        raise ValueError(
            f"retriever has {len(retriever.texts)} passages, corpus {corpus_file} has {len(corpus.ids)}"
        )
    hits = retriever.search_batch([examples[i].question for i in positions], k=top_k)
    for i, found in zip(positions, hits, strict=True):
        gold_ids = set(map(str, records[i].get("gold_passage_ids", [])))
        idx = [j for j, _ in found]
        ex = examples[i]
        ex.passages = [render_passage(corpus.titles[j], corpus.texts[j]) for j in idx]
        ex.titles = [corpus.titles[j] for j in idx]
        ex.passage_ids = [corpus.ids[j] for j in idx]
        ex.scores = [s for _, s in found]
        ex.gold = [corpus.ids[j] in gold_ids for j in idx] if "gold_passage_ids" in records[i] else None


# --------------------------------------------------------------------------------------------------
# Traces hook
# --------------------------------------------------------------------------------------------------
def examples_from_traces(
    traces: Iterable[Any], *, require_answers: bool = True, title_key: str | None = DEFAULT_TITLE_KEY
) -> list[QAExample]:
    """Turn logged RAG traces into examples.

    Each trace needs ``.query`` (str), ``.passages`` (objects with ``.content``, the OpenInference
    ``document.content``, and optionally ``.metadata``; plain strings are accepted too) and ``.gold_answers``
    (list of str). Each passage is rendered as the adapters render it for the bridge
    (:func:`~bgm_model.passages.render_document`: the title from ``metadata[title_key]``, set ``title_key``
    as the adapter's), so training sees the strings the bridge saw when serving. The id is the
    trace's ``.id`` or ``.trace_id`` if it has one, else a hash of query and passages. Traces without gold
    answers are skipped (with one warning) when ``require_answers`` is set, since no reward can score them.
    """
    examples: list[QAExample] = []
    skipped = 0
    for n, trace in enumerate(traces):
        query = getattr(trace, "query", None)
        if not isinstance(query, str):
            raise ValueError(f"trace {n} has no string .query")
        passages: list[str] = []
        for p in getattr(trace, "passages", None) or []:
            content = p if isinstance(p, str) else getattr(p, "content", None)
            if not isinstance(content, str):
                raise ValueError(f"trace {n}: every passage needs a string .content")
            passages.append(render_document(content, getattr(p, "metadata", None), title_key=title_key))
        answers = list(getattr(trace, "gold_answers", None) or [])
        if require_answers and not answers:
            skipped += 1
            continue
        trace_id = getattr(trace, "id", None) or getattr(trace, "trace_id", None)
        if not trace_id:
            h = hashlib.sha256(json.dumps([query, passages], ensure_ascii=False).encode()).hexdigest()[:16]
            trace_id = f"trace-{h}"
        examples.append(
            QAExample(
                id=str(trace_id),
                question=query,
                answers=[str(a) for a in answers],
                passages=passages,
                source="traces",
            )
        )
    if skipped:
        logger.warning("skipped %d traces without gold answers", skipped)
    return examples
