"""Ablation: SL on the toy environment with and without the pointer term; held-out accuracy every 25 steps.

    python -m benchmarks.pointer_ablation 1 151   # pointer_scoring=True, 151 steps
    python -m benchmarks.pointer_ablation 0 76    # pointer_scoring=False
"""

from __future__ import annotations

import sys
import time

import torch

from bgm_model import BridgeConfig, BridgeModel
from bgm_model.training.toy import make_toy_examples, toy_optimal_ids


def main(pointer: bool, steps: int) -> None:
    torch.manual_seed(0)
    config = BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=24, max_output_length=3,
                          pointer_scoring=pointer)
    bridge = BridgeModel.from_encoder(config=config, decoder_layers=1)
    train = make_toy_examples(400, n_passages=5, seed=1)
    test = make_toy_examples(60, n_passages=5, seed=2)
    opt = torch.optim.AdamW(bridge.parameters(), lr=1e-4)
    bridge.train()
    start = time.time()
    for step in range(steps):
        batch = [train[(step * 8 + i) % len(train)] for i in range(8)]
        loss = -bridge.sequence_log_probs(
            [e.question for e in batch], [e.passages for e in batch], [toy_optimal_ids(e) for e in batch]
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            results = bridge.bridge_batch([e.question for e in test], [e.passages for e in test])
            bridge.train()
            solved = sum(r.ids == toy_optimal_ids(e) for r, e in zip(results, test)) / len(test)
            print(f"step {step}: loss {float(loss.detach()):.3f}, held-out solved {solved:.2f}, {time.time() - start:.0f}s",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1] == "1", int(sys.argv[2]))
