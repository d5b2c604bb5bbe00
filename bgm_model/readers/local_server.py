"""Start llama.cpp's OpenAI-compatible server for a GGUF file on this machine, for tests and benchmarks.

:class:`LlamaCppServer` runs ``python -m llama_cpp.server`` (``pip install 'bgm-bridge[server]'``) on
127.0.0.1 at a free port, waits (bounded) until it answers ``GET /v1/models``, and stops it again::

    from bgm_model.assets import smollm2_gguf_path
    from bgm_model.readers import OpenAIReader
    from bgm_model.readers.local_server import GREEDY_EXTRA_BODY, LlamaCppServer

    with LlamaCppServer(smollm2_gguf_path(), alias="smollm2") as server:
        reader = OpenAIReader("smollm2", base_url=server.base_url, extra_body=GREEDY_EXTRA_BODY)
        print(reader.answer("what is the capital of france", ["Paris is the capital of France."]))

The server handles one request at a time (requests queue behind a lock), so ``concurrency`` above 1 only
overlaps the HTTP round trips. Its echoed prompt log-probabilities (scoring) are computed in Python, about
50 ms per prompt token for a 49k-token vocabulary.

Reproducibility: the server keeps the KV cache of the previous request and evaluates only the part of the
next prompt after their common prefix. A prompt that *repeats the previous one exactly* gets its last token
re-run alone, and that one-token path gives other logits (measured on SmolLM2 Q4_1: 0.1 nats, enough to flip
a near-tie greedy answer) than any longer evaluation; two different prompts in a row are unaffected.
:meth:`LlamaCppServer.reset_prompt_cache` makes the next prompt start from scratch, for comparisons.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = ["GREEDY_EXTRA_BODY", "LlamaCppServer", "ServerStartError", "free_port"]

_INSTALL = "pip install 'bgm-bridge[server]'"

#: Request fields that make llama-cpp-python's sampling plain greedy at temperature 0: its server applies
#: ``repeat_penalty=1.1`` by default, which changes extractive answers that repeat a passage's words.
GREEDY_EXTRA_BODY: dict[str, float] = {"repeat_penalty": 1.0}


class ServerStartError(RuntimeError):
    """The server process exited or did not answer in time; the message holds the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


class LlamaCppServer:
    """llama-cpp-python's OpenAI-compatible server for one GGUF model, as a child process.

    Args:
        model_path: the GGUF file.
        alias: the model name clients send (``--model_alias``) and ``/v1/models`` lists.
        n_ctx: context size in tokens. With ``logits_all`` the server keeps ``n_ctx x vocabulary`` floats
            (2048 x 49152 for SmolLM2: 400 MB).
        n_threads: CPU threads for decoding and prompt processing. On a busy machine fewer threads than
            cores is much faster (llama.cpp's threads spin-wait on each other): 1 thread answered ~9x faster
            than 2 on a loaded 2-core machine.
        logits_all: keep the logits of every prompt position, which prompt log-probabilities (``echo`` with
            ``logprobs`` on ``/v1/completions``, i.e. scoring) need; ``False`` saves the memory.
        host: the address to listen on (only 127.0.0.1 by default: the server has no API key).
        port: a fixed port; default: a free one, chosen at the first :meth:`start` and kept by restarts.
        startup_timeout: seconds to wait for the server to answer before :class:`ServerStartError`.
        log_path: where the server's output goes; default: a temporary file, removed by :meth:`stop`.
        extra_args: more ``llama_cpp.server`` flags, e.g. ``["--n_batch", "256"]``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        alias: str = "local",
        n_ctx: int = 2048,
        n_threads: int = 1,
        logits_all: bool = True,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 120.0,
        log_path: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no GGUF model file at {self.model_path}")
        if n_ctx < 16 or n_threads < 1 or startup_timeout <= 0:
            raise ValueError(
                f"need n_ctx >= 16, n_threads >= 1 and startup_timeout > 0; got {n_ctx}, {n_threads}, "
                f"{startup_timeout}"
            )
        self.alias = alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.logits_all = logits_all
        self.host = host
        self.port = port
        self.startup_timeout = float(startup_timeout)
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LlamaCppServer({self.model_path.name!r}, alias={self.alias!r}, port={self.port}, {state})"

    @property
    def base_url(self) -> str:
        """The API root for OpenAI clients, e.g. ``http://127.0.0.1:43817/v1``."""
        if self.port is None:
            raise RuntimeError("the server has no port yet: call start() first")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The command line that :meth:`start` runs."""
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", self.alias,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--logits_all", str(self.logits_all).lower(),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> LlamaCppServer:
        """Start the server (again, on the same port, after :meth:`stop` or :meth:`kill`) and wait until it
        answers; raises :class:`ServerStartError` with the end of its log if it exits or times out."""
        if self.running:
            return self
        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError(f"starting llama.cpp's server needs llama-cpp-python: {_INSTALL}")
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        # Never leave a server behind, even if the caller forgets stop() or the interpreter exits.
        self._finalizer = weakref.finalize(self, _terminate, self.process, 5.0)
        try:
            self._wait_ready()
        except BaseException:
            self._halt(grace=5.0)
            raise
        logger.info("llama.cpp server for %s ready at %s", self.model_path.name, self.base_url)
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base_url}/models"
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"llama.cpp's server exited with code {code} before answering at {url}. Is "
                    f"llama-cpp-python[server] installed ({_INSTALL}) and {self.model_path} a valid GGUF "
                    f"file?\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"llama.cpp's server did not answer at {url} within {self.startup_timeout:g} s (a slow "
                    f"machine? raise startup_timeout)\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def reset_prompt_cache(self) -> None:
        """Make the next request evaluate its whole prompt, however it relates to the previous one.

        Sends a one-token completion of a prompt that shares no first token with real prompts, so the
        next prompt has no common prefix with the server's cached one (see the module docstring).
        """
        body = json.dumps({"model": self.alias, "prompt": "0", "max_tokens": 1, "temperature": 0}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's output."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _halt(self, grace: float) -> None:
        if self.process is not None:
            _terminate(self.process, grace)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout`` s) and remove its temporary log."""
        self._halt(grace=timeout)
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; for tests of a server dying mid-batch."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10.0)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
