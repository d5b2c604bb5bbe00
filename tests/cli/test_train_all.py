"""``bgm train all``: the whole recipe from the command line, with the validation verdict and
``--require-better``'s refusal as a one-line error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bgm_cli.main import main

READER = '''
from bgm_model.readers import CallableReader


def top1_is_best():
    """Answers right only when shown exactly the retriever's first passage."""
    def answer(question, passages):
        return question.split()[-1] if list(passages) == ["first of " + question] else "unknown"
    return CallableReader(answer, name="top1-is-best", cache=False)
'''


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name = f"top1_reader_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(READER)
    rows = [{"id": f"q{i}", "question": f"what is item{i}", "answers": [f"item{i}"],
             "passages": [f"first of what is item{i}", *(f"distractor {j} of item{i}" for j in range(3))]}
            for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    yield tmp_path, name
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def _train_all(name: str, out: str, *extra: str) -> int:
    return main(["train", "all", "--data", "train.jsonl", "--output-dir", out, "--reader",
                 f"langchain:{name}:top1_is_best", "--reward", "em", "--validation-fraction", "0.5",
                 "--sl-num-epochs", "1", "--rl-max-steps", "0", *extra])


def test_train_all_refuses_a_bridge_that_loses_to_top1(workdir, capsys):
    tmp_path, name = workdir
    status = _train_all(name, "strict", "--sl-learning-rate", "1e-12", "--require-better")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1].startswith("bgm train all: error: not shipping the bridge: the bridge loses to top-1")
    assert not (tmp_path / "strict" / "bridge_sl").exists() and (tmp_path / "strict" / "bridge_sl.rejected").is_dir()


def test_train_all_ships_and_prints_the_verdict(workdir, capsys):
    tmp_path, name = workdir
    assert _train_all(name, "plain", "--sl-learning-rate", "1e-12") == 0
    out = capsys.readouterr().out
    assert "validation verdict: the bridge loses to top-1 on 4 validation questions" in out
    assert (tmp_path / "plain" / "bridge_sl" / "config.json").exists()  # without --require-better it ships


def test_train_all_needs_one_source_of_questions(workdir, capsys):
    assert main(["train", "all", "--output-dir", "x", "--reader", "toy"]) == 2
    assert "--data or --traces" in capsys.readouterr().err
