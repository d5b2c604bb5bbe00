from __future__ import annotations

import bgm_model.readers as readers


def test_public_api_is_pinned():
    assert sorted(readers.__all__) == sorted(
        [
            "CallCache",
            "CT2Reader",
            "CallableReader",
            "HFReader",
            "LangChainReader",
            "LlamaIndexReader",
            "PromptTemplate",
            "Reader",
            "ReaderStats",
            "clean_answer",
            "default_cache_dir",
            "load_smollm2_ct2_reader",
            "load_smollm2_reader",
            "reader_agreement",
            "smollm2_gguf_path",
        ]
    )
    for name in readers.__all__:
        assert getattr(readers, name) is not None
