"""docs/readers.md "Your own LLM" runs as written: every block marked ``<!-- run: server ... -->`` is executed
against llama.cpp's OpenAI-compatible server serving SmolLM2 (the ``llama_server`` fixture)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests._helpers import write_dataset
from tests.conftest import SERVED_ALIAS

pytestmark = pytest.mark.server

DOC = Path(__file__).resolve().parents[2] / "docs" / "readers.md"
_BLOCK = re.compile(r"<!-- run: (?P<tags>[^>]*?) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def run_blocks() -> list[tuple[dict[str, str], str, str]]:
    """(tags, language, code) of every block marked to run, in document order."""
    out = []
    for m in _BLOCK.finditer(DOC.read_text()):
        tags = dict((t.split(":", 1) + [""])[:2] for t in (p.strip() for p in m["tags"].split(",")))
        out.append(({k.strip(): v.strip() for k, v in tags.items()}, m["lang"], m["code"]))
    return out


def test_the_doc_marks_the_examples_to_run():
    blocks = run_blocks()
    kinds = [(lang, tags.get("file"), "bgm" in tags) for tags, lang, _ in blocks]
    assert ("python", "my_llm.py", False) in kinds and ("bash", None, True) in kinds
    code = "\n".join(c for _, _, c in blocks)
    for name in ("OpenAIReader(", "LangChainReader(", "LlamaIndexReader(", "ChatOpenAI(", "OpenAILike("):
        assert name in code


def test_your_own_llm_examples_run_against_a_real_server(llama_server, tmp_path, monkeypatch, capsys):
    from bgm_model.training.toy import make_toy_examples

    monkeypatch.setenv("OPENAI_BASE_URL", llama_server.base_url)
    monkeypatch.setenv("BGM_READER_MODEL", SERVED_ALIAS)
    monkeypatch.setenv("BGM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    answers = 0
    for tags, lang, code in run_blocks():
        if "file" in tags:
            (tmp_path / tags["file"]).write_text(code)
        elif lang == "python":
            exec(compile(code, f"{DOC.name} block", "exec"), namespace)
            printed = capsys.readouterr().out.strip()
            if "print(" in code:
                assert printed, code  # every example that answers prints a non-empty answer
                answers += 1
        else:
            write_dataset(tmp_path / "train.jsonl", make_toy_examples(2, n_passages=2, seed=3))
            argv = shlex.split(code.replace("\\\n", " "))
            assert argv[0] == "bgm"
            done = subprocess.run(
                [sys.executable, "-m", "bgm_cli.main", *argv[1:], "--max-length", "1"],
                cwd=tmp_path, env={**os.environ}, capture_output=True, text=True, timeout=300,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            assert len((tmp_path / "silver.jsonl").read_text().splitlines()) == 2
    assert answers == 3
