"""A local Hugging Face causal LM as the frozen reader (:class:`HFReader`), with KV-cache prefix reuse.

One module per job: ``reader`` (:class:`HFReader`, its prefix-reusing forward pass and prompt memory, which
fast paths a model allows, :func:`load_smollm2_reader` and :func:`load_gemma3_reader`), ``decoding`` (greedy
decoding, batched in ragged or masked groups, and targets scored in the prompt's own pass), ``kv_cache`` (the
reader's cache layout, the cache layers of a decoding group, common token prefixes) and ``attention`` (the
reader's SDPA for those cases, sliding windows included). The prompt layer shared with the CTranslate2 backend
is :mod:`bgm_model.readers.prompts`; the SmolLM2 and Gemma-3 file lookups are :mod:`bgm_model.assets`.
"""

from __future__ import annotations

from bgm_model.assets import (
    GEMMA3_INSTALL,
    GEMMA3_PACKAGE,
    SMOLLM2_INSTALL,
    SMOLLM2_PACKAGE,
    gemma3_gguf_path,
    smollm2_gguf_path,
)
from bgm_model.readers.hf.reader import HFReader, load_gemma3_reader, load_smollm2_reader

# Moved to bgm_model.readers.prompts; still importable from here for old imports.
from bgm_model.readers.prompts import TokenizerPrompts, resolve_chat_template, stop_token_ids

__all__ = [
    "GEMMA3_INSTALL",
    "GEMMA3_PACKAGE",
    "SMOLLM2_INSTALL",
    "SMOLLM2_PACKAGE",
    "HFReader",
    "TokenizerPrompts",
    "gemma3_gguf_path",
    "load_gemma3_reader",
    "load_smollm2_reader",
    "resolve_chat_template",
    "smollm2_gguf_path",
    "stop_token_ids",
]
