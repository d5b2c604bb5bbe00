"""The small interface the framework adapters need from a bridge (so tests or custom bridges can plug in)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from .outputs import BridgeResult


@runtime_checkable
class SupportsBridge(Protocol):
    """Anything with ``bridge(query, passages, *, on_error) -> BridgeResult``; :class:`BridgeModel` is one."""

    def bridge(
        self, query: str, passages: Sequence[str], *, on_error: Literal["raise", "passthrough"] = "raise"
    ) -> BridgeResult: ...
