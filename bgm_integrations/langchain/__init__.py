"""LangChain adapters: ``BGMDocumentCompressor``, ``BGMRetriever`` (``k`` and batching) and the trace recorder
``BGMTraceCallbackHandler``.

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

if TYPE_CHECKING:
    from .reader import LangChainReader
    from .tracing import BGMTraceCallbackHandler

__all__ = ["BGMDocumentCompressor", "BGMRetriever", "BGMTraceCallbackHandler", "LangChainReader"]


def __getattr__(name: str) -> Any:
    # The trace handler is imported on first use so that the compressor alone stays light.
    if name == "BGMTraceCallbackHandler":
        from .tracing import BGMTraceCallbackHandler

        return BGMTraceCallbackHandler
    if name == "LangChainReader":
        from .reader import LangChainReader

        return LangChainReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
