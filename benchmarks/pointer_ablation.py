"""Ablation: SL on the toy environment with and without the pointer term; held-out accuracy every 25 steps.

    python benchmarks/pointer_ablation.py 1 151   # pointer_scoring=True, 151 steps
    python benchmarks/pointer_ablation.py 0 76    # pointer_scoring=False
"""
import time, torch, sys
from bgm_model import BridgeModel, BridgeConfig
from bgm_model.training.toy import make_toy_examples, toy_optimal_ids
torch.manual_seed(0)
pointer = sys.argv[1] == "1"; steps = int(sys.argv[2])
cfg = BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=24, max_output_length=3, pointer_scoring=pointer)
b = BridgeModel.from_encoder(config=cfg, decoder_layers=1)
train = make_toy_examples(400, n_passages=5, seed=1); test = make_toy_examples(60, n_passages=5, seed=2)
opt = torch.optim.AdamW(b.parameters(), lr=1e-4)
b.train(); t=time.time()
for s in range(steps):
    batch = [train[(s*8+i) % len(train)] for i in range(8)]
    loss = -b.sequence_log_probs([e.question for e in batch], [e.passages for e in batch], [toy_optimal_ids(e) for e in batch]).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if s % 25 == 0:
        b.eval()
        res = b.bridge_batch([e.question for e in test], [e.passages for e in test])
        acc = sum(r.ids == toy_optimal_ids(e) for r, e in zip(res, test)) / len(test)
        b.train()
        print(s, round(float(loss.detach()), 3), "heldout", acc, round(time.time()-t), flush=True)
