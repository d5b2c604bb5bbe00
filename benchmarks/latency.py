"""Bridge latency on CPU next to a cross-encoder pass of the same backbone, measured in the same run.

    python -m benchmarks.latency                      # full table (a few minutes on 2 cores)
    python -m benchmarks.latency --repeats 3 --quick  # smoke run

For 10, 20 and 50 passages of ~100 words (real Wikipedia passages from nq_open), batch 1 and batch 16:
median and p95 wall time of (a) the bridge with its own greedy output, (b) the bridge forced to emit the
full ``max_output_length`` IDs (worst case decoding), (c) a MiniLM-L6 cross-encoder scoring the same
(query, passage) pairs with the same truncation. Peak extra resident memory of each call is sampled from
/proc. Writes ``benchmarks/results/latency.json``. Targets (issue 2): bridge <= 1.5x the cross-encoder;
50 passages <= 6x the time of 10.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from benchmarks.common import RESULTS, passage_text, shared_data_dir
from bgm_model import BridgeConfig, BridgeModel
from bgm_model.evaluation.cross_encoder import CrossEncoder


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples resident memory in a thread; ``extra`` is the peak above the level at entry."""

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def load_data(n_queries: int, n_passages: int) -> tuple[list[str], list[list[str]]]:
    corpus = [json.loads(line) for line in (shared_data_dir("nq_open") / "corpus.jsonl").open()]
    passages = [passage_text(p) for p in corpus if 80 <= len(p["text"].split()) <= 130]
    questions = [json.loads(line)["question"] for line in (shared_data_dir("nq_open") / "dev.jsonl").open()][:n_queries]
    lists = [[passages[(q * 97 + i * 13) % len(passages)] for i in range(n_passages)] for q in range(n_queries)]
    return questions, lists


def time_calls(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times, extra = [], 0.0
    for _ in range(repeats):
        with PeakMemory() as mem:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        extra = max(extra, mem.extra_mb)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"median_s": statistics.median(times), "p95_s": p95, "peak_extra_mb": extra, "runs": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, nargs="+", default=[10, 20, 50], help="passages per query")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="queries per call")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per cell (batch 16 uses a third)")
    parser.add_argument("--bridge", default=None, help="a saved bridge (default: MiniLM warm start)")
    parser.add_argument("--out", default=str(RESULTS / "latency.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BridgeConfig(max_passages=max(64, max(args.passages)))
    bridge = BridgeModel.from_pretrained(args.bridge) if args.bridge else BridgeModel.from_encoder(config=config)
    bridge.to("cpu")
    cross = CrossEncoder(max_length=bridge.encoder_row_length, batch_size=bridge.config.encoder_batch_size)
    rows = []
    for batch in args.batches:
        repeats = args.repeats if batch == 1 else max(3, args.repeats // 3)
        for n in args.passages:
            queries, lists = load_data(batch, n)
            def run_bridge(q=queries, ls=lists, b=batch):
                return bridge.bridge_batch(q, ls, batch_size=b)

            ce = time_calls(lambda q=queries, ls=lists: cross.rerank_batch(q, ls), repeats)
            own = time_calls(run_bridge, repeats)
            out_len = statistics.mean(len(r.ids) for r in bridge.bridge_batch(queries, lists, batch_size=batch))
            # Worst-case decoding: no end before max_output_length IDs.
            full = time_calls(
                lambda q=queries, ls=lists, b=batch: bridge.bridge_batch(
                    q, ls, batch_size=b, min_length=bridge.config.max_output_length
                ),
                repeats,
            )
            row = {
                "batch": batch, "passages": n, "cross_encoder": ce, "bridge": own, "bridge_full_length": full,
                "bridge_output_len": out_len, "full_output_len": bridge.config.max_output_length,
                "ratio_bridge_vs_ce": own["median_s"] / ce["median_s"],
                "ratio_full_vs_ce": full["median_s"] / ce["median_s"],
            }
            rows.append(row)
            _write(args.out, rows, {}, args.bridge)  # partial results survive an interrupted run
            print(f"batch {batch:>2} passages {n:>2}: cross-encoder {ce['median_s']:.3f}s, bridge {own['median_s']:.3f}s "
                  f"({row['ratio_bridge_vs_ce']:.2f}x), bridge 10 IDs {full['median_s']:.3f}s ({row['ratio_full_vs_ce']:.2f}x)",
                  flush=True)

    scaling = {}
    for batch in args.batches:
        by_n = {r["passages"]: r for r in rows if r["batch"] == batch}
        if 10 in by_n and 50 in by_n:
            scaling[str(batch)] = {
                "bridge_50_vs_10": by_n[50]["bridge"]["median_s"] / by_n[10]["bridge"]["median_s"],
                "bridge_full_50_vs_10": by_n[50]["bridge_full_length"]["median_s"] / by_n[10]["bridge_full_length"]["median_s"],
                "cross_encoder_50_vs_10": by_n[50]["cross_encoder"]["median_s"] / by_n[10]["cross_encoder"]["median_s"],
            }

    print("\n| batch | passages | cross-encoder median / p95 (s) | bridge median / p95 (s) | bridge, 10 IDs median / p95 (s) "
          "| bridge / CE | bridge 10 IDs / CE | peak extra MB (CE / bridge) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ce, b, f = r["cross_encoder"], r["bridge"], r["bridge_full_length"]
        print(f"| {r['batch']} | {r['passages']} | {ce['median_s']:.3f} / {ce['p95_s']:.3f} | {b['median_s']:.3f} / {b['p95_s']:.3f} "
              f"| {f['median_s']:.3f} / {f['p95_s']:.3f} | {r['ratio_bridge_vs_ce']:.2f}x | {r['ratio_full_vs_ce']:.2f}x "
              f"| {ce['peak_extra_mb']:.0f} / {max(b['peak_extra_mb'], f['peak_extra_mb']):.0f} |")
    for batch, s in scaling.items():
        print(f"batch {batch}: 50 vs 10 passages: bridge {s['bridge_50_vs_10']:.2f}x, bridge 10 IDs "
              f"{s['bridge_full_50_vs_10']:.2f}x, cross-encoder {s['cross_encoder_50_vs_10']:.2f}x")

    _write(args.out, rows, scaling, args.bridge)
    print(f"\nwrote {args.out}")


def _write(out: str, rows: list[dict], scaling: dict, bridge: str | None) -> None:
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "bridge": bridge or "MiniLM warm start (untrained; 'bridge_full_length' forces 10 IDs)",
        "rows": rows, "scaling": scaling,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
