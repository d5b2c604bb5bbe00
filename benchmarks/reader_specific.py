"""Does a bridge learn *its* reader's preference? One bridge per reader, each evaluated on every reader.

The paper's central claim is that the preference gap is reader-specific. This benchmark trains one bridge per
reader on the same training questions with the same recipe (silver search, SL and RL against that reader;
a quarter of the questions held out to choose the SL epoch, the RL step and the best fixed arrangement), then
answers the same dev questions with every (bridge, reader) pair: the 2x2 table for two readers. Next to the
bridges, each reader also answers with the fixed arrangement chosen for it on its held-out training questions
(the validation verdict of ``train_bridge``: every top-k with and without reversal / repetition,
long-context reorder, all candidates in retriever order and reversed), with top-1, and with all candidates in
retriever order (the context-cost baseline).

It runs in three stages so that each reader can work in its own process (one per core) and the expensive
ones resume: ``train`` and ``evaluate`` once per reader, then ``report`` once::

    python -m benchmarks.reader_specific train --reader smollm2 --threads 1
    python -m benchmarks.reader_specific train --reader gemma3-270m --threads 1   # beside the first
    python -m benchmarks.reader_specific evaluate --reader smollm2 --bridges smollm2,gemma3-270m --threads 1
    python -m benchmarks.reader_specific evaluate --reader gemma3-270m --bridges smollm2,gemma3-270m --threads 1
    python -m benchmarks.reader_specific report --readers smollm2,gemma3-270m

``--dataset``, ``--train-questions``, ``--dev-questions``, the reader options and the recipe options must be
the same in every stage. Bridges go to ``--work-dir`` (default ``bgm_output/reader_specific/<dataset>``), one
folder per reader; ``train`` reuses a bridge trained with the same recipe and questions. ``evaluate`` writes
``<results>/reader_specific_<dataset>_<reader>.json`` (per-question rows); ``report`` writes
``reader_specific_<dataset>.json`` and ``.md``: the 2x2 table, and the paired differences (bootstrap 95% CI
over the dev questions) that the targets are about: on each reader its own bridge minus the other reader's,
BGM SL+RL minus the fixed arrangement chosen on validation, and RL minus SL. Every reader call goes through
the persistent reader cache, so a re-run (or the probe's arrangements already answered) costs nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, command_line, paired_rows, parse_with_recipe
from bgm_cli.common import build_reader
from bgm_model.data import QAExample, load_examples
from bgm_model.training.pipeline import BridgeRecipe

logger = logging.getLogger("benchmarks.reader_specific")

BASELINE = "all, retriever order"
TOP_1 = "top-1"
METRIC = {"nq_open": "contains", "hotpotqa": "f1"}
"""The metric each dataset's targets are stated in."""


def default_recipe() -> BridgeRecipe:
    """The quality benchmark's recipe (the demo's, 6 SL epochs, 8 RL steps), a quarter held out."""
    return BridgeRecipe.from_dict({"sl": {"num_epochs": 6}, "rl": {"max_steps": 8}, "validation_fraction": 0.25})


def reader_slug(spec: str, prompt_template: str | None = None) -> str:
    """A folder / file name for a reader spec and its prompt (``smollm2``, ``gemma3-270m_rag``)."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", spec).strip("-")
    if prompt_template:
        slug += "_" + re.sub(r"[^A-Za-z0-9.-]+", "-", Path(prompt_template).stem).strip("-")
    return slug


def load_questions(args: argparse.Namespace) -> tuple[list[QAExample], list[QAExample]]:
    """The first ``--train-questions`` / ``--dev-questions`` of the bundled dataset's splits (or the files)."""
    from bgm_model.assets import bundled_dataset

    train_source = args.train or bundled_dataset(args.dataset, "train")
    dev_source = args.dev or bundled_dataset(args.dataset, "dev")
    train = load_examples(train_source, top_k=args.top_k, limit=args.train_questions)
    dev = load_examples(dev_source, top_k=args.top_k, limit=args.dev_questions)
    if not train or not dev:
        raise SystemExit(f"{args.name}: need training and dev questions, got {len(train)} and {len(dev)}")
    return train, dev


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work_dir or ROOT / "bgm_output" / "reader_specific" / args.name)


def bridge_dir(args: argparse.Namespace, slug: str) -> Path:
    return work_dir(args) / slug / "bgm"


def run_train(args: argparse.Namespace) -> int:
    from bgm_model.training.pipeline import train_bridge

    train, _ = load_questions(args)
    reader = build_reader(args)
    slug = reader_slug(args.reader, args.prompt_template)
    out = bridge_dir(args, slug)
    logger.info("training the %s bridge on %d questions into %s", slug, len(train), out)
    trained = train_bridge(train, reader, out, args.recipe, reuse=True)
    verdict = trained.verdict
    assert verdict is not None  # parse_args requires a validation split
    if trained.reused:  # judged again by this version's rule (every answer it needs is cached)
        from bgm_model import BridgeModel
        from bgm_model.evaluation.verdict import validate_against_fixed

        held_out = set(trained.validation_ids)
        verdict = validate_against_fixed(BridgeModel.from_pretrained(trained.final_dir),
                                         [ex for ex in train if ex.id in held_out], reader,
                                         reward=args.recipe.reward, seed=args.recipe.seed)
    info = {"command": command_line("reader_specific", args.argv), "reader": reader.name, "slug": slug,
            "train": len(train), "validation": len(trained.validation_ids), "seconds": trained.seconds,
            "silver_reader_calls": trained.reader_calls, "sl_selection": trained.sl_selection,
            "rl_selection": trained.rl_selection, "verdict": verdict.to_dict()}
    record = out.parent / "training.json"
    if trained.reused and record.exists():  # the stage times of the run that trained it
        info["seconds"] = json.loads(record.read_text()).get("seconds", info["seconds"])
    record.write_text(json.dumps(info, indent=2) + "\n")
    print(f"{slug}: {verdict.sentence()}")
    print("time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in trained.seconds.items()))
    return 0


def _training_info(args: argparse.Namespace, slug: str) -> dict[str, Any]:
    path = bridge_dir(args, slug).parent / "training.json"
    if not path.exists():
        raise SystemExit(f"no trained bridge for {slug} in {path.parent}: run the train stage with --reader "
                         f"{slug} first")
    return json.loads(path.read_text())


def evaluation_path(args: argparse.Namespace, slug: str) -> Path:
    return Path(args.results) / f"reader_specific_{args.name}_{slug}.json"


def run_evaluate(args: argparse.Namespace) -> int:
    from bgm_model import BridgeModel
    from bgm_model.evaluation import evaluate
    from bgm_model.evaluation.arrangements import bridge_arrangement
    from bgm_model.evaluation.verdict import fixed_arrangements

    _, dev = load_questions(args)
    slug = reader_slug(args.reader, args.prompt_template)
    chosen = _training_info(args, slug)["verdict"]["arrangement"]
    fixed = {m.name: m for m in fixed_arrangements()}
    methods = [fixed[BASELINE], fixed[TOP_1]]
    if chosen not in (BASELINE, TOP_1):
        methods.append(fixed[chosen])
    bridges = [b.strip() for b in args.bridges.split(",") if b.strip()] or [slug]
    for bridge in bridges:
        folder = bridge_dir(args, bridge)
        _training_info(args, bridge)  # a clear error before loading anything
        methods.append(bridge_arrangement(BridgeModel.from_pretrained(folder / "bridge_sl"), name=f"{bridge} SL"))
        if (folder / "bridge" / "config.json").exists():
            methods.append(bridge_arrangement(BridgeModel.from_pretrained(folder / "bridge"), name=f"{bridge} SL+RL"))
    reader = build_reader(args)
    start = time.perf_counter()
    report = evaluate(dev, reader, methods, batch_size=8, show_progress=True)
    result = {"command": command_line("reader_specific", args.argv), "dataset": args.name, "slug": slug,
              "validation_choice": chosen, "bridges": bridges, "seconds": round(time.perf_counter() - start, 1),
              **report.to_dict()}
    path = evaluation_path(args, slug)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(report.table(ci_metric=args.metric))
    print(f"wrote {path}")
    return 0


def best_bridge(methods: dict[str, dict[str, Any]], bridge: str) -> str:
    """The bridge as it ships: SL+RL when it was trained, else SL."""
    return f"{bridge} SL+RL" if f"{bridge} SL+RL" in methods else f"{bridge} SL"


def summarise(evaluations: dict[str, dict[str, Any]], metric: str, margin: float = 0.02) -> dict[str, Any]:
    """The 2x2 (bridge x reader) table and the target checks from each reader's evaluation."""
    readers = list(evaluations)
    summary: dict[str, Any] = {"metric": metric, "margin": margin, "readers": readers, "table": {}, "checks": {}}
    for reader, ev in evaluations.items():
        methods = {m["name"]: m for m in ev["methods"]}
        rows = {name: m["per_example"] for name, m in methods.items()}
        base = methods[BASELINE]
        table = {bridge: {stage: methods[f"{bridge} {stage}"][metric] for stage in ("SL", "SL+RL")
                          if f"{bridge} {stage}" in methods} for bridge in ev["bridges"]}
        summary["table"][reader] = table
        # how often a bridge's output is exactly what a fixed heuristic would show: top-1 alone
        summary.setdefault("top-1 alone", {})[reader] = {
            best_bridge(methods, b): sum(r.get("ids") == [0] for r in rows[best_bridge(methods, b)]) / len(base["per_example"])
            for b in ev["bridges"]}
        own = best_bridge(methods, reader) if reader in ev["bridges"] else None
        checks: dict[str, Any] = {"validation choice": ev["validation_choice"],
                                  "validation choice on dev": methods[ev["validation_choice"]][metric],
                                  "top-1 on dev": methods[TOP_1][metric], "all candidates on dev": base[metric]}
        if own is not None:
            vs_fixed = paired_rows(rows[own], rows[ev["validation_choice"]], metric)
            checks[f"{own} minus {ev['validation_choice']}"] = vs_fixed
            checks["non-inferior to the fixed arrangement"] = vs_fixed["ci_low"] >= -margin
            if ev["validation_choice"] != TOP_1:
                checks[f"{own} minus {TOP_1}"] = paired_rows(rows[own], rows[TOP_1], metric)
            checks["prompt tokens vs all candidates"] = methods[own]["prompt_tokens"] / base["prompt_tokens"]
            if f"{reader} SL+RL" in methods:
                checks["RL minus SL"] = paired_rows(rows[f"{reader} SL+RL"], rows[f"{reader} SL"], metric)
            for other in ev["bridges"]:
                if other != reader:
                    checks[f"own bridge minus the {other} bridge"] = paired_rows(
                        rows[own], rows[best_bridge(methods, other)], metric)
        summary["checks"][reader] = checks
    return summary


def markdown(summary: dict[str, Any], evaluations: dict[str, dict[str, Any]], commands: list[str]) -> str:
    metric, readers = summary["metric"], summary["readers"]
    first = next(iter(evaluations.values()))
    bridges = first["bridges"]
    lines = [f"# Reader-specific bridges: {first['dataset']}, {first['n_examples']} dev questions ({metric})", "",
             *[f"`{c}`" for c in commands], "",
             "| bridge \\ reader | " + " | ".join(readers) + " |", "|---|" + "---|" * len(readers)]
    for bridge in bridges:
        for stage in ("SL", "SL+RL"):
            cells = [summary["table"][r].get(bridge, {}).get(stage) for r in readers]
            if any(c is not None for c in cells):
                lines.append(f"| {bridge} bridge, {stage} | "
                             + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines.append("| fixed arrangement chosen on validation | " + " | ".join(
        f"{summary['checks'][r]['validation choice on dev']:.3f} ({summary['checks'][r]['validation choice']})"
        for r in readers) + " |")
    lines.append("| top-1 | " + " | ".join(f"{summary['checks'][r]['top-1 on dev']:.3f}" for r in readers) + " |")
    lines.append(f"| {BASELINE} | " + " | ".join(f"{summary['checks'][r]['all candidates on dev']:.3f}"
                                                for r in readers) + " |")
    shares = [f"{name} {share:.1%}" for name, share in summary["top-1 alone"][readers[0]].items()]
    lines += ["", f"Share of dev questions on which a bridge shows the top passage alone (on {readers[0]}): "
              + ", ".join(shares) + "."]
    lines += ["", "Paired differences on each reader (mean over the same dev questions, bootstrap 95% CI):", ""]
    for reader in readers:
        for what, value in summary["checks"][reader].items():
            if isinstance(value, dict):
                lines.append(f"- {reader}: {what}: {value['mean']:+.3f} [{value['ci_low']:+.3f}, "
                             f"{value['ci_high']:+.3f}]")
            elif isinstance(value, bool):
                lines.append(f"- {reader}: {what} (lower CI end >= -{summary['margin']}): {'yes' if value else 'no'}")
            elif what == "prompt tokens vs all candidates":
                lines.append(f"- {reader}: {what}: {value:.2f}")
    return "\n".join(lines) + "\n"


def run_report(args: argparse.Namespace) -> int:
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    if not readers:
        raise SystemExit("report needs --readers: the reader slugs of the table, e.g. smollm2,gemma3-270m")
    evaluations = {}
    for slug in readers:
        path = evaluation_path(args, slug)
        if not path.exists():
            raise SystemExit(f"no evaluation for {slug} ({path}): run the evaluate stage with --reader {slug}")
        evaluations[slug] = json.loads(path.read_text())
    summary = summarise(evaluations, args.metric)
    commands = [json.loads((bridge_dir(args, s).parent / "training.json").read_text())["command"] for s in readers
                if (bridge_dir(args, s).parent / "training.json").exists()]
    commands += [ev["command"] for ev in evaluations.values()]
    commands.append(command_line("reader_specific", args.argv))
    out = Path(args.results) / f"reader_specific_{args.name}"
    out.with_suffix(".json").write_text(json.dumps({"commands": commands, **summary}, indent=2) + "\n")
    table = markdown(summary, evaluations, commands)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out}.json, .md")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["train", "evaluate", "report"])
    p.add_argument("--dataset", default="nq_open", choices=sorted(METRIC), help="bundled dataset")
    p.add_argument("--train", default=None, help="a training file instead (any format of bgm_model.data)")
    p.add_argument("--dev", default=None, help="its dev file (with --train)")
    p.add_argument("--name", default=None, help="name of the work folder and results (default: the dataset or "
                   "the --train file's stem)")
    p.add_argument("--train-questions", type=int, default=80)
    p.add_argument("--dev-questions", type=int, default=255)
    p.add_argument("--top-k", type=int, default=10, help="candidates retrieved per question")
    p.add_argument("--bridges", default="", help="evaluate: the bridges (reader slugs) to answer with")
    p.add_argument("--readers", default="smollm2,gemma3-270m", help="report: the readers (slugs) of the table")
    p.add_argument("--metric", default=None, choices=["em", "f1", "contains"],
                   help="the metric of the tables and checks (default: contains on nq_open, f1 on hotpotqa)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--results", default=str(RESULTS))
    args = parse_with_recipe(p, argv, default_recipe())
    args.argv = argv
    if bool(args.train) != bool(args.dev):
        p.error("--train and --dev go together")
    if args.stage == "train" and args.recipe.validation_fraction <= 0:
        p.error("train needs a validation split (--validation-fraction > 0) to choose the fixed arrangement "
                "the bridge is compared with")
    args.name = args.name or (Path(args.train).stem if args.train else args.dataset)
    args.metric = args.metric or METRIC.get(args.dataset, "contains")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return {"train": run_train, "evaluate": run_evaluate, "report": run_report}[args.stage](args)


if __name__ == "__main__":
    raise SystemExit(main())
