"""Does a trained reranker find the gold passage more often than the retriever does? No reader calls.

On NQ-open the reader answers from the gold passage far more often than from any other (see
``benchmarks/passage_choice.py``), so a bridge can beat the retriever's top-1 only by putting the gold passage
first where the retriever did not. This checks whether the strongest supervised signal available offline can
do that: the MiniLM cross-encoder that ``benchmarks/quality.py`` trained on the training questions' gold
labels. It reports, over questions whose candidates include a gold passage, how often the first passage is a
gold one under

* the retriever's order (MiniLM similarity);
* the cross-encoder's order;
* a mix of both (z-scored per question, ``ce + weight * retriever``), the weight chosen on *selection*
  questions: training questions after the first ``--skip`` (keep them out of the cross-encoder's training set).

Run after the quality benchmark, e.g.:

    python -m benchmarks.gold_ranking --cross-encoder bgm_output/quality/nq_open_1000/cross_encoder \\
        --skip 1000 --select-questions 300 --dev-questions 300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, command_line
from bgm_model.assets import bundled_dataset
from bgm_model.data import QAExample, load_examples

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def zscore(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() + 1e-9)


def scored(examples: list[QAExample], cross_encoder: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(cross-encoder z-scores, retriever z-scores, gold flags) per question that has a gold candidate."""
    labelled = [e for e in examples if e.gold and any(e.gold)]
    missing = [e.id for e in labelled if not e.scores]
    if missing:
        raise SystemExit(f"{len(missing)} questions carry no retriever scores (e.g. {missing[0]}): this check needs a "
                         "retrieval dataset (nq_open) or a file whose candidates have scores")
    if not labelled:
        raise SystemExit("no question has a gold passage among its candidates: nothing to measure")
    ce_scores = [np.array(cross_encoder.score(e.question, e.passages), dtype=float) for e in labelled]
    return [(zscore(c), zscore(np.array(e.scores, dtype=float)), np.array(e.gold, dtype=bool))
            for c, e in zip(ce_scores, labelled, strict=True)]


def gold_first(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], weight: float | None) -> float:
    """Share of questions whose top passage is gold; ``weight=None`` ranks by the retriever alone. Ties keep the
    retriever's order (argmax takes the earliest index)."""
    hits = [gold[int(np.argmax(retriever if weight is None else ce + weight * retriever))]
            for ce, retriever, gold in rows]
    return float(np.mean(hits))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cross-encoder", required=True, help="folder of a saved bgm_model.cross_encoder.CrossEncoder")
    p.add_argument("--dataset", default="nq_open", help="bundled dataset (with gold-passage labels)")
    p.add_argument("--train", default=None, help="a training file instead of the bundled one")
    p.add_argument("--dev", default=None, help="a dev file instead of the bundled one")
    p.add_argument("--skip", type=int, default=1000, help="training questions the cross-encoder was trained on")
    p.add_argument("--select-questions", type=int, default=300)
    p.add_argument("--dev-questions", type=int, default=300)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--out", default=str(RESULTS / "gold_ranking.json"))
    args = p.parse_args(argv)

    from bgm_model.evaluation.cross_encoder import CrossEncoder

    train_source = args.train or bundled_dataset(args.dataset, "train")
    dev_source = args.dev or bundled_dataset(args.dataset, "dev")
    select = load_examples(train_source, top_k=args.top_k, limit=args.skip + args.select_questions)[args.skip:]
    dev = load_examples(dev_source, top_k=args.top_k, limit=args.dev_questions)
    if not select:
        raise SystemExit(f"no training questions left after --skip {args.skip}")
    cross_encoder = CrossEncoder(args.cross_encoder)
    select_rows, dev_rows = scored(select, cross_encoder), scored(dev, cross_encoder)
    on_select = {w: gold_first(select_rows, w) for w in WEIGHTS}
    best = max(WEIGHTS, key=lambda w: on_select[w])  # earliest (most cross-encoder) weight wins ties
    result = {
        "selection questions with a gold candidate": len(select_rows),
        "dev questions with a gold candidate": len(dev_rows),
        "gold first, retriever order": gold_first(dev_rows, None),
        "gold first, cross-encoder": gold_first(dev_rows, 0.0),
        f"gold first, cross-encoder + {best:g} x retriever (weight chosen on selection)": gold_first(dev_rows, best),
        "mix weight": best,
        "selection questions, gold first by weight": {f"{w:g}": round(v, 4) for w, v in on_select.items()},
        "selection questions, gold first, retriever order": gold_first(select_rows, None),
        "command": command_line("gold_ranking", argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"| ranking ({len(dev_rows)} dev questions with a gold candidate) | gold passage first |\n|---|---|")
    for key, value in result.items():
        if key.startswith("gold first"):
            print(f"| {key[len('gold first, '):]} | {value:.3f} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
