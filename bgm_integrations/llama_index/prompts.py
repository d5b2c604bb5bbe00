"""A LlamaIndex prompt template as the reader's prompt, so the bridge is trained for the prompt the query
engine sends.

LlamaIndex's question-answering prompts take ``context_str`` (the retrieved nodes' texts joined by blank
lines) and ``query_str``; :class:`LlamaIndexPrompt` fills them with the passages in the order the bridge chose.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.prompts import BasePromptTemplate, ChatPromptTemplate

from bgm_model.readers.templates import SlotPrompt


class LlamaIndexPrompt(SlotPrompt):
    """A LlamaIndex ``PromptTemplate`` or ``ChatPromptTemplate`` (e.g. ``DEFAULT_TEXT_QA_PROMPT``) as a
    :class:`~bgm_model.readers.templates.ReaderPrompt`.

    Args:
        prompt: the query engine's prompt; its template variables must be ``context_key`` and ``question_key``.
        context_key / question_key: the names of its context and question variables.
        passage_separator: what joins the passages into the context.
    """

    def __init__(
        self,
        prompt: BasePromptTemplate,
        *,
        context_key: str = "context_str",
        question_key: str = "query_str",
        passage_separator: str = "\n\n",
    ) -> None:
        if not isinstance(prompt, BasePromptTemplate):
            raise TypeError(f"prompt must be a LlamaIndex prompt template, got {type(prompt).__name__}")
        super().__init__(set(prompt.template_vars) - set(prompt.kwargs), context_key=context_key,
                         question_key=question_key, passage_separator=passage_separator)
        self.prompt = prompt

    def __repr__(self) -> str:
        return f"LlamaIndexPrompt({type(self.prompt).__name__}, context_key={self.context_key!r})"

    def format_messages(self, values: dict[str, str]) -> list[dict[str, str]] | None:
        if not isinstance(self.prompt, ChatPromptTemplate):
            return None
        return [
            {"role": str(getattr(m.role, "value", m.role)), "content": m.content or ""}
            for m in self.prompt.format_messages(**values)
        ]

    def format_text(self, values: dict[str, str]) -> str:
        return self.prompt.format(**values)


def as_reader_prompt(template: Any, **kwargs: Any) -> Any:
    """``template`` unchanged if it is already a reader prompt, else wrapped in :class:`LlamaIndexPrompt`."""
    if isinstance(template, BasePromptTemplate):
        return LlamaIndexPrompt(template, **kwargs)
    return template
