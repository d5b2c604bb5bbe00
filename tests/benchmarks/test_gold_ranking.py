"""``benchmarks/gold_ranking.py``: how often each ranking puts a gold passage first (no reader)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests._helpers import load_benchmark


def test_gold_first_follows_the_weighted_score() -> None:
    module = load_benchmark("gold_ranking")
    # The cross-encoder prefers passage 1, the retriever passage 0, and passage 0 is gold.
    rows = [(np.array([0.0, 1.0]), np.array([1.0, -1.0]), np.array([True, False]))] * 3
    assert module.gold_first(rows, None) == 1.0  # retriever order
    assert module.gold_first(rows, 0.0) == 0.0  # cross-encoder alone
    assert module.gold_first(rows, 0.2) == 0.0 and module.gold_first(rows, 1.0) == 1.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_report_on_a_small_retrieval_set(tmp_path) -> None:
    from bgm_model.evaluation.cross_encoder import CrossEncoder

    module = load_benchmark("gold_ranking")
    topics = ["volcanoes erupt lava", "penguins live in antarctica", "violins have four strings",
              "glaciers carve valleys", "tulips bloom in spring", "comets have icy tails"]
    with (tmp_path / "corpus.jsonl").open("w") as f:
        for i, text in enumerate(topics):
            f.write(json.dumps({"id": f"p{i}", "title": text.split()[0], "text": text}) + "\n")
    for split, ids in (("train", range(6)), ("dev", range(3))):
        with (tmp_path / f"{split}.jsonl").open("w") as f:
            for i in ids:
                f.write(json.dumps({"id": f"{split}{i}", "question": f"what about {topics[i]}?", "answers": ["x"],
                                    "gold_passage_ids": [f"p{i}"]}) + "\n")
    ce_dir = CrossEncoder(max_length=32).save_pretrained(tmp_path / "ce")
    out = tmp_path / "gold.json"
    assert module.main(["--cross-encoder", str(ce_dir), "--train", str(tmp_path / "train.jsonl"),
                        "--dev", str(tmp_path / "dev.jsonl"), "--skip", "3", "--select-questions", "3",
                        "--dev-questions", "3", "--top-k", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dev questions with a gold candidate"] == 3 and result["selection questions with a gold candidate"] == 3
    assert result["gold first, retriever order"] == 1.0  # each question restates its gold passage
    assert result["mix weight"] in module.WEIGHTS
    assert result["command"].startswith("python -m benchmarks.gold_ranking --cross-encoder")

    with pytest.raises(SystemExit, match="no training questions left"):
        module.main(["--cross-encoder", str(ce_dir), "--train", str(tmp_path / "train.jsonl"),
                     "--dev", str(tmp_path / "dev.jsonl"), "--skip", "6", "--top-k", "3", "--out", str(out)])

    fixed = tmp_path / "fixed.jsonl"  # fixed candidates (HotpotQA format) carry no retriever scores
    fixed.write_text(json.dumps({"id": "f0", "question": "q?", "answers": ["x"],
                                 "passages": [{"title": "", "text": "a", "is_gold": True}]}) + "\n")
    with pytest.raises(SystemExit, match="no retriever scores"):
        module.main(["--cross-encoder", str(ce_dir), "--train", str(fixed), "--dev", str(fixed), "--skip", "0",
                     "--out", str(out)])

    unfound = tmp_path / "unfound.jsonl"  # the gold passage is not in the pool, so never among the candidates
    unfound.write_text(json.dumps({"id": "u0", "question": "what about volcanoes?", "answers": ["x"],
                                   "gold_passage_ids": ["p99"]}) + "\n")
    with pytest.raises(SystemExit, match="no question has a gold passage"):
        module.main(["--cross-encoder", str(ce_dir), "--train", str(tmp_path / "train.jsonl"), "--dev", str(unfound),
                     "--skip", "3", "--top-k", "3", "--out", str(out)])
