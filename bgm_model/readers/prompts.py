"""The prompts of the local readers with a Hugging Face tokenizer, shared by every backend that has one.

:class:`TokenizerPrompts` renders and tokenises prompts for :class:`~bgm_model.readers.hf.HFReader` and
:class:`~bgm_model.readers.ct2.CT2Reader` alike (template, chat template, tokenisation), so both send the same
prompts and share call-cache entries; :func:`resolve_chat_template` and :func:`stop_token_ids` are the two
settings they derive from the tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bgm_model.readers.base import PromptTemplate, Reader
from bgm_model.readers.call_cache import call_key

logger = logging.getLogger(__name__)

#: A completion prompt for a base (non-chat) model such as Gemma-3-270M: an instruction, numbered documents,
#: the question and an ``Answer:`` cue, the layout of the NQ prompt of "Lost in the Middle" (Liu et al.,
#: 2023). A base model runs on after its answer: the reader stops at the first line break
#: (``first_line_only``).
BASE_MODEL_TEMPLATE = PromptTemplate(
    system=(
        "Write a high-quality answer for the given question using only the provided search results "
        "(some of which might be irrelevant)."
    ),
    question_format="",
    passage_format="Document [{number}] {text}\n",
    answer_cue="\nQuestion: {question}\nAnswer:",
)


def resolve_chat_template(tokenizer: Any, use_chat_template: bool | None) -> bool:
    """Whether to render prompts with ``tokenizer``'s chat template (``None``: when it has one)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template and not has_template:
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")
    return has_template if use_chat_template is None else use_chat_template


def stop_token_ids(tokenizer: Any, *configs: Any) -> set[int]:
    """End-of-sequence ids of ``configs`` (generation config, model config) and ``tokenizer``, plus the
    tokenizer's end-of-turn marker if it has one."""
    ids: set[int] = set()
    for source in (*configs, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    # Chat models end a turn with their own marker (SmolLM2: <|im_end|>).
    vocab = tokenizer.get_vocab()
    ids.update(vocab[m] for m in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>") if m in vocab)
    return ids


class TokenizerPrompts(Reader):
    """Prompt text and token ids of a local reader with a Hugging Face tokenizer
    (:class:`~bgm_model.readers.hf.HFReader`, :class:`~bgm_model.readers.ct2.CT2Reader`): the same template,
    chat template and tokenisation, hence the same prompts, for every backend. The reader sets ``tokenizer``,
    ``template``, ``use_chat_template`` and then calls :meth:`_check_chat_template`; it implements
    :meth:`_greedy_text` (used by :meth:`answer_messages`)."""

    tokenizer: Any
    template: PromptTemplate
    use_chat_template: bool
    max_new_tokens: int
    max_positions: int | None = None
    _system_in_user: bool = False

    def _greedy_text(self, ids: list[int]) -> str:
        """The backend's raw greedy answer after the prompt token ids ``ids``."""
        raise NotImplementedError

    def _check_length(self, n_tokens: int, what: str) -> None:
        if self.max_positions is not None and n_tokens > self.max_positions:
            raise ValueError(
                f"{what} is {n_tokens} tokens, longer than the model's context of {self.max_positions}; "
                "pass fewer or shorter passages"
            )

    def answer_messages(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Greedy answer to chat ``messages`` (``{"role", "content"}`` dicts), through the call cache.

        A chain that sends this reader's own prompt (``template.messages(question, passages)``) gets the
        same prompt text, hence the same cache entry, as ``answer(question, passages)``: a LangChain chain
        backed by this reader and the training code share their answers.
        """
        text = self._messages_text(messages)

        def compute(idx: list[int]) -> list[Any]:
            ids = self._encode_text(text)
            self._check_length(len(ids) + self.max_new_tokens, "prompt plus max_new_tokens")
            return self._clean([self._greedy_text(ids)], 1)

        return str(self._through_cache([call_key(self.name, "answer", text)], compute)[0])

    def _check_chat_template(self) -> None:
        try:
            self.prompt_text("q", ["p"])
        except Exception as e:  # some templates (e.g. Gemma's) reject a system role
            logger.info(
                "chat template rejects a system message (%s); putting the system text in the user turn", e
            )
            self._system_in_user = True
            self.prompt_text("q", ["p"])

    def prompt_text(self, question: str, passages: Sequence[str]) -> str:
        if not self.use_chat_template:
            return self.template.render(question, passages)
        messages = self.template.messages(question, passages)
        return self._chat_text(messages)

    def _chat_text(self, turns: Sequence[Mapping[str, str]]) -> str:
        """``turns`` through the chat template; where the template rejects a system role, the system text
        opens the first user turn instead (a prompt may also have no system turn at all)."""
        turns = list(turns)
        if self._system_in_user and turns[0]["role"] == "system" and len(turns) > 1:
            turns = [{"role": "user", "content": f"{turns[0]['content']}\n\n{turns[1]['content']}"}, *turns[2:]]
        return str(self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))

    def encode_prompt(self, question: str, passages: Sequence[str]) -> list[int]:
        """Token ids of the full prompt (the chat template already holds its special tokens)."""
        return self._encode_text(self.prompt_text(question, passages))

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"])

    def _encode_answer(self, answer: str) -> list[int]:
        return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    def _messages_text(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text of chat ``messages`` (``{"role", "content"}`` dicts), as :meth:`prompt_text`
        renders the reader's own messages."""
        turns = [dict(m) for m in messages]
        if not turns or any(set(m) != {"role", "content"} for m in turns):
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        if self.use_chat_template:
            return self._chat_text(turns)
        # the plain template renders system and user text separated by a blank line
        return "\n\n".join(m["content"] for m in turns)
