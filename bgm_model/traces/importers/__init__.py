"""Importers that turn other trace formats and datasets into :class:`~bgm_model.traces.TraceRecord` s."""

from __future__ import annotations

from .dataset import dense_retriever, records_from_dataset
from .langsmith import import_langsmith, records_from_runs
from .openinference import import_openinference, otlp_json_from_spans, records_from_spans, spans_from_json

__all__ = [
    "dense_retriever",
    "import_langsmith",
    "import_openinference",
    "otlp_json_from_spans",
    "records_from_dataset",
    "records_from_runs",
    "records_from_spans",
    "spans_from_json",
]
