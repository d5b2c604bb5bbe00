"""A real saved bridge for the adapter tests that load by path (``model=``), and adapter-neutral helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgm_model import BridgeConfig
from tests._helpers import make_tiny_bridge

#: The saved bridge reads at most this many passages (so 20 retrieved documents overflow).
MAX_PASSAGES = 16


@pytest.fixture(scope="session")
def saved_bridge_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random bridge saved with ``save_pretrained`` (16 passage IDs), loaded by path in tests."""
    config = BridgeConfig(max_passages=MAX_PASSAGES, max_query_tokens=16, max_passage_tokens=32, max_output_length=4)
    path = Path(tmp_path_factory.mktemp("bridge")) / "tiny-bridge"
    make_tiny_bridge(config, seed=3).save_pretrained(path)
    return str(path)
