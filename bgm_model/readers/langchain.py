"""Deprecated: ``LangChainReader`` moved to :mod:`bgm_integrations.langchain.reader` (framework code lives in the adapters)."""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "LangChainReader":
        import importlib

        warnings.warn(
            "bgm_model.readers.langchain.LangChainReader moved to bgm_integrations.langchain.LangChainReader",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("bgm_integrations.langchain.reader"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
