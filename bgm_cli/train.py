"""``bgm train sl`` and ``bgm train rl``: the two training stages of the bridge.

Examples::

    bgm train sl --silver runs/silver/hotpotqa.jsonl --from-encoder --output-dir runs/sl --num-epochs 3
    bgm train rl --data /work/shared/data/hotpotqa/train.jsonl --init runs/sl/best --output-dir runs/rl
    accelerate launch --num_processes 2 -m bgm_cli.main train sl ...   # several processes / GPUs

Every option of a stage's config (:class:`SLConfig` / :class:`RLConfig`) is a ``--kebab-case`` flag with that
field's help text (:mod:`bgm_cli.args`); ``--config FILE`` loads a JSON or YAML config first, explicit flags
override it. Running the same command again resumes from ``OUTPUT_DIR/checkpoint``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .args import add_config_argument, add_dataclass_arguments, dataclass_from_args
from .common import add_reader_arguments, build_reader

logger = logging.getLogger(__name__)

#: BridgeConfig fields a new bridge (``--from-encoder``) takes from the command line.
NEW_BRIDGE_FIELDS = ("max_passages", "max_output_length", "relevance_prior")


def config_from_args(args: argparse.Namespace, config_cls: Any) -> Any:
    """The stage config of the flags over ``--config`` over the class defaults; a bad value exits with it."""
    try:
        return dataclass_from_args(args, config_cls, config=args.config)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"bad option: {e}") from e


def _add_bridge_arguments(parser: argparse.ArgumentParser, *, default_init: bool) -> None:
    from bgm_model import BridgeConfig

    g = parser.add_argument_group("bridge")
    src = g.add_mutually_exclusive_group(required=not default_init)
    src.add_argument(
        "--init",
        default=None,
        help="start from a saved bridge (directory written by "
        "save_pretrained, e.g. the SL run's best/ or final/, or a hub id)",
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
        return BridgeModel.from_pretrained(args.init)
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
        "each epoch (downstream metric with --reader, else dev loss and exact-sequence accuracy), keeps "
        "OUTPUT_DIR/best, OUTPUT_DIR/final and a resumable OUTPUT_DIR/checkpoint.",
    )
    sl.add_argument("--silver", type=Path, required=True, help="silver sequences JSONL (training records)")
    sl.add_argument(
        "--dev-silver",
        type=Path,
        default=None,
        help="silver sequences JSONL used as dev set (default: split --dev-fraction off --silver)",
    )
    sl.add_argument("--limit", type=int, default=None, help="use only the first N training records")
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
        "the downstream score of the reader's answer on the sampled passage sequence.",
    )
    rl.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset JSONL with questions, candidate passages and gold answers (see bgm_model.data)",
    )
    rl.add_argument(
        "--traces",
        type=Path,
        default=None,
        help="traces JSONL instead of --data (traces without gold answers are skipped)",
    )
    rl.add_argument("--dev-data", type=Path, default=None, help="dataset JSONL used as dev set")
    rl.add_argument("--corpus", type=Path, default=None, help="passage pool of a retrieval dataset")
    rl.add_argument(
        "--top-k", type=int, default=10, help="candidates retrieved per question for a retrieval set"
    )
    rl.add_argument("--limit", type=int, default=None, help="use only the first N questions")
    add_config_argument(rl, "RLConfig")
    add_reader_arguments(rl)
    _add_bridge_arguments(rl, default_init=False)
    add_dataclass_arguments(rl, RLConfig)
    rl.set_defaults(func=_run_rl)


def _run_sl(args: argparse.Namespace) -> int:
    from bgm_model.training.silver import read_silver
    from bgm_model.training.sl_config import SLConfig
    from bgm_model.training.sl_trainer import SLTrainer

    config = config_from_args(args, SLConfig)
    train = read_silver(args.silver)[: args.limit]
    dev = read_silver(args.dev_silver) if args.dev_silver else None
    reader = build_reader(args) if args.use_reader else None
    trainer = SLTrainer(build_bridge(args), config, train, dev_data=dev, reader=reader)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        logger.info(
            "SL done: %d steps, best dev metric %s; bridges in %s/{best,final}",
            result.global_step,
            result.best_metric,
            result.output_dir,
        )
    return 0


def _load_queries(path: Path | None, traces: Path | None, args: argparse.Namespace) -> list[Any]:
    from bgm_model.data import examples_from_traces, load_examples

    if traces is not None:
        from bgm_model.traces import read_traces

        return examples_from_traces(read_traces(traces))[: args.limit]
    assert path is not None
    return load_examples(path, corpus=args.corpus, top_k=args.top_k, limit=args.limit)


def _run_rl(args: argparse.Namespace) -> int:
    from bgm_model.training.rl_config import RLConfig
    from bgm_model.training.rl_trainer import RLTrainer

    if (args.data is None) == (args.traces is None):
        raise SystemExit("give exactly one of --data and --traces")
    config = config_from_args(args, RLConfig)
    train = _load_queries(args.data, args.traces, args)
    dev = _load_queries(args.dev_data, None, args) if args.dev_data else None
    trainer = RLTrainer(build_bridge(args), config, train, reader=build_reader(args), dev_data=dev)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        logger.info(
            "RL done: %d steps, best dev reward %s (step %s; 0 = the starting bridge); bridges in %s/{best,final}",
            result.global_step,
            result.best_metric,
            result.best_step,
            result.output_dir,
        )
    return 0
