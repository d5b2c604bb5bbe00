"""The reader modules' old import paths keep working: each gives the very objects of the module's new home."""

from __future__ import annotations


def test_hf_package_reexports_the_reader_and_the_smollm2_assets():
    import bgm_model.assets as assets
    from bgm_model.readers import hf, prompts
    from bgm_model.readers.hf import reader

    assert hf.HFReader is reader.HFReader and hf.load_smollm2_reader is reader.load_smollm2_reader
    assert hf.smollm2_gguf_path is assets.smollm2_gguf_path
    assert (hf.SMOLLM2_PACKAGE, hf.SMOLLM2_INSTALL) == (assets.SMOLLM2_PACKAGE, assets.SMOLLM2_INSTALL)
    for name in ("TokenizerPrompts", "resolve_chat_template", "stop_token_ids"):
        assert getattr(hf, name) is getattr(prompts, name)
    assert all(hasattr(hf, name) for name in hf.__all__)


def test_deprecated_attention_module_aliases_the_moved_one():
    from bgm_model.readers import attention
    from bgm_model.readers.hf import attention as moved

    for name in ("READER_ATTENTION", "reader_sdpa_forward", "supports_reader_attention", "use_reader_attention"):
        assert getattr(attention, name) is getattr(moved, name)


def test_deprecated_cache_module_aliases_the_call_cache():
    from bgm_model.readers import cache, call_cache

    public = [n for n, v in vars(call_cache).items() if not n.startswith("_") and getattr(v, "__module__", None)
              == call_cache.__name__]  # fmt: skip
    assert {"CallCache", "call_key", "default_cache_dir", "resolve_cache"} <= set(public)
    for name in [*public, "CACHE_DIR_ENV"]:
        assert getattr(cache, name) is getattr(call_cache, name)


def test_both_local_backends_share_one_prompt_layer():
    from bgm_model.readers import ct2, prompts
    from bgm_model.readers.hf import HFReader

    assert issubclass(HFReader, prompts.TokenizerPrompts) and issubclass(ct2.CT2Reader, prompts.TokenizerPrompts)
    assert ct2.stop_token_ids is prompts.stop_token_ids and ct2.resolve_chat_template is prompts.resolve_chat_template
