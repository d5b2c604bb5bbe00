"""``bgm demo``: the main job on the bundled data and the packaged models.

Prints the evaluation table, the absolute paths of the report, the plots and the trained bridge, and the code
that loads that bridge into LangChain and LlamaIndex. The trainers' resume checkpoints are removed after the
run (``--keep-checkpoints`` keeps them).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from typing import Any

from .args import (
    add_dataclass_arguments,
    add_recipe_arguments,
    dataclass_from_args,
    load_config_file,
    recipe_from_args,
)
from .common import ReaderOptions, add_reader_arguments, check_reader_spec, check_reward
from .errors import InputError, UsageError, existing_path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from .demo_app import DemoConfig

    p = subparsers.add_parser(
        "demo",
        help="end to end: record a LangChain RAG chain, train a bridge (SPS, SL, RL), evaluate against baselines",
        description="Runs the whole mission on the bundled NQ-open data (or HotpotQA) with the packaged MiniLM "
        "and SmolLM2-135M models: a LangChain RAG chain answers the training questions while traces are "
        "recorded; silver passage sequences are synthesised from the traces; the bridge is trained with SL "
        "then RL; the bridge and fixed baselines are evaluated on the dev questions. Prints a table, writes "
        "a report, plots and the trained bridge under --output-dir. Reader calls are cached: a re-run is fast. "
        "Every setting of the training recipe is a flag (--sl-num-epochs, --rl-max-steps, --silver-top-m, ...); "
        "--config FILE loads a recipe first.",
    )
    add_dataclass_arguments(p, DemoConfig, exclude=("recipe", "reader", "reader_cache", "reader_options"), title="demo")
    add_reader_arguments(p)
    add_recipe_arguments(p, DemoConfig().recipe)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~bgm_cli.demo_app.DemoConfig` of ``bgm demo``'s flags (and ``--config`` recipe)."""
    from .demo_app import DemoConfig

    if getattr(args, "config", None) is not None:
        existing_path(args.config, "--config")
        try:
            load_config_file(args.config)
        except ValueError as e:  # not JSON / YAML, or not a mapping: a bad input file
            raise InputError(str(e)) from None
    try:
        recipe = recipe_from_args(args, DemoConfig().recipe)
        cfg = dataclass_from_args(args, DemoConfig, defaults=DemoConfig(recipe=recipe))
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad option: {e}") from e
    return replace(cfg, reader=args.reader, reader_cache=args.reader_cache, reader_options=ReaderOptions.from_args(args))


def check_config(cfg: Any) -> None:
    """:class:`~bgm_cli.errors.UsageError` for a reader or reward name of ``cfg`` that names nothing, before
    anything is loaded."""
    check_reader_spec(cfg.reader, cfg.reader_options)
    check_reward(cfg.recipe.reward)
    check_reward(cfg.recipe.silver.secondary, "--silver-secondary")


def run(args: argparse.Namespace) -> int:
    from .demo_app import run_demo, usage_snippet

    cfg = config_from_args(args)
    check_config(cfg)
    start = time.perf_counter()
    result = run_demo(cfg)
    print(f"\n{result.table}\n")
    print("time per stage: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in result.seconds.items()))
    print(f"report: {result.report_path.resolve()}")
    print("plots: " + ", ".join(str(p.resolve()) for p in result.plots))
    print(f"trained bridge: {result.bridge_dir.resolve()}")
    print(f"\nuse it:\n\n{usage_snippet(result.bridge_dir)}\n")
    logger.info("done in %.1f min", (time.perf_counter() - start) / 60)
    return 0
