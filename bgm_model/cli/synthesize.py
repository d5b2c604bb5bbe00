"""``bgm synthesize``: build silver passage sequences (SL targets) with a frozen reader.

Examples::

    bgm synthesize /work/shared/data/hotpotqa/train.jsonl -o runs/silver/hotpotqa.jsonl --limit 50
    bgm synthesize traces.jsonl --traces -o runs/silver/traces.jsonl --reward f1

The output is appended question by question; running the same command again resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from bgm_model.cli.common import add_reader_arguments, build_reader
from bgm_model.data import QAExample, examples_from_traces, load_examples
from bgm_model.rewards import available_rewards, get_reward
from bgm_model.training.silver import SilverConfig, SilverSettingsError, synthesize_to_file

logger = logging.getLogger(__name__)



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
    p.add_argument("--top-k", type=int, default=10, help="candidates per question for retrieval datasets")
    p.add_argument(
        "--embedding-cache",
        type=Path,
        default=Path(".bgm_cache/embeddings"),
        help="where the MiniLM corpus embeddings are cached",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions of INPUT")
    add_reader_arguments(p)
    p.add_argument(
        "--reward",
        default="em",
        help=f"primary reward: one of {', '.join(available_rewards())} or a sum like 'em+0.5*f1'",
    )
    p.add_argument(
        "--secondary",
        default="auto",
        help="tie-breaking dense score: 'auto' (loglik if the reader can score, else f1), a reward "
        "name, or 'none'",
    )
    p.add_argument(
        "--max-length", type=int, default=SilverConfig.max_length, help="most passages per sequence"
    )
    p.add_argument(
        "--max-repeats",
        type=int,
        default=SilverConfig.max_repeats,
        help="most times one candidate may appear in a sequence",
    )
    p.add_argument(
        "--top-m",
        type=int,
        default=SilverConfig.top_m,
        help="after step 1 only extend with the M best single passages (0: no pruning)",
    )
    p.add_argument(
        "--no-stop-at-max",
        action="store_true",
        help="keep searching after the primary reward reaches its maximum",
    )
    p.add_argument(
        "--no-secondary-extends",
        action="store_true",
        help="a passage after the first must raise the primary reward (a tie-breaker gain alone does not "
        "lengthen the sequence)",
    )
    p.add_argument(
        "--lockstep",
        type=int,
        default=16,
        help="questions searched together, their prompts of a round sent to the reader in one batch "
        "(speed only; 1: question by question)",
    )
    p.add_argument(
        "--naive",
        action="store_true",
        help="plain greedy: no batching, dedupe, pruning or early stop (to measure the savings)",
    )
    p.set_defaults(func=run)


def _load_examples(args: argparse.Namespace) -> list[QAExample]:
    if args.traces:
        from bgm_model.traces import read_traces

        examples = examples_from_traces(read_traces(args.input))
        return examples[: args.limit] if args.limit is not None else examples
    return load_examples(
        args.input, corpus=args.corpus, top_k=args.top_k, cache_dir=args.embedding_cache, limit=args.limit
    )


def run(args: argparse.Namespace) -> int:
    reward = get_reward(args.reward)  # fail on a bad name before loading anything
    secondary: Any = None if args.secondary.lower() == "none" else args.secondary
    if secondary not in (None, "auto"):
        get_reward(secondary)
    overrides = dict(max_length=args.max_length, max_repeats=args.max_repeats, secondary=secondary,
                     secondary_extends=not args.no_secondary_extends, lockstep=args.lockstep)
    if args.naive:
        config = SilverConfig.naive(**overrides)
    else:
        config = SilverConfig(**overrides, top_m=args.top_m or None, stop_at_max=not args.no_stop_at_max)
    examples = _load_examples(args)
    logger.info("%d questions from %s", len(examples), args.input)
    reader = build_reader(args)
    try:
        stats = synthesize_to_file(examples, reader, args.output, reward=reward, config=config)
    except SilverSettingsError as e:
        logger.error("%s", e)
        return 2
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
