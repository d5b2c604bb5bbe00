"""``benchmarks/passage_choice.py`` on a toy silver file: the single-passage table from the search's scans."""

from __future__ import annotations

import json

from bgm_model.data import QAExample
from bgm_model.readers.base import Reader
from bgm_model.training.silver import SilverConfig, synthesize_to_file
from tests._helpers import load_benchmark


class KeyReader(Reader):
    """Answers correctly from a passage that mentions the answer; the gold passage is the second one."""

    def __init__(self) -> None:
        super().__init__("key-reader", cache=False)

    def _answer_uncached(self, questions, passage_lists):
        return ["paris" if any("paris" in p for p in ps) else "no idea" for ps in passage_lists]


def test_single_passage_table_from_the_scans(tmp_path) -> None:
    module = load_benchmark("passage_choice")
    data = tmp_path / "data.jsonl"
    examples = []
    with data.open("w") as f:
        for i in range(6):
            texts = [f"berlin text {i}", f"paris is the answer {i}", f"rome text {i}"]
            gold = [False, True, False]
            f.write(json.dumps({"id": f"q{i}", "question": f"capital question {i}?", "answers": ["paris"],
                                "passages": [{"title": "", "text": t, "is_gold": g} for t, g in zip(texts, gold)]}) + "\n")
            examples.append(QAExample(id=f"q{i}", question=f"capital question {i}?", answers=["paris"], passages=texts))
    silver = tmp_path / "silver.jsonl"
    synthesize_to_file(examples, KeyReader(), silver, reward="contains", config=SilverConfig(secondary=None))
    out = tmp_path / "pc.json"
    assert module.main(["--silver", str(silver), "--data", str(data), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["questions"] == 6
    assert result["top-1 alone"] == 0.0  # the retriever's first passage never holds the answer here
    assert result["gold passage alone (else top-1)"] == 1.0 and result["best single passage (oracle)"] == 1.0
    assert result["P(correct | rank)"] == [0.0, 1.0, 0.0]
    # Finding vs reading: only the second passage holds "paris", and the reader answers from it every time.
    assert result["top-1 passage holds a gold answer"] == 0.0
    assert result["some candidate holds a gold answer"] == 1.0
    assert result["answer-holding passage alone (else top-1)"] == 1.0
    assert result["P(correct | passage holds a gold answer)"] == 1.0
    assert result["P(correct | passage without one)"] == 0.0
