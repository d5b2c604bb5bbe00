"""The user's own prompt as the reader's prompt: ContextPrompt, LangChain and LlamaIndex prompt templates reach
every kind of reader exactly as the chain would send them."""

from __future__ import annotations

import pytest

from bgm_integrations.langchain import LangChainPrompt, LangChainReader
from bgm_integrations.llama_index import LlamaIndexPrompt, LlamaIndexReader
from bgm_model.readers import LANGCHAIN_RAG_PROMPT, ContextPrompt, PromptTemplate, ReaderPrompt

Q = "who wrote hamlet"
PS = ["Hamlet is a tragedy by William Shakespeare.", "Macbeth is another of his plays."]


def test_context_prompt_fills_one_context_slot_in_passage_order():
    prompt = ContextPrompt(system="Context:\n{context}", user="Q: {question}\nA:", passage_format="[{number}] {text}")
    assert prompt.messages(Q, PS[::-1]) == [
        {"role": "system", "content": f"Context:\n[1] {PS[1]}\n\n[2] {PS[0]}"},
        {"role": "user", "content": f"Q: {Q}\nA:"},
    ]
    assert prompt.render(Q, [PS[0], PS[0]]) == f"Context:\n[1] {PS[0]}\n\n[2] {PS[0]}\n\nQ: {Q}\nA:"
    assert prompt.messages(Q, [])[0]["content"] == "Context:\n"
    assert isinstance(prompt, ReaderPrompt) and isinstance(PromptTemplate(), ReaderPrompt)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "{question}"}, "missing \\['context'\\]"),
        ({"user": "{context} {question} {answer}"}, "unknown fields \\['answer'\\]"),
        ({"user": "{context} {question", "system": None}, "not a format string"),
        ({"user": "{context} {question}", "passage_format": "{title}"}, "only {number} and {text}"),
    ],
)
def test_context_prompt_rejects_templates_it_cannot_fill(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContextPrompt(**kwargs)


def test_the_langchain_rag_prompt_is_the_hub_text():
    text = LANGCHAIN_RAG_PROMPT.render(Q, PS)
    assert text.startswith("You are an assistant for question-answering tasks. Use the following pieces of retrieved")
    assert f"Question: {Q} \nContext: {PS[0]}\n\n{PS[1]} \nAnswer:" in text


def test_langchain_chat_prompt_gives_the_messages_the_chain_sends():
    from langchain_core.prompts import ChatPromptTemplate

    chat = ChatPromptTemplate.from_messages(
        [("system", "Use the following pieces of retrieved context.\n\n{context}"), ("human", "{question}")]
    )
    prompt = LangChainPrompt(chat)
    # What a chain does: format_docs joins page contents by blank lines, then the prompt formats messages.
    sent = chat.format_messages(context="\n\n".join(PS), question=Q)
    assert prompt.messages(Q, PS) == [{"role": "system", "content": sent[0].content}, {"role": "user", "content": Q}]
    assert prompt.render(Q, PS) == f"{sent[0].content}\n\n{Q}"


def test_langchain_string_prompt_and_variable_names():
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.prompts import PromptTemplate as LCPromptTemplate

    text = LCPromptTemplate.from_template("Docs: {docs}\nQuestion: {input}\nAnswer:")
    prompt = LangChainPrompt(text, context_key="docs", question_key="input", passage_separator="\n")
    assert prompt.render(Q, PS) == f"Docs: {PS[0]}\n{PS[1]}\nQuestion: {Q}\nAnswer:"
    assert prompt.messages(Q, PS) == [{"role": "user", "content": prompt.render(Q, PS)}]
    with pytest.raises(ValueError, match="variables are \\['docs', 'input'\\]"):
        LangChainPrompt(text)
    with pytest.raises(ValueError, match="\\['context', 'question'\\]"):
        LangChainPrompt(ChatPromptTemplate.from_messages([("human", "{question} {context} {lang}")]))
    partial = ChatPromptTemplate.from_messages([("human", "{question} {context} in {lang}")]).partial(lang="French")
    assert LangChainPrompt(partial).messages(Q, ["x"])[0]["content"] == f"{Q} x in French"
    with pytest.raises(TypeError, match="LangChain prompt template"):
        LangChainPrompt("{context} {question}")  # type: ignore[arg-type]


def test_llama_index_default_qa_prompts():
    from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT
    from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT

    text = LlamaIndexPrompt(DEFAULT_TEXT_QA_PROMPT)
    assert text.render(Q, PS) == DEFAULT_TEXT_QA_PROMPT.format(context_str="\n\n".join(PS), query_str=Q)
    chat = LlamaIndexPrompt(CHAT_TEXT_QA_PROMPT).messages(Q, PS)
    assert [m["role"] for m in chat] == ["system", "user"] and PS[1] in chat[1]["content"]
    with pytest.raises(ValueError, match="variables are"):
        LlamaIndexPrompt(DEFAULT_TEXT_QA_PROMPT, question_key="question")


def test_framework_readers_take_the_frameworks_own_prompt():
    from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
    from langchain_core.prompts import ChatPromptTemplate
    from llama_index.core.llms import MockLLM
    from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT

    chat = ChatPromptTemplate.from_messages([("system", "Context: {context}"), ("human", "Q: {question}")])
    reader = LangChainReader(ParrotFakeChatModel(), template=chat, cache=False, first_line_only=False)
    assert isinstance(reader.template, LangChainPrompt)
    assert reader.answer(Q, PS) == f"Q: {Q}"  # the parrot echoes the last (human) message
    llm_reader = LlamaIndexReader(MockLLM(), template=DEFAULT_TEXT_QA_PROMPT, cache=False, first_line_only=False)
    assert llm_reader.prompt_text(Q, PS) == DEFAULT_TEXT_QA_PROMPT.format(context_str="\n\n".join(PS), query_str=Q)
    # MockLLM echoes the prompt: the reader sent the query engine's prompt.
    assert llm_reader.answer(Q, PS) == llm_reader.prompt_text(Q, PS)


def test_a_non_prompt_is_refused_with_the_fix():
    from bgm_model.readers import CallableReader

    with pytest.raises(TypeError, match="LangChainPrompt / LlamaIndexPrompt"):
        CallableReader(lambda q, ps: "x", name="c", template="{context} {question}")  # type: ignore[arg-type]


def test_local_reader_renders_a_context_prompt_with_its_chat_template(tiny_reader_factory):
    prompt = ContextPrompt(user="Answer from the context.\n{context}\nQuestion: {question}")
    reader = tiny_reader_factory(template=prompt)
    text = reader.prompt_text(Q, PS)
    assert "<|im_start|>user\nAnswer from the context." in text and "<|im_start|>system" not in text.split("user")[1]
    assert reader.answer(Q, PS) == reader.answer_messages(prompt.messages(Q, PS))
    plain = tiny_reader_factory(template=prompt, use_chat_template=False)
    assert plain.prompt_text(Q, PS) == prompt.render(Q, PS)
