"""``bgm evaluate``: score a bridge and the fixed baselines with a frozen reader on a QA dataset."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bgm_cli.common import (
    ReaderOptions,
    add_dataset_arguments,
    add_reader_arguments,
    build_reader,
    check_reader_spec,
    load_bridge,
    load_dataset,
    positive,
)
from bgm_cli.errors import UsageError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a bridge (or baselines) with a frozen reader: EM, F1, containment, prompt tokens",
        description="Answer every question with every method (bridges and fixed arrangements of the retrieved "
        "passages) using the frozen reader, and print exact match, token F1, answer containment, mean prompt "
        "tokens and arrangement latency. Reader calls are cached, so a re-run is fast.",
    )
    add_dataset_arguments(p)
    add_reader_arguments(p)
    p.add_argument("--bridge", action="append", default=[], metavar="[NAME=]PATH",
                   help="a saved bridge to evaluate (repeatable; NAME defaults to the folder name)")
    p.add_argument("--baselines", default="all", choices=["all", "basic", "none"],
                   help="fixed arrangements to compare: 'all' (no retrieval, all in retriever order, reversed, "
                   "long-context reorder, top-k with/without reversal and repetition), 'basic' (no retrieval and "
                   "all in retriever order), 'none'")
    p.add_argument("--gold-references", action="store_true",
                   help="also show the gold passage alone and twice (needs gold-passage labels in the data): what "
                   "choosing or repeating the right passage could gain over the fixed arrangements")
    p.add_argument("--top-ks", default="1,2,3,5", help="k values of the top-k baselines, comma separated")
    p.add_argument("--batch-size", type=positive, default=16, help="questions arranged (and bridged) per batch")
    p.add_argument("--ci-metric", default="f1", choices=["em", "f1", "contains"],
                   help="metric shown with a bootstrap 95%% confidence interval")
    p.add_argument("--output", default=None, help="write the full report (per question) as JSON here "
                   "(default: print the table only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bgm_model.evaluation import evaluate
    from bgm_model.evaluation.arrangements import (
        baseline_arrangements,
        bridge_arrangement,
        gold_passage,
        no_retrieval,
        retriever_order,
    )

    try:
        ks = [int(k) for k in args.top_ks.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--top-ks {args.top_ks!r}: give integers separated by commas, e.g. 1,2,3,5") from None
    if args.baselines == "none" and not args.bridge and not args.gold_references:
        raise UsageError("nothing to evaluate: pass --bridge and/or --baselines")
    check_reader_spec(args.reader, ReaderOptions.from_args(args))
    bridges = []  # loaded before the data: a bad --bridge fails at once
    for spec in args.bridge:
        name, _, path = spec.rpartition("=")
        bridges.append((name or f"BGM {Path(path).name}", load_bridge(path, option="--bridge")))
    examples = load_dataset(args.data, corpus=args.corpus, top_k=args.top_k, limit=args.limit)
    methods = {"all": lambda: baseline_arrangements(ks), "basic": lambda: [no_retrieval(), retriever_order()],
               "none": list}[args.baselines]()
    if args.gold_references:
        unlabelled = [ex.id for ex in examples if ex.gold is None]
        if unlabelled:  # bgm_cli.main prints this as one line and exits with status 2
            raise SystemExit(f"--gold-references needs gold-passage labels ('is_gold' or 'gold_passage_ids'); "
                             f"{len(unlabelled)} of {len(examples)} questions have none (e.g. {unlabelled[0]!r})")
        methods += [gold_passage(1), gold_passage(2)]
    for name, bridge in bridges:
        methods.append(bridge_arrangement(bridge, name=name, batch_size=args.batch_size))
    reader = build_reader(args)
    report = evaluate(examples, reader, methods, batch_size=args.batch_size)
    print(f"\n{len(examples)} questions from {args.data}, reader {reader.name}\n")
    print(report.table(ci_metric=args.ci_metric))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report.to_dict(), indent=2))
        logger.info("wrote %s", args.output)
    return 0
