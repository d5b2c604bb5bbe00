"""Reader prompts other than the project's default layout: the user's own prompt, so that the bridge is trained
for the prompt the chain really sends.

Any object with ``render(question, passages) -> str`` (the text a completion model sees) and
``messages(question, passages) -> list[{"role", "content"}]`` (what a chat model is sent) is a reader prompt
(:class:`ReaderPrompt`). :class:`~bgm_model.readers.base.PromptTemplate` is the default one; :class:`ContextPrompt`
is the shape of the usual RAG prompts, all passages joined into one ``{context}`` slot; LangChain and LlamaIndex
prompt templates become reader prompts through ``bgm_integrations.langchain.LangChainPrompt`` and
``bgm_integrations.llama_index.LlamaIndexPrompt``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class ReaderPrompt(Protocol):
    """How a question and its ordered passages become the reader's prompt."""

    def render(self, question: str, passages: Sequence[str]) -> str:
        """The prompt as one text (completion models, and the cache key of local readers)."""
        ...

    def messages(self, question: str, passages: Sequence[str]) -> list[dict[str, str]]:
        """The prompt as chat messages (``{"role": "system" | "user" | "assistant", "content": ...}``)."""
        ...


class SlotPrompt:
    """A framework's prompt template with a context slot and a question slot, as a :class:`ReaderPrompt`: the
    passages (in the bridge's order) joined by ``passage_separator`` fill the context. The LangChain and
    LlamaIndex adapters subclass it and format with the framework's own template.

    ``variables``: the template's free variables; they must be exactly ``context_key`` and ``question_key``.
    """

    def __init__(self, variables: set[str], *, context_key: str, question_key: str, passage_separator: str) -> None:
        expected = {context_key, question_key}
        if variables != expected:
            raise ValueError(
                f"the prompt's variables are {sorted(variables)}; a reader prompt fills exactly "
                f"{sorted(expected)} (set context_key / question_key, or fill the others in advance)"
            )
        self.context_key = context_key
        self.question_key = question_key
        self.passage_separator = passage_separator

    def values(self, question: str, passages: Sequence[str]) -> dict[str, str]:
        return {self.context_key: self.passage_separator.join(passages), self.question_key: question}

    def format_messages(self, values: dict[str, str]) -> list[dict[str, str]] | None:
        """The chat messages of the filled template; ``None`` for a text template."""
        raise NotImplementedError

    def format_text(self, values: dict[str, str]) -> str:
        """The text of the filled text template."""
        raise NotImplementedError

    def messages(self, question: str, passages: Sequence[str]) -> list[dict[str, str]]:
        values = self.values(question, passages)
        turns = self.format_messages(values)
        return turns if turns is not None else [{"role": "user", "content": self.format_text(values)}]

    def render(self, question: str, passages: Sequence[str]) -> str:
        values = self.values(question, passages)
        turns = self.format_messages(values)
        # A chat template given to a completion model: the turns' texts one after another, as local readers
        # without a chat template render messages.
        return "\n\n".join(m["content"] for m in turns) if turns is not None else self.format_text(values)


def format_fields(text: str) -> set[str]:
    """The ``{name}`` fields of a format string (``{{`` and ``}}`` are literal braces)."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


@dataclass(frozen=True)
class ContextPrompt:
    """A RAG prompt with one ``{context}`` slot for all passages (joined by ``passage_separator``) and a
    ``{question}`` slot, in a system and/or a user message, as LangChain's and LlamaIndex's RAG prompts are.

    Passages keep the order the bridge gives (a repeated passage appears twice); with no passages the
    context is empty. ``passage_format`` may use ``{number}`` (from 1) and ``{text}``.
    """

    user: str
    system: str | None = None
    passage_format: str = "{text}"
    passage_separator: str = "\n\n"

    def __post_init__(self) -> None:
        allowed = {"context", "question"}
        slots: set[str] = set()
        for label, text in (("user", self.user), ("system", self.system or "")):
            try:
                fields = format_fields(text)
            except ValueError as e:
                raise ValueError(f"the {label} text of a ContextPrompt is not a format string: {e}") from None
            if fields - allowed:
                raise ValueError(
                    f"the {label} text of a ContextPrompt has unknown fields {sorted(fields - allowed)}; "
                    "use {context} and {question} (write {{ and }} for literal braces)"
                )
            slots |= fields
        if slots != allowed:
            raise ValueError(f"a ContextPrompt needs both {{context}} and {{question}}; missing {sorted(allowed - slots)}")
        if format_fields(self.passage_format) - {"number", "text"}:
            raise ValueError("passage_format may use only {number} and {text}")

    def context(self, passages: Sequence[str]) -> str:
        return self.passage_separator.join(
            self.passage_format.format(number=i + 1, text=p) for i, p in enumerate(passages)
        )

    def messages(self, question: str, passages: Sequence[str]) -> list[dict[str, str]]:
        values = {"context": self.context(passages), "question": question}
        turns = [{"role": "system", "content": self.system.format(**values)}] if self.system else []
        return [*turns, {"role": "user", "content": self.user.format(**values)}]

    def render(self, question: str, passages: Sequence[str]) -> str:
        return "\n\n".join(m["content"] for m in self.messages(question, passages))


#: The common LangChain RAG prompt (the hub's ``rlm/rag-prompt``, one human message), for training a bridge
#: for chains built from LangChain's RAG tutorial. ``--prompt-template rag`` on the command line.
LANGCHAIN_RAG_PROMPT = ContextPrompt(
    user=(
        "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to "
        "answer the question. If you don't know the answer, just say that you don't know. Use three sentences "
        "maximum and keep the answer concise.\nQuestion: {question} \nContext: {context} \nAnswer:"
    ),
)
