"""Small real pipelines for the trace tests: a LangChain LCEL RAG chain and a LlamaIndex query engine."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from tests._helpers import SAMPLE_TEXTS

TEXTS = SAMPLE_TEXTS
ANSWER = "William Shakespeare"
PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer from the context."), ("human", "Context:\n{context}\n\nQuestion: {question}")]
)


def format_docs(docs: Sequence[Document]) -> str:
    return "\n".join(d.page_content for d in docs)


def make_rag_chain(retriever: BaseRetriever, answer: str = ANSWER) -> Runnable:
    """The usual LCEL RAG chain: retrieve -> prompt -> chat model -> string."""
    llm = FakeListChatModel(responses=[answer])
    return (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | PROMPT
        | llm
        | StrOutputParser()
    )


@pytest.fixture()
def vector_store() -> InMemoryVectorStore:
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents(
        [Document(page_content=t, metadata={"source": f"doc{i}"}, id=f"doc{i}") for i, t in enumerate(TEXTS)]
    )
    return store


@pytest.fixture()
def retriever(vector_store: InMemoryVectorStore) -> BaseRetriever:
    return vector_store.as_retriever(search_kwargs={"k": 4})


@pytest.fixture()
def rag_chain(retriever: BaseRetriever) -> Runnable:
    return make_rag_chain(retriever)


@pytest.fixture()
def li_index():
    from llama_index.core import Document as LIDocument
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    return VectorStoreIndex.from_documents(
        [LIDocument(text=t, id_=f"doc{i}") for i, t in enumerate(TEXTS)],
        embed_model=MockEmbedding(embed_dim=8),
    )


@pytest.fixture()
def li_llm():
    from llama_index.core.llms import MockLLM

    return MockLLM(max_tokens=4)
