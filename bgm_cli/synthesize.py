"""``bgm synthesize``: build silver passage sequences (SL targets) with a frozen reader.

Examples::

    bgm synthesize /work/shared/data/hotpotqa/train.jsonl -o runs/silver/hotpotqa.jsonl --limit 50
    bgm synthesize traces.jsonl --traces -o runs/silver/traces.jsonl --reward f1
    bgm synthesize train.jsonl -o silver/part-1.jsonl --num-shards 4 --shard-index 1   # one of 4 jobs
    bgm synthesize merge silver/all.jsonl silver/part-*.jsonl --data train.jsonl        # then, once

The output is appended question by question; running the same command again resumes where it stopped
(with other search settings it is refused, exit status 2: write to another file). Every
:class:`~bgm_model.training.silver.SilverConfig` field is a flag (``--max-length``, ``--top-m``,
``--no-stop-at-max``, ...); ``--top-m 0`` means no pruning, as ``--top-m none`` does.

``--num-shards N --shard-index I`` synthesises only the questions of shard I (by a hash of the question id,
:func:`~bgm_model.training.silver.shard_of`), so N jobs can share the work; ``bgm synthesize merge OUT
SHARD_FILE...`` checks the shard files make one complete split and writes the file one run would have
(docs/scaling.md). ``merge`` must be the first word after ``synthesize`` (a dataset named ``merge`` is
``./merge``): argparse cannot have both a positional INPUT and a sub-command, so the word is looked at before
the synthesize flags are parsed. Merge errors: exit status 2 when the files given do not make one split (a
shard missing or given twice, other settings, ``--data`` of other questions, OUT exists), 1 when a file
cannot be used (not a shard file, an interrupted run, an example twice).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgm_model.data import QAExample
from bgm_model.rewards import available_rewards, get_reward
from bgm_model.training.silver import (
    Shard,
    ShardSetError,
    SilverConfig,
    merge_silver_files,
    synthesize_to_file,
)

from .args import add_dataclass_arguments, dataclass_from_args
from .common import (
    ReaderOptions,
    add_reader_arguments,
    build_reader,
    check_reader_spec,
    check_reward,
    count,
    load_dataset,
    load_examples_from_traces,
    positive,
)
from .errors import DATASET, SILVER, InputError, UsageError, check_file_kind, existing_path, reading

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
        epilog=(
            "split over N jobs: run each with --num-shards N --shard-index I into its own file, then "
            "'bgm synthesize merge OUT SHARD_FILE... [--data INPUT]' writes the file of a single run "
            "(see 'bgm synthesize merge --help')"
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
    split = p.add_argument_group("split over jobs (merge the files with 'bgm synthesize merge')")
    split.add_argument("--num-shards", type=positive, default=None, metavar="N",
                       help="split the questions into N shards by a hash of their id (needs --shard-index)")
    split.add_argument("--shard-index", type=count, default=None, metavar="I",
                       help="the shard (0..N-1) this run synthesises; its output file records it")
    p.set_defaults(func=run)
    _route_merge(p, _merge_parser(type(p), p.prog))


def _merge_parser(parser_class: type[argparse.ArgumentParser], prog: str) -> argparse.ArgumentParser:
    m = parser_class(
        prog=f"{prog} merge",
        description=(
            "Merge the files of 'bgm synthesize --num-shards N --shard-index I' into the silver file of a "
            "single run. Checked first: the same settings and shard count, every shard 0..N-1 exactly once, no "
            "question twice, no file of an interrupted run. With --data, the records must be exactly the "
            "dataset's questions with gold answers and keep its order; without it they are sorted by id."
        ),
        epilog=("exit status: 2 the files do not make one split (a shard missing or twice, other settings, "
                "--data of other questions, OUT exists); 1 a file cannot be used (not a shard file, an "
                "interrupted run, a question twice)"),
    )
    m.add_argument("output", type=Path, metavar="OUT", help="the merged silver file (with its settings beside it)")
    m.add_argument("shards", type=Path, nargs="+", metavar="SHARD_FILE", help="the output file of every shard")
    m.add_argument("--data", type=Path, default=None,
                   help="the INPUT the shards were made from: check that no question is missing and keep its order")
    m.add_argument("--traces", action="store_true", help="read --data as a traces file (as synthesize --traces)")
    m.add_argument("--limit", type=count, default=None, metavar="N",
                   help="the --limit the shards were made with (only the first N questions of --data)")
    m.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    m.set_defaults(func=run_merge)
    return m


def _route_merge(parser: argparse.ArgumentParser, merge: argparse.ArgumentParser) -> None:
    """Have ``parser`` hand ``merge ...`` to ``merge``: the sub-parsers action of ``bgm`` calls
    ``parse_known_args`` of the ``synthesize`` parser with the words after ``synthesize``."""
    parse_known_args = parser.parse_known_args

    def route(args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        if words[:1] == ["merge"]:
            return merge.parse_known_args(words[1:], namespace)
        return parse_known_args(words, namespace)

    parser.parse_known_args = route  # type: ignore[method-assign,assignment]


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


def _shard(args: argparse.Namespace) -> Shard | None:
    """The shard of ``--num-shards`` / ``--shard-index`` (None without them); :class:`UsageError` for one
    without the other or an index out of range."""
    num, index = args.num_shards, args.shard_index
    if num is None and index is None:
        return None
    if num is None or index is None:
        raise UsageError("--num-shards and --shard-index go together: give both (e.g. --num-shards 4 "
                         "--shard-index 0 .. 3)")
    if index >= num:
        raise UsageError(f"--shard-index {index}: must be in 0..{num - 1} for --num-shards {num}")
    return Shard(index, num)


def run(args: argparse.Namespace) -> int:
    # Check the command line before loading anything: the names, then the files.
    check_reward(args.reward)
    try:
        config = silver_config(args)
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad option: {e}") from None
    check_reward(config.secondary, "--secondary")
    check_reader_spec(args.reader, ReaderOptions.from_args(args))
    shard = _shard(args)
    examples = _load_examples(args)
    logger.info("%d questions from %s", len(examples), args.input)
    if shard is not None:
        mine = shard.select(examples)
        if mine:
            logger.info("%s: %d of the %d questions", shard, len(mine), len(examples))
        else:
            logger.warning("%s holds none of the %d questions: %s will be an empty silver file (settings "
                           "only), ready to merge", shard, len(examples), args.output)
    reader = build_reader(args)
    # A silver file made with other settings, or as another shard, is refused (SilverSettingsError: exit 2).
    stats = synthesize_to_file(examples, reader, args.output, reward=get_reward(args.reward), config=config,
                               shard=shard)
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


def _dataset_order(args: argparse.Namespace) -> list[str]:
    """The ids of ``--data``'s questions with gold answers, in order (what a synthesis writes), without
    retrieving any passages."""
    from bgm_model.data import iter_jsonl

    if args.traces:
        return [ex.id for ex in load_examples_from_traces(args.data, option="--data")[: args.limit]]
    ids: list[str] = []
    with reading(args.data, DATASET, "--data") as path:
        for n, rec in enumerate(iter_jsonl(path)):
            if args.limit is not None and n >= args.limit:
                break
            if "id" not in rec:
                raise ValueError(f"{path}: record {n} has no 'id'")
            answers = rec.get("answers", [])
            if isinstance(answers, str) or answers:  # as load_examples reads them: a string is one answer
                ids.append(str(rec["id"]))
    return ids


def run_merge(args: argparse.Namespace) -> int:
    if args.limit is not None and args.data is None:
        raise UsageError("--limit needs --data")
    if args.traces and args.data is None:
        raise UsageError("--traces needs --data")
    for path in args.shards:
        if existing_path(path, "SHARD_FILE").is_dir():
            raise UsageError(f"SHARD_FILE {path}: a directory, not a silver file")
        check_file_kind(path, SILVER)
    if args.output.exists() and not args.force:
        raise UsageError(f"{args.output} exists: choose another OUT, or pass --force to overwrite it")
    order = _dataset_order(args) if args.data is not None else None
    try:
        stats = merge_silver_files(args.shards, args.output, order=order, overwrite=args.force)
    except ShardSetError as e:
        raise UsageError(str(e)) from e
    except ValueError as e:  # ShardFileError, or a line that is not a silver record
        raise InputError(str(e)) from e
    logger.info("wrote %d silver sequences from %d shards to %s%s", stats.records, stats.shards, args.output,
                f" in the order of {args.data}" if args.data is not None else " (sorted by id)")
    return 0
