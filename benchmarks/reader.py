"""Reader cost benchmark: naive full-prompt calls vs KV prefix reuse, on the same prompts, in one run.

Workloads (nq_open training questions; candidates = the gold passage plus seeded random corpus passages,
shuffled; which passages they are does not change what a call costs):
  (a) greedy silver-sequence search: each step scores the gold answer after selected + [candidate] for every
      remaining candidate (one ``score_batch`` per step) and keeps the best, until no candidate improves;
  (b) RL: ``samples`` sampled passage sequences per question, one ``answer_batch`` for all;
  (c) evaluation: 5 methods per question (no passages, top-1, top-3, top-3 reversed, all candidates), one
      ``answer_batch`` for all questions and methods.

Run:  python benchmarks/reader.py [--questions 4 --candidates 6 --samples 4 --threads 1]
Writes benchmarks/results/reader.json and prints a table (wall time, new tokens, ratio to naive).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bgm_model.readers.hf import HFReader, load_smollm2_reader

logger = logging.getLogger("benchmarks.reader")
ROOT = Path(__file__).resolve().parent.parent


def find_data_dir() -> Path:
    for candidate in (ROOT.parent / "shared" / "data" / "nq_open", Path("/work/shared/data/nq_open")):
        if (candidate / "train.jsonl").exists():
            return candidate
    raise FileNotFoundError("nq_open data not found next to the repository (../shared/data/nq_open)")


def load_questions(n: int, n_candidates: int, seed: int) -> list[dict[str, Any]]:
    data = find_data_dir()
    corpus = {r["id"]: r for r in map(json.loads, (data / "corpus.jsonl").open())}
    ids = sorted(corpus)
    rng = random.Random(seed)
    out = []
    for line in (data / "train.jsonl").open():
        q = json.loads(line)
        gold = [g for g in q["gold_passage_ids"] if g in corpus][:1]
        if not gold:
            continue
        others = rng.sample([i for i in ids if i not in gold], n_candidates - 1)
        chosen = gold + others
        rng.shuffle(chosen)
        q["candidates"] = [f"{corpus[i]['title']}: {corpus[i]['text']}" for i in chosen]
        out.append(q)
        if len(out) == n:
            break
    return out


def silver_search(reader: HFReader, q: dict[str, Any], max_steps: int) -> list[int]:
    selected: list[int] = []
    best = reader.score_batch([q["question"]], [[]], [q["answers"][0]])[0]
    for _ in range(max_steps):
        remaining = [i for i in range(len(q["candidates"])) if i not in selected]
        if not remaining:
            break
        lists = [[q["candidates"][j] for j in selected + [i]] for i in remaining]
        scores = reader.score_batch([q["question"]] * len(lists), lists, [q["answers"][0]] * len(lists))
        top = max(range(len(scores)), key=scores.__getitem__)
        if scores[top] <= best:
            break
        best, selected = scores[top], selected + [remaining[top]]
    return selected


def run(
    reader: HFReader, workload: str, questions: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    reader.stats.reset()
    reader.reset_prefix_cache()
    start = time.perf_counter()
    if workload == "sps":
        result: Any = [silver_search(reader, q, args.max_steps) for q in questions]
    elif workload == "rl":
        rng = random.Random(args.seed)
        qs, lists = [], []
        for q in questions:
            for _ in range(args.samples):
                k = rng.randint(1, min(3, len(q["candidates"])))
                qs.append(q["question"])
                lists.append(rng.sample(q["candidates"], k))
        result = reader.answer_batch(qs, lists)
    else:
        qs, lists = [], []
        for q in questions:
            c = q["candidates"]
            for passages in ([], c[:1], c[:3], c[:3][::-1], c):
                qs.append(q["question"])
                lists.append(passages)
        result = reader.answer_batch(qs, lists)
    wall = time.perf_counter() - start
    s = reader.stats
    return {
        "wall_s": round(wall, 2),
        "calls": s.computed,
        "prompt_tokens": s.prompt_tokens,
        "new_tokens": s.new_tokens,
        "reused_tokens": s.reused_tokens,
        "result": result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--max-steps", type=int, default=3, help="silver search: at most this many passages")
    parser.add_argument("--samples", type=int, default=4, help="RL samples per question")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reader.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    questions = load_questions(args.questions, args.candidates, args.seed)
    reuse = load_smollm2_reader(cache=False, device="cpu")
    naive = HFReader(
        reuse.model,
        reuse.tokenizer,
        name="naive",
        cache=False,
        prefix_reuse=False,
        max_new_tokens=reuse.max_new_tokens,
    )
    rows = []
    for workload in ("sps", "rl", "eval"):
        logger.info("workload %s: naive", workload)
        a = run(naive, workload, questions, args)
        logger.info("workload %s: prefix reuse", workload)
        b = run(reuse, workload, questions, args)
        rows.append(
            {
                "workload": workload,
                "naive": a,
                "prefix_reuse": b,
                "same_results": a["result"] == b["result"],
                "speedup": round(a["wall_s"] / max(b["wall_s"], 1e-9), 2),
                "new_token_ratio": round(a["new_tokens"] / max(b["new_tokens"], 1), 2),
            }
        )

    header = "| workload | naive s | reuse s | speedup | naive new tok | reuse new tok | token ratio | same results |"
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['naive']['wall_s']} | {r['prefix_reuse']['wall_s']} | {r['speedup']}x | "
            f"{r['naive']['new_tokens']} | {r['prefix_reuse']['new_tokens']} | {r['new_token_ratio']}x | "
            f"{r['same_results']} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "reader": reuse.name,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
