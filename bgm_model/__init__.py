"""bgm-bridge core: the bridge model between a frozen retriever and a frozen LLM.

Framework-free: LangChain and LlamaIndex adapters live in :mod:`bgm_integrations`.
"""

from __future__ import annotations

from .config import BridgeConfig
from .errors import BridgeError, BridgeLoadError, TooManyPassagesError
from .modeling import BridgeModel
from .outputs import BridgeResult
from .protocols import SupportsBridge
from .version import __version__

__all__ = [
    "BridgeConfig",
    "BridgeError",
    "BridgeLoadError",
    "BridgeModel",
    "BridgeResult",
    "SupportsBridge",
    "TooManyPassagesError",
    "__version__",
]
