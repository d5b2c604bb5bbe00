"""``bgm synthesize`` and ``bgm evaluate`` with ``--reader openai:MODEL``: the served reader behind
llama.cpp's OpenAI-compatible server (the session's ``llama_server``), end to end through the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bgm_cli.main import main
from bgm_model.training.silver import read_silver
from bgm_model.training.toy import make_toy_examples
from tests._helpers import make_tiny_bridge, write_dataset
from tests.conftest import SERVED_ALIAS

pytestmark = pytest.mark.server

N_QUESTIONS = 3


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three toy questions with three short candidate passages each (short prompts keep the server fast)."""
    path = tmp_path / "toy.jsonl"
    write_dataset(path, make_toy_examples(N_QUESTIONS + 2, n_passages=3, seed=4))
    return path


def served_flags(llama_server, cache: Path) -> list[str]:
    return [
        "--reader",
        f"openai:{SERVED_ALIAS}",
        "--base-url",
        llama_server.base_url,
        "--openai-endpoint",
        "completions",
        "--openai-extra-body",
        '{"repeat_penalty": 1.0}',
        "--max-new-tokens",
        "8",
        "--reader-cache",
        str(cache),
    ]


def test_synthesize_and_evaluate_with_a_served_reader(llama_server, dataset, tmp_path, caplog, capsys):
    cache = tmp_path / "reader-cache"
    silver = tmp_path / "silver.jsonl"
    with caplog.at_level(logging.WARNING, logger="bgm_model.readers.openai_api"):
        status = main(
            [
                "synthesize",
                str(dataset),
                "-o",
                str(silver),
                "--limit",
                str(N_QUESTIONS),
                "--max-length",
                "2",
                *served_flags(llama_server, cache),
            ]
        )
    assert status == 0, capsys.readouterr().err
    records = read_silver(silver)
    assert [r.id for r in records] == [f"toy-4-{i}" for i in range(N_QUESTIONS)]
    for r in records:
        assert r.reader_calls >= 3 and [c[0] for c in r.scanned[0]] == [0, 1, 2]  # every candidate was asked
    # llama-cpp-python's echoed logprobs of a BOS-less prompt are shifted, so the reader does not score and
    # the search breaks ties with token F1 instead of the answers' log-likelihood.
    assert "cannot score answers" in caplog.text
    assert {r.secondary for r in records} == {"f1"}

    bridge = make_tiny_bridge().save_pretrained(tmp_path / "bridge")
    report = tmp_path / "report.json"
    status = main(
        [
            "evaluate",
            "--data",
            str(dataset),
            "--limit",
            str(N_QUESTIONS),
            "--baselines",
            "basic",
            "--bridge",
            f"tiny={bridge}",
            "--output",
            str(report),
            *served_flags(llama_server, cache),
        ]
    )
    assert status == 0, capsys.readouterr().err
    methods = {m["name"]: m for m in json.loads(report.read_text())["methods"]}
    assert list(methods) == ["no retrieval", "all, retriever order", "tiny"]
    assert all(0.0 <= m["f1"] <= 1.0 for m in methods.values())
