"""Frozen readers (LLMs) behind one interface, with a persistent call cache and KV prefix reuse.

Heavy modules (torch, LangChain, LlamaIndex) load only when their reader is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bgm_model.readers.base import PromptTemplate, Reader, ReaderStats, clean_answer
from bgm_model.readers.cache import CallCache, default_cache_dir

if TYPE_CHECKING:
    from bgm_model.readers.callable import CallableReader
    from bgm_model.readers.hf import HFReader, load_smollm2_reader, smollm2_gguf_path
    from bgm_model.readers.langchain import LangChainReader
    from bgm_model.readers.llama_index import LlamaIndexReader

__all__ = [
    "CallCache",
    "CallableReader",
    "HFReader",
    "LangChainReader",
    "LlamaIndexReader",
    "PromptTemplate",
    "Reader",
    "ReaderStats",
    "clean_answer",
    "default_cache_dir",
    "load_smollm2_reader",
    "smollm2_gguf_path",
]

_LAZY = {
    "CallableReader": "bgm_model.readers.callable",
    "HFReader": "bgm_model.readers.hf",
    "load_smollm2_reader": "bgm_model.readers.hf",
    "smollm2_gguf_path": "bgm_model.readers.hf",
    "LangChainReader": "bgm_model.readers.langchain",
    "LlamaIndexReader": "bgm_model.readers.llama_index",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bgm_model.readers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
