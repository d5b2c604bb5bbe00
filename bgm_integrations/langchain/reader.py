"""Any LangChain chat model or LLM as the reader; calls in a batch run concurrently.

Chat models get the template's messages (the default template: its system text as a ``SystemMessage`` and the
rest as a ``HumanMessage``); plain LLMs (and any other runnable taking a string) get the rendered prompt. Use a deterministic (temperature 0)
model: answers are cached by prompt, so a sampling model's first answer is the one that sticks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from bgm_model.readers.base import CacheSpec, Reader
from bgm_model.readers.templates import ReaderPrompt

_INSTALL = "pip install 'bgm-bridge[langchain]'"


def _import_langchain() -> Any:
    try:
        from langchain_core import language_models, messages
    except ImportError as e:
        raise ImportError(f"the LangChain reader needs langchain-core: {_INSTALL}") from e
    return language_models, messages


def _text_of(output: Any) -> str:
    """The reply text of a chat message, an LLM string, or content blocks."""
    if isinstance(output, str):
        return output
    content = getattr(output, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text ones
        parts = [
            b if isinstance(b, str) else b.get("text", "") for b in content if isinstance(b, (str, dict))
        ]
        return "".join(parts)
    raise TypeError(f"cannot read an answer from a {type(output).__name__}")


def _default_name(model: Any) -> str:
    # Only the fields that identify the model and its decoding, never the whole config (it may hold keys).
    parts: dict[str, Any] = {}
    for attr in ("model_name", "model", "model_id", "temperature", "max_tokens", "top_p"):
        value = getattr(model, attr, None)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            parts[attr] = value
    kind = getattr(model, "_llm_type", None) or type(model).__name__
    return f"langchain:{kind}:{json.dumps(parts, sort_keys=True)}"


class LangChainReader(Reader):
    """A LangChain ``BaseChatModel`` / ``BaseLLM`` (or any runnable) as a :class:`Reader`.

    Args:
        model: the LangChain model.
        input_kind: ``"messages"`` (chat), ``"text"`` (rendered prompt) or ``"auto"`` (chat models get
            messages, everything else text).
        max_concurrency: calls in flight at once (``batch``/``abatch``'s ``max_concurrency``).
        name: cache identity; defaults to the model class plus its model name and decoding fields.
        template: the reader's prompt: a :class:`~bgm_model.readers.templates.ReaderPrompt`, or the chain's own
            LangChain prompt template (wrapped in :class:`~bgm_integrations.langchain.LangChainPrompt`).
    """

    def __init__(
        self,
        model: Any,
        *,
        input_kind: Literal["auto", "messages", "text"] = "auto",
        max_concurrency: int = 8,
        name: str | None = None,
        template: ReaderPrompt | Any = None,
        cache: CacheSpec = True,
        first_line_only: bool = True,
    ) -> None:
        language_models, _ = _import_langchain()
        from .prompts import as_reader_prompt

        template = as_reader_prompt(template)
        if not hasattr(model, "batch") or not hasattr(model, "abatch"):
            raise TypeError(
                f"model must be a LangChain runnable (chat model or LLM), got {type(model).__name__}"
            )
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if input_kind == "auto":
            input_kind = "messages" if isinstance(model, language_models.BaseChatModel) else "text"
        elif input_kind not in ("messages", "text"):
            raise ValueError(f"input_kind must be 'auto', 'messages' or 'text', got {input_kind!r}")
        self.model = model
        self.input_kind = input_kind
        self.max_concurrency = max_concurrency
        super().__init__(name or _default_name(model), template, cache=cache, first_line_only=first_line_only)

    def prompt_text(self, question: str, passages: Sequence[str]) -> str:
        if self.input_kind == "messages":
            return json.dumps(self.template.messages(question, passages), ensure_ascii=False)
        return self.template.render(question, passages)

    def _inputs(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[Any]:
        if self.input_kind == "text":
            return [self.template.render(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        _, messages = _import_langchain()
        return [
            messages.convert_to_messages(self.template.messages(q, ps))
            for q, ps in zip(questions, passage_lists, strict=True)
        ]

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        outputs = self.model.batch(
            self._inputs(questions, passage_lists), config={"max_concurrency": self.max_concurrency}
        )
        return [_text_of(o) for o in outputs]

    async def _aanswer_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]
    ) -> list[str]:
        outputs = await self.model.abatch(
            self._inputs(questions, passage_lists), config={"max_concurrency": self.max_concurrency}
        )
        return [_text_of(o) for o in outputs]
