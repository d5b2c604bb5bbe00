"""``bgm demo``: the main job on the bundled data and the packaged models."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from bgm_integrations.demo import DemoConfig

    p = subparsers.add_parser(
        "demo",
        help="end to end: record a LangChain RAG chain, train a bridge (SPS, SL, RL), evaluate against baselines",
        description="Runs the whole mission on the bundled NQ-open data (or HotpotQA) with the packaged MiniLM "
        "and SmolLM2-135M models: a LangChain RAG chain answers the training questions while traces are "
        "recorded; silver passage sequences are synthesised from the traces; the bridge is trained with SL "
        "then RL; the bridge and fixed baselines are evaluated on the dev questions. Prints a table, writes "
        "a report, plots and the trained bridge under --output-dir. Reader calls are cached: a re-run is fast.",
    )
    for f in dataclasses.fields(DemoConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], str)
        if f.name == "silver_top_m":
            kind = int
        p.add_argument(flag, type=kind, default=f.default, help=f"{f.metadata['help']} (default: {f.default})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bgm_integrations.demo import DemoConfig, run_demo

    cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    start = time.perf_counter()
    result = run_demo(cfg)
    print(f"\n{result.table}\n")
    print("time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result.seconds.items()))
    print(f"report: {result.report_path}; plots: {', '.join(str(p) for p in result.plots)}")
    print(f"trained bridge saved to: {result.bridge_dir}")
    logger.info("done in %.1f min", (time.perf_counter() - start) / 60)
    return 0
