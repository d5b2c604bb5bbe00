"""Silver-synthesis throughput against a served reader, next to the in-process reader, in one run.

Every row is a whole ``bgm synthesize`` command (a fresh process, no call cache) on the same questions, timed
from start to exit, so it includes what a user pays: loading the model (in-process) or the round trips and the
server's queue (served):

* ``in-process``: ``--reader smollm2`` (transformers, fp32, KV prefix reuse, batched decoding);
* ``served, concurrency C``: ``--reader openai:smollm2 --base-url ... --concurrency C`` against llama.cpp's
  OpenAI-compatible server (llama-cpp-python, the same SmolLM2 GGUF, 1 thread) started here on 127.0.0.1;
* ``served, 2 shards``: two ``bgm synthesize --num-shards 2 --shard-index I`` processes at once against that
  server (concurrency 4 each), then ``bgm synthesize merge``; timed until the merge is written.

Workload: nq_open training questions, candidates = the gold passage plus seeded random corpus passages
(``benchmarks.reader.load_questions``), EM reward with token F1 as the tie-breaker (the chat endpoint cannot
score answers, so both readers use F1 and the searches are the same), ``--max-length`` steps.

Run:  python -m benchmarks.served_reader [--questions 8 --candidates 5 --max-length 2 --concurrency 1,4,16]
Writes benchmarks/results/served_reader.json and prints a table (wall time, questions per minute, ratio to the
in-process reader, whether the silver sequences equal the in-process ones).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, command_line
from benchmarks.reader import load_questions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--candidates", type=int, default=5)
    p.add_argument("--max-length", type=int, default=2)
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    p.add_argument("--shards", type=int, default=2, help="shard processes of the sharded row (0: skip it)")
    p.add_argument("--server-threads", type=int, default=1,
                   help="llama.cpp threads (1 is fastest on a busy 2-core machine: its threads spin-wait)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=RESULTS / "served_reader.json")
    return p.parse_args(argv)


def bgm(*argv: str) -> list[str]:
    return [sys.executable, "-m", "bgm_cli.main", *argv]


def synthesize_command(data: Path, out: Path, args: argparse.Namespace, *reader: str) -> list[str]:
    return bgm("synthesize", str(data), "-o", str(out), "--reward", "em", "--secondary", "f1",
               "--max-length", str(args.max_length), "--reader-cache", "none", *reader)


def timed(commands: list[list[str]], env: dict[str, str]) -> float:
    """Run ``commands`` at once; seconds until the last one exits (raises if any fails)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    for c, p in zip(commands, procs, strict=True):
        _, err = p.communicate(timeout=3600)
        if p.returncode:
            raise RuntimeError(f"{' '.join(c)} failed ({p.returncode}):\n{err.decode()[-2000:]}")
    return time.perf_counter() - start


def sequences(path: Path) -> dict[str, list[int]]:
    return {r["id"]: r["ids"] for r in map(json.loads, path.read_text().splitlines()) if r}


def main(argv: list[str] | None = None) -> int:
    from bgm_model.assets import smollm2_gguf_path
    from bgm_model.readers.local_server import GREEDY_EXTRA_BODY, LlamaCppServer

    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bgm-served-"))
    data = work / "data.jsonl"
    questions = load_questions(args.questions, args.candidates, args.seed)
    data.write_text("".join(
        json.dumps({"id": str(q["id"]), "question": q["question"], "answers": q["answers"],
                    "passages": q["candidates"]}) + "\n" for q in questions
    ))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows: list[dict[str, Any]] = []

    seconds = timed([synthesize_command(data, work / "local.jsonl", args, "--reader", "smollm2")], env)
    reference = sequences(work / "local.jsonl")
    rows.append({"reader": "in-process (transformers fp32)", "seconds": seconds})

    with LlamaCppServer(smollm2_gguf_path(), alias="smollm2", n_threads=args.server_threads,
                        logits_all=False) as server:
        served = ["--reader", "openai:smollm2", "--base-url", server.base_url,
                  "--openai-extra-body", json.dumps(GREEDY_EXTRA_BODY)]
        for level in [int(c) for c in args.concurrency.split(",") if c]:
            out = work / f"served-{level}.jsonl"
            seconds = timed([synthesize_command(data, out, args, *served, "--concurrency", str(level))], env)
            rows.append({"reader": f"served, concurrency {level}", "seconds": seconds, "file": out})
        if args.shards > 1:
            parts = [work / f"shard-{i}.jsonl" for i in range(args.shards)]
            commands = [
                synthesize_command(data, part, args, *served, "--concurrency", "4",
                                   "--num-shards", str(args.shards), "--shard-index", str(i))
                for i, part in enumerate(parts)
            ]
            start = time.perf_counter()
            timed(commands, env)
            merged = work / "merged.jsonl"
            timed([bgm("synthesize", "merge", str(merged), *map(str, parts), "--data", str(data))], env)
            rows.append({"reader": f"served, {args.shards} shards x concurrency 4",
                         "seconds": time.perf_counter() - start, "file": merged})

    base = rows[0]["seconds"]
    for row in rows:
        row["questions_per_minute"] = 60 * len(questions) / row["seconds"]
        row["ratio_to_in_process"] = row["seconds"] / base
        path = row.pop("file", None)
        got = sequences(path) if path else reference
        row["same_sequences_as_in_process"] = sum(got.get(k) == v for k, v in reference.items()) / len(reference)
    print(f"\n{len(questions)} questions x {args.candidates} candidates, --max-length {args.max_length}\n")
    print("| reader | wall s | questions/min | time vs in-process | same sequences as in-process |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['reader']} | {r['seconds']:.1f} | {r['questions_per_minute']:.1f} | "
              f"{r['ratio_to_in_process']:.2f} | {r['same_sequences_as_in_process']:.2f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "command": command_line("served_reader", argv),
        "date": time.strftime("%Y-%m-%d"),
        "questions": len(questions), "candidates": args.candidates, "max_length": args.max_length,
        "server_threads": args.server_threads, "rows": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
