"""LangChain, LlamaIndex and plain-callable readers: prompts reach the model, calls run concurrently, and
every call goes through the persistent cache."""

from __future__ import annotations

import threading
import time

import pytest

from bgm_integrations.langchain import LangChainReader
from bgm_integrations.llama_index import LlamaIndexReader
from bgm_model.readers import CallableReader, PromptTemplate

Q = "who wrote hamlet"
PS = ["Hamlet is a tragedy by William Shakespeare.", "Macbeth is another of his plays."]


def test_langchain_chat_model_gets_system_and_user_messages():
    from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel

    # The parrot echoes the last (user) message back.
    reader = LangChainReader(ParrotFakeChatModel(), first_line_only=False)
    out = reader.answer(Q, PS)
    assert out == reader.template.user_message(Q, PS).strip()
    assert reader.input_kind == "messages"


def test_langchain_answers_are_cleaned_and_cached(tmp_path):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    model = FakeListChatModel(responses=["  William Shakespeare\nBecause passage 1 says so."])
    reader = LangChainReader(model, cache=tmp_path)
    assert reader.answer(Q, PS) == "William Shakespeare"
    again = LangChainReader(FakeListChatModel(responses=["something else"]), cache=tmp_path)
    assert again.answer(Q, PS) == "William Shakespeare"  # same name, same prompt: from the cache
    assert again.stats.cache_hits == 1 and again.stats.computed == 0


def test_langchain_llm_gets_the_rendered_prompt():
    from langchain_core.language_models.fake import FakeListLLM

    reader = LangChainReader(FakeListLLM(responses=["Shakespeare"]), cache=False)
    assert reader.input_kind == "text"
    assert reader.prompt_text(Q, PS) == PromptTemplate().render(Q, PS)
    assert reader.answer_batch([Q, Q + "?"], [PS, PS[:1]]) == ["Shakespeare", "Shakespeare"]


def test_langchain_batch_runs_concurrently():
    from langchain_core.language_models.chat_models import SimpleChatModel

    # FakeListChatModel overrides batch() to be sequential, so use the base class's own batch machinery.
    class SlowChat(SimpleChatModel):
        active: int = 0
        peak: int = 0

        @property
        def _llm_type(self) -> str:
            return "slow-chat"

        def _call(self, messages, stop=None, run_manager=None, **kwargs):
            with lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            time.sleep(0.1)
            with lock:
                self.active -= 1
            return "x"

    lock = threading.Lock()
    model = SlowChat()
    reader = LangChainReader(model, max_concurrency=4, cache=False)
    assert reader.answer_batch([f"{Q} {i}" for i in range(8)], [PS] * 8) == ["x"] * 8
    assert model.peak == 4


async def test_langchain_async_path_uses_the_cache(tmp_path):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    reader = LangChainReader(FakeListChatModel(responses=["Shakespeare"]), cache=tmp_path)
    assert await reader.aanswer_batch([Q, Q], [PS, PS]) == ["Shakespeare", "Shakespeare"]
    assert reader.stats.computed == 1
    assert reader.answer(Q, PS) == "Shakespeare" and reader.stats.cache_hits == 1


def test_langchain_rejects_non_runnables():
    with pytest.raises(TypeError, match="LangChain runnable"):
        LangChainReader(lambda x: x)


def test_llama_index_complete_and_chat_send_the_prompt():
    from llama_index.core.llms import MockLLM

    # MockLLM without max_tokens echoes its prompt.
    complete = LlamaIndexReader(MockLLM(), cache=False, first_line_only=False)
    assert complete.answer(Q, PS) == PromptTemplate().render(Q, PS).strip()
    chat = LlamaIndexReader(MockLLM(is_chat_model=True), cache=False, first_line_only=False)
    assert chat.use_chat
    echoed = chat.answer(Q, PS)
    assert chat.template.system in echoed and PS[1] in echoed
    assert echoed.index(chat.template.system) < echoed.index(PS[0]) < echoed.index(PS[1])


async def test_llama_index_async_and_sync_agree(tmp_path):
    from llama_index.core.llms import MockLLM

    reader = LlamaIndexReader(MockLLM(max_tokens=2), cache=tmp_path, max_concurrency=2)
    got = await reader.aanswer_batch([Q, "q2", "q3"], [PS, PS, []])
    assert got == ["text text"] * 3
    assert reader.answer_batch([Q, "q2", "q3"], [PS, PS, []]) == got
    assert reader.stats.cache_hits == 3


def test_llama_index_rejects_other_objects():
    with pytest.raises(TypeError, match="llama_index.core.llms.LLM"):
        LlamaIndexReader(object())


def test_callable_reader_both_signatures_and_concurrency():
    def by_passages(question, passages):
        return f"{len(passages)} passages for {question}"

    reader = CallableReader(by_passages, cache=False)
    assert reader.mode == "passages"
    assert reader.answer_batch([Q, "x"], [PS, []]) == [f"2 passages for {Q}", "0 passages for x"]

    seen: list[str] = []
    by_prompt = CallableReader(lambda prompt: seen.append(prompt) or "ok", cache=False)
    assert by_prompt.mode == "prompt" and by_prompt.answer(Q, PS) == "ok"
    assert seen == [PromptTemplate().render(Q, PS)]

    active, peak, lock = [0], [0], threading.Lock()

    def slow(question, passages):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return question

    CallableReader(slow, max_concurrency=4, cache=False).answer_batch([str(i) for i in range(8)], [[]] * 8)
    assert peak[0] > 1


def test_callable_reader_errors():
    with pytest.raises(ValueError, match="mode='passages'"):
        CallableReader(lambda a, b, c: "x")
    with pytest.raises(TypeError, match="returned int"):
        CallableReader(lambda prompt: 3, cache=False).answer(Q, PS)
    reader = CallableReader(lambda prompt: "x", cache=False)
    assert not reader.supports_scoring
    with pytest.raises(NotImplementedError, match="cannot score"):
        reader.score_batch([Q], [PS], ["x"])


@pytest.mark.parametrize(
    ("questions", "passages", "named"),
    [(["bad \ud800"], [["ok"]], r"questions\[0\]"), (["q"], [["ok", "bad \udc00"]], r"passage_lists\[0\]\[1\]")],
)
def test_a_lone_surrogate_reaching_a_reader_names_the_argument(questions, passages, named):
    calls = []
    reader = CallableReader(lambda question, passages: calls.append(question) or "ok", cache=False)
    with pytest.raises(ValueError, match=f"{named} is not valid Unicode text"):
        reader.answer_batch(questions, passages)
    assert calls == [], "checked before the LLM is called"
