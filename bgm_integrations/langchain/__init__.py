"""LangChain adapters: ``BGMDocumentCompressor``, ``BGMRetriever`` (``k`` and batching), the trace recorder
``BGMTraceCallbackHandler``, and for training: ``LangChainReader`` (a chat model or LLM as the reader) and
``LangChainPrompt`` (the chain's prompt template as the reader's prompt).

Requires ``pip install "bgm-bridge[langchain]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import langchain_core  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'bgm_integrations.langchain needs LangChain: pip install "bgm-bridge[langchain]"'
    ) from e

from .compressor import BGMDocumentCompressor, BGMRetriever
from .prompts import LangChainPrompt

if TYPE_CHECKING:
    from .reader import LangChainReader
    from .tracing import BGMTraceCallbackHandler

__all__ = ["BGMDocumentCompressor", "BGMRetriever", "BGMTraceCallbackHandler", "LangChainPrompt", "LangChainReader"]


def __getattr__(name: str) -> Any:
    # The trace handler is imported on first use so that the compressor alone stays light.
    if name == "BGMTraceCallbackHandler":
        from .tracing import BGMTraceCallbackHandler

        return BGMTraceCallbackHandler
    if name == "LangChainReader":
        from .reader import LangChainReader

        return LangChainReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
