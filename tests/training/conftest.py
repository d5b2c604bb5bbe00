"""Fixtures of the SL/RL trainer tests (names start with ``tiny_``): tiny random bridges and toy data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from bgm_model import BridgeConfig, BridgeModel


def _tiny_bridge(
    hidden: int = 32, seed: int = 0, dropout: float = 0.1, config: BridgeConfig | None = None
) -> BridgeModel:
    from transformers import AutoTokenizer, BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    from bgm_model.backbones import minilm_path

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    enc = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    dec = BertConfig(**{**enc.to_dict(), "is_decoder": True, "add_cross_attention": True})
    model = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
    model.config.decoder_start_token_id = tok.cls_token_id
    model.config.eos_token_id = tok.sep_token_id
    model.config.pad_token_id = tok.pad_token_id
    # Toy passages are ~12 tokens and questions ~10: rows of 12 + 16 + 5 tokens fit 64 positions.
    config = config or BridgeConfig(
        max_passages=8, max_query_tokens=12, max_passage_tokens=16, max_output_length=4
    )
    return BridgeModel(model, tok, config)


@pytest.fixture
def tiny_make_bridge() -> Callable[..., BridgeModel]:
    """Factory of fresh tiny random bridges (2+2 layers, 32-dim), deterministic by ``seed``."""
    return _tiny_bridge


@pytest.fixture(autouse=True)
def tiny_one_thread() -> Any:
    # The test machine's cores are shared: one intra-op thread is faster than two fighting ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_silver(examples: list[Any], target: Callable[[Any], list[int]]) -> list[dict[str, Any]]:
    """Silver-sequence records (the SL trainer's input) for toy examples, with ``target(example)`` as ids."""
    return [
        {"id": e.id, "question": e.question, "passages": e.passages, "answers": e.answers, "ids": target(e)}
        for e in examples
    ]


@pytest.fixture
def tiny_silver_records() -> Callable[..., list[dict[str, Any]]]:
    return tiny_silver
