"""LlamaIndex adapters: ``BGMNodePostprocessor`` and the trace recorder ``BGMTraceHandler``.

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

if TYPE_CHECKING:
    from .reader import LlamaIndexReader
    from .tracing import BGMTraceHandler

__all__ = ["BGMNodePostprocessor", "BGMTraceHandler", "LlamaIndexReader"]


def __getattr__(name: str) -> Any:
    if name == "BGMTraceHandler":
        from .tracing import BGMTraceHandler

        return BGMTraceHandler
    if name == "LlamaIndexReader":
        from .reader import LlamaIndexReader

        return LlamaIndexReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
