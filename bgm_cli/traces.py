"""``bgm traces``: inspect trace files, import traces from other formats, attach feedback.

A missing input is exit status 2, a file that is not what the sub-command reads (not JSON Lines, invalid
records, a silver file or a dataset given as traces) exit status 1, each with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bgm_model.traces import (
    ReadStats,
    TraceFormatError,
    TraceRecord,
    TraceWriter,
    attach_feedback,
    iter_traces,
)

from .common import positive
from .errors import TRACES, InputError, UsageError, check_file_kind, existing_path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("traces", help="inspect, import and annotate trace files (JSONL)")
    sub = parser.add_subparsers(dest="traces_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "inspect", help="counts, fields present, answer and feedback coverage of a traces file"
    )
    p.add_argument("file", type=Path, help="traces JSONL (as written by the LangChain / LlamaIndex recorders)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--skip-invalid", action="store_true",
                   help="count invalid records instead of stopping at the first")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "import", help="turn OpenInference spans, LangSmith runs or a dataset into trace records"
    )
    p.add_argument("--from", dest="source", required=True, choices=["openinference", "langsmith", "dataset"],
                   help="format of the inputs: OpenInference spans (JSON/JSONL), LangSmith runs (JSON/JSONL) "
                   "or a dataset JSONL")
    p.add_argument("inputs", nargs="+", type=Path, help="input file(s)")
    p.add_argument("-o", "--output", required=True, type=Path, help="traces JSONL to append to")
    p.add_argument("--corpus", type=Path, help="dataset: corpus.jsonl of a retrieval set (ranked with MiniLM, as the benchmarks do)")
    p.add_argument("--top-k", type=positive, default=10, help="dataset with --corpus: passages per question")
    p.add_argument("--dataset-name", help="dataset: name used in trace ids (default: folder/file stem)")
    p.set_defaults(func=_import)

    p = sub.add_parser(
        "attach-feedback", help="join gold answers / feedback (JSONL) onto traces by trace id or query"
    )
    p.add_argument("traces", type=Path, help="traces JSONL to annotate")
    p.add_argument("feedback", type=Path, help="feedback JSONL: rows with a trace_id or a query, and "
                   "gold_answers and/or feedback")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", type=Path, help="write a new traces file (atomically)")
    out.add_argument(
        "--in-place", action="store_true", help="replace the traces file atomically (under its lock)"
    )
    p.add_argument("--by", choices=["auto", "trace_id", "query"], default="auto",
                   help="how feedback rows find their trace: 'auto' uses trace_id where a row has one, else the query")
    p.set_defaults(func=_attach)


def summarize(records: Iterable[TraceRecord], stats: ReadStats) -> dict[str, Any]:
    n = 0
    frameworks: Counter[str] = Counter()
    fields: Counter[str] = Counter()
    passages: list[int] = []
    for r in records:
        n += 1
        frameworks[r.framework] += 1
        passages.append(len(r.passages))
        present = {
            "passages": bool(r.passages),
            "passage_scores": any(p.score is not None for p in r.passages),
            "bridge": r.bridge is not None,
            "llm": r.llm is not None,
            "answer": bool(r.answer),
            "prompt_or_messages": r.llm is not None and (bool(r.llm.messages) or r.llm.prompt is not None),
            "model": r.llm is not None and r.llm.model is not None,
            "gold_answers": bool(r.gold_answers),
            "feedback": bool(r.feedback),
        }
        fields.update(k for k, v in present.items() if v)
    return {
        "records": n,
        "truncated_lines": stats.truncated_lines,
        "invalid_lines": [line for line, _ in stats.invalid_lines],
        "frameworks": dict(frameworks),
        "fields": {
            k: fields.get(k, 0)
            for k in (
                "passages",
                "passage_scores",
                "bridge",
                "llm",
                "answer",
                "prompt_or_messages",
                "model",
                "gold_answers",
                "feedback",
            )
        },
        "coverage": {
            k: (fields.get(k, 0) / n if n else 0.0) for k in ("answer", "gold_answers", "feedback", "bridge")
        },
        "passages_per_record": {
            "min": min(passages) if passages else 0,
            "mean": sum(passages) / len(passages) if passages else 0.0,
            "max": max(passages) if passages else 0,
        },
    }


def _inspect(args: argparse.Namespace) -> int:
    existing_path(args.file, "FILE")
    if args.file.is_dir():
        raise UsageError(f"FILE {args.file}: a directory, not a traces file")
    if not args.skip_invalid:
        check_file_kind(args.file, TRACES)  # a silver file or a dataset: say so, not "missing fields"
    stats = ReadStats()
    try:
        summary = summarize(iter_traces(args.file, skip_invalid=args.skip_invalid, stats=stats), stats)
    except TraceFormatError as e:
        raise InputError(str(e)) from None
    if not summary["records"] and (stats.truncated_lines or stats.invalid_lines):
        bad = stats.truncated + len(stats.invalid_lines)
        raise InputError(f"{args.file} is not a traces file: none of its {bad} line(s) is a trace record")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    n = summary["records"]
    lines = [f"{args.file}: {n} record(s)"]
    if stats.truncated_lines:
        lines.append(f"  truncated lines skipped: {stats.truncated} (lines {stats.truncated_lines[:10]})")
    if stats.invalid_lines:
        lines.append(
            f"  invalid records skipped: {len(stats.invalid_lines)} (lines {summary['invalid_lines'][:10]})"
        )
    lines.append("  frameworks: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["frameworks"].items())))
    ppr = summary["passages_per_record"]
    lines.append(f"  passages per record: min {ppr['min']}, mean {ppr['mean']:.1f}, max {ppr['max']}")
    lines.append("  fields present:")
    for k, v in summary["fields"].items():
        lines.append(f"    {k:<20} {v:>7}  ({(v / n if n else 0):.0%})")
    print("\n".join(lines))
    return 0


def _import(args: argparse.Namespace) -> int:
    from bgm_model.traces import importers

    for path in args.inputs:
        existing_path(path, "INPUT")
    if args.corpus is not None:
        existing_path(args.corpus, "--corpus")
    if args.source != "dataset" and (args.corpus or args.dataset_name):
        raise UsageError("--corpus and --dataset-name only apply to --from dataset")
    retrieve = None
    if args.corpus is not None:
        retrieve = importers.dense_retriever(args.corpus, top_k=args.top_k)
    writer = TraceWriter(args.output)
    total = 0
    try:
        for path in args.inputs:
            if args.source == "openinference":
                records: Iterable[TraceRecord] = importers.import_openinference(path)
            elif args.source == "langsmith":
                records = importers.import_langsmith(path)
            else:
                records = importers.records_from_dataset(
                    path, retrieve=retrieve, dataset_name=args.dataset_name
                )
            n = writer.write_many(records)
            logger.info("%s: %d record(s) -> %s", path, n, args.output)
            total += n
    except ValueError as e:  # TraceFormatError, and a dataset's file:line errors
        raise InputError(" ".join(str(e).split())) from None
    print(f"imported {total} record(s) into {args.output}")
    return 0


def _attach(args: argparse.Namespace) -> int:
    existing_path(args.traces, "TRACES")
    existing_path(args.feedback, "FEEDBACK")
    check_file_kind(args.traces, TRACES)
    try:
        stats = attach_feedback(args.traces, args.feedback, args.output, by=args.by, in_place=args.in_place)
    except ValueError as e:  # TraceFormatError too
        raise InputError(" ".join(str(e).split())) from None
    dst = args.traces if args.in_place else args.output
    print(
        f"{stats.rows_matched}/{stats.rows} feedback row(s) matched; {stats.traces_updated}/{stats.traces} "
        f"trace(s) updated -> {dst}"
    )
    if stats.unmatched_lines:
        print(f"unmatched feedback lines: {stats.unmatched_lines[:20]}", file=sys.stderr)
    return 0
