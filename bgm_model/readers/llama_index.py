"""Deprecated: ``LlamaIndexReader`` moved to :mod:`bgm_integrations.llama_index.reader` (framework code lives in the adapters)."""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "LlamaIndexReader":
        import importlib

        warnings.warn(
            "bgm_model.readers.llama_index.LlamaIndexReader moved to bgm_integrations.llama_index.LlamaIndexReader",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("bgm_integrations.llama_index.reader"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
