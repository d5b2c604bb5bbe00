"""Fixtures of the SL/RL trainer tests (names start with ``tiny_``): tiny random bridges and toy data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from bgm_model import BridgeConfig, BridgeModel
from tests._helpers import make_tiny_bridge


def _tiny_bridge(
    hidden: int = 32, seed: int = 0, dropout: float = 0.1, config: BridgeConfig | None = None
) -> BridgeModel:
    # Toy passages are ~12 tokens and questions ~10: rows of 12 + 16 + 5 tokens fit 64 positions.
    config = config or BridgeConfig(
        max_passages=8, max_query_tokens=12, max_passage_tokens=16, max_output_length=4
    )
    return make_tiny_bridge(config, seed, hidden=hidden, dropout=dropout, max_positions=64)


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
