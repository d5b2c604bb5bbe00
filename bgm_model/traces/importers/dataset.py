"""Benchmark datasets (the ``shared/data`` JSONL format) -> trace records, so benchmarks and traces share
one training path.

* Fixed-candidate sets (``{"id", "question", "answers", "passages": [{"title", "text", "is_gold"}]}``): the
  passages are the retriever's candidates, in file order; ``title`` and ``is_gold`` go to the passage
  metadata (``is_gold`` is for analysis only; training must not rely on it) and ``answers`` to
  ``gold_answers``. Passage ids are ``"<question id>/<position>"``.
* Retrieval sets (``{"id", "question", "answers", "gold_passage_ids"}`` + a corpus): give a ``retrieve``
  callable ``(question) -> [(passage_id, text, score), ...]`` (:func:`dense_retriever` gives the MiniLM one
  the benchmarks use); ``gold_passage_ids`` goes to the record's metadata.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..schema import TraceFormatError, TracePassage, TraceRecord

logger = logging.getLogger(__name__)

#: ``retrieve(question) -> [(passage_id, text, score), ...]`` in retriever order.
Retrieve = Callable[[str], Sequence[tuple[str, str, float | None]]]


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    from bgm_model.data.jsonl import JsonlError, iter_jsonl_rows

    try:
        for lineno, row in iter_jsonl_rows(path):
            for key in ("id", "question"):
                if key not in row:
                    raise TraceFormatError(f"{path}:{lineno}: missing {key!r}")
            yield lineno, row
    except JsonlError as e:
        raise TraceFormatError(str(e)) from None


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def records_from_dataset(
    path: str | os.PathLike[str],
    *,
    retrieve: Retrieve | None = None,
    dataset_name: str | None = None,
) -> Iterator[TraceRecord]:
    """Yield one record per question. Rows without ``passages`` need ``retrieve``.

    Trace ids are ``"<dataset name>:<question id>"`` (dataset name: ``<folder>/<file stem>`` by default),
    so importing the same file twice gives the same ids.
    """
    path = Path(path)
    name = dataset_name or _name(path)
    for lineno, row in _rows(path):
        qid = str(row["id"])
        metadata: dict[str, Any] = {"source": "dataset", "dataset": name, "question_id": qid}
        if "passages" in row:
            passages = [
                TracePassage(
                    id=str(p.get("id", f"{qid}/{i}")),
                    content=str(p.get("text", "")),
                    score=None,
                    metadata={k: v for k, v in p.items() if k not in ("text", "id")},
                )
                for i, p in enumerate(row["passages"])
            ]
        elif retrieve is not None:
            passages = [
                TracePassage(id=str(pid), content=str(text), score=score)
                for pid, text, score in retrieve(row["question"])
            ]
            if "gold_passage_ids" in row:
                metadata["gold_passage_ids"] = list(row["gold_passage_ids"])
        else:
            raise TraceFormatError(
                f"{path}:{lineno}: no 'passages' (a retrieval set); pass retrieve=... or --corpus to rank a corpus"
            )
        yield TraceRecord(
            trace_id=f"{name}:{qid}",
            framework="dataset",
            query=str(row["question"]),
            passages=passages,
            gold_answers=[str(a) for a in row.get("answers") or []],
            metadata=metadata,
        )


def dense_retriever(
    corpus_path: str | os.PathLike[str],
    *,
    top_k: int = 10,
    embedder: Any = None,
    cache_dir: str | os.PathLike[str] | None = ".bgm_cache/embeddings",
) -> Retrieve:
    """MiniLM dense retrieval over a ``corpus.jsonl`` — the same retriever and passage rendering that
    :func:`bgm_model.data.load_examples` uses, so imported records and benchmark examples match."""
    from bgm_model.data import load_corpus
    from bgm_model.data.retrieval import DenseRetriever, MiniLMEmbedder

    corpus = load_corpus(corpus_path)
    texts = corpus.rendered
    index = DenseRetriever(texts, embedder or MiniLMEmbedder(), cache_dir=cache_dir)

    def retrieve(question: str) -> list[tuple[str, str, float | None]]:
        return [(corpus.ids[i], texts[i], float(score)) for i, score in index.search(question, top_k)]

    return retrieve
