"""``bgm train sl`` and ``bgm train rl``: the two training stages of the bridge; ``bgm train all``: silver
search, SL and RL in one command (:func:`~bgm_model.training.pipeline.train_bridge`, the demo's recipe).

Examples::

    bgm train all --data train.jsonl --output-dir runs/my_llm --reader openai:MODEL --base-url URL \
        --validation-fraction 0.2 --require-better     # refuses a bridge that loses to a fixed arrangement
    bgm train sl --silver runs/silver/hotpotqa.jsonl --from-encoder --output-dir runs/sl --num-epochs 3
    bgm train rl --data /work/shared/data/hotpotqa/train.jsonl --init runs/sl/best --output-dir runs/rl
    accelerate launch --num_processes 2 -m bgm_cli.main train sl ...   # several processes / GPUs

Every option of a stage's config (:class:`SLConfig` / :class:`RLConfig`) is a ``--kebab-case`` flag with that
field's help text (:mod:`bgm_cli.args`); ``--config FILE`` loads a JSON or YAML config first, explicit flags
override it.

A stage writes into ``OUTPUT_DIR`` (see the trainers' module docstrings)::

    final/       the bridge at the end of training: what to use or pass on (``--init`` of the RL stage)
    best/        the bridge with the best dev result so far (only when there is dev data)
    checkpoint/  the resume state (bridge, optimizer, scheduler, RNG); kept, so running the same command
                 again resumes from it (``--no-resume`` starts over); delete it once the run is done
    log.jsonl, <stage>_config.json

``bgm demo`` (and :func:`~bgm_model.training.pipeline.train_bridge`) remove ``checkpoint/`` after a run
unless asked to keep it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .args import add_config_argument, add_dataclass_arguments, dataclass_from_args, load_config_file
from .common import (
    ReaderOptions,
    add_reader_arguments,
    build_reader,
    check_reader_spec,
    count,
    load_bridge,
    load_dataset,
    load_examples_from_traces,
    load_silver,
    positive,
)
from .errors import InputError, UsageError, existing_path

logger = logging.getLogger(__name__)

#: BridgeConfig fields a new bridge (``--from-encoder``) takes from the command line.
NEW_BRIDGE_FIELDS = ("max_passages", "max_output_length", "relevance_prior")


def config_from_args(args: argparse.Namespace, config_cls: Any) -> Any:
    """The stage config of the flags over ``--config`` over the class defaults; a bad value is a
    :class:`~bgm_cli.errors.UsageError`."""
    file = None
    if args.config is not None:
        existing_path(args.config, "--config")
        try:
            file = load_config_file(args.config)
        except ValueError as e:  # not JSON / YAML, or not a mapping: a bad input file
            raise InputError(str(e)) from None
    try:
        config = dataclass_from_args(args, config_cls, config=file)
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad option: {e}") from e
    from .common import check_reward

    for name in ("reward", "eval_metric"):
        if hasattr(config, name):
            check_reward(getattr(config, name), "--" + name.replace("_", "-"))
    return config


def _add_bridge_arguments(parser: argparse.ArgumentParser, *, default_init: bool) -> None:
    from bgm_model import BridgeConfig

    g = parser.add_argument_group("bridge")
    src = g.add_mutually_exclusive_group(required=not default_init)
    src.add_argument(
        "--init",
        default=None,
        help="start from a saved bridge (directory written by "
        "save_pretrained, e.g. the SL run's final/ or best/, or a hub id)",
    )
    src.add_argument(
        "--from-encoder",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="warm-start a new BERT2BERT bridge from an encoder checkpoint (default: the packaged "
        "all-MiniLM-L6-v2)",
    )
    add_dataclass_arguments(parser, BridgeConfig, include=NEW_BRIDGE_FIELDS,
                            title="new bridge (BridgeConfig; --from-encoder only)")


def build_bridge(args: argparse.Namespace) -> Any:
    """The bridge to train: ``--init``'s saved one, or a warm start with the ``BridgeConfig`` flags given."""
    from bgm_model import BridgeConfig, BridgeModel

    if args.init:
        return load_bridge(args.init, option="--init")
    if args.from_encoder:
        existing_path(args.from_encoder, "--from-encoder")
    return BridgeModel.from_encoder(args.from_encoder or None, config=dataclass_from_args(args, BridgeConfig))


def register(subparsers: Any) -> None:
    from bgm_model.training.rl_config import RLConfig
    from bgm_model.training.sl_config import SLConfig

    train = subparsers.add_parser(
        "train",
        help="train the bridge (sl: teacher forcing on silver sequences; rl: PPO against the frozen reader)",
    )
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)

    sl = stages.add_parser(
        "sl",
        help="supervised stage on silver passage sequences",
        description="Teacher forcing on silver passage sequences (from `bgm synthesize`). Evaluates on dev "
        "each epoch (downstream metric with --reader, else dev loss and exact-sequence accuracy). Writes "
        "OUTPUT_DIR/final (the trained bridge), OUTPUT_DIR/best (the best dev epoch) and "
        "OUTPUT_DIR/checkpoint, from which the same command resumes (delete it when done).",
    )
    sl.add_argument("--silver", type=Path, required=True, help="silver sequences JSONL (training records)")
    sl.add_argument(
        "--dev-silver",
        type=Path,
        default=None,
        help="silver sequences JSONL used as dev set (default: split --dev-fraction off --silver)",
    )
    sl.add_argument("--limit", type=count, default=None, help="use only the first N training records (default: all)")
    add_config_argument(sl, "SLConfig")
    sl.add_argument(
        "--no-reader",
        dest="use_reader",
        action="store_false",
        help="evaluate with dev loss / exact-sequence accuracy only (no reader is loaded)",
    )
    add_reader_arguments(sl)
    _add_bridge_arguments(sl, default_init=False)
    add_dataclass_arguments(sl, SLConfig)
    sl.set_defaults(func=_run_sl)

    rl = stages.add_parser(
        "rl",
        help="RL stage (PPO) against the frozen reader",
        description="PPO with a group-mean baseline and a KL penalty to the initial (SL) bridge. The reward is "
        "the downstream score of the reader's answer on the sampled passage sequence. Writes OUTPUT_DIR/final "
        "(the trained bridge), OUTPUT_DIR/best (the best dev step, with --dev-data) and OUTPUT_DIR/checkpoint, "
        "from which the same command resumes (delete it when done).",
    )
    rl.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset JSONL with questions, candidate passages and gold answers (see bgm_model.data); "
        "give this or --traces",
    )
    rl.add_argument(
        "--traces",
        type=Path,
        default=None,
        help="traces JSONL instead of --data (traces without gold answers are skipped)",
    )
    rl.add_argument("--dev-data", type=Path, default=None,
                    help="dataset JSONL used as dev set (default: split --dev-fraction off the training questions)")
    rl.add_argument("--corpus", type=Path, default=None,
                    help="passage pool of a retrieval dataset (default: corpus.jsonl beside --data)")
    rl.add_argument(
        "--top-k", type=positive, default=10, help="candidates retrieved per question for a retrieval set"
    )
    rl.add_argument("--limit", type=count, default=None, help="use only the first N questions (default: all)")
    add_config_argument(rl, "RLConfig")
    add_reader_arguments(rl)
    _add_bridge_arguments(rl, default_init=False)
    add_dataclass_arguments(rl, RLConfig)
    rl.set_defaults(func=_run_rl)

    whole = stages.add_parser(
        "all",
        help="silver search, SL and RL in one run (the demo's recipe), with the validation verdict",
        description="Synthesises silver passage sequences for the training questions, trains the bridge on "
        "them (SL), then with PPO against the reader (RL), as bgm demo does, into OUTPUT_DIR (silver.jsonl, "
        "bridge_sl/, bridge/, recipe.json). With --validation-fraction, the bridge that ships is compared "
        "with every fixed arrangement (top-k with and without reversal / repetition, long-context reorder) on "
        "the held-out questions, and the verdict goes into its model card; --require-better refuses a bridge "
        "that loses beyond the 95%% CI (exit status 1, the bridge moved to <dir>.rejected).",
    )
    whole.add_argument("--data", type=Path, default=None,
                       help="dataset JSONL of training questions (see bgm_model.data); give this or --traces")
    whole.add_argument("--traces", type=Path, default=None,
                       help="traces JSONL instead of --data (traces without gold answers are skipped)")
    whole.add_argument("--corpus", type=Path, default=None,
                       help="passage pool of a retrieval dataset (default: corpus.jsonl beside --data)")
    whole.add_argument("--top-k", type=positive, default=10, help="candidates retrieved per question for a retrieval set")
    whole.add_argument("--limit", type=count, default=None, help="use only the first N questions (default: all)")
    whole.add_argument("--output-dir", type=Path, required=True, help="where the run writes everything")
    whole.add_argument("--keep-checkpoints", action="store_true", help="keep the trainers' resume checkpoints")
    add_reader_arguments(whole)
    from .args import add_recipe_arguments

    add_recipe_arguments(whole)
    whole.set_defaults(func=_run_all)


def _run_all(args: argparse.Namespace) -> int:
    from bgm_model.evaluation.verdict import BridgeNotBetterError
    from bgm_model.training.pipeline import train_bridge

    from .args import recipe_from_args

    if (args.data is None) == (args.traces is None):
        raise UsageError("give the training questions as --data or --traces (one of them)")
    try:
        recipe = recipe_from_args(args)
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad option: {e}") from None
    check_reader_spec(args.reader, ReaderOptions.from_args(args))
    if args.traces is not None:
        examples = load_examples_from_traces(args.traces)
    else:
        examples = load_dataset(args.data, corpus=args.corpus, top_k=args.top_k)
    examples = examples[: args.limit] if args.limit is not None else examples
    if not examples:
        raise InputError("no training questions with gold answers")
    reader = build_reader(args)
    try:
        trained = train_bridge(examples, reader, args.output_dir, recipe, keep_checkpoints=args.keep_checkpoints)
    except BridgeNotBetterError as e:
        raise InputError(str(e)) from e
    if trained.verdict is not None:
        print(f"validation verdict: {trained.verdict.sentence()}")
    print(f"trained bridge: {trained.final_dir.resolve()}")
    return 0


def _run_sl(args: argparse.Namespace) -> int:
    from bgm_model.training.sl_config import SLConfig
    from bgm_model.training.sl_trainer import SLTrainer

    config = config_from_args(args, SLConfig)
    if args.use_reader:
        check_reader_spec(args.reader, ReaderOptions.from_args(args))
    train = load_silver(args.silver)[: args.limit]
    if not train:
        raise InputError(f"{args.silver} holds no silver sequences")
    dev = load_silver(args.dev_silver, option="--dev-silver") if args.dev_silver else None
    bridge = build_bridge(args)
    reader = build_reader(args) if args.use_reader else None
    trainer = SLTrainer(bridge, config, train, dev_data=dev, reader=reader)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        logger.info("SL done: %d steps, best dev metric %s; %s", result.global_step, result.best_metric,
                    _written(Path(result.output_dir)))
    return 0


def _load_queries(path: Path | None, traces: Path | None, args: argparse.Namespace, option: str) -> list[Any]:
    if traces is not None:
        examples = load_examples_from_traces(traces)[: args.limit]
    else:
        assert path is not None
        examples = load_dataset(path, option=option, corpus=args.corpus, top_k=args.top_k, limit=args.limit)
    if not examples:
        raise InputError(f"no questions with gold answers in {traces or path}")
    return examples


def _run_rl(args: argparse.Namespace) -> int:
    from bgm_model.training.rl_config import RLConfig
    from bgm_model.training.rl_trainer import RLTrainer

    if (args.data is None) == (args.traces is None):
        raise UsageError("give exactly one of --data and --traces")
    config = config_from_args(args, RLConfig)
    check_reader_spec(args.reader, ReaderOptions.from_args(args))
    train = _load_queries(args.data, args.traces, args, "--data")
    dev = _load_queries(args.dev_data, None, args, "--dev-data") if args.dev_data else None
    bridge = build_bridge(args)
    trainer = RLTrainer(bridge, config, train, reader=build_reader(args), dev_data=dev)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        logger.info("RL done: %d steps, best dev reward %s (step %s; 0 = the starting bridge); %s",
                    result.global_step, result.best_metric, result.best_step, _written(Path(result.output_dir)))
    return 0


def _written(out: Path) -> str:
    """Where a stage's bridges and resume state are, as the module docstring describes them."""
    from bgm_model.training.checkpoints import BEST_DIR, CHECKPOINT_DIR, FINAL_DIR

    parts = [f"trained bridge {(out / FINAL_DIR).resolve()}"]
    if (out / BEST_DIR).exists():
        parts.append(f"best dev bridge {(out / BEST_DIR).resolve()}")
    if (out / CHECKPOINT_DIR).exists():
        parts.append(f"resume state {(out / CHECKPOINT_DIR).resolve()} (delete it when done)")
    return "; ".join(parts)
