"""Data for training and evaluation: QA examples and corpora, one JSON Lines reader, dense retrieval.

``MiniLMEmbedder`` / ``DenseRetriever`` (numpy, transformers) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bgm_model.data.examples import Corpus, QAExample, examples_from_traces, load_corpus, load_examples
from bgm_model.data.jsonl import JsonlError, iter_jsonl, iter_jsonl_rows

# Passage rendering lives in the core (the adapters use it too); re-exported here where it always was.
from bgm_model.passages import PASSAGE_FORMAT, render_passage

if TYPE_CHECKING:
    from bgm_model.data.retrieval import DenseRetriever, Embedder, MiniLMEmbedder

__all__ = [
    "PASSAGE_FORMAT",
    "Corpus",
    "DenseRetriever",
    "Embedder",
    "JsonlError",
    "MiniLMEmbedder",
    "QAExample",
    "examples_from_traces",
    "iter_jsonl",
    "iter_jsonl_rows",
    "load_corpus",
    "load_examples",
    "render_passage",
]

_LAZY = {"DenseRetriever", "Embedder", "MiniLMEmbedder"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("bgm_model.data.retrieval"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
