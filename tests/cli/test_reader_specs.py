"""``--reader`` forms beyond the local models (a LangChain / LlamaIndex model from the user's factory) and
``--prompt-template`` (the chain's own prompt), through every command's reader options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bgm_cli.common import ReaderOptions, check_reader_spec, make_reader, reader_prompt
from bgm_cli.errors import InputError, UsageError
from bgm_cli.main import build_parser, main
from bgm_integrations.langchain import LangChainPrompt, LangChainReader
from bgm_integrations.llama_index import LlamaIndexReader
from bgm_model.readers import LANGCHAIN_RAG_PROMPT, ContextPrompt
from tests._helpers import write_dataset

FACTORY = '''
from langchain_core.language_models.chat_models import SimpleChatModel
from langchain_core.prompts import ChatPromptTemplate
from llama_index.core.llms import MockLLM

SEEN = []


class RecordingChat(SimpleChatModel):
    """Answers 'unknown' and keeps every prompt it is sent."""

    @property
    def _llm_type(self):
        return "recording-chat"

    def _call(self, messages, stop=None, run_manager=None, **kwargs):
        SEEN.append([(m.type, m.content) for m in messages])
        return "unknown"


def make_chat():
    return RecordingChat()


def make_llm():
    return MockLLM()


def make_reader():
    from bgm_model.training.toy import ToyReader
    return ToyReader()


NOT_CALLABLE = 3
PROMPT = ChatPromptTemplate.from_messages([("system", "Context:\\n{context}"), ("human", "{question}")])
'''


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's module in the current directory (``bgm`` imports factories from there, like ``python -m``)."""
    name = f"user_llm_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BGM_CACHE_DIR", str(tmp_path / "cache"))
    yield name
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_factory_readers_wrap_the_users_framework_model(factory_module: str):
    chat = make_reader(f"langchain:{factory_module}:make_chat", ReaderOptions(concurrency=3, cache="none"))
    assert isinstance(chat, LangChainReader) and chat.max_concurrency == 3 and chat.cache is None
    assert chat.answer("q?", ["p"]) == "unknown"
    llm = make_reader(f"llama_index:{factory_module}:make_llm", ReaderOptions(cache="none"))
    assert isinstance(llm, LlamaIndexReader)
    from bgm_model.training.toy import ToyReader

    assert isinstance(make_reader(f"langchain:{factory_module}:make_reader"), ToyReader)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("langchain:no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("langchain:{mod}:missing", "has no 'missing'"),
        ("langchain:{mod}", "give package.module:name"),
        ("llama_index:{mod}:NOT_CALLABLE", "is not callable"),
        ("openai:", "needs the served model's name"),
        ("gpt-9", "unknown --reader 'gpt-9'"),
    ],
)
def test_bad_reader_specs_are_usage_errors(factory_module: str, spec: str, says: str):
    with pytest.raises(UsageError, match=says):
        check_reader_spec(spec.format(mod=factory_module))


def test_a_factory_of_the_wrong_kind_is_named(factory_module: str):
    with pytest.raises(UsageError, match="llama_index.core.llms.LLM"):
        make_reader(f"llama_index:{factory_module}:make_chat", ReaderOptions(cache="none"))


def test_prompt_template_specs(factory_module: str, tmp_path: Path):
    assert reader_prompt(None) is None and reader_prompt("default") is None
    assert reader_prompt("rag") is LANGCHAIN_RAG_PROMPT
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps({"system": "Context: {context}", "user": "{question}"}))
    assert reader_prompt(str(path)) == ContextPrompt(system="Context: {context}", user="{question}")
    assert isinstance(reader_prompt(f"{factory_module}:PROMPT"), LangChainPrompt)
    path.write_text(json.dumps({"user": "{question} only"}))
    with pytest.raises(InputError, match="not a ContextPrompt"):
        reader_prompt(str(path))
    with pytest.raises(UsageError, match="no such file"):
        reader_prompt(str(tmp_path / "missing.yaml"))
    with pytest.raises(UsageError, match="unknown --prompt-template 'fancy'"):
        reader_prompt("fancy")
    with pytest.raises(UsageError, match="is not a prompt"):
        reader_prompt(f"{factory_module}:NOT_CALLABLE")


def test_every_reader_command_lists_the_new_forms():
    parser = build_parser()
    commands = {"synthesize": [], "evaluate": [], "demo": [], "train": ["rl"]}
    for command, sub in commands.items():
        action = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        for name in sub:
            action = action._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        text = " ".join(action.format_help().split())
        for form in ("openai:MODEL", "langchain:package.module:factory", "llama_index:package.module:factory",
                     "gemma3-270m", "--base-url", "--prompt-template", "--concurrency", "--openai-endpoint"):
            assert form in text, (command, form)


def test_synthesize_with_a_langchain_factory_sends_the_chains_prompt(factory_module: str, tmp_path: Path, capsys):
    from bgm_model.training.toy import make_toy_examples

    data = write_dataset(tmp_path / "data.jsonl", make_toy_examples(2, n_passages=3, seed=1))
    out = tmp_path / "silver.jsonl"
    status = main(["synthesize", str(data), "-o", str(out), "--reader", f"langchain:{factory_module}:make_chat",
                   "--prompt-template", "rag", "--reward", "f1", "--max-length", "2"])
    assert status == 0, capsys.readouterr().err
    seen = sys.modules[factory_module].SEEN
    assert seen and all(m[0][0] == "human" and m[0][1].startswith("You are an assistant for question") for m in seen)
    assert len([json.loads(line) for line in out.read_text().splitlines()]) >= 2


def test_demo_config_carries_the_reader_options():
    from bgm_cli.demo import config_from_args

    args = build_parser().parse_args(["demo", "--reader", "openai:m", "--base-url", "http://127.0.0.1:1/v1",
                                      "--concurrency", "2", "--prompt-template", "rag"])
    cfg = config_from_args(args)
    assert cfg.reader == "openai:m"
    assert cfg.reader_options.base_url == "http://127.0.0.1:1/v1" and cfg.reader_options.concurrency == 2
    assert cfg.reader_options.prompt_template == "rag"

