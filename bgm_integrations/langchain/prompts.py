"""A LangChain prompt template as the reader's prompt, so the bridge is trained for the prompt the chain sends.

The chain's prompt takes the question and the retrieved passages joined into one context string (LangChain's
RAG tutorial: ``"\\n\\n".join(doc.page_content for doc in docs)``); :class:`LangChainPrompt` formats it the same
way, with the passages in the order the bridge chose.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate

from bgm_model.readers.templates import SlotPrompt

# LangChain message types -> chat roles.
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


class LangChainPrompt(SlotPrompt):
    """A LangChain ``ChatPromptTemplate`` or string ``PromptTemplate`` as a
    :class:`~bgm_model.readers.templates.ReaderPrompt`.

    Args:
        prompt: the chain's prompt; its input variables must be ``context_key`` and ``question_key`` (other
            variables must be partials).
        context_key / question_key: the names of its context and question variables.
        passage_separator: what joins the passages into the context (the chain's own ``format_docs``).
    """

    def __init__(
        self,
        prompt: BasePromptTemplate,
        *,
        context_key: str = "context",
        question_key: str = "question",
        passage_separator: str = "\n\n",
    ) -> None:
        if not isinstance(prompt, BasePromptTemplate):
            raise TypeError(f"prompt must be a LangChain prompt template, got {type(prompt).__name__}")
        super().__init__(set(prompt.input_variables), context_key=context_key, question_key=question_key,
                         passage_separator=passage_separator)
        self.prompt = prompt

    def __repr__(self) -> str:
        return f"LangChainPrompt({type(self.prompt).__name__}, context_key={self.context_key!r})"

    def format_messages(self, values: dict[str, str]) -> list[dict[str, str]] | None:
        if not isinstance(self.prompt, ChatPromptTemplate):
            return None
        return [_as_dict(m) for m in self.prompt.format_messages(**values)]

    def format_text(self, values: dict[str, str]) -> str:
        return self.prompt.format(**values)


def _as_dict(message: BaseMessage) -> dict[str, str]:
    role = _ROLES.get(message.type)
    if role is None:
        raise ValueError(f"a reader prompt can hold system, human and ai messages, not {message.type!r}")
    return {"role": role, "content": message.text}


def as_reader_prompt(template: Any, **kwargs: Any) -> Any:
    """``template`` unchanged if it is already a reader prompt, else wrapped in :class:`LangChainPrompt`."""
    if isinstance(template, BasePromptTemplate):
        return LangChainPrompt(template, **kwargs)
    return template
