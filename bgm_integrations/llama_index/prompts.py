"""A LlamaIndex prompt template as the reader's prompt, so the bridge is trained for the prompt the query
engine sends.

LlamaIndex's question-answering prompts take ``context_str`` (the retrieved nodes' texts joined by blank
lines) and ``query_str``; :class:`LlamaIndexPrompt` fills them with the passages in the order the bridge chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.prompts import BasePromptTemplate, ChatPromptTemplate


class LlamaIndexPrompt:
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
        variables = set(prompt.template_vars) - set(prompt.kwargs)
        expected = {context_key, question_key}
        if variables != expected:
            raise ValueError(
                f"the prompt's template variables are {sorted(variables)}; a reader prompt fills exactly "
                f"{sorted(expected)} (set context_key / question_key, or partially format the others)"
            )
        self.prompt = prompt
        self.context_key = context_key
        self.question_key = question_key
        self.passage_separator = passage_separator

    def __repr__(self) -> str:
        return f"LlamaIndexPrompt({type(self.prompt).__name__}, context_key={self.context_key!r})"

    def _values(self, question: str, passages: Sequence[str]) -> dict[str, str]:
        return {self.context_key: self.passage_separator.join(passages), self.question_key: question}

    def messages(self, question: str, passages: Sequence[str]) -> list[dict[str, str]]:
        if not isinstance(self.prompt, ChatPromptTemplate):
            return [{"role": "user", "content": self.render(question, passages)}]
        return [
            {"role": str(getattr(m.role, "value", m.role)), "content": m.content or ""}
            for m in self.prompt.format_messages(**self._values(question, passages))
        ]

    def render(self, question: str, passages: Sequence[str]) -> str:
        if isinstance(self.prompt, ChatPromptTemplate):
            return "\n\n".join(m["content"] for m in self.messages(question, passages))
        return self.prompt.format(**self._values(question, passages))


def as_reader_prompt(template: Any, **kwargs: Any) -> Any:
    """``template`` unchanged if it is already a reader prompt, else wrapped in :class:`LlamaIndexPrompt`."""
    if isinstance(template, BasePromptTemplate):
        return LlamaIndexPrompt(template, **kwargs)
    return template
