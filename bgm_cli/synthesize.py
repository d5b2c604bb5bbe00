"""``bgm synthesize``: build silver passage sequences (SL targets) with a frozen reader.

Examples::

    bgm synthesize /work/shared/data/hotpotqa/train.jsonl -o runs/silver/hotpotqa.jsonl --limit 50
    bgm synthesize traces.jsonl --traces -o runs/silver/traces.jsonl --reward f1

The output is appended question by question; running the same command again resumes where it stopped
(with other search settings it is refused, exit status 2: write to another file). Every
:class:`~bgm_model.training.silver.SilverConfig` field is a flag (``--max-length``, ``--top-m``,
``--no-stop-at-max``, ...); ``--top-m 0`` means no pruning, as ``--top-m none`` does.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from bgm_model.data import QAExample
from bgm_model.rewards import available_rewards, get_reward
from bgm_model.training.silver import SilverConfig, synthesize_to_file

from .args import add_dataclass_arguments, dataclass_from_args
from .common import (
    add_reader_arguments,
    build_reader,
    check_reader_spec,
    check_reward,
    count,
    load_dataset,
    load_examples_from_traces,
    positive,
)
from .errors import InputError, UsageError

logger = logging.getLogger(__name__)
_NAMESPACE = "silver"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="build silver passage sequences by greedy search against a frozen reader",
        description=(
            "Greedy silver-sequence search (BGM stage 1 targets): for each question, start from no passages and "
            "keep appending the candidate that most improves the reader's reward. Output: JSON Lines, one "
            "question per line, resumable."
        ),
    )
    p.add_argument(
        "input",
        type=Path,
        help="a dataset JSONL (fixed candidates or NQ-style retrieval) or, with --traces, a traces JSONL",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="silver sequences JSONL; appended to, and ids already in it are skipped",
    )
    p.add_argument(
        "--traces",
        action="store_true",
        help="read INPUT as a traces file (query, passages, gold_answers); traces without gold "
        "answers are skipped",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="passage pool for retrieval datasets (default: corpus.jsonl next to INPUT)",
    )
    p.add_argument("--top-k", type=positive, default=10, help="candidates per question for retrieval datasets")
    p.add_argument(
        "--embedding-cache",
        type=Path,
        default=Path(".bgm_cache/embeddings"),
        help="where the MiniLM corpus embeddings are cached",
    )
    p.add_argument("--limit", type=count, default=None, help="use only the first N questions of INPUT (default: all)")
    add_reader_arguments(p)
    p.add_argument(
        "--reward",
        default="em",
        help=f"primary reward: one of {', '.join(available_rewards())} or a sum like 'em+0.5*f1'",
    )
    add_dataclass_arguments(p, SilverConfig, title="search (SilverConfig)", namespace=_NAMESPACE)
    p.add_argument(
        "--naive",
        action="store_true",
        help="plain greedy: no batching, dedupe, pruning or early stop (to measure the savings)",
    )
    p.set_defaults(func=run)


def _load_examples(args: argparse.Namespace) -> list[QAExample]:
    if args.traces:
        examples = load_examples_from_traces(args.input, option="INPUT")
        if not examples:
            raise InputError(f"no trace in {args.input} has gold answers: attach them first with "
                             "`bgm traces attach-feedback`")
        return examples[: args.limit] if args.limit is not None else examples
    return load_dataset(args.input, option="INPUT", corpus=args.corpus, top_k=args.top_k,
                        cache_dir=args.embedding_cache, limit=args.limit)


def silver_config(args: argparse.Namespace) -> SilverConfig:
    """The search settings of the flags given (over plain greedy with ``--naive``); a bad value raises the
    config's ``ValueError``."""
    if getattr(args, f"{_NAMESPACE}.top_m", None) == 0:  # the flag's old spelling of "no pruning"
        setattr(args, f"{_NAMESPACE}.top_m", None)
    base = SilverConfig.naive() if args.naive else SilverConfig()
    return dataclass_from_args(args, SilverConfig, defaults=base, namespace=_NAMESPACE)


def run(args: argparse.Namespace) -> int:
    # Check the command line before loading anything: the names, then the files.
    check_reward(args.reward)
    try:
        config = silver_config(args)
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad option: {e}") from None
    check_reward(config.secondary, "--secondary")
    check_reader_spec(args.reader)
    examples = _load_examples(args)
    logger.info("%d questions from %s", len(examples), args.input)
    reader = build_reader(args)
    # A silver file made with other settings is refused (SilverSettingsError: exit status 2).
    stats = synthesize_to_file(examples, reader, args.output, reward=get_reward(args.reward), config=config)
    logger.info(
        "done: %d written, %d already in %s, %d without answers; %d reader calls (naive greedy %d)",
        stats.written,
        stats.skipped_done,
        args.output,
        stats.skipped_no_answers,
        stats.reader_calls,
        stats.naive_reader_calls,
    )
    return 0
