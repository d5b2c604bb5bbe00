"""``benchmarks/quality.py`` end to end on toy files (toy reader): every method, the summary and the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgm_model.training.toy import make_toy_examples
from tests._helpers import load_benchmark


def _write(path: Path, examples) -> Path:
    with path.open("w") as f:
        for ex in examples:
            passages = [{"title": "", "text": p, "is_gold": g} for p, g in zip(ex.passages, ex.gold, strict=True)]
            f.write(json.dumps({"id": ex.id, "question": ex.question, "answers": ex.answers, "passages": passages}) + "\n")
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_quality_benchmark_runs_every_method(tmp_path, capsys) -> None:
    quality = load_benchmark("quality")
    examples = make_toy_examples(10, n_passages=4, seed=11)
    train = _write(tmp_path / "toy_train.jsonl", examples[:6])
    dev = _write(tmp_path / "toy_dev.jsonl", examples[6:])

    args = [
        "--train", str(train), "--dev", str(dev), "--name", "toy", "--reader", "toy", "--reader-cache", "none",
        "--ks", "1,2", "--reward", "em", "--silver-top-m", "4", "--sl-epochs", "1", "--rl-steps", "1",
        "--rl-batch-size", "2", "--rl-samples", "2", "--ce-epochs", "1", "--max-passage-tokens", "32",
        "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "results"),
    ]
    code = quality.main(args)

    assert code == 0
    result = json.loads((tmp_path / "results" / "quality_toy.json").read_text())
    names = [m["name"] for m in result["methods"]]
    for expected in ("no retrieval", "all, retriever order", "all, reversed", "long-context reorder", "top-2, reversed",
                     "embedding rerank, top-1", "cross-encoder, top-2, reversed, top repeated", "BGM SL", "BGM SL+RL"):
        assert expected in names
    assert result["train"] == 6 and result["dev"] == 4
    assert result["recipe"]["sl"]["num_epochs"] == 1 and result["recipe"]["silver"]["top_m"] == 4  # the flags'
    summary = result["summary"]
    # the upper bound is reported separately, next to the methods it bounds on the same questions
    assert result["oracle"]["questions"] == 4
    oracle = {m["name"]: m for m in result["oracle"]["methods"]}
    assert list(oracle) == ["all, retriever order", summary["best fixed heuristic"], "BGM SL", "BGM SL+RL",
                            "SPS oracle (uses gold answers)"]
    assert oracle["SPS oracle (uses gold answers)"]["em"] == 1.0  # the toy optimum [X, X], found with the gold answers
    assert oracle["BGM SL+RL"]["em"] == next(m["em"] for m in result["methods"] if m["name"] == "BGM SL+RL")
    assert summary["best fixed heuristic"] in result["groups"]["top-k heuristics"]
    assert summary["best cross-encoder"] in result["groups"]["cross-encoder"]
    check = summary["checks"]["BGM SL+RL"]
    tokens = {m["name"]: m["prompt_tokens"] for m in result["methods"]}
    assert check["prompt tokens vs all candidates (ratio)"] == pytest.approx(
        tokens["BGM SL+RL"] / tokens["all, retriever order"])
    assert set(summary["checks"]["RL over SL"]) == {"contains", "f1"}
    # the toy reader answers exactly only from the key passage twice: no single passage is enough
    ceiling = summary["ceiling"]
    assert ceiling["questions"] == 4 and ceiling["oracle sequence"]["share"] == 1.0
    assert ceiling["best single passage"]["share"] == 0.0 and ceiling["top-1 alone"]["share"] == 0.0
    assert (tmp_path / "results" / "quality_toy.png").stat().st_size > 10_000
    table = (tmp_path / "results" / "quality_toy.md").read_text()
    assert "| BGM SL+RL |" in table and "Best fixed heuristic (chosen on dev)" in table
    assert "| SPS oracle (uses gold answers) |" in table and "on 4 of the 4 dev questions" in table
    assert "wrote" in capsys.readouterr().out
    # a re-run reuses the trained bridges and the cross-encoder
    quality.main(args)
    assert "SL" not in json.loads((tmp_path / "results" / "quality_toy.json").read_text())["seconds"]
    # the oracle on the first 2 dev questions only
    quality.main([*args, "--oracle-questions", "2"])
    result = json.loads((tmp_path / "results" / "quality_toy.json").read_text())
    assert result["dev"] == 4 and result["oracle"]["questions"] == 2 and result["summary"]["ceiling"]["questions"] == 2
    # two training questions held out to choose the SL epoch and the RL step (the SL start included)
    quality.main([*args, "--validation-fraction", "0.34", "--rl-steps", "2", "--rl-eval-steps", "1", "--sl-epochs", "2"])
    result = json.loads((tmp_path / "results" / "quality_toy.json").read_text())
    selection, sl_selection = result["summary"]["rl_selection"], result["summary"]["sl_selection"]
    assert result["validation"] == 2 and selection["validation_questions"] == 2
    assert list(selection["validation_reward"]) == ["0", "1", "2"] and selection["kept_step"] in (0, 1, 2)
    assert sl_selection["kept_epoch"] in (1, 2) and len(sl_selection["validation_reward"]) == 2
    table = (tmp_path / "results" / "quality_toy.md").read_text()
    assert "(2 of them held out to choose the SL epoch and the RL step)" in table
    assert f"epoch {sl_selection['kept_epoch']} of epoch 1:" in table
    # the best heuristic chosen on those held-out questions, compared with BGM on dev
    fair = result["summary"]["validation heuristic"]
    assert fair["validation_questions"] == 2 and set(fair["validation"]) == set(result["groups"]["top-k heuristics"])
    assert fair["validation"][fair["name"]] == max(fair["validation"].values())
    dev_scores = {m["name"]: m["contains"] for m in result["methods"]}
    assert fair["dev"] == dev_scores[fair["name"]] and set(fair["checks"]) == {"BGM SL", "BGM SL+RL"}
    assert f"held-out training questions instead of on dev (as the bridge's epoch and RL step are): **{fair['name']}**" in table
    quality.main([*args, "--validation-fraction", "0.34", "--rl-steps", "2", "--rl-eval-steps", "1", "--sl-epochs", "2",
                  "--no-validation-heuristic"])
    assert "validation heuristic" not in json.loads((tmp_path / "results" / "quality_toy.json").read_text())["summary"]


def test_quality_benchmark_refuses_an_empty_split_before_training(tmp_path) -> None:
    quality = load_benchmark("quality")
    train = _write(tmp_path / "toy_train.jsonl", make_toy_examples(3, n_passages=4))
    dev = tmp_path / "empty.jsonl"
    dev.write_text("")
    with pytest.raises(SystemExit, match="need training and dev questions, got 3 and 0"):
        quality.main(["--train", str(train), "--dev", str(dev), "--reader", "toy", "--work-dir", str(tmp_path / "w")])
    assert not (tmp_path / "w" / "bgm").exists()


def test_quality_benchmark_refuses_a_negative_oracle_size(capsys) -> None:
    with pytest.raises(SystemExit):
        load_benchmark("quality").parse_args(["--oracle-questions", "-1"])
    assert "--oracle-questions must be >= 0" in capsys.readouterr().err


def test_best_heuristic_is_chosen_by_the_metric_asked_for() -> None:
    from bgm_model.evaluation import EvaluationReport, MethodResult

    bench = load_benchmark("quality")

    def method(name: str, f1: float, contains: float) -> MethodResult:
        return MethodResult(name, em=0.0, f1=f1, contains=contains, prompt_tokens=100, passages=1, arrange_ms=0)

    report = EvaluationReport(
        [method("top-1", f1=0.10, contains=0.30), method("top-3", f1=0.15, contains=0.25)],
        n_examples=1, reader="r", reader_seconds=0, reader_calls=0,
    )
    assert bench.best_of(report, ["top-1", "top-3"], "contains").name == "top-1"
    assert bench.best_of(report, ["top-1", "top-3"], "f1").name == "top-3"
