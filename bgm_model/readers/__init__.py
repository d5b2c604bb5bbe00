"""Frozen readers (LLMs) behind one interface, with a persistent call cache and KV prefix reuse.

Heavy modules (torch, CTranslate2) load only when their reader is first used. The LangChain and LlamaIndex
readers are adapters: ``bgm_integrations.langchain.LangChainReader``, ``bgm_integrations.llama_index.LlamaIndexReader``.
The optional CTranslate2 backend (``CT2Reader``, ``load_smollm2_ct2_reader``) and ``reader_agreement`` are
importable from here too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bgm_model.readers.base import PromptTemplate, Reader, ReaderStats, clean_answer
from bgm_model.readers.base import ReaderAgreement as ReaderAgreement  # outside the pinned __all__
from bgm_model.readers.base import reader_agreement as reader_agreement
from bgm_model.readers.call_cache import CallCache, default_cache_dir
from bgm_model.readers.templates import LANGCHAIN_RAG_PROMPT, ContextPrompt, ReaderPrompt

if TYPE_CHECKING:
    from bgm_model.readers.callable import CallableReader
    from bgm_model.readers.ct2 import CT2Reader as CT2Reader
    from bgm_model.readers.ct2 import load_smollm2_ct2_reader as load_smollm2_ct2_reader
    from bgm_model.readers.hf import HFReader, load_gemma3_reader, load_smollm2_reader, smollm2_gguf_path
    from bgm_model.readers.openai_api import OpenAIReader, ServedReaderError

__all__ = [
    "CallCache",
    "CT2Reader",
    "CallableReader",
    "ContextPrompt",
    "LANGCHAIN_RAG_PROMPT",
    "HFReader",
    "OpenAIReader",
    "PromptTemplate",
    "Reader",
    "ReaderPrompt",
    "ReaderStats",
    "ServedReaderError",
    "clean_answer",
    "default_cache_dir",
    "load_gemma3_reader",
    "load_smollm2_ct2_reader",
    "load_smollm2_reader",
    "reader_agreement",
    "smollm2_gguf_path",
]

_LAZY = {
    "CallableReader": "bgm_model.readers.callable",
    "CT2Reader": "bgm_model.readers.ct2",
    "load_smollm2_ct2_reader": "bgm_model.readers.ct2",
    "HFReader": "bgm_model.readers.hf",
    "load_smollm2_reader": "bgm_model.readers.hf",
    "load_gemma3_reader": "bgm_model.readers.hf",
    "gemma3_gguf_path": "bgm_model.assets",
    "OpenAIReader": "bgm_model.readers.openai_api",
    "ServedReaderError": "bgm_model.readers.openai_api",
    "smollm2_gguf_path": "bgm_model.assets",
    # Deprecated: framework readers live in bgm_integrations (these aliases warn on use).
    "LangChainReader": "bgm_model.readers.langchain",
    "LlamaIndexReader": "bgm_model.readers.llama_index",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bgm_model.readers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
