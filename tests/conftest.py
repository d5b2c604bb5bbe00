"""Shared fixtures. Tests run offline: nothing may reach a model hub or LangSmith."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from bgm_model import BridgeModel  # noqa: E402
from tests._helpers import make_tiny_bridge  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bridge() -> BridgeModel:
    """A tiny random bridge shared by the session; tests must not train it (use make_tiny_bridge)."""
    return make_tiny_bridge()
