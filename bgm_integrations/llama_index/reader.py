"""Any LlamaIndex LLM as the reader: ``chat`` for chat models, ``complete`` otherwise; concurrent calls.

Use a deterministic (temperature 0) LLM: answers are cached by prompt, so a sampling model's first answer
is the one that sticks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bgm_model.readers.base import CacheSpec, Reader
from bgm_model.readers.templates import ReaderPrompt

_INSTALL = "pip install 'bgm-bridge[llamaindex]'"


def _import_llama_index() -> Any:
    try:
        from llama_index.core import llms
    except ImportError as e:
        raise ImportError(f"the LlamaIndex reader needs llama-index-core: {_INSTALL}") from e
    return llms


class LlamaIndexReader(Reader):
    """A LlamaIndex ``LLM`` as a :class:`Reader`.

    Args:
        llm: the LlamaIndex LLM.
        use_chat: send chat messages (system + user) rather than one completion prompt; ``None`` follows
            ``llm.metadata.is_chat_model``.
        max_concurrency: calls in flight at once (threads for the sync path, a semaphore for the async one).
        name: cache identity; defaults to ``llama_index:<class_name>:<model name>``.
        template: the reader's prompt: a :class:`~bgm_model.readers.templates.ReaderPrompt`, or the query
            engine's own LlamaIndex prompt (wrapped in :class:`~bgm_integrations.llama_index.LlamaIndexPrompt`).
    """

    def __init__(
        self,
        llm: Any,
        *,
        use_chat: bool | None = None,
        max_concurrency: int = 8,
        name: str | None = None,
        template: ReaderPrompt | Any = None,
        cache: CacheSpec = True,
        first_line_only: bool = True,
    ) -> None:
        llms = _import_llama_index()
        from .prompts import as_reader_prompt

        template = as_reader_prompt(template)
        if not isinstance(llm, llms.LLM):
            raise TypeError(f"llm must be a llama_index.core.llms.LLM, got {type(llm).__name__}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.llm = llm
        self.use_chat = bool(llm.metadata.is_chat_model) if use_chat is None else use_chat
        self.max_concurrency = max_concurrency
        if name is None:
            model_name = getattr(llm.metadata, "model_name", "") or ""
            name = f"llama_index:{llm.class_name()}:{model_name}"
        super().__init__(name, template, cache=cache, first_line_only=first_line_only)

    def prompt_text(self, question: str, passages: Sequence[str]) -> str:
        if self.use_chat:
            return json.dumps(self.template.messages(question, passages), ensure_ascii=False)
        return self.template.render(question, passages)

    def _messages(self, question: str, passages: Sequence[str]) -> list[Any]:
        llms = _import_llama_index()
        return [
            llms.ChatMessage(role=m["role"], content=m["content"])
            for m in self.template.messages(question, passages)
        ]

    def _call_one(self, question: str, passages: Sequence[str]) -> str:
        if self.use_chat:
            return self.llm.chat(self._messages(question, passages)).message.content or ""
        return self.llm.complete(self.template.render(question, passages)).text

    async def _acall_one(self, question: str, passages: Sequence[str]) -> str:
        if self.use_chat:
            return (await self.llm.achat(self._messages(question, passages))).message.content or ""
        return (await self.llm.acomplete(self.template.render(question, passages))).text

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        if self.max_concurrency == 1 or len(questions) == 1:
            return [self._call_one(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(questions))) as pool:
            return list(pool.map(self._call_one, questions, passage_lists))

    async def _aanswer_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]
    ) -> list[str]:
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(q: str, ps: Sequence[str]) -> str:
            async with gate:
                return await self._acall_one(q, ps)

        return list(
            await asyncio.gather(*(one(q, ps) for q, ps in zip(questions, passage_lists, strict=True)))
        )
