"""``benchmarks/reader_specific.py``: one bridge per reader, each evaluated on every reader (the 2x2 table).

End to end on toy files with two toy readers of different preferences (the toy reader wants the key passage
twice, the key-once reader the key passage alone), and the summary's statistics on hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgm_model.training.toy import make_toy_examples
from tests._helpers import load_benchmark, write_dataset

KEY_ONCE = "langchain:tests._helpers:key_once_reader"


def _toy_files(tmp_path: Path) -> list[str]:
    examples = make_toy_examples(14, n_passages=4, seed=5)
    train = write_dataset(tmp_path / "toy_train.jsonl", examples[:8])
    dev = write_dataset(tmp_path / "toy_dev.jsonl", examples[8:])
    return ["--train", str(train), "--dev", str(dev), "--reader-cache", "none", "--reward", "em",
            "--validation-fraction", "0.25", "--sl-num-epochs", "1", "--rl-max-steps", "1", "--rl-batch-size", "2",
            "--rl-num-samples", "2", "--bridge-max-passage-tokens", "32",
            "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "results")]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_readers_train_cross_evaluate_and_report(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # tests._helpers importable for the factory spec
    bench = load_benchmark("reader_specific")
    common = _toy_files(tmp_path)
    key_once = bench.reader_slug(KEY_ONCE)
    with pytest.raises(SystemExit, match="run the train stage"):
        bench.main(["evaluate", "--reader", "toy", "--bridges", "toy", *common])

    for reader in ("toy", KEY_ONCE):
        assert bench.main(["train", "--reader", reader, *common]) == 0
    training = json.loads((tmp_path / "work" / "toy" / "training.json").read_text())
    assert training["train"] == 8 and training["validation"] == 2
    assert training["verdict"]["questions"] == 2 and training["verdict"]["table"][0]["method"] == "BGM bridge"
    # a re-run reuses the bridge and judges it again, to the same verdict
    assert bench.main(["train", "--reader", "toy", *common]) == 0
    again = json.loads((tmp_path / "work" / "toy" / "training.json").read_text())
    assert again["seconds"] == training["seconds"] and again["verdict"] == training["verdict"]
    assert again["verdict"]["comparisons"] == 17
    for reader in ("toy", KEY_ONCE):
        assert bench.main(["evaluate", "--reader", reader, "--bridges", f"toy,{key_once}", *common]) == 0
    assert bench.main(["report", "--readers", f"toy,{key_once}", "--metric", "em", *common]) == 0

    evaluation = json.loads((tmp_path / "results" / f"reader_specific_toy_train_{key_once}.json").read_text())
    names = [m["name"] for m in evaluation["methods"]]
    assert names[:2] == ["all, retriever order", "top-1"]
    assert names[-4:] == ["toy SL", "toy SL+RL", f"{key_once} SL", f"{key_once} SL+RL"]
    assert evaluation["n_examples"] == 6 and evaluation["validation_choice"] in names

    report = json.loads((tmp_path / "results" / "reader_specific_toy_train.json").read_text())
    assert report["readers"] == ["toy", key_once] and len(report["commands"]) == 5
    assert set(report["table"]) == {"toy", key_once}
    assert all(set(cells) == {"toy", key_once} for cells in report["table"].values())
    # the table's cells are the evaluations' own means, and the checks are paired over the same questions
    rows = {m["name"]: m for m in evaluation["methods"]}
    assert report["table"][key_once]["toy"]["SL"] == rows["toy SL"]["em"]
    checks = report["checks"][key_once]
    mine, theirs = rows[f"{key_once} SL+RL"]["per_example"], rows["toy SL+RL"]["per_example"]
    expected = sum(a["em"] - b["em"] for a, b in zip(mine, theirs, strict=True)) / len(mine)
    assert checks["own bridge minus the toy bridge"]["mean"] == pytest.approx(expected)
    assert checks["prompt tokens vs all candidates"] == pytest.approx(
        rows[f"{key_once} SL+RL"]["prompt_tokens"] / rows["all, retriever order"]["prompt_tokens"])
    shown_alone = sum(r["ids"] == [0] for r in mine) / len(mine)
    assert report["top-1 alone"][key_once][f"{key_once} SL+RL"] == pytest.approx(shown_alone)
    table = (tmp_path / "results" / "reader_specific_toy_train.md").read_text()
    assert f"| toy bridge, SL+RL | {report['table']['toy']['toy']['SL+RL']:.3f} |" in table
    assert "fixed arrangement chosen on validation" in table and "own bridge minus the toy bridge" in table
    assert "wrote" in capsys.readouterr().out


def _method(name: str, scores: list[float], tokens: float = 100.0) -> dict:
    return {"name": name, "contains": sum(scores) / len(scores), "prompt_tokens": tokens,
            "per_example": [{"id": f"q{i}", "contains": s, "ids": [0] if s else [1, 2]} for i, s in enumerate(scores)]}


def test_summary_checks_on_hand_made_rows() -> None:
    bench = load_benchmark("reader_specific")
    n = 40
    own, other = [1.0] * n, [1.0] * (n // 2) + [0.0] * (n // 2)
    evaluation = {"bridges": ["a", "b"], "validation_choice": "top-2", "methods": [
        _method("all, retriever order", [0.0] * n, tokens=1000.0), _method("top-1", own),
        _method("top-2", other), _method("a SL", other, tokens=200.0), _method("a SL+RL", own, tokens=150.0),
        _method("b SL", other), _method("b SL+RL", other)]}
    summary = bench.summarise({"a": evaluation}, "contains")
    checks = summary["checks"]["a"]
    assert summary["table"]["a"] == {"a": {"SL": 0.5, "SL+RL": 1.0}, "b": {"SL": 0.5, "SL+RL": 0.5}}
    assert checks["a SL+RL minus top-2"]["mean"] == pytest.approx(0.5)
    assert checks["a SL+RL minus top-2"]["ci_low"] > 0.3 and checks["non-inferior to the fixed arrangement"]
    assert checks["own bridge minus the b bridge"]["mean"] == pytest.approx(0.5)
    assert checks["a SL+RL minus top-1"] == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert checks["RL minus SL"]["mean"] == pytest.approx(0.5)
    assert checks["prompt tokens vs all candidates"] == pytest.approx(0.15)
    assert summary["top-1 alone"]["a"] == {"a SL+RL": 1.0, "b SL+RL": 0.5}
    # a bridge worse than the fixed arrangement beyond the 2-point margin is not non-inferior
    worse = {**evaluation, "validation_choice": "top-1",
             "methods": [*evaluation["methods"][:4], _method("a SL+RL", other), *evaluation["methods"][5:]]}
    assert not bench.summarise({"a": worse}, "contains")["checks"]["a"]["non-inferior to the fixed arrangement"]
    with pytest.raises(ValueError, match="same questions"):
        bench.paired_rows(evaluation["methods"][1]["per_example"], evaluation["methods"][2]["per_example"][:3],
                     "contains")


def test_files_come_in_pairs_and_a_report_needs_readers(tmp_path) -> None:
    bench = load_benchmark("reader_specific")
    with pytest.raises(SystemExit):
        bench.parse_args(["train", "--train", "x.jsonl"])
    with pytest.raises(SystemExit):  # before any training, not after it
        bench.parse_args(["train", "--validation-fraction", "0"])
    with pytest.raises(SystemExit, match="report needs --readers"):
        bench.main(["report", "--readers", " , ", "--results", str(tmp_path)])
