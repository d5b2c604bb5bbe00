"""Trace layer: what real RAG pipelines did, recorded as versioned JSONL training records.

No framework is imported here; the LangChain and LlamaIndex handlers live in ``bgm_integrations``.
"""

from __future__ import annotations

from .feedback import FeedbackJoinStats, attach_feedback, join_feedback, read_feedback
from .reader import ReadStats, iter_traces, read_traces
from .schema import (
    SCHEMA_VERSION,
    BridgeTrace,
    ChatMessage,
    Feedback,
    LLMCall,
    TraceFormatError,
    TracePassage,
    TraceRecord,
    TraceSchemaVersionError,
)
from .writer import Redactor, TraceWriter

__all__ = [
    "SCHEMA_VERSION",
    "BridgeTrace",
    "ChatMessage",
    "Feedback",
    "FeedbackJoinStats",
    "LLMCall",
    "ReadStats",
    "Redactor",
    "TraceFormatError",
    "TracePassage",
    "TraceRecord",
    "TraceSchemaVersionError",
    "TraceWriter",
    "attach_feedback",
    "iter_traces",
    "join_feedback",
    "read_feedback",
    "read_traces",
]
