"""A reader served behind an OpenAI-compatible API: vLLM, llama.cpp's server, Ollama, TGI or a hosted API.

Calls go through the official ``openai`` client (``pip install 'bgm-bridge[openai]'``), which also does the
retrying: 429, 408/409, 5xx, timeouts and dropped connections are retried ``max_retries`` times with
exponential backoff (0.5 s doubling to 8 s, with jitter, or the server's ``Retry-After``), each retry logged
at INFO by the ``openai._base_client`` logger. A batch runs with at most ``concurrency`` calls in flight.

Answers come from ``/v1/chat/completions`` (the template's messages; the server applies the model's chat
template) or ``/v1/completions`` (the template's rendered text, sent as is). Scores (mean log-likelihood
of an answer's tokens, used by silver-sequence search) need the prompt's log-probabilities, which only
``/v1/completions`` with ``echo`` can return; see :class:`OpenAIReader`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, Literal, TypeVar

from bgm_model.readers.base import CacheSpec, Reader, clean_answer
from bgm_model.readers.call_cache import call_key
from bgm_model.readers.templates import ReaderPrompt

logger = logging.getLogger(__name__)

__all__ = ["OpenAIReader", "ServedReaderError"]

_INSTALL = "pip install 'bgm-bridge[openai]'"
#: Sent when no key is given or set: local servers (llama.cpp, vLLM, Ollama) accept any key.
PLACEHOLDER_API_KEY = "not-needed"
# The constructor's reachability check must not hang on a dead host, however long ``timeout`` is.
_CHECK_CONNECT_TIMEOUT = 5.0
# A fixed probe for prompt log-probabilities: the same prompt followed by two different answers.
_PROBE_QUESTION = "What is the capital of France?"
_PROBE_PASSAGES = ("Paris is the capital and largest city of France.",)
_PROBE_ANSWERS = (" Paris", " London")
_PROBE_TOP = 5
_PROBE_TOLERANCE = 1e-3

T = TypeVar("T")


class ServedReaderError(RuntimeError):
    """A call to the served reader failed (after the client's retries); the message names the endpoint."""


class _BatchFailed(ServedReaderError):
    """A batch stopped at a failed call; ``done`` maps the positions of the calls that finished to results."""

    def __init__(self, message: str, done: dict[int, Any]) -> None:
        super().__init__(message)
        self.done = done


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as e:
        raise ImportError(f"the OpenAI-compatible reader needs the `openai` client: {_INSTALL}") from e
    return openai


class OpenAIReader(Reader):
    """A model behind an OpenAI-compatible server as the frozen reader.

    Args:
        model: the model name the server knows (e.g. llama.cpp's ``--model_alias``, vLLM's served name).
        base_url: the API root, ending in ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``); default: the
            client's (``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``).
        api_key: the key; default ``$OPENAI_API_KEY``, else a placeholder that local servers accept.
        endpoint: ``"chat"`` (``/chat/completions``, the template's ``messages``) or ``"completions"``
            (``/completions``, the template's ``render`` text, for base models and for scoring).
        concurrency: calls in flight at once within a batch (results keep input order either way).
        timeout: seconds per HTTP request before it counts as failed (and is retried).
        max_retries: retries of a failed request (429, 5xx, timeout, connection error) before the
            batch raises :class:`ServedReaderError`.
        max_new_tokens: ``max_tokens`` of each answer.
        temperature: 0 for greedy answers. Answers are cached by prompt, so with sampling the first
            sampled answer is the one that sticks (a warning says so).
        scoring: ``"auto"`` probes the server once, on first use of :attr:`supports_scoring`, and scores if
            it returns correct prompt log-probabilities; ``"on"`` raises if it does not; ``"off"`` never
            scores. Only ``endpoint="completions"`` can score (a chat prompt is rendered by the server's
            chat template, which the client cannot see): with ``"chat"`` :attr:`supports_scoring` is
            ``False`` and silver-sequence search falls back to token F1.
        check_server: list the server's models in the constructor, so a wrong ``base_url`` or a server
            that is down fails at once (within ~5 s) instead of mid-batch; warns if ``model`` is not served.
        extra_body: extra JSON fields sent with every request, for server-specific settings; part of the
            cache identity. llama-cpp-python's server applies ``repeat_penalty=1.1`` unless told
            otherwise, even at temperature 0: pass ``{"repeat_penalty": 1.0}`` for plain greedy decoding.
        name: cache identity; default: model, base URL, endpoint and every decoding setting.
        template: how prompts are laid out (only ``render`` and ``messages`` are used).
        cache: see :class:`~bgm_model.readers.base.Reader`.
        stop: stop sequences sent to the server; part of the cache identity. None by default: the reply's
            first line is cut client-side (``first_line_only``), because a server-side stop at ``"\\n"``
            turns a reply that starts with a blank line into an empty answer (SmolLM2 on a plain
            completion prompt does that); pass ``["\\n"]`` to save decoding where the model never does.
        first_line_only: keep the reply's first non-empty line (as the local readers do).

    Scoring: the prompt (``template.render``) immediately followed by the answer is sent to ``/completions``
    with ``echo=True, logprobs=...`` and ``max_tokens=1``; the answer's tokens are those starting at or
    after the prompt's last character (``text_offset``), plus a token that straddles the boundary when the
    server's tokenizer merges the prompt's last characters with the answer's first ones. The probe checks
    that the returned log-probabilities are those of each token given the text *before* it: llama-cpp-python
    (0.3.x) shifts them by one token unless the prompt starts with the model's BOS token, so a template
    whose text does not start with it cannot be scored there.

    A batch that fails part-way raises :class:`ServedReaderError`; the calls of that batch that had already
    finished are stored in the cache first, so a rerun computes only the rest.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        endpoint: Literal["chat", "completions"] = "chat",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        max_new_tokens: int = 24,
        temperature: float = 0.0,
        scoring: Literal["auto", "on", "off"] = "auto",
        check_server: bool = True,
        stop: Sequence[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        name: str | None = None,
        template: ReaderPrompt | None = None,
        cache: CacheSpec = True,
        first_line_only: bool = True,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError("model must be the non-empty name of a model the server serves")
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {endpoint!r}")
        if scoring not in ("auto", "on", "off"):
            raise ValueError(f"scoring must be 'auto', 'on' or 'off', got {scoring!r}")
        if scoring == "on" and endpoint == "chat":
            raise ValueError(
                "scoring='on' needs endpoint='completions': the chat endpoint's prompt is rendered by the "
                "server's chat template, so the client cannot score answers after it"
            )
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature > 0:
            warnings.warn(
                f"OpenAIReader(temperature={temperature}) samples, but answers are cached by prompt: the "
                "first sampled answer of each prompt is the one every later call gets. Use 0 for greedy.",
                stacklevel=2,
            )
        openai = _import_openai()
        self._openai = openai
        self.model = model
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.scoring = scoring
        self.extra_body: dict[str, Any] = dict(extra_body or {})
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_API_KEY
        self._client = openai.OpenAI(
            base_url=base_url, api_key=self._api_key, timeout=self.timeout, max_retries=max_retries
        )
        self.base_url = str(self._client.base_url).rstrip("/")
        if isinstance(stop, str):
            raise TypeError("stop must be a list of strings, e.g. ['\\n'], not a single string")
        self.stop: list[str] | None = list(stop) if stop else None
        if name is None:
            decoding = {
                "max_tokens": max_new_tokens,
                "temperature": self.temperature,
                "stop": self.stop,
                "first_line_only": first_line_only,
                "extra_body": self.extra_body,
            }
            name = f"openai:{endpoint}:{model}@{self.base_url}|{json.dumps(decoding, sort_keys=True)}"
        super().__init__(name, template, cache=cache, first_line_only=first_line_only)
        self._stats_lock = threading.Lock()
        self._scoring_checked: bool | None = (
            None if scoring == "auto" and endpoint == "completions" else False
        )
        if endpoint == "chat" and scoring == "auto":
            logger.info(
                "%s: the chat endpoint cannot score answers; silver-sequence search will use token F1 "
                "(use endpoint='completions' to score)",
                self.base_url,
            )
        if check_server:
            self._check_server()
        if scoring == "on":
            reason = self._probe_scoring()
            if reason is not None:
                raise ServedReaderError(
                    f"scoring='on' but {self._url('/completions')} cannot score: {reason}"
                )
            self._scoring_checked = True

    def __repr__(self) -> str:
        return (
            f"OpenAIReader(model={self.model!r}, base_url={self.base_url!r}, endpoint={self.endpoint!r}, "
            f"cache={self.cache!r})"
        )

    def close(self) -> None:
        """Close the HTTP connections of the client."""
        self._client.close()

    # -- prompts ---------------------------------------------------------------------------------------------

    def prompt_text(self, question: str, passages: Sequence[str]) -> str:
        if self.endpoint == "chat":
            return json.dumps(self.template.messages(question, passages), ensure_ascii=False)
        return self.template.render(question, passages)

    def _url(self, route: str) -> str:
        return f"{self.base_url}{route}"

    @property
    def _route(self) -> str:
        return "/chat/completions" if self.endpoint == "chat" else "/completions"

    # -- server checks ---------------------------------------------------------------------------------------

    def _check_server(self) -> None:
        openai = self._openai
        import httpx  # a dependency of openai

        client = self._client.with_options(
            timeout=httpx.Timeout(min(self.timeout, 30.0), connect=_CHECK_CONNECT_TIMEOUT), max_retries=0
        )
        try:
            served = [m.id for m in client.models.list()]
        except openai.APIConnectionError as e:  # includes timeouts
            raise ServedReaderError(
                f"cannot reach the reader server at {self._url('/models')} ({e}): is the server running, "
                "and does base_url point at its API root (usually ending in /v1)? "
                "Pass check_server=False to skip this check."
            ) from e
        except openai.AuthenticationError as e:
            raise ServedReaderError(
                f"{self._url('/models')} rejected the API key: pass api_key= or set OPENAI_API_KEY"
            ) from e
        except openai.APIStatusError as e:
            raise ServedReaderError(
                f"{self._url('/models')} answered HTTP {e.status_code} ({_message(e)}): does base_url point "
                "at an OpenAI-compatible API root (usually ending in /v1)? Pass check_server=False to skip "
                "this check."
            ) from e
        if served and self.model not in served:
            warnings.warn(
                f"model {self.model!r} is not among the models served at {self.base_url} "
                f"({', '.join(served)}); some servers answer with their default model, others fail each call",
                stacklevel=3,
            )

    @property
    def supports_scoring(self) -> bool:
        """Whether :meth:`score_batch` is available: ``scoring`` allows it, the endpoint is ``completions``
        and (for ``"auto"``) the one-time probe found correct prompt log-probabilities."""
        if self._scoring_checked is None:
            reason = self._probe_scoring()
            self._scoring_checked = reason is None
            if reason is None:
                logger.info(
                    "%s returns prompt log-probabilities: answers will be scored", self._url("/completions")
                )
            else:
                logger.warning(
                    "%s cannot score answers (%s); silver-sequence search will use token F1",
                    self._url("/completions"),
                    reason,
                )
        return self._scoring_checked

    def _probe_scoring(self) -> str | None:
        """Why the server cannot score (``None`` if it can).

        The same prompt is sent with two different answers. The log-probabilities reported at the answer's
        first token must be the distribution given the prompt alone, identical for both answers; a server
        that reports them one token late (given the answer token itself) gives two different ones.
        """
        openai = self._openai
        prompt = self.template.render(_PROBE_QUESTION, list(_PROBE_PASSAGES))
        tops = []
        for answer in _PROBE_ANSWERS:
            try:
                logprobs, span = self._echo(prompt + answer, answer, top=_PROBE_TOP)
            except (openai.BadRequestError, openai.UnprocessableEntityError, openai.NotFoundError) as e:
                return (
                    f"it rejects /completions with echo=True and logprobs (HTTP {e.status_code}: "
                    f"{_message(e)})"
                )
            except openai.APIError as e:  # unreachable, overloaded, wrong key: not a missing feature
                raise self._error(e, "/completions") from e
            if logprobs is None or not logprobs.token_logprobs or not logprobs.text_offset:
                return "it returns no prompt log-probabilities with echo=True"
            if not span or not logprobs.top_logprobs or logprobs.top_logprobs[span[0]] is None:
                return "its prompt log-probabilities do not cover the answer tokens"
            tops.append(logprobs.top_logprobs[span[0]])
        a, b = (sorted(t.values(), reverse=True)[:_PROBE_TOP] for t in tops)
        if len(a) != len(b) or any(abs(x - y) > _PROBE_TOLERANCE for x, y in zip(a, b)):
            return (
                "its echoed log-probabilities are shifted by one token (each is given the token itself, "
                "not the text before it; llama-cpp-python does this unless the prompt starts with the "
                "model's BOS token), so they are not the answer's likelihood"
            )
        return None

    def _echo(self, text: str, answer: str, *, top: int = 0) -> tuple[Any, list[int]]:
        """The echoed log-probabilities of ``text`` (which ends with ``answer``) and the indices of the
        answer's tokens among them (see :func:`_answer_span`)."""
        response = self._client.completions.create(
            model=self.model,
            prompt=text,
            max_tokens=1,  # 0 means "unlimited" to some servers
            temperature=0.0,
            echo=True,
            logprobs=top,
            extra_body=self.extra_body or None,
        )
        self._count(response)
        logprobs = response.choices[0].logprobs if response.choices else None
        if logprobs is None or not logprobs.text_offset or not logprobs.tokens:
            return logprobs, []
        return logprobs, _answer_span(logprobs, len(answer), _echoed_generation(response, text))

    # -- calls -----------------------------------------------------------------------------------------------

    def _error(
        self, e: BaseException, route: str, *, done: int | None = None, total: int | None = None
    ) -> ServedReaderError:
        """A :class:`ServedReaderError` that says which endpoint failed and what to check."""
        openai = self._openai
        url = self._url(route)
        progress = f" ({done} of the batch's {total} calls had finished and are cached)" if total else ""
        if isinstance(e, ServedReaderError):
            return ServedReaderError(f"{e}{progress}")
        if isinstance(e, openai.APITimeoutError):
            hint = (
                f"no answer within {self.timeout:g} s ({self.max_retries} retries): is the server "
                "overloaded? Raise timeout= or lower concurrency="
            )
        elif isinstance(e, openai.APIConnectionError):
            hint = (
                f"connection failed after {self.max_retries} retries ({e}): is the server still running at "
                f"{self.base_url}?"
            )
        elif isinstance(e, openai.AuthenticationError):
            hint = "the API key was rejected: pass api_key= or set OPENAI_API_KEY"
        elif isinstance(e, openai.NotFoundError):
            hint = f"HTTP 404 ({_message(e)}): is {self.model!r} served there, and does base_url end in /v1?"
        elif isinstance(e, openai.RateLimitError):
            hint = (
                f"still rate-limited (HTTP 429) after {self.max_retries} retries: lower concurrency= or "
                "raise max_retries="
            )
        elif isinstance(e, openai.APIStatusError):
            retried = f" after {self.max_retries} retries" if e.status_code >= 500 else ""
            hint = f"HTTP {e.status_code}{retried}: {_message(e)}"
        else:
            hint = f"{type(e).__name__}: {e}"
        return ServedReaderError(f"reader call to {url} failed: {hint}{progress}")

    def _count(self, response: Any) -> None:
        usage = getattr(response, "usage", None)
        if usage is None:
            return
        prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
        with self._stats_lock:
            stats = self._stats()
            stats.prompt_tokens += prompt
            stats.generated_tokens += completion
            # What the server reports processing; a server-side prefix cache is invisible from here.
            stats.new_tokens += prompt + completion

    def _request(self, question: str, passages: Sequence[str]) -> dict[str, Any]:
        if self.endpoint == "chat":
            return self._payload(self.template.messages(question, passages))
        return self._payload(self.template.render(question, passages))

    def _payload(self, prompt: str | list[dict[str, str]]) -> dict[str, Any]:
        """The request for ``prompt``: chat messages (chat endpoint) or text (completions)."""
        common: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "extra_body": self.extra_body or None,
        }
        if self.stop is not None:
            common["stop"] = self.stop
        if self.endpoint == "chat":
            return {**common, "messages": prompt}
        return {**common, "prompt": prompt}

    def answer_messages(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Greedy answer to chat ``messages`` (``{"role", "content"}`` dicts), through the call cache.

        What a LangChain chain over this reader calls (``ReaderChatModel``, the demo's chain): a chain that
        sends the reader's own prompt (``template.messages(question, passages)``) gets the cache entry of
        ``answer(question, passages)``. The completions endpoint gets the turns' texts joined by blank lines,
        as ``template.render`` lays them out.
        """
        turns = [dict(m) for m in messages]
        if not turns or any(set(m) != {"role", "content"} for m in turns):
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        chat = self.endpoint == "chat"
        text = json.dumps(turns, ensure_ascii=False) if chat else "\n\n".join(m["content"] for m in turns)

        def compute(idx: list[int]) -> list[Any]:
            request = self._payload(turns if chat else text)
            create = self._client.chat.completions.create if chat else self._client.completions.create
            try:
                reply = self._reply(create(**request))
            except self._openai.APIError as e:
                raise self._error(e, self._route) from e
            return self._clean([reply], 1)

        return str(self._through_cache([call_key(self.name, "answer", text)], compute)[0])

    def _reply(self, response: Any) -> str:
        self._count(response)
        if not response.choices:
            raise ServedReaderError(f"{self._url(self._route)} returned no choices")
        choice = response.choices[0]
        text = choice.message.content if self.endpoint == "chat" else choice.text
        return text or ""

    def _answer_one(self, question: str, passages: Sequence[str]) -> str:
        request = self._request(question, passages)
        if self.endpoint == "chat":
            return self._reply(self._client.chat.completions.create(**request))
        return self._reply(self._client.completions.create(**request))

    async def _aanswer_one(self, client: Any, question: str, passages: Sequence[str]) -> str:
        request = self._request(question, passages)
        if self.endpoint == "chat":
            return self._reply(await client.chat.completions.create(**request))
        return self._reply(await client.completions.create(**request))

    def _score_one(self, question: str, passages: Sequence[str], answer: str) -> float:
        prompt = self.template.render(question, passages)
        text = prompt + answer  # exactly as the local readers score: the answer right after the prompt
        logprobs, span = self._echo(text, answer)
        if logprobs is None or not logprobs.text_offset:
            raise ServedReaderError(f"{self._url('/completions')} returned no prompt log-probabilities")
        values = [logprobs.token_logprobs[i] for i in span]
        if not values or any(v is None for v in values):
            raise ServedReaderError(
                f"{self._url('/completions')} returned no log-probabilities for the answer {answer!r}"
            )
        return float(sum(values) / len(values))

    def _run(self, fn: Callable[[int], T], n: int, route: str) -> list[T]:
        """``fn(0) .. fn(n-1)`` with at most ``concurrency`` in flight; stops at the first failure."""
        if n == 0:
            return []
        results: dict[int, T] = {}
        with ThreadPoolExecutor(
            max_workers=min(self.concurrency, n), thread_name_prefix="openai-reader"
        ) as pool:
            futures: dict[Future[T], int] = {pool.submit(fn, i): i for i in range(n)}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for f in pending:  # calls not started yet; the running ones finish (bounded by the timeout)
                    f.cancel()
                wait(pending)
            for f, i in futures.items():
                if f.done() and not f.cancelled() and f.exception() is None:
                    results[i] = f.result()
        if failed:
            first = min(failed, key=futures.__getitem__).exception()
            assert first is not None
            error = self._error(first, route, done=len(results), total=n)
            raise _BatchFailed(str(error), results) from first
        return [results[i] for i in range(n)]

    async def _arun(self, fn: Callable[[int], Awaitable[T]], n: int, route: str) -> list[T]:
        """The async :meth:`_run`: a semaphore bounds the calls in flight."""
        if n == 0:
            return []
        semaphore = asyncio.Semaphore(self.concurrency)

        async def bounded(i: int) -> T:
            async with semaphore:
                return await fn(i)

        tasks = {asyncio.ensure_future(bounded(i)): i for i in range(n)}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if t.exception() is not None]
        if failed:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        results = {
            i: t.result()
            for t, i in tasks.items()
            if t.done() and not t.cancelled() and t.exception() is None
        }
        if failed:
            first = min(failed, key=tasks.__getitem__).exception()
            assert first is not None
            error = self._error(first, route, done=len(results), total=n)
            raise _BatchFailed(str(error), results) from first
        return [results[i] for i in range(n)]

    def _keep_finished(
        self,
        kind: str,
        failure: _BatchFailed,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        answers: Sequence[str] | None = None,
        *,
        only_new: bool = False,
    ) -> ServedReaderError:
        """Store the finished calls of a failed batch under the keys the base class uses, so a rerun skips
        them; return the error to raise."""
        entries: dict[str, Any] = {}
        for i, value in failure.done.items():
            prompt = self.prompt_text(questions[i], passage_lists[i])
            if kind == "answer":
                entries[call_key(self.name, "answer", prompt)] = (
                    clean_answer(value) if self.first_line_only else value
                )
            else:
                assert answers is not None
                score = float(value)
                entries[call_key(self.name, "score", prompt, answers[i])] = (
                    None if math.isinf(score) else score
                )
        if only_new and self.cache is not None:
            present = self.cache.get_many(list(entries))
            entries = {k: v for k, v in entries.items() if k not in present}
        if entries and self.cache is not None:
            self.cache.put_many(entries)
        self._stats().computed += len(entries)
        return ServedReaderError(str(failure))

    # -- reader hooks ----------------------------------------------------------------------------------------

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        try:
            return self._run(
                lambda i: self._answer_one(questions[i], passage_lists[i]), len(questions), self._route
            )
        except _BatchFailed as failure:
            raise self._keep_finished("answer", failure, questions, passage_lists) from failure.__cause__

    async def _aanswer_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]
    ) -> list[str]:
        # One async client per call: an httpx async pool must not outlive the event loop it was made in.
        async with self._openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=self.max_retries
        ) as client:
            try:
                return await self._arun(
                    lambda i: self._aanswer_one(client, questions[i], passage_lists[i]),
                    len(questions),
                    self._route,
                )
            except _BatchFailed as failure:
                raise self._keep_finished("answer", failure, questions, passage_lists) from failure.__cause__

    def _answer_and_score_uncached(
        self,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        targets: Sequence[Sequence[str]],
    ) -> tuple[list[str], list[list[float]]]:
        answers = self._answer_uncached(questions, passage_lists)
        try:
            scores = self._score_targets(questions, passage_lists, targets)
        except ServedReaderError:
            # The answers are done: keep them (the finished scores are already stored by _score_uncached),
            # except those the cache has (prompts rerun only to score a target).
            self._keep_finished(
                "answer", _BatchFailed("", dict(enumerate(answers))), questions, passage_lists, only_new=True
            )
            raise
        return answers, scores

    def _score_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> list[float]:
        if not self.supports_scoring:
            raise NotImplementedError(
                f"{self._url('/completions')} cannot score answers (scoring={self.scoring!r}, "
                f"endpoint={self.endpoint!r})"
            )
        try:
            return self._run(
                lambda i: self._score_one(questions[i], passage_lists[i], answers[i]),
                len(questions),
                "/completions",
            )
        except _BatchFailed as failure:
            raise self._keep_finished(
                "score", failure, questions, passage_lists, answers
            ) from failure.__cause__


def _echoed_generation(response: Any, text: str) -> int:
    """How many of the echoed log-probability entries are generated tokens after ``text``.

    Servers differ: most list the generated token after the prompt's, llama-cpp-python drops it when the
    prompt has no BOS token. The echoed text (``text`` followed by the generated text) tells: the last
    entries are generated ones if their strings spell the generated text.
    """
    choice = response.choices[0]
    usage = getattr(response, "usage", None)
    echoed = choice.text or ""
    generated_text = echoed[len(text) :] if echoed.startswith(text) else None
    count = getattr(usage, "completion_tokens", None)
    if count is None:
        count = 1 if generated_text else 0
    count = int(count)
    tokens = choice.logprobs.tokens
    if count <= 0 or count > len(tokens):
        return 0
    if generated_text is not None and "".join(tokens[-count:]) != generated_text:
        return 0
    return count


def _answer_span(logprobs: Any, answer_chars: int, generated: int) -> list[int]:
    """Indices of the answer's tokens among the echoed entries of ``prompt + answer`` (the last
    ``generated`` entries being generated tokens after it).

    The boundary is measured from the end: the answer is the last ``answer_chars`` characters of the
    echoed prompt, in the server's own offsets. (Servers count offsets in their detokenised text, and
    llama.cpp renders special tokens such as ``<|im_start|>`` as nothing, so offsets counted from the
    prompt's start would not match the prompt string.) The answer's tokens are those starting inside it,
    plus the one before them when that token straddles the boundary: the tokenizer merged the prompt's last
    characters with the answer's first ones, so that token carries the answer's start.
    """
    offsets, tokens = logprobs.text_offset, logprobs.tokens
    n = len(offsets) - generated
    if n <= 0 or len(tokens) != len(offsets):
        return []
    end = offsets[n - 1] + len(tokens[n - 1])
    start = end - answer_chars
    inside = [i for i in range(n) if start <= offsets[i] < end]
    if not inside:  # one token covers the end of the prompt and the whole answer
        return [i for i in range(n) if offsets[i] < start][-1:]
    if offsets[inside[0]] > start and inside[0] > 0:
        inside.insert(0, inside[0] - 1)
    return inside


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail") or body.get("error")
        if isinstance(detail, dict):
            detail = detail.get("message")
        if detail:
            return str(detail)[:300]
    return str(getattr(e, "message", e))[:300]
