"""LlamaIndex's OpenAILike LLM against a real llama.cpp server, as the reader."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.llms.openai_like")

from llama_index.llms.openai_like import OpenAILike  # noqa: E402

from bgm_integrations.llama_index import LlamaIndexReader  # noqa: E402
from bgm_model.readers import OpenAIReader  # noqa: E402
from bgm_model.readers.local_server import GREEDY_EXTRA_BODY  # noqa: E402
from tests.conftest import SERVED_ALIAS  # noqa: E402

pytestmark = pytest.mark.server

QUESTIONS = ["what is the capital of france?", "who wrote hamlet?"]
PASSAGES = [
    ["Paris is the capital and most populous city of France."],
    ["Hamlet is a tragedy written by William Shakespeare."],
]


@pytest.fixture
def llm(llama_server) -> OpenAILike:
    return OpenAILike(
        model=SERVED_ALIAS,
        api_base=llama_server.base_url,
        api_key="unused",
        is_chat_model=True,
        temperature=0,
        max_tokens=16,
        timeout=60,
        max_retries=1,
        additional_kwargs={"extra_body": GREEDY_EXTRA_BODY},  # plain greedy decoding on llama-cpp-python
    )


async def test_llama_index_reader_answers_through_the_server(llama_server, llm):
    reader = LlamaIndexReader(llm, max_concurrency=2, cache=False)
    assert reader.use_chat
    # Each batch starts from a clean server prompt cache (an exact repeat of the previous prompt would take
    # llama.cpp's one-token path; see bgm_model.readers.local_server).
    llama_server.reset_prompt_cache()
    answers = reader.answer_batch(QUESTIONS, PASSAGES)
    assert "Paris" in answers[0] and "Shakespeare" in answers[1]
    llama_server.reset_prompt_cache()
    assert await reader.aanswer_batch(QUESTIONS, PASSAGES) == answers
    # The same messages and decoding through the project's own client give the same answers.
    direct = OpenAIReader(
        SERVED_ALIAS,
        base_url=llama_server.base_url,
        max_new_tokens=16,
        extra_body=GREEDY_EXTRA_BODY,
        cache=False,
    )
    llama_server.reset_prompt_cache()
    assert direct.answer_batch(QUESTIONS, PASSAGES) == answers
