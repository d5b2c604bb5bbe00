"""OpenAIReader against a real llama.cpp server (SmolLM2-135M-Instruct GGUF), compared with the local reader.

The session's ``llama_server`` fixture serves the same GGUF file that ``load_smollm2_reader`` dequantises to
fp32, so the two readers run the same weights: llama.cpp's quantised kernels against torch fp32.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bgm_model.readers import CallCache, PromptTemplate, reader_agreement
from bgm_model.readers.local_server import GREEDY_EXTRA_BODY, LlamaCppServer, free_port
from bgm_model.readers.openai_api import OpenAIReader, ServedReaderError
from tests.conftest import SERVED_ALIAS

pytestmark = pytest.mark.server

MAX_NEW_TOKENS = 16  # the `smollm2` fixture's setting, so both readers decode the same length

# Short prompts (the server's prompt log-probabilities cost ~50 ms a token), with and without passages.
PROMPTS: list[tuple[str, list[str]]] = [
    ("what is the capital of france", ["Paris is the capital and most populous city of France."]),
    ("who wrote hamlet", ["Hamlet is a tragedy written by William Shakespeare."]),
    ("when was the eiffel tower completed", ["The Eiffel Tower was completed in 1889."]),
    ("what is the highest mountain on earth", ["Mount Everest is the highest mountain on Earth."]),
    ("where was shakespeare born", ["Shakespeare was born in Stratford-upon-Avon."]),
    ("which river flows through egypt", ["The Nile is a major river in Africa; it flows through Egypt."]),
    (
        "who painted the mona lisa",
        ["The Mona Lisa was painted by Leonardo da Vinci.", "Paris is the capital of France."],
    ),
    ("what is the capital of germany", []),
]
QUESTIONS = [q for q, _ in PROMPTS]
PASSAGES = [ps for _, ps in PROMPTS]
# (gold, wrong) answers of the first five prompts.
GOLD_WRONG = [
    ("Paris", "Berlin"),
    ("William Shakespeare", "Charles Dickens"),
    ("1889", "1925"),
    ("Mount Everest", "Mont Blanc"),
    ("Stratford-upon-Avon", "London"),
]


class LocalChatText:
    """The local reader's own chat-templated prompt as a reader prompt, so ``/v1/completions`` gets exactly
    the text the local reader tokenises (and, starting with SmolLM2's BOS token ``<|im_start|>``, text
    whose echoed log-probabilities llama-cpp-python aligns correctly)."""

    def __init__(self, local) -> None:
        self.local = local

    def render(self, question: str, passages: Sequence[str]) -> str:
        return self.local.prompt_text(question, passages)

    def messages(self, question: str, passages: Sequence[str]) -> list[dict[str, str]]:
        return self.local.template.messages(question, passages)


def served(server: LlamaCppServer, **kwargs) -> OpenAIReader:
    kwargs.setdefault("cache", False)
    kwargs.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    kwargs.setdefault("extra_body", GREEDY_EXTRA_BODY)
    kwargs.setdefault("timeout", 60.0)
    return OpenAIReader(SERVED_ALIAS, base_url=server.base_url, **kwargs)


@pytest.fixture(scope="module")
def chat8(llama_server, tmp_path_factory) -> OpenAIReader:
    """The chat reader at concurrency 8, with a module-wide cache so its answers are computed once."""
    return served(llama_server, concurrency=8, cache=CallCache(tmp_path_factory.mktemp("chat8")))


@pytest.fixture(scope="module")
def local(smollm2, tmp_path_factory):
    """The fp32 local reader with a module-wide cache (``smollm2`` itself has none)."""
    from bgm_model.readers.hf import HFReader

    return HFReader(
        smollm2.model,
        smollm2.tokenizer,
        name="local-smollm2",
        cache=CallCache(tmp_path_factory.mktemp("local")),
        max_new_tokens=MAX_NEW_TOKENS,
    )


# -- answers -------------------------------------------------------------------------------------------------


def test_chat_and_completions_endpoints_answer_and_count_tokens(llama_server):
    chat = served(llama_server)
    completions = served(llama_server, endpoint="completions", scoring="off")
    (a,) = chat.answer_batch(QUESTIONS[:1], PASSAGES[:1])
    (b,) = completions.answer_batch(QUESTIONS[:1], PASSAGES[:1])
    assert "Paris" in a and "Paris" in b
    assert "\n" not in a and "\n" not in b  # first line only
    for reader in (chat, completions):
        assert reader.stats.computed == 1
        assert reader.stats.prompt_tokens > 10 and reader.stats.generated_tokens > 0


def test_answers_agree_with_the_local_reader(llama_server, chat8, local, capsys):
    # Each comparison starts from a clean server prompt cache (an exact repeat of the previous prompt would
    # take llama.cpp's one-token path; see bgm_model.readers.local_server).
    llama_server.reset_prompt_cache()
    chat = reader_agreement(local, chat8, QUESTIONS, PASSAGES)
    # /v1/completions with the local reader's chat-templated text: the very same prompt tokens.
    same_text = served(llama_server, endpoint="completions", scoring="off", template=LocalChatText(local))
    llama_server.reset_prompt_cache()
    completions = reader_agreement(local, same_text, QUESTIONS, PASSAGES)
    with capsys.disabled():
        print(
            f"\nserved vs local SmolLM2 answer agreement on {len(PROMPTS)} prompts: chat endpoint "
            f"{chat.answer_agreement:.3f} (differing {chat.differing}), completions with the same text "
            f"{completions.answer_agreement:.3f} (differing {completions.differing})"
        )
    # Q4_1 kernels against fp32 may flip a near-tie; most greedy answers must still be identical.
    assert chat.answer_agreement >= 0.75
    assert completions.answer_agreement >= 0.75


def test_concurrency_8_gives_the_answers_of_concurrency_1(llama_server, chat8):
    one = served(llama_server, concurrency=1)
    llama_server.reset_prompt_cache()
    eight = chat8.answer_batch(QUESTIONS, PASSAGES)
    llama_server.reset_prompt_cache()
    assert one.answer_batch(QUESTIONS, PASSAGES) == eight


async def test_async_answers_equal_sync_ones(llama_server, chat8):
    reader = served(llama_server, concurrency=3)
    llama_server.reset_prompt_cache()
    got = await reader.aanswer_batch(QUESTIONS[:3], PASSAGES[:3])
    llama_server.reset_prompt_cache()
    assert got == chat8.answer_batch(QUESTIONS[:3], PASSAGES[:3])


def test_second_call_is_served_from_the_cache(llama_server):
    first = served(llama_server, cache=True)  # $BGM_CACHE_DIR: a per-test directory
    answers = first.answer_batch(QUESTIONS[:2], PASSAGES[:2])
    again = served(llama_server, cache=True)
    assert again.answer_batch(QUESTIONS[:2], PASSAGES[:2]) == answers
    assert again.stats.cache_hits == 2 and again.stats.computed == 0 and again.stats.prompt_tokens == 0
    # Another decoding setting is another cache identity.
    other = served(llama_server, cache=True, max_new_tokens=4)
    assert other.name != again.name
    other.answer_batch(QUESTIONS[:1], PASSAGES[:1])
    assert other.stats.cache_hits == 0 and other.stats.computed == 1


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_langchain_chain_over_the_reader_shares_its_cache(llama_server, endpoint):
    # The demo's chain: the reader's own messages -> ReaderChatModel -> the served model, through the cache.
    from langchain_core.messages import convert_to_messages

    from bgm_integrations.langchain.chat_model import ReaderChatModel

    reader = served(llama_server, cache=True, endpoint=endpoint)
    chain_answer = ReaderChatModel(reader=reader).invoke(
        convert_to_messages(reader.template.messages(QUESTIONS[0], PASSAGES[0]))
    ).content
    assert chain_answer and reader.stats.computed == 1
    assert reader.answer(QUESTIONS[0], PASSAGES[0]) == chain_answer
    assert reader.stats.cache_hits == 1 and reader.stats.computed == 1  # the chain's call, not a second one
    with pytest.raises(ValueError, match="role"):
        reader.answer_messages([{"text": "hi"}])


# -- scoring -------------------------------------------------------------------------------------------------


def test_scores_rank_gold_and_wrong_answers_like_the_local_reader(llama_server, smollm2, capsys):
    from bgm_model.readers.hf import HFReader

    # A short system text: the server's echoed log-probabilities cost ~50 ms per prompt token.
    short = PromptTemplate(system="Answer in a few words.")
    local = HFReader(smollm2.model, smollm2.tokenizer, name="local", template=short, cache=False)
    reader = served(llama_server, endpoint="completions", template=LocalChatText(local), cache=True)
    assert reader.supports_scoring  # the probe found aligned prompt log-probabilities
    n = len(GOLD_WRONG)
    qs, ps = QUESTIONS[:n] * 2, PASSAGES[:n] * 2
    answers = [g for g, _ in GOLD_WRONG] + [w for _, w in GOLD_WRONG]
    remote = reader.score_batch(qs, ps, answers)
    reference = local.score_batch(qs, ps, answers)
    assert all(math.isfinite(s) and s < 0 for s in remote)
    same_order = sum((remote[i] > remote[i + n]) == (reference[i] > reference[i + n]) for i in range(n))
    diffs = [abs(a - b) for a, b in zip(remote, reference, strict=True)]
    with capsys.disabled():
        print(
            f"\nserved vs local scores of {len(answers)} answers: gold/wrong ranked alike on "
            f"{same_order}/{n} "
            f"prompts; |diff| max {max(diffs):.3f} mean {sum(diffs) / len(diffs):.3f}; "
            f"served {[round(s, 2) for s in remote]} local {[round(s, 2) for s in reference]}"
        )
    assert same_order >= n - 1
    assert max(diffs) < 1.0  # same weights: only quantised kernels against fp32 differ
    # Silver search's combined call: the score is cached, only the greedy answer is computed.
    computed = reader.stats.computed
    (answer,), ((score,),) = reader.answer_and_score_batch(QUESTIONS[:1], PASSAGES[:1], [["Paris"]])
    assert score == remote[0] and "Paris" in answer and reader.stats.computed == computed + 1


def test_misaligned_prompt_logprobs_are_not_used_as_scores(llama_server, caplog):
    # The default plain-text prompt has no BOS token; llama-cpp-python 0.3.x then reports each echoed
    # log-probability one token late. The probe must see that, rather than score with wrong numbers.
    plain = served(llama_server, endpoint="completions")
    with caplog.at_level(logging.WARNING, logger="bgm_model.readers.openai_api"):
        assert plain.supports_scoring is False
    assert "shifted by one token" in caplog.text
    with pytest.raises(NotImplementedError):
        plain.score_batch(QUESTIONS[:1], PASSAGES[:1], ["Paris"])
    with pytest.raises(ServedReaderError, match=r"scoring='on'.*/v1/completions.*shifted"):
        served(llama_server, endpoint="completions", scoring="on")


def test_the_chat_endpoint_never_scores(llama_server):
    chat = served(llama_server)
    assert chat.supports_scoring is False
    with pytest.raises(NotImplementedError):
        chat.score_batch(QUESTIONS[:1], PASSAGES[:1], ["Paris"])
    with pytest.raises(ValueError, match="endpoint='completions'"):
        served(llama_server, scoring="on")
    assert served(llama_server, endpoint="completions", scoring="off").supports_scoring is False


# -- failures ------------------------------------------------------------------------------------------------


def test_an_unreachable_server_fails_fast_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ServedReaderError, match=f"{url}/models.*server running"):
        OpenAIReader(SERVED_ALIAS, base_url=url, cache=False)
    assert time.monotonic() - start < 10
    lazy = OpenAIReader(SERVED_ALIAS, base_url=url, cache=False, check_server=False, max_retries=0)
    with pytest.raises(ServedReaderError, match=f"{url}/chat/completions.*still running"):
        lazy.answer_batch(QUESTIONS[:1], PASSAGES[:1])
    assert time.monotonic() - start < 10


def test_a_server_killed_mid_batch_raises_and_keeps_what_finished(llama_server, tmp_path):
    # A private server of the same model (the session's one must survive).
    server = LlamaCppServer(
        llama_server.model_path, alias=SERVED_ALIAS, n_ctx=512, n_threads=1, logits_all=False
    )
    server.start()
    cache = CallCache(tmp_path / "cache")
    try:
        reader = served(server, concurrency=1, max_retries=1, timeout=20.0, cache=cache)
        killed = threading.Event()

        def kill_after_first_answer() -> None:
            deadline = time.monotonic() + 60
            while reader.stats.generated_tokens == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.kill()
            killed.set()

        killer = threading.Thread(target=kill_after_first_answer, daemon=True)
        killer.start()
        with pytest.raises(ServedReaderError, match=server.base_url) as info:
            reader.answer_batch(QUESTIONS, PASSAGES)
        killer.join(timeout=70)
        assert killed.is_set()
        finished = reader.stats.computed
        assert 1 <= finished < len(PROMPTS)
        assert f"{finished} of the batch's {len(PROMPTS)} calls had finished" in str(info.value)

        server.start()  # the same port, so the same base URL and cache identity
        rerun = served(server, concurrency=1, cache=cache)
        assert rerun.name == reader.name
        answers = rerun.answer_batch(QUESTIONS, PASSAGES)
        assert rerun.stats.cache_hits == finished
        assert rerun.stats.computed == len(PROMPTS) - finished
        assert all(isinstance(a, str) for a in answers)
    finally:
        server.stop()


class FaultProxy:
    """A local HTTP proxy that answers the first ``failures`` POSTs with 503 / 429 (alternating), then
    forwards every request to ``upstream``; counts what it did and the most POSTs it held at once."""

    def __init__(self, upstream: str, failures: int) -> None:
        self.upstream = upstream.removesuffix("/v1")
        self.failures = failures
        self.faults = 0
        self.forwarded = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _forward(self, body: bytes | None) -> None:
                request = urllib.request.Request(
                    proxy.upstream + self.path,
                    data=body,
                    method=self.command,
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as e:
                    status, payload = e.code, e.read()
                with proxy._lock:
                    proxy.forwarded += 1
                self._send(status, payload)

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                with proxy._lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    self._post()
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            def _post(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    fault = proxy.faults < proxy.failures
                    if fault:
                        proxy.faults += 1
                        status = 503 if proxy.faults % 2 else 429
                if fault:
                    error = json.dumps({"error": {"message": f"injected {status}"}}).encode()
                    # A short server-directed delay keeps the client's backoff (0.5 s, 1 s, ...) out of
                    # the test.
                    self._send(status, error, {"retry-after-ms": "20"})
                else:
                    self._forward(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def fault_proxy(llama_server) -> Callable[[int], FaultProxy]:
    """A :class:`FaultProxy` in front of the session's server, injecting that many failures."""
    return lambda failures: FaultProxy(llama_server.base_url, failures)


async def test_no_more_than_concurrency_calls_are_in_flight(fault_proxy):
    with fault_proxy(0) as proxy:
        reader = OpenAIReader(
            SERVED_ALIAS, base_url=proxy.base_url, cache=False, concurrency=2, max_new_tokens=4
        )
        # llama.cpp serves one request at a time, so the others wait in the proxy: the reader's bound shows.
        assert len(reader.answer_batch(QUESTIONS[:4], PASSAGES[:4])) == 4
        assert proxy.max_in_flight == 2
        proxy.max_in_flight = 0
        assert len(await reader.aanswer_batch(QUESTIONS[4:], PASSAGES[4:])) == 4
        assert proxy.max_in_flight == 2
    assert proxy.forwarded == 1 + 8  # GET /models, then one POST per call


def test_rate_limits_and_server_errors_are_retried(fault_proxy, caplog):
    with fault_proxy(3) as proxy, caplog.at_level(logging.INFO, logger="openai"):
        reader = OpenAIReader(
            SERVED_ALIAS, base_url=proxy.base_url, cache=False, max_retries=4, extra_body=GREEDY_EXTRA_BODY
        )
        (answer,) = reader.answer_batch(QUESTIONS[:1], PASSAGES[:1])
    assert "Paris" in answer
    assert proxy.faults == 3 and proxy.forwarded == 2  # GET /models, then the 4th POST
    assert caplog.text.count("Retrying request to /chat/completions") == 3


def test_more_failures_than_retries_raise_a_clear_error(fault_proxy):
    with fault_proxy(10) as proxy:
        reader = OpenAIReader(SERVED_ALIAS, base_url=proxy.base_url, cache=False, max_retries=2)
        with pytest.raises(ServedReaderError, match=rf"{proxy.base_url}/chat/completions.*after 2 retries"):
            reader.answer_batch(QUESTIONS[:1], PASSAGES[:1])
    assert proxy.faults == 3 and proxy.forwarded == 1  # 1 try + 2 retries; the GET /models went through


def test_bad_arguments_are_rejected_before_any_call():
    with pytest.raises(ValueError, match="endpoint"):
        OpenAIReader(SERVED_ALIAS, endpoint="responses", check_server=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        OpenAIReader(SERVED_ALIAS, concurrency=0, check_server=False)
    with pytest.raises(TypeError, match="stop"):
        OpenAIReader(SERVED_ALIAS, stop="\n", check_server=False)
    with pytest.warns(UserWarning, match="cached"):
        OpenAIReader(SERVED_ALIAS, temperature=0.7, check_server=False)


def test_async_batch_of_a_dead_server_raises():
    url = f"http://127.0.0.1:{free_port()}/v1"
    reader = OpenAIReader(SERVED_ALIAS, base_url=url, cache=False, check_server=False, max_retries=0)
    with pytest.raises(ServedReaderError, match=url):
        asyncio.run(reader.aanswer_batch(QUESTIONS[:2], PASSAGES[:2]))


def test_a_model_the_server_does_not_list_warns(llama_server):
    with pytest.warns(UserWarning, match=r"'no-such-model' is not among the models served.*smollm2"):
        OpenAIReader("no-such-model", base_url=llama_server.base_url, cache=False)


def test_a_server_that_cannot_start_says_why(llama_server, tmp_path):
    from bgm_model.readers.local_server import ServerStartError

    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a gguf file")
    server = LlamaCppServer(bogus, startup_timeout=60)
    with pytest.raises(ServerStartError, match=r"exited with code .* valid GGUF"):
        server.start()
    assert not server.running
