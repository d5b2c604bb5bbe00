"""Is picking *one* passage better than the retriever's top-1 learnable from simple features? A cheap check on
the silver search's step-1 scans (every candidate alone was already answered by the reader, so this makes no
reader calls).

For each question of a silver file (written by ``benchmarks/quality.py`` or ``bgm synthesize`` on an nq_open /
HotpotQA-style file with gold-passage labels), it reports the share answered correctly (primary reward >= 1:
the answer contains a gold answer, for the default reward) when the reader sees only:

* the retriever's top-1 passage; the gold passage (first one retrieved, else top-1); the best single passage
  (an oracle); the passage with the highest question-word overlap;
* the passage a logistic regression on simple features (retriever rank, retriever score, question-word
  overlap with text and title, length) rates most likely to work, 5-fold cross-validated by question;
* the first passage whose text holds a gold answer string (else top-1): it separates *finding* the passage
  (how often the retriever's top-1 holds the answer) from *reading* it (how often the reader then answers).

Run after the quality benchmark (it reuses that run's silver file and the cached MiniLM retrieval):

    python -m benchmarks.passage_choice --silver bgm_output/quality/nq_open/bgm/silver.jsonl --dataset nq_open
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, command_line
from bgm_model.assets import bundled_dataset
from bgm_model.data import load_examples
from bgm_model.rewards import answer_contains
from bgm_model.training.silver import read_silver

_STOP = {"the", "a", "an", "of", "in", "is", "who", "what", "when", "where", "was", "to", "and", "how", "did",
         "does", "which", "for", "on", "by"}


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower())) - _STOP


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--silver", required=True, help="silver sequences JSONL with step scans")
    p.add_argument("--dataset", default="nq_open", help="bundled dataset the silver questions come from")
    p.add_argument("--split", default="train")
    p.add_argument("--data", default=None, help="the dataset file instead of a bundled one (any format of "
                   "bgm_model.data; retrieval sets are retrieved with MiniLM as the benchmark did)")
    p.add_argument("--out", default=str(RESULTS / "passage_choice.json"))
    args = p.parse_args(argv)

    records = [r for r in read_silver(args.silver) if r.scanned]
    source = args.data or bundled_dataset(args.dataset, args.split)
    examples = {e.id: e for e in load_examples(source)}
    rows, owner = [], []
    for q, rec in enumerate(records):
        ex = examples[rec.id]
        if ex.passages != rec.passages:
            raise SystemExit(f"{rec.id}: the silver record's candidates differ from the dataset's retrieval")
        single = {int(i): (primary, secondary) for i, primary, secondary in rec.scanned[0]}
        qw = words(rec.question)
        for j, passage in enumerate(rec.passages):
            title = words(passage.split(")")[0]) if passage.startswith("(") else set()
            rows.append([j, ex.scores[j] if ex.scores else 0.0, len(qw & words(passage)) / max(1, len(qw)),
                         len(qw & title) / max(1, len(qw)), len(passage) / 1000,
                         single[j][0] >= 1 if j in single else False, bool(ex.gold and ex.gold[j]),
                         answer_contains(passage, ex.answers) >= 1])
            owner.append(q)
    data, owner = np.array(rows, dtype=float), np.array(owner)
    rank, ok, gold, holds = data[:, 0], data[:, 5], data[:, 6], data[:, 7]
    n = len(records)

    def pick(score: np.ndarray) -> float:
        return float(np.mean([ok[owner == q][np.argmax(score[owner == q])] for q in range(n)]))

    features = np.column_stack([np.eye(int(rank.max()) + 1)[rank.astype(int)], data[:, 1:5]])
    features = (features - features.mean(0)) / (features.std(0) + 1e-9)
    predicted = np.zeros(len(data))
    folds = np.arange(n) % 5
    for f in range(5):
        train = folds[owner] != f
        w, b = np.zeros(features.shape[1]), 0.0
        for _ in range(3000):  # plain gradient descent on the logistic loss, small L2
            g = 1 / (1 + np.exp(-(features[train] @ w + b))) - ok[train]
            w -= 0.1 * (features[train].T @ g / train.sum() + 1e-3 * w)
            b -= 0.1 * g.mean()
        predicted[~train] = features[~train] @ w + b
    result = {
        "questions": n,
        "top-1 alone": pick(-rank),
        "gold passage alone (else top-1)": pick(gold * 10 - rank * 0.01),
        "best single passage (oracle)": float(np.mean([ok[owner == q].max() for q in range(n)])),
        "most question-word overlap": pick(data[:, 2] - rank * 1e-3),
        "logistic regression on simple features (5-fold CV)": pick(predicted),
        "answer-holding passage alone (else top-1)": pick(holds * 10 - rank * 0.01),
        "top-1 passage holds a gold answer": float(holds[rank == 0].mean()),
        "some candidate holds a gold answer": float(np.mean([holds[owner == q].max() for q in range(n)])),
        "P(correct | passage holds a gold answer)": float(ok[holds == 1].mean()) if (holds == 1).any() else None,
        "P(correct | passage without one)": float(ok[holds == 0].mean()) if (holds == 0).any() else None,
        "P(correct | rank)": [round(float(ok[rank == j].mean()), 3) for j in range(int(rank.max()) + 1)],
        "P(correct | gold passage)": float(ok[gold == 1].mean()) if (gold == 1).any() else None,
        "P(correct | other passage)": float(ok[gold == 0].mean()),
        "command": command_line("passage_choice", argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| one passage shown to the reader ({n} questions) | answer contains gold |\n|---|---|")
    for key, value in result.items():
        if isinstance(value, float):
            print(f"| {key} | {value:.3f} |")
    print(f"P(correct | rank 0..): {result['P(correct | rank)']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
