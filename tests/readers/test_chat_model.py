"""A LangChain chain backed by the local reader shares its answers (and cache) with training code."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser

from bgm_integrations.langchain.chat_model import ReaderChatModel

QUESTION = "who wrote hamlet?"
PASSAGES = ["Hamlet is a tragedy by William Shakespeare.", "Paris is the capital of France."]


def test_chat_model_answers_like_the_reader_and_hits_its_cache(tiny_reader_factory, tmp_path) -> None:
    reader = tiny_reader_factory(cache=str(tmp_path / "cache"))
    expected = reader.answer(QUESTION, PASSAGES)
    computed = reader.stats.computed
    chain = ReaderChatModel(reader=reader) | StrOutputParser()
    messages = [SystemMessage(reader.template.system), HumanMessage(reader.template.user_message(QUESTION, PASSAGES))]
    assert chain.invoke(messages) == expected
    assert reader.stats.computed == computed  # served from the cache: same prompt text, same key


def test_chat_model_computes_new_prompts_and_rejects_odd_messages(tiny_reader_factory, tmp_path) -> None:
    reader = tiny_reader_factory(cache=str(tmp_path / "cache"))
    model = ReaderChatModel(reader=reader)
    answer = model.invoke([HumanMessage("Say something.")]).content
    assert isinstance(answer, str) and reader.stats.computed == 1
    assert model.invoke([HumanMessage("Say something.")]).content == answer and reader.stats.computed == 1
    with pytest.raises(ValueError, match="text system/human/ai"):
        model.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "x"}}])])
    with pytest.raises(ValueError, match="non-empty"):
        reader.answer_messages([])
    with pytest.raises((TypeError, ValueError), match="answer_messages"):
        ReaderChatModel(reader=object())
