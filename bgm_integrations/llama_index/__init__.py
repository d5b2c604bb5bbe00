"""LlamaIndex adapters: ``BGMNodePostprocessor``, the trace recorder ``BGMTraceHandler``, and for training:
``LlamaIndexReader`` (an LLM as the reader) and ``LlamaIndexPrompt`` (the query engine's prompt as the reader's).

Requires ``pip install "bgm-bridge[llamaindex]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import llama_index.core  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'bgm_integrations.llama_index needs LlamaIndex: pip install "bgm-bridge[llamaindex]"'
    ) from e

from .postprocessor import BGMNodePostprocessor
from .prompts import LlamaIndexPrompt

if TYPE_CHECKING:
    from .reader import LlamaIndexReader
    from .tracing import BGMTraceHandler

__all__ = ["BGMNodePostprocessor", "BGMTraceHandler", "LlamaIndexPrompt", "LlamaIndexReader"]


def __getattr__(name: str) -> Any:
    if name == "BGMTraceHandler":
        from .tracing import BGMTraceHandler

        return BGMTraceHandler
    if name == "LlamaIndexReader":
        from .reader import LlamaIndexReader

        return LlamaIndexReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
