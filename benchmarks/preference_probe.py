"""Does your reader have a preference gap a bridge could close? A quick probe before training one.

Answers N questions with the reader under a few fixed arrangements of the retrieved candidates — all of them
in retriever order, reversed, top-5, top-3, top-1, and (when the data marks gold passages) the gold passage
alone and twice — and prints EM, F1 and answer containment (with a bootstrap CI), as ``bgm evaluate`` does.
A reader that does much better with fewer passages, another order, or a repeated passage than with "all in
retriever order" is what the bridge is for; if the gold passage alone is no better than top-1, choosing passages has little to gain.

    python -m benchmarks.preference_probe --dataset nq_open --questions 50

The gold arrangements read the gold labels (the first gold candidate; top-1 when none was retrieved): a
reference, not a method. Reader calls go through the persistent cache, so a rerun is quick. Installed
without this repository, ``bgm evaluate --data FILE --gold-references --ci-metric contains`` gives the same
rows among all the fixed arrangements.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, command_line
from bgm_cli.common import add_reader_arguments, build_reader
from bgm_model.assets import bundled_dataset
from bgm_model.data import QAExample, load_examples
from bgm_model.evaluation import evaluate
from bgm_model.evaluation.arrangements import (
    Arrangement,
    gold_passage,
    retriever_order,
    reversed_order,
    top_k,
)


def probe_methods(examples: list[QAExample]) -> list[Arrangement]:
    methods = [retriever_order(), reversed_order(), top_k(5), top_k(3), top_k(1)]
    if all(ex.gold is not None for ex in examples):
        methods += [gold_passage(1), gold_passage(2)]
    return methods


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="nq_open", choices=["nq_open", "hotpotqa"], help="bundled dataset")
    p.add_argument("--data", default=None, help="a dataset file instead (any format of bgm_model.data)")
    p.add_argument("--split", default="dev")
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--top-k", type=int, default=10, help="candidates retrieved per question (retrieval sets)")
    p.add_argument("--out", default=str(RESULTS / "preference_probe.json"))
    add_reader_arguments(p)
    args = p.parse_args(argv)

    source = args.data or bundled_dataset(args.dataset, args.split)
    examples = load_examples(source, top_k=args.top_k, limit=args.questions)
    if not examples:
        raise SystemExit(f"no questions in {source}")
    reader = build_reader(args)
    methods = probe_methods(examples)
    start = time.perf_counter()
    report = evaluate(examples, reader, methods, show_progress=True)
    seconds = time.perf_counter() - start
    shown = Path(source).resolve()
    result = {
        "source": str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown),
        "seconds": round(seconds, 1),
        "command": command_line("preference_probe", argv),
        **report.to_dict(),  # the same report `bgm evaluate --output` writes, per question included
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(examples)} questions from {result['source']}, reader {report.reader}, {seconds:.0f} s\n")
    print(report.table(ci_metric="contains"))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
