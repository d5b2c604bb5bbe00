"""A LangChain chat model backed by a local bgm-bridge reader (e.g. the packaged SmolLM2).

The chain's LLM calls then go through the reader's persistent cache: when the chain sends the reader's own
prompt (system + user message of its ``PromptTemplate``), training and evaluation reuse the chain's answers.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, field_validator

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


class ReaderChatModel(BaseChatModel):
    """Greedy chat completions from a local :class:`~bgm_model.readers.hf.HFReader`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reader: Any
    """A reader with ``answer_messages(messages) -> str`` (``HFReader``)."""

    @field_validator("reader")
    @classmethod
    def _has_answer_messages(cls, reader: Any) -> Any:
        if not callable(getattr(reader, "answer_messages", None)):
            raise TypeError(
                f"ReaderChatModel needs a reader with answer_messages(messages), e.g. HFReader; got {type(reader).__name__}"
            )
        return reader

    @property
    def _llm_type(self) -> str:
        return "bgm-reader"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.reader.name}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turns = []
        for m in messages:
            if m.type not in _ROLES or not isinstance(m.content, str):
                raise ValueError(f"ReaderChatModel takes text system/human/ai messages, got a {m.type!r} message")
            turns.append({"role": _ROLES[m.type], "content": m.content})
        answer = self.reader.answer_messages(turns)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=answer))])
