"""The small interfaces the framework adapters need from a bridge (so tests or custom bridges can plug in)."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from typing import Literal, Protocol, runtime_checkable

from .outputs import BridgeResult


class SupportsEncode(Protocol):
    """A tokenizer: ``encode(text)`` returns the tokens (anything with a length) — a transformers or
    ``tokenizers`` tokenizer, a ``tiktoken`` encoding."""

    def encode(self, text: str, /) -> Sized: ...


#: What counts the tokens of a passage for a token budget: ``count(text) -> int``, or a tokenizer.
TokenCounter = Callable[[str], int] | SupportsEncode


@runtime_checkable
class SupportsBridge(Protocol):
    """Anything with ``bridge(query, passages, *, on_error, ...) -> BridgeResult``; :class:`BridgeModel` is one.

    The limits ``max_context_tokens``, ``count_tokens`` and ``min_score`` are optional keywords, ``None``
    (off) by default; a caller that passes them only when they are set keeps working with a stand-in
    written without them. A stand-in that cannot honour a limit should take them as ``**kwargs`` and refuse one that is
    set rather than ignore it.
    """

    def bridge(
        self,
        query: str,
        passages: Sequence[str],
        *,
        on_error: Literal["raise", "passthrough"] = "raise",
        max_context_tokens: int | None = None,
        count_tokens: TokenCounter | None = None,
        min_score: float | None = None,
    ) -> BridgeResult: ...
