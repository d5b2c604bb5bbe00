from __future__ import annotations

import bgm_model.readers as readers


def test_public_api_is_pinned():
    assert sorted(readers.__all__) == sorted(
        [
            "CallCache",
            "CT2Reader",
            "CallableReader",
            "ContextPrompt",
            "HFReader",
            "LANGCHAIN_RAG_PROMPT",
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
    )
    for name in readers.__all__:
        assert getattr(readers, name) is not None


def test_framework_readers_moved_to_the_adapters_with_warning_aliases():
    import pytest

    from bgm_integrations.langchain import LangChainReader
    from bgm_integrations.llama_index import LlamaIndexReader

    with pytest.warns(DeprecationWarning, match="bgm_integrations.langchain"):
        assert readers.LangChainReader is LangChainReader
    with pytest.warns(DeprecationWarning, match="bgm_integrations.llama_index"):
        assert readers.LlamaIndexReader is LlamaIndexReader
