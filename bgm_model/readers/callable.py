"""A plain Python function as the reader: ``fn(question, passages) -> str`` or ``fn(prompt) -> str``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from bgm_model.readers.base import CacheSpec, PromptTemplate, Reader


def _positional_arity(fn: Callable[..., Any]) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)


class CallableReader(Reader):
    """Wraps ``fn`` as a :class:`Reader` (answers only; it cannot score).

    Args:
        fn: ``fn(question, passages)`` (``mode="passages"``) or ``fn(prompt)`` with the rendered prompt
            (``mode="prompt"``); ``mode="auto"`` picks by the number of required positional parameters.
        name: cache identity; defaults to ``callable:<module>.<qualname>``. Change it when ``fn`` changes,
            or cached answers of the old function are returned.
        max_concurrency: threads used for one batch (1 = sequential).
    """

    def __init__(
        self,
        fn: Callable[..., str],
        *,
        mode: Literal["auto", "passages", "prompt"] = "auto",
        name: str | None = None,
        template: PromptTemplate | None = None,
        cache: CacheSpec = True,
        max_concurrency: int = 1,
        first_line_only: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if mode == "auto":
            arity = _positional_arity(fn)
            if arity not in (1, 2):
                raise ValueError(
                    "cannot tell how to call fn: give mode='passages' for fn(question, passages) "
                    "or mode='prompt' for fn(prompt)"
                )
            mode = "passages" if arity == 2 else "prompt"
        elif mode not in ("passages", "prompt"):
            raise ValueError(f"mode must be 'auto', 'passages' or 'prompt', got {mode!r}")
        self.fn = fn
        self.mode = mode
        self.max_concurrency = max_concurrency
        if name is None:
            name = (
                f"callable:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
            )
        super().__init__(name, template, cache=cache, first_line_only=first_line_only)

    def _call_one(self, question: str, passages: Sequence[str]) -> str:
        out = (
            self.fn(question, list(passages))
            if self.mode == "passages"
            else self.fn(self.prompt_text(question, passages))
        )
        if not isinstance(out, str):
            raise TypeError(f"the reader function returned {type(out).__name__}, expected str")
        return out

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        if self.max_concurrency == 1 or len(questions) == 1:
            return [self._call_one(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(questions))) as pool:
            return list(pool.map(self._call_one, questions, passage_lists))
