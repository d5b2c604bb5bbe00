"""``benchmarks/preference_probe.py`` with the toy reader: the fixed arrangements and the gold references."""

from __future__ import annotations

import json

from bgm_model.training.toy import make_toy_examples
from tests._helpers import load_benchmark


def test_probe_table_on_toy_data(tmp_path, capsys) -> None:
    module = load_benchmark("preference_probe")
    data = tmp_path / "toy.jsonl"
    with data.open("w") as f:
        for ex in make_toy_examples(12, n_passages=5, seed=3):
            passages = [{"title": "", "text": p, "is_gold": g} for p, g in zip(ex.passages, ex.gold, strict=True)]
            f.write(json.dumps({"id": ex.id, "question": ex.question, "answers": ex.answers, "passages": passages}) + "\n")
    out = tmp_path / "probe.json"
    assert module.main(["--data", str(data), "--questions", "10", "--reader", "toy", "--reader-cache", "none",
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {m["name"]: m for m in result["methods"]}
    assert result["n_examples"] == 10
    assert list(rows) == ["all, retriever order", "all, reversed", "top-5", "top-3", "top-1",
                          "gold passage alone", "gold passage twice"]
    # The toy reader answers fully only when the key passage ends the prompt twice, partly when once.
    assert rows["gold passage twice"]["em"] == 1.0
    assert rows["gold passage alone"]["em"] == 0.0 and abs(rows["gold passage alone"]["f1"] - 2 / 3) < 1e-9
    assert rows["gold passage twice"]["prompt_tokens"] > rows["gold passage alone"]["prompt_tokens"]
    assert len(rows["gold passage twice"]["per_example"]) == 10
    printed = capsys.readouterr().out.splitlines()
    twice = next(line for line in printed if line.startswith("| gold passage twice |"))
    assert twice.startswith("| gold passage twice | 1.000 | 1.000 | 1.000 |") and twice.endswith("| [1.000, 1.000] |")
