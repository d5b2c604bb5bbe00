"""LangChain's ChatOpenAI against a real llama.cpp server: a traced RAG chain with the bridge compressor, and
LangChainReader answering through the same server."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_openai")

from langchain_classic.retrievers import ContextualCompressionRetriever  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnablePassthrough  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402

from bgm_integrations.langchain import (  # noqa: E402
    BGMDocumentCompressor,
    BGMTraceCallbackHandler,
    LangChainPrompt,
    LangChainReader,
)
from bgm_model.readers import clean_answer  # noqa: E402
from bgm_model.readers.local_server import GREEDY_EXTRA_BODY  # noqa: E402
from bgm_model.traces import read_traces  # noqa: E402
from tests._helpers import FixedBridge  # noqa: E402
from tests.conftest import SERVED_ALIAS  # noqa: E402

pytestmark = pytest.mark.server

QUERY = "what is the capital of france?"
PARIS = "Paris is the capital and most populous city of France."
TEXTS = [
    "Hamlet is a tragedy written by William Shakespeare.",
    PARIS,
    "The Eiffel Tower was completed in 1889.",
    "The Nile is a major river in Africa.",
]
PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer in a few words from the context."),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ]
)


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in docs)


@pytest.fixture
def chat_model(llama_server) -> ChatOpenAI:
    return ChatOpenAI(
        model=SERVED_ALIAS,
        base_url=llama_server.base_url,
        api_key="unused",
        temperature=0,
        max_tokens=16,
        timeout=60,
        max_retries=1,
        extra_body=GREEDY_EXTRA_BODY,  # plain greedy decoding on llama-cpp-python
    )


def test_traced_rag_chain_with_the_bridge_answers_through_the_server(tmp_path, llama_server, chat_model):
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(page_content=t, id=f"doc{i}") for i, t in enumerate(TEXTS)])
    base = store.as_retriever(search_kwargs={"k": len(TEXTS)})
    retrieved = base.invoke(QUERY)
    paris = [d.page_content for d in retrieved].index(PARIS)
    retriever = ContextualCompressionRetriever(
        base_compressor=BGMDocumentCompressor(bridge=FixedBridge([paris])), base_retriever=base
    )
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | chat_model
        | StrOutputParser()
    )
    path = tmp_path / "traces.jsonl"
    tracer = BGMTraceCallbackHandler(path)
    answer = chain.invoke(QUERY, config={"callbacks": [tracer]})
    assert "Paris" in answer

    (record,) = read_traces(path)
    assert record.query == QUERY
    assert [p.content for p in record.passages] == [d.page_content for d in retrieved]  # retriever order
    assert record.bridge is not None and record.bridge.source_indices == [paris]
    assert [p.content for p in record.bridge_passages()] == [PARIS]
    assert record.llm is not None and record.llm.answer == answer
    assert record.llm.model == SERVED_ALIAS
    assert PARIS in record.llm.messages[-1].content and QUERY in record.llm.messages[-1].content

    # The reader with the chain's own prompt sends the same messages, so it gets the same reply (from a
    # clean server prompt cache: an exact repeat of the previous prompt would take llama.cpp's one-token
    # path; see bgm_model.readers.local_server).
    reader = LangChainReader(chat_model, template=LangChainPrompt(PROMPT), cache=False)
    llama_server.reset_prompt_cache()
    assert reader.answer(QUERY, [PARIS]) == clean_answer(answer)


async def test_langchain_reader_answers_a_batch_through_the_server(llama_server, chat_model):
    reader = LangChainReader(chat_model, max_concurrency=2, cache=False)
    questions = [QUERY, "who wrote hamlet?"]
    passages = [[PARIS], [TEXTS[0]]]
    llama_server.reset_prompt_cache()
    answers = reader.answer_batch(questions, passages)
    assert "Paris" in answers[0] and "Shakespeare" in answers[1]
    llama_server.reset_prompt_cache()
    assert await reader.aanswer_batch(questions, passages) == answers
