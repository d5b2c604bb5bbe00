"""Reader cost benchmark, in one run on the same prompts: naive full-prompt calls (one at a time) vs KV
prefix reuse (calls one at a time) vs prefix reuse + batched greedy decoding (the default reader).

Workloads (nq_open training questions; candidates = the gold passage plus seeded random corpus passages,
shuffled; which passages they are does not change what a call costs):
  (a) silver-sequence synthesis with ``bgm_model.training.silver.synthesize`` (EM reward, gold-answer
      log-likelihood as the tie-breaker, default ``SilverConfig`` except ``max_length=--max-steps`` and
      ``lockstep=--lockstep``): each round sends one ``answer_and_score_batch`` for all extensions of the
      ``lockstep`` questions searched together (the naive reader runs it as an ``answer_batch`` and a
      ``score_batch``, every prompt in full; the others score the golds in each prompt's own pass);
  (b) RL: ``samples`` sampled passage sequences per question, one ``answer_batch`` for all;
  (c) evaluation: 5 methods per question (no passages, top-1, top-3, top-3 reversed, all candidates), one
      ``answer_batch`` for all questions and methods.

Optional extra backends (``--backends ct2-int8,ct2-float32``, needs ``pip install 'bgm-bridge[ct2]'``):
the same SmolLM2 converted to CTranslate2 (:class:`bgm_model.readers.ct2.CT2Reader`, int8 or float32
weights, no prefix reuse), run on the same prompts after the three transformers readers; reported with
their wall-time ratio to naive, to reuse and to reuse+batched, their agreement with the naive (transformers
fp32) answers, and the max |difference| of ``score_batch`` on the naive answers of the first
``--score-prompts`` prompts.

Run:  python -m benchmarks.reader [--questions 4 --candidates 6 --samples 4 --threads 1 --decode-batch 64]
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

from benchmarks.common import RESULTS, passage_text, shared_data_dir
from bgm_model.readers.base import Reader
from bgm_model.readers.hf import HFReader, load_smollm2_reader

logger = logging.getLogger("benchmarks.reader")
#: Extra backends ``--backends`` can add: label -> CTranslate2 compute type.
EXTRA_BACKENDS = {"ct2-int8": "int8", "ct2-float32": "float32"}


def find_data_dir() -> Path:
    return shared_data_dir("nq_open")


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
        q["candidates"] = [passage_text(corpus[i]) for i in chosen]
        out.append(q)
        if len(out) == n:
            break
    return out


def silver_search(reader: Reader, questions: list[dict[str, Any]], args: argparse.Namespace) -> list[list[int]]:
    from bgm_model.data import QAExample
    from bgm_model.training.silver import SilverConfig, synthesize

    examples = [
        QAExample(id=str(q.get("id", q["question"])), question=q["question"], answers=q["answers"],
                  passages=q["candidates"])
        for q in questions
    ]
    config = SilverConfig(max_length=args.max_steps, lockstep=args.lockstep)
    return [rec.ids for rec in synthesize(examples, reader, reward="em", config=config)]


def prompts(workload: str, questions: list[dict[str, Any]], args: argparse.Namespace) -> tuple[list, list]:
    """The (questions, passage lists) one ``answer_batch`` of the RL or evaluation workload sends."""
    qs: list[str] = []
    lists: list[list[str]] = []
    if workload == "rl":
        rng = random.Random(args.seed)
        for q in questions:
            for _ in range(args.samples):
                k = rng.randint(1, min(3, len(q["candidates"])))
                qs.append(q["question"])
                lists.append(rng.sample(q["candidates"], k))
    else:
        for q in questions:
            c = q["candidates"]
            for passages in ([], c[:1], c[:3], c[:3][::-1], c):
                qs.append(q["question"])
                lists.append(passages)
    return qs, lists


def run(
    reader: Reader, workload: str, questions: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    reader.stats.reset()
    if hasattr(reader, "reset_prefix_cache"):
        reader.reset_prefix_cache()
    start = time.perf_counter()
    if workload == "sps":
        result: Any = silver_search(reader, questions, args)
    else:
        result = reader.answer_batch(*prompts(workload, questions, args))
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
    parser.add_argument(
        "--lockstep", type=int, default=16, help="silver search: questions searched together (SilverConfig.lockstep)"
    )
    parser.add_argument("--samples", type=int, default=4, help="RL samples per question")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--decode-batch", type=int, default=64, help="decode_batch_size of the batched reader"
    )
    parser.add_argument("--workloads", default="sps,rl,eval", help="comma-separated subset of sps,rl,eval")
    parser.add_argument(
        "--backends",
        default="",
        help="extra backends run after the transformers readers, comma-separated: "
        + ",".join(EXTRA_BACKENDS)
        + " (CTranslate2; converted once into --ct2-dir)",
    )
    parser.add_argument(
        "--ct2-dir",
        type=Path,
        default=None,
        help="folder of the converted CTranslate2 models (default: $BGM_CACHE_DIR/ct2 or ~/.cache/bgm-bridge/ct2)",
    )
    parser.add_argument(
        "--score-prompts",
        type=int,
        default=10,
        help="extra backends: compare score_batch with the transformers reader on this many prompts per workload",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "reader.json")
    args = parser.parse_args(argv)
    extras = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(extras) - set(EXTRA_BACKENDS))
    if unknown:
        parser.error(f"unknown --backends {unknown}; choose from {sorted(EXTRA_BACKENDS)}")
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
    for label in extras:
        from bgm_model.readers.ct2 import load_smollm2_ct2_reader

        compute_type = EXTRA_BACKENDS[label]
        readers[label] = load_smollm2_ct2_reader(
            compute_type,
            cache=False,
            model_dir=args.ct2_dir / compute_type if args.ct2_dir else None,
            intra_threads=args.threads,
            max_new_tokens=batched.max_new_tokens,
        )
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
        for label in extras:
            r = row[label]
            r["agreement"] = round(
                sum(x == y for x, y in zip(r["result"], base["result"], strict=True)) / len(base["result"]), 4
            )
            r["same_results"] = r["result"] == base["result"]
            for ref in ("naive", "reuse", "batched"):
                r[f"speedup_vs_{ref}"] = round(row[ref]["wall_s"] / max(r["wall_s"], 1e-9), 2)
            if workload != "sps" and args.score_prompts > 0:
                r["score_check"] = score_check(batched, readers[label], workload, questions, base["result"], args)
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
    if extras:
        lines += [
            "",
            "| workload | backend | s | vs naive | vs reuse | vs reuse+batched | answers = naive | max abs score diff |",
            "|" + "---|" * 8,
        ]
        for r in rows:
            for label in extras:
                e = r[label]
                check = e.get("score_check") or {}
                lines.append(
                    f"| {r['workload']} | {label} | {e['wall_s']} | {e['speedup_vs_naive']}x | "
                    f"{e['speedup_vs_reuse']}x | {e['speedup_vs_batched']}x | {e['agreement']:.0%} | "
                    f"{check.get('max_abs_diff', '-')} |"
                )
    sys.stdout.write("\n".join(lines) + "\n")
    write_report(args, batched.name, rows)
    return 0


def score_check(
    reference: Reader,
    other: Reader,
    workload: str,
    questions: list[dict[str, Any]],
    answers: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Max/mean |score difference| of two readers on the naive answers of the first prompts (non-empty)."""
    qs, lists = prompts(workload, questions, args)
    idx = [i for i, a in enumerate(answers) if a.strip()][: args.score_prompts]
    if not idx:
        return {}
    picked = ([qs[i] for i in idx], [lists[i] for i in idx], [answers[i] for i in idx])
    diffs = [
        abs(x - y) for x, y in zip(reference.score_batch(*picked), other.score_batch(*picked), strict=True)
    ]
    return {
        "prompts": len(idx),
        "max_abs_diff": round(max(diffs), 4),
        "mean_abs_diff": round(sum(diffs) / len(diffs), 4),
    }


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
