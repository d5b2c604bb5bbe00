"""Reader cost benchmark, in one run on the same prompts: naive full-prompt calls (one at a time) vs KV
prefix reuse (calls one at a time) vs prefix reuse + batched greedy decoding (the default reader).

Workloads (nq_open training questions; candidates = the gold passage plus seeded random corpus passages,
shuffled; which passages they are does not change what a call costs):
  (a) silver-sequence synthesis with ``bgm_model.training.silver.synthesize_one`` (EM reward, gold-answer
      log-likelihood as the tie-breaker, default ``SilverConfig`` except ``max_length=--max-steps``): each
      step sends one ``answer_batch`` and one ``score_batch`` for all extensions;
  (b) RL: ``samples`` sampled passage sequences per question, one ``answer_batch`` for all;
  (c) evaluation: 5 methods per question (no passages, top-1, top-3, top-3 reversed, all candidates), one
      ``answer_batch`` for all questions and methods.

Run:  python benchmarks/reader.py [--questions 4 --candidates 6 --samples 4 --threads 1 --decode-batch 16]
Full size of the issue: --questions 20 --candidates 10. Writes benchmarks/results/reader.json and prints a
table (wall time, new tokens, ratios to naive, whether results are identical to naive).
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
    from bgm_model.data import QAExample
    from bgm_model.training.silver import SilverConfig, synthesize_one

    example = QAExample(
        id=str(q.get("id", q["question"])),
        question=q["question"],
        answers=q["answers"],
        passages=q["candidates"],
    )
    return synthesize_one(example, reader, reward="em", config=SilverConfig(max_length=max_steps)).ids


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
        "generated_tokens": s.generated_tokens,
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
    parser.add_argument(
        "--decode-batch", type=int, default=16, help="decode_batch_size of the batched reader"
    )
    parser.add_argument("--workloads", default="sps,rl,eval", help="comma-separated subset of sps,rl,eval")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reader.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    questions = load_questions(args.questions, args.candidates, args.seed)
    batched = load_smollm2_reader(cache=False, device="cpu", decode_batch_size=args.decode_batch)
    readers = {
        "naive": HFReader(
            batched.model,
            batched.tokenizer,
            name="naive",
            cache=False,
            prefix_reuse=False,
            decode_batch_size=1,
            max_new_tokens=batched.max_new_tokens,
        ),
        "reuse": HFReader(
            batched.model,
            batched.tokenizer,
            name="reuse",
            cache=False,
            decode_batch_size=1,
            max_new_tokens=batched.max_new_tokens,
        ),
        "batched": batched,
    }
    rows = []
    for workload in args.workloads.split(","):
        row: dict[str, Any] = {"workload": workload}
        for label, reader in readers.items():
            logger.info("workload %s: %s", workload, label)
            row[label] = run(reader, workload, questions, args)
            logger.info("  %s s, %s new tokens", row[label]["wall_s"], row[label]["new_tokens"])
        base = row["naive"]
        for label in ("reuse", "batched"):
            r = row[label]
            r["same_results"] = r["result"] == base["result"]
            r["agreement"] = round(
                sum(x == y for x, y in zip(r["result"], base["result"], strict=True)) / len(base["result"]), 4
            )
            r["speedup"] = round(base["wall_s"] / max(r["wall_s"], 1e-9), 2)
            r["new_token_ratio"] = round(base["new_tokens"] / max(r["new_tokens"], 1), 2)
        rows.append(row)
        write_report(args, batched.name, rows)  # after each workload, so a cut-off run keeps what it did

    header = (
        "| workload | naive s | reuse s | reuse+batched s | speedup reuse | speedup reuse+batched | "
        "naive new tok | reuse new tok | reuse+batched new tok | same results |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        n, a, b = r["naive"], r["reuse"], r["batched"]
        same = (
            "yes"
            if a["same_results"] and b["same_results"]
            else f"{a['agreement']:.0%} / {b['agreement']:.0%}"
        )
        lines.append(
            f"| {r['workload']} | {n['wall_s']} | {a['wall_s']} | {b['wall_s']} | {a['speedup']}x | "
            f"{b['speedup']}x | {n['new_tokens']} | {a['new_tokens']} ({a['new_token_ratio']}x) | "
            f"{b['new_tokens']} ({b['new_token_ratio']}x) | {same} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    write_report(args, batched.name, rows)
    return 0


def write_report(args: argparse.Namespace, reader_name: str, rows: list[dict[str, Any]]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "reader": reader_name,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    sys.exit(main())
