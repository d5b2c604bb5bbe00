"""Quality benchmark: a trained bridge (SL, SL+RL) against what a user would use instead, on real QA data.

Every method answers the same dev questions with the same frozen reader in one run:

* fixed heuristics: no retrieval; all candidates in retriever order; reversed; long-context reorder ("lost in
  the middle", the order of LangChain's and LlamaIndex's ``LongContextReorder``); every top-k for k in
  ``--ks``, plain / reversed / with the top passage repeated. The **best fixed heuristic** is the best of
  these top-k variants *chosen on the dev questions themselves* (an optimistic baseline; its k is reported).
  With ``--validation-fraction`` the best variant on the held-out training questions is reported too, with
  BGM's difference to it on dev (a heuristic chosen as fairly as the bridge's epoch and RL step);
* rerankers + top-k: MiniLM embedding similarity, and a MiniLM cross-encoder **trained on the training
  questions' gold-passage labels** (supervision the bridge never sees), each with its best k chosen on dev;
* BGM SL-only and BGM SL+RL, trained on the training questions (silver sequences -> SL -> PPO);
* the SPS oracle (greedy search on the dev questions *with their gold answers*): an upper bound, reported
  separately next to the baseline, the best fixed heuristic and BGM on the same questions (all dev questions,
  or the first ``--oracle-questions`` of them: the search costs tens of reader calls a question).

Metrics: exact match, token F1, answer containment (bootstrap 95% CIs over questions), mean prompt tokens,
arrangement latency (ms per question) and reader seconds. Results: ``<results>/quality_<name>.json``,
``.md`` (the table) and ``.png``. Work files (silver sequences, bridges, cross-encoder) go to
``--work-dir`` and are reused by a re-run; every reader call goes through the persistent reader cache.

Run (primary target, ~75 min on 2 CPU cores from an empty cache; minutes when cached):

    python -m benchmarks.quality --dataset nq_open
    # the published run (docs/benchmarks.md; several hours on 2 cores, mostly silver search and evaluation):
    python -m benchmarks.quality --dataset nq_open --train-questions 359 --dev-questions 75 --sl-epochs 5 \
        --rl-steps 40 --rl-batch-size 8 --rl-learning-rate 3e-5 --threads 2
    python -m benchmarks.quality --dataset hotpotqa --train-questions 60 --dev-questions 40
    python -m benchmarks.quality --dataset musique           # MuSiQue train split 70/30 (20 candidates)
    python -m benchmarks.quality --train my_train.jsonl --dev my_dev.jsonl --name mine

For the bridge against the fixed arrangement chosen on held-out questions over all 255 NQ-open dev questions,
with one bridge per reader and each evaluated on every reader, see ``benchmarks/reader_specific.py`` (it
evaluates only the arrangements that comparison needs, so 255 questions fit a few minutes per reader).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, command_line, paired_rows, parse_with_recipe, shared_data_dir
from bgm_cli.common import build_reader
from bgm_model.data import QAExample, load_examples
from bgm_model.evaluation.plots import plot_methods
from bgm_model.training.examples import split_dev
from bgm_model.training.pipeline import BridgeRecipe, train_bridge

logger = logging.getLogger("benchmarks.quality")

TARGET_DATASET = "nq_open"
BASELINE = "all, retriever order"
ORACLE = "SPS oracle (uses gold answers)"


def load_split(args: argparse.Namespace, embedder: Any = None) -> tuple[str, list[QAExample], list[QAExample]]:
    """(name, train examples, dev examples) for ``--dataset`` or ``--train/--dev``; retrieval sets get their
    candidates from ``embedder`` (default: a fresh MiniLM)."""
    if args.train:
        name = args.name or Path(args.train).stem
        train = load_examples(args.train, top_k=args.top_k, limit=args.train_questions, embedder=embedder)
        if args.dev:
            return name, train, load_examples(args.dev, top_k=args.top_k, limit=args.dev_questions, embedder=embedder)
        return (name, *split_off_dev(train, args))
    if args.dataset in ("nq_open", "hotpotqa"):
        from bgm_model.assets import bundled_dataset

        train = load_examples(bundled_dataset(args.dataset, "train"), top_k=args.top_k, limit=args.train_questions,
                              embedder=embedder)
        dev = load_examples(bundled_dataset(args.dataset, "dev"), top_k=args.top_k, limit=args.dev_questions,
                            embedder=embedder)
        return args.name or args.dataset, train, dev
    if args.dataset == "musique":
        examples = load_examples(shared_data_dir() / "musique" / "train.jsonl")
        return (args.name or "musique", *split_off_dev(examples, args))
    raise SystemExit(f"unknown --dataset {args.dataset!r}")


def split_off_dev(examples: list[QAExample], args: argparse.Namespace) -> tuple[list[QAExample], list[QAExample]]:
    """A seeded 70/30 split of one file into train and dev questions (the trainers' split, then capped by the
    size options)."""
    train, dev = split_dev(examples, 0.3, args.recipe.seed)
    return train[: args.train_questions], dev[: args.dev_questions]


def train_cross_encoder(train: list[QAExample], work: Path, args: argparse.Namespace) -> Any:
    """The supervised reranker baseline: MiniLM cross-encoder trained listwise on the gold-passage labels."""
    from bgm_model.evaluation.cross_encoder import CrossEncoder

    folder = work / "cross_encoder"
    stamp = {"questions": sorted(ex.id for ex in train), "epochs": args.ce_epochs, "lr": args.ce_learning_rate,
             "loss": "listwise", "seed": args.recipe.seed}
    if (folder / "bgm_stamp.json").exists() and json.loads((folder / "bgm_stamp.json").read_text()) == stamp:
        logger.info("reusing the cross-encoder in %s", folder)
        return CrossEncoder(folder)
    labelled = [ex for ex in train if ex.gold is not None and any(ex.gold)]
    if not labelled:
        logger.warning("no gold passage among the training candidates: the cross-encoder baseline is skipped")
        return None
    logger.info("cross-encoder: %d of %d training questions have a gold passage among their candidates",
                len(labelled), len(train))
    encoder = CrossEncoder()
    encoder.fit_listwise([ex.question for ex in labelled], [ex.passages for ex in labelled],
                         [[float(g) for g in ex.gold] for ex in labelled],  # type: ignore[union-attr]
                         epochs=args.ce_epochs, learning_rate=args.ce_learning_rate, seed=args.recipe.seed)
    encoder.save_pretrained(folder)
    (folder / "bgm_stamp.json").write_text(json.dumps(stamp))
    return encoder


def oracle_sequences(dev: list[QAExample], reader: Any, work: Path, recipe: BridgeRecipe) -> list[Any]:
    """Silver sequences of the dev questions: greedy search with their gold answers (an upper bound)."""
    from bgm_model.rewards import get_reward
    from bgm_model.training.silver import read_silver, synthesize_to_file

    path = work / "oracle_silver.jsonl"
    synthesize_to_file(dev, reader, path, reward=get_reward(recipe.reward), set_aside_mismatched=True,
                       config=recipe.silver)
    wanted = {ex.id for ex in dev}
    return [s for s in read_silver(path) if s.id in wanted]


def ceiling(dev: list[QAExample], oracle: list[Any], threshold: float = 1.0) -> dict[str, Any]:
    """What choosing passages *could* gain with this reader, from the oracle search's own scans (no reader
    calls): the share of dev questions answered correctly (primary reward >= ``threshold``, i.e. the answer
    contains a gold answer for the default reward) by the top-1 passage alone, by the gold passage alone,
    by the best single passage, and by the oracle's sequence of up to ``recipe.silver.max_length`` passages."""
    by_id = {ex.id: ex for ex in dev}
    rows = []
    for rec in oracle:
        if not rec.scanned:
            continue
        single = {int(i): p >= threshold for i, p, _ in rec.scanned[0]}
        gold = by_id[rec.id].gold
        gold_first = next((i for i, g in enumerate(gold or []) if g), None)
        rows.append({"top-1 alone": single.get(0, False),
                     "gold passage alone (when retrieved)": single.get(gold_first, False) if gold_first is not None else None,
                     "best single passage": any(single.values()),
                     "oracle sequence": rec.score >= threshold})
    if not rows:
        return {}
    out: dict[str, Any] = {"questions": len(rows)}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = {"share": sum(values) / len(values), "of": len(values)} if values else None
    return out


def best_of(report: Any, names: list[str], metric: str) -> Any:
    """The method among ``names`` with the highest ``metric`` (containment, then F1, then fewer prompt
    tokens break ties)."""
    candidates = [report.by_name(n) for n in names]
    return max(candidates, key=lambda m: (getattr(m, metric), m.contains, m.f1, -m.prompt_tokens))


def paired_difference(report: Any, a: str, b: str, metric: str) -> dict[str, float]:
    """Mean of ``a - b`` over the same questions, with a bootstrap 95% CI of the paired differences."""
    return paired_rows(report.by_name(a).per_example, report.by_name(b).per_example, metric)


def summarise(report: Any, groups: dict[str, list[str]], metric: str) -> dict[str, Any]:
    """Best-of choices, target checks and paired differences (reported, never asserted)."""
    best_heuristic = best_of(report, groups["top-k heuristics"], metric)
    summary: dict[str, Any] = {"metric": metric, "best fixed heuristic": best_heuristic.name}
    for label in ("embedding rerank", "cross-encoder"):
        if groups.get(label):
            summary[f"best {label}"] = best_of(report, groups[label], metric).name
    base = report.by_name(BASELINE)
    checks = {}
    for bgm in groups["BGM"]:
        m = report.by_name(bgm)
        checks[bgm] = {
            f"{metric} vs {BASELINE} (ratio)": getattr(m, metric) / getattr(base, metric) if getattr(base, metric) else None,
            f"{metric} minus best fixed heuristic ({best_heuristic.name})": paired_difference(
                report, bgm, best_heuristic.name, metric),
            "prompt tokens vs all candidates (ratio)": m.prompt_tokens / base.prompt_tokens,
        }
        if "best cross-encoder" in summary:
            checks[bgm][f"{metric} minus best cross-encoder ({summary['best cross-encoder']})"] = paired_difference(
                report, bgm, summary["best cross-encoder"], metric)
    if "BGM SL+RL" in groups["BGM"] and "BGM SL" in groups["BGM"]:
        checks["RL over SL"] = {metric: paired_difference(report, "BGM SL+RL", "BGM SL", metric),
                                "f1": paired_difference(report, "BGM SL+RL", "BGM SL", "f1")}
    summary["checks"] = checks
    return summary


def validation_heuristic(validation_report: Any, report: Any, groups: dict[str, list[str]], metric: str
                         ) -> dict[str, Any]:
    """The fixed heuristic chosen on the held-out training questions (the data the bridge's epoch and RL step
    are chosen on) and BGM's paired difference to it on dev. The dev-chosen best heuristic is the maximum of
    many noisy means on the dev questions themselves, an optimistic bar; this one is chosen as fairly as the
    bridge."""
    chosen = best_of(validation_report, groups["top-k heuristics"], metric)
    return {
        "name": chosen.name,
        "validation_questions": validation_report.n_examples,
        "validation": {m.name: getattr(m, metric) for m in validation_report.methods},
        "dev": getattr(report.by_name(chosen.name), metric),
        "checks": {bgm: paired_difference(report, bgm, chosen.name, metric) for bgm in groups["BGM"]},
    }


def markdown(name: str, report: Any, summary: dict[str, Any], command: str, info: dict[str, Any],
             oracle_report: Any = None) -> str:
    lines = [
        f"# Quality benchmark: {name}",
        "",
        f"`{command}`",
        "",
        f"{info['train']} training questions"
        + (f" ({info['validation']} of them held out to choose the SL epoch and the RL step)"
           if info.get("validation") else "")
        + f", {report.n_examples} dev questions, {info['candidates']} candidates "
        f"per question; reader `{report.reader}`; reader time {report.reader_seconds / 60:.1f} min for "
        f"{report.reader_calls} answers (cache hits included). Best fixed heuristic (chosen on dev): "
        f"**{summary['best fixed heuristic']}**" + (f"; best cross-encoder: **{summary['best cross-encoder']}**"
                                                     if "best cross-encoder" in summary else "") + ".",
        "",
        report.table(ci_metric=summary["metric"]),
        "",
        "Paired differences (mean over the same questions, bootstrap 95% CI):",
        "",
    ]
    for method, checks in summary["checks"].items():
        for what, value in checks.items():
            if isinstance(value, dict):
                lines.append(f"- {method}: {what}: {value['mean']:+.3f} [{value['ci_low']:+.3f}, {value['ci_high']:+.3f}]")
            elif value is not None:
                lines.append(f"- {method}: {what}: {value:.2f}")
    fair = summary.get("validation heuristic")
    if fair:
        metric = summary["metric"]
        lines += ["", f"Best fixed heuristic chosen on the {fair['validation_questions']} held-out training questions "
                  f"instead of on dev (as the bridge's epoch and RL step are): **{fair['name']}** ({metric} "
                  f"{fair['validation'][fair['name']]:.3f} there, {fair['dev']:.3f} on dev).", ""]
        for bgm, value in fair["checks"].items():
            lines.append(f"- {bgm}: {metric} minus it on dev: {value['mean']:+.3f} "
                         f"[{value['ci_low']:+.3f}, {value['ci_high']:+.3f}]")
    sl_selection = summary.get("sl_selection")
    if sl_selection:
        rewards = ", ".join(f"epoch {k}: {v:.3f}" for k, v in sl_selection["validation_reward"].items())
        lines += ["", f"BGM SL is the SL epoch with the best reward on {sl_selection['validation_questions']} "
                  f"held-out training questions: epoch {sl_selection['kept_epoch']} of {rewards}."]
    selection = summary.get("rl_selection")
    if selection:
        rewards = ", ".join(f"step {k}: {v:.3f}" for k, v in selection["validation_reward"].items())
        lines += ["", f"BGM SL+RL is the RL step with the best reward on {selection['validation_questions']} held-out "
                  f"training questions: step {selection['kept_step']} (0 = the SL bridge) of {rewards}."]
    if oracle_report is not None:
        lines += ["", f"Upper bound: the SPS oracle searched with the gold answers, on {oracle_report.n_examples} "
                  f"of the {report.n_examples} dev questions, next to the same questions' other results:", "",
                  oracle_report.table(ci_metric=summary["metric"])]
    if summary.get("ceiling"):
        lines += ["", "What choosing passages could gain with this reader (from the SPS oracle's scans on those "
                  "questions, reward >= 1, no extra reader calls):", ""]
        for what, value in summary["ceiling"].items():
            if isinstance(value, dict):
                lines.append(f"- {what}: {value['share']:.3f} of {value['of']} questions")
    return "\n".join(lines) + "\n"


def default_recipe() -> BridgeRecipe:
    """The benchmark's training recipe: the demo's, with 6 SL epochs and 8 RL steps."""
    return BridgeRecipe.from_dict({"sl": {"num_epochs": 6}, "rl": {"max_steps": 8}})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options; ``args.recipe`` is the training recipe they (and ``--config``) describe."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=TARGET_DATASET, choices=["nq_open", "hotpotqa", "musique"])
    p.add_argument("--train", default=None, help="any training JSONL in the project's format (overrides --dataset)")
    p.add_argument("--dev", default=None, help="its dev JSONL (default: a seeded 70/30 split of --train)")
    p.add_argument("--name", default=None, help="name of the results files (default: dataset or file stem)")
    p.add_argument("--train-questions", type=int, default=120)
    p.add_argument("--dev-questions", type=int, default=50)
    p.add_argument("--top-k", type=int, default=10, help="candidates retrieved per question (retrieval sets)")
    p.add_argument("--ks", default="1,2,3,5", help="k values of the top-k heuristics and rerankers")
    p.add_argument("--metric", default="contains", choices=["em", "f1", "contains"],
                   help="metric that chooses the best heuristic and is checked against the targets")
    p.add_argument("--no-oracle", action="store_true", help="skip the SPS oracle on the dev questions")
    p.add_argument("--oracle-questions", type=int, default=0,
                   help="search the oracle on the first N dev questions only (default 0: all of them)")
    p.add_argument("--ce-epochs", type=int, default=3, help="cross-encoder training epochs")
    p.add_argument("--ce-learning-rate", type=float, default=2e-5, help="cross-encoder learning rate")
    p.add_argument("--no-validation-heuristic", action="store_true",
                   help="with --validation-fraction: skip choosing the best fixed heuristic on the held-out "
                        "training questions too (costs every top-k variant on those questions)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--work-dir", default=None, help="silver sequences, bridges, cross-encoder (default: bgm_output/quality/NAME)")
    p.add_argument("--results", default=str(RESULTS), help="where JSON, Markdown and PNG go")
    # --seed also seeds the 70/30 split and the cross-encoder.
    args = parse_with_recipe(p, argv, default_recipe())
    if args.oracle_questions < 0:
        p.error(f"--oracle-questions must be >= 0 (0: every dev question), got {args.oracle_questions}")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from bgm_model import BridgeModel
    from bgm_model.data.retrieval import MiniLMEmbedder
    from bgm_model.evaluation import evaluate
    from bgm_model.evaluation.arrangements import (
        bridge_arrangement,
        embedding_ranker,
        fixed_sequences,
        long_context_reorder,
        no_retrieval,
        retriever_order,
        reversed_order,
        top_k_variants,
    )

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = command_line("quality", argv)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    embedder = MiniLMEmbedder()  # retrieval and the embedding-rerank baseline share one model
    name, train, dev = load_split(args, embedder)
    if not train or not dev:  # fail before hours of training, not at evaluation
        raise SystemExit(f"{name}: need training and dev questions, got {len(train)} and {len(dev)}")
    work = Path(args.work_dir or ROOT / "bgm_output" / "quality" / name)
    work.mkdir(parents=True, exist_ok=True)
    reader = build_reader(args)
    logger.info("%s: %d train / %d dev questions, reader %s", name, len(train), len(dev), reader.name)
    recipe = args.recipe
    trained = train_bridge(train, reader, work / "bgm", recipe, reuse=True)
    seconds.update(trained.seconds)

    t = time.perf_counter()
    cross_encoder = train_cross_encoder(train, work, args)
    seconds["cross-encoder"] = time.perf_counter() - t
    oracle: list[Any] = []
    oracle_dev = dev[: args.oracle_questions] if args.oracle_questions > 0 else dev
    if not args.no_oracle:
        t = time.perf_counter()
        oracle = oracle_sequences(oracle_dev, reader, work, recipe)
        seconds["SPS oracle"] = time.perf_counter() - t

    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    groups: dict[str, list[str]] = {}
    methods = [no_retrieval(), retriever_order(), reversed_order(), long_context_reorder()]
    heuristics = top_k_variants(ks)
    groups["top-k heuristics"] = [m.name for m in heuristics]
    methods += heuristics
    embedding = top_k_variants(ks, ranker=embedding_ranker(embedder), label="embedding rerank")
    groups["embedding rerank"] = [m.name for m in embedding]
    methods += embedding
    if cross_encoder is not None:
        def rank_with_cross_encoder(examples: Any) -> list[list[int]]:
            return cross_encoder.rerank_batch([ex.question for ex in examples], [ex.passages for ex in examples])

        ce = top_k_variants(ks, ranker=rank_with_cross_encoder, label="cross-encoder")
        groups["cross-encoder"] = [m.name for m in ce]
        methods += ce
    bgm = [bridge_arrangement(BridgeModel.from_pretrained(trained.sl_dir), name="BGM SL")]
    if trained.rl_dir is not None:
        bgm.append(bridge_arrangement(BridgeModel.from_pretrained(trained.rl_dir), name="BGM SL+RL"))
    groups["BGM"] = [m.name for m in bgm]
    methods += bgm

    t = time.perf_counter()
    report = evaluate(dev, reader, methods, batch_size=8)
    summary = summarise(report, groups, args.metric)
    if trained.sl_selection is not None:
        summary["sl_selection"] = trained.sl_selection
    if trained.rl_selection is not None:
        summary["rl_selection"] = trained.rl_selection
    held_out = set(trained.validation_ids)
    if held_out and not args.no_validation_heuristic:
        validation = [ex for ex in train if ex.id in held_out]
        summary["validation heuristic"] = validation_heuristic(
            evaluate(validation, reader, heuristics, batch_size=8), report, groups, args.metric)
    oracle_report = None
    if oracle:
        # The upper bound next to the methods it bounds, on the questions it was searched for (cached answers).
        by_name = {m.name: m for m in methods}
        compared = dict.fromkeys([BASELINE, summary["best fixed heuristic"], *groups["BGM"]])
        oracle_report = evaluate(oracle_dev, reader, [*(by_name[n] for n in compared), fixed_sequences(
            ORACLE, {r.id: r.ids for r in oracle})], batch_size=8)
        summary["ceiling"] = ceiling(oracle_dev, oracle)
    seconds["evaluation"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    info = {"train": len(train), "dev": len(dev), "candidates": round(sum(len(e.passages) for e in dev) / len(dev), 1),
            "validation": trained.validation_questions}
    payload = {
        "command": command, "dataset": name, **info, "reader": report.reader, "recipe": recipe.to_dict(),
        "silver_reader_calls": trained.reader_calls, "seconds": seconds, "summary": summary,
        "methods": [{**m.summary(), **{f"{k}_ci": m.interval(k) for k in ("em", "f1", "contains")}}
                    for m in report.methods],
        "groups": groups, "per_example": {m.name: m.per_example for m in report.methods},
        "oracle": None if oracle_report is None else {
            "questions": oracle_report.n_examples,
            "methods": [{**m.summary(), **{f"{k}_ci": m.interval(k) for k in ("em", "f1", "contains")}}
                        for m in oracle_report.methods]},
        "torch_threads": torch.get_num_threads(),
    }
    (results / f"quality_{name}.json").write_text(json.dumps(payload, indent=2))
    table = markdown(name, report, summary, command, info, oracle_report)
    (results / f"quality_{name}.md").write_text(table)
    plot_methods(results / f"quality_{name}.png", report, args.metric, title=f"{name} dev: {args.metric} (95% CI)")
    print("\n" + table)
    print("time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()))
    print(f"wrote {results}/quality_{name}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
