"""Fixtures for the reader tests: a tiny random Llama with the real SmolLM2 tokenizer, loaded once."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache_dir(tmp_path, monkeypatch):
    # Never touch the user's real cache from a test.
    monkeypatch.setenv("BGM_CACHE_DIR", str(tmp_path / "reader-cache"))


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    from bgm_model.assets import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except ImportError as e:
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def tiny_model(smollm2_tokenizer):
    import torch

    # The tiny model's ops are too small to split; on a shared 2-core box two threads only fight.
    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        # Wide weights spread the logits, so greedy argmaxes are not near-ties decided by rounding.
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_reader_factory(tiny_model, smollm2_tokenizer, tmp_path):
    from bgm_model.readers.hf import HFReader

    def make(**kwargs):
        kwargs.setdefault("cache", False)
        kwargs.setdefault("max_new_tokens", 6)
        return HFReader(tiny_model, smollm2_tokenizer, name="tiny-llama", **kwargs)

    return make


@pytest.fixture(scope="module")
def smollm2():
    """The real SmolLM2-135M-Instruct reader (fp32, CPU, no call cache), loaded once per test module."""
    import torch

    from bgm_model.readers.hf import load_smollm2_reader

    # On a shared 2-core machine one thread is 3-4x faster than two fighting over busy cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_smollm2_reader(cache=False, device="cpu", max_new_tokens=16)
    except ImportError as e:
        pytest.skip(str(e))
    finally:
        torch.set_num_threads(threads)
