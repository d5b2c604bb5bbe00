"""The RL stage: the PPO loss, learning on the toy environment, one reader call per step, exact resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bgm_model.training.rl_config import RLConfig
from bgm_model.training.rl_trainer import RLTrainer, ppo_loss
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids


class CountingToyReader(ToyReader):
    """Counts public ``answer_batch`` calls (what the trainer asks for, before cache and de-duplication)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def answer_batch(self, questions, passage_lists):  # type: ignore[override]
        self.batches.append(len(questions))
        return super().answer_batch(questions, passage_lists)


# ------------------------------------------------------------------------------------------------ the loss
def test_ppo_loss_pushes_probability_towards_positive_advantage():
    old = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    new = old.clone().requires_grad_(True)
    mask = torch.tensor([[True, True], [True, False]])
    loss, stats = ppo_loss(new, old, old, torch.tensor([1.0, -1.0]), mask, clip_range=0.2, kl_coef=0.1)
    loss.backward()
    assert stats["clip_frac"] == 0.0 and stats["approx_kl"] == 0.0 and stats["kl_policy"] == 0.0
    assert (new.grad[0] < 0).all(), "descending the loss raises log-probs of the positive-advantage sample"
    assert new.grad[1, 0] > 0, "... and lowers those of the negative one"
    assert new.grad[1, 1] == 0, "masked steps get no gradient"


def test_ppo_loss_clips_the_ratio_and_penalises_drift_from_the_reference():
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), 0.5, requires_grad=True)  # ratio e^0.5 = 1.65 > 1 + 0.2
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, stats = ppo_loss(new, old, None, torch.tensor([1.0]), mask, clip_range=0.2, kl_coef=0.0)
    loss.backward()
    assert stats["clip_frac"] == 1.0
    assert new.grad.abs().item() == 0.0, "a clipped ratio with positive advantage gives no gradient"

    ref = torch.zeros(1, 1)
    new2 = torch.full((1, 1), 0.5, requires_grad=True)
    loss2, stats2 = ppo_loss(new2, new2.detach(), ref, torch.tensor([0.0]), mask, clip_range=0.2, kl_coef=1.0)
    loss2.backward()
    r = -0.5
    assert stats2["kl_policy"] == pytest.approx(torch.tensor(r).exp().item() - r - 1)
    assert new2.grad.item() > 0, "the KL penalty pulls the policy back towards the reference"


# ------------------------------------------------------------------------------------------------ config/input
def test_rl_config_json_round_trip(tmp_path):
    cfg = RLConfig(output_dir=str(tmp_path), reward="em+0.5*f1", num_samples=3, kl_coef=0.0)
    assert RLConfig.from_json(cfg.to_json(tmp_path / "c.json")) == cfg
    assert RLConfig.from_json(tmp_path / "c.json") == cfg


def test_rl_config_rejects_a_group_of_one():
    with pytest.raises(ValueError, match="num_samples"):
        RLConfig(num_samples=1)


def test_rl_needs_a_reader_and_answers(tiny_make_bridge, tmp_path):
    examples = make_toy_examples(2, n_passages=3)
    with pytest.raises(ValueError, match="reader"):
        RLTrainer(tiny_make_bridge(), RLConfig(output_dir=str(tmp_path)), examples)
    unlabelled = [{"question": e.question, "passages": e.passages, "answers": []} for e in examples]
    with pytest.raises(ValueError, match="gold answers"):
        RLTrainer(tiny_make_bridge(), RLConfig(output_dir=str(tmp_path)), unlabelled, reader=ToyReader())
    with pytest.raises(ValueError, match="empty|gold answers"):
        RLTrainer(tiny_make_bridge(), RLConfig(output_dir=str(tmp_path)), [], reader=ToyReader())


def test_first_ppo_pass_is_on_policy_even_with_dropout_in_the_model(tiny_make_bridge, tmp_path):
    """Recomputed log-probs equal the sampling ones (ratio 1): RL turns dropout off and scores the same
    constrained distribution it samples from."""
    examples = make_toy_examples(4, n_passages=3, seed=6)
    cfg = RLConfig(
        output_dir=str(tmp_path),
        reward="f1",
        max_steps=1,
        batch_size=4,
        num_samples=4,
        mini_batch_size=16,
        ppo_epochs=1,
        save_steps=0,
    )
    records: list[dict] = []
    RLTrainer(
        tiny_make_bridge(dropout=0.1), cfg, examples, reader=ToyReader(), callbacks=[records.append]
    ).train()
    assert abs(records[0]["approx_kl"]) < 1e-6
    assert records[0]["clip_frac"] == 0.0
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6), "the reference is the initial policy"


# ------------------------------------------------------------------------------------------------ learning
def test_rl_raises_the_reward_of_a_weak_policy(tiny_make_bridge, tmp_path):
    """From an untrained bridge, PPO with the toy reader's F1 as reward moves the greedy output to the optimum.

    Untrained, the greedy bridge scores ~0 (it stops at once or misses the key passage); the optimum
    [X, X] scores 1 and [..., X] 2/3.
    """
    examples = make_toy_examples(8, n_passages=3, seed=3)
    bridge = tiny_make_bridge(dropout=0.0)
    before_params = {k: v.clone() for k, v in bridge.state_dict().items()}
    reader = CountingToyReader()
    cfg = RLConfig(
        output_dir=str(tmp_path),
        reward="f1",
        learning_rate=5e-3,
        max_steps=60,
        batch_size=8,
        num_samples=6,
        mini_batch_size=48,
        ppo_epochs=2,
        kl_coef=0.01,
        save_steps=0,
        logging_steps=1,
    )
    trainer = RLTrainer(bridge, cfg, examples, reader=reader, dev_data=examples)
    before = trainer.evaluate()["reward"]
    reader.batches.clear()
    result = trainer.train()
    after = trainer.evaluate()["reward"]

    print(f"greedy dev reward before {before:.3f} after {after:.3f}")
    assert after >= before + 0.3, (before, after)
    assert any(not torch.equal(v, before_params[k]) for k, v in bridge.state_dict().items())
    outs = bridge.bridge_batch([e.question for e in examples], [e.passages for e in examples])
    assert sum(o.ids[-1:] == toy_optimal_ids(e)[-1:] for o, e in zip(outs, examples)) >= 6, "ends with X"

    # The starting bridge's dev evaluation, then one reader call per rollout step holding all samples of
    # the step (+ the final dev evaluation).
    assert reader.batches[0] == len(examples)
    assert reader.batches[1 : cfg.max_steps + 1] == [cfg.batch_size * cfg.num_samples] * cfg.max_steps
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if r.get("event") != "eval"]
    assert len(steps) == cfg.max_steps
    for key in ("reward", "kl", "entropy", "length", "clip_frac", "approx_kl", "loss", "lr"):
        assert all(key in r for r in steps), key
    assert steps[-1]["kl"] > 0, "the policy moved away from the reference"
    first, last = steps[:5], steps[-5:]
    assert sum(r["reward"] for r in last) / 5 > sum(r["reward"] for r in first) / 5
    assert result.best_metric == pytest.approx(after) and result.best_step == cfg.max_steps
    assert [e["step"] for e in result.evaluations] == [0, cfg.max_steps]
    assert result.evaluations[0]["dev_reward"] == pytest.approx(before)


def test_rl_keeps_the_start_when_training_makes_dev_worse(tiny_make_bridge, tmp_path):
    """best/ is never worse on dev than the starting bridge: here the dev questions' gold answer is what the
    untrained bridge makes the reader say ("unknown"), so learning the training questions lowers dev reward."""
    from bgm_model import BridgeModel

    train = make_toy_examples(8, n_passages=3, seed=3)
    dev = [dataclasses.replace(e, answers=["unknown"]) for e in make_toy_examples(6, n_passages=3, seed=9)]
    bridge = tiny_make_bridge(dropout=0.0)
    start = {k: v.clone() for k, v in bridge.state_dict().items()}
    cfg = RLConfig(output_dir=str(tmp_path), reward="f1", learning_rate=5e-3, max_steps=40, batch_size=8,
                   num_samples=6, mini_batch_size=48, kl_coef=0.01, eval_steps=20, save_steps=0)  # fmt: skip
    result = RLTrainer(bridge, cfg, train, reader=ToyReader(), dev_data=dev).train()

    rewards = [e["dev_reward"] for e in result.evaluations]
    assert [e["step"] for e in result.evaluations] == [0, 20, 40]
    assert rewards[-1] < rewards[0], rewards
    assert result.best_step == 0 and result.best_metric == pytest.approx(rewards[0])
    kept = BridgeModel.from_pretrained(tmp_path / "best").state_dict()
    assert all(torch.equal(kept[k], v) for k, v in start.items()), "best/ holds the starting weights"
    assert any(not torch.equal(bridge.state_dict()[k], v) for k, v in start.items()), "RL did train"


# ------------------------------------------------------------------------------------------------ resume
class _Crash(Exception):
    pass


def test_rl_resume_ends_with_the_same_weights(tiny_make_bridge, tmp_path):
    examples = make_toy_examples(6, n_passages=3, seed=4)

    def config(out: str) -> RLConfig:
        return RLConfig(
            output_dir=out,
            reward="f1",
            learning_rate=3e-3,
            max_steps=4,
            batch_size=3,
            num_samples=3,
            mini_batch_size=5,
            ppo_epochs=2,
            kl_coef=0.05,
            save_steps=2,
        )

    full = tiny_make_bridge(seed=2)
    RLTrainer(full, config(str(tmp_path / "a")), examples, reader=ToyReader()).train()

    def crash_at_3(record):
        if record["step"] == 3:
            raise _Crash

    with pytest.raises(_Crash):
        RLTrainer(
            tiny_make_bridge(seed=2),
            config(str(tmp_path / "b")),
            examples,
            reader=ToyReader(),
            callbacks=[crash_at_3],
        ).train()
    resumed = tiny_make_bridge(seed=2)
    RLTrainer(resumed, config(str(tmp_path / "b")), examples, reader=ToyReader()).train()
    reference = full.state_dict()
    for k, v in resumed.state_dict().items():
        assert torch.allclose(v, reference[k], atol=1e-6, rtol=0), k
    assert any(not torch.equal(v, tiny_make_bridge(seed=2).state_dict()[k]) for k, v in reference.items())


# ------------------------------------------------------------------------------------------------ real reader
@pytest.mark.slow
def test_small_real_run_with_smollm2(tiny_make_bridge, tmp_path):
    """Silver sequences -> SL -> RL with SmolLM2-135M-Instruct on a few HotpotQA questions, tiny budgets."""
    from pathlib import Path

    from bgm_model import BridgeConfig, BridgeModel
    from bgm_model.data import load_examples
    from bgm_model.readers.hf import load_smollm2_reader
    from bgm_model.training.silver import SilverConfig, read_silver, synthesize_to_file
    from bgm_model.training.sl_config import SLConfig
    from bgm_model.training.sl_trainer import SLTrainer

    data = Path(__file__).resolve().parents[3] / "shared" / "data" / "hotpotqa" / "dev.jsonl"
    if not data.exists():
        pytest.skip(f"{data} not found")
    examples = load_examples(data, limit=4)
    reader = load_smollm2_reader(cache=tmp_path / "cache")
    synthesize_to_file(
        examples, reader, tmp_path / "silver.jsonl", reward="f1", config=SilverConfig(max_length=2)
    )
    silver = read_silver(tmp_path / "silver.jsonl")
    assert len(silver) == 4

    bridge = tiny_make_bridge(
        config=BridgeConfig(max_passages=16, max_query_tokens=12, max_passage_tokens=16, max_output_length=3)
    )
    sl = SLTrainer(
        bridge,
        SLConfig(
            output_dir=str(tmp_path / "sl"), num_epochs=1, batch_size=2, dev_fraction=0.25, eval_metric="f1"
        ),
        silver,
        reader=reader,
    ).train()
    assert 0.0 <= sl.evaluations[-1]["dev_reward"] <= 1.0

    sl_bridge = BridgeModel.from_pretrained(tmp_path / "sl" / "final")
    rl = RLTrainer(
        sl_bridge,
        RLConfig(
            output_dir=str(tmp_path / "rl"),
            reward="f1",
            max_steps=2,
            batch_size=2,
            num_samples=2,
            mini_batch_size=4,
        ),
        examples,
        reader=reader,
        dev_data=examples[:2],
    ).train()
    assert rl.global_step == 2
    logged = [json.loads(line) for line in (tmp_path / "rl" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["reward"] <= 1.0 for r in logged if "reward" in r)
    assert (tmp_path / "rl" / "final" / "model.safetensors").is_file()


def test_cli_trains_rl_from_a_dataset_file(tiny_make_bridge, tmp_path):
    from bgm_cli.main import main

    with open(tmp_path / "toy.jsonl", "w") as f:
        for e in make_toy_examples(4, n_passages=3, seed=2):
            passages = [{"title": "", "text": p} for p in e.passages]
            f.write(
                json.dumps({"id": e.id, "question": e.question, "answers": e.answers, "passages": passages})
            )
            f.write("\n")
    tiny_make_bridge().save_pretrained(tmp_path / "init")
    rc = main(["train", "rl", "--data", str(tmp_path / "toy.jsonl"), "--init", str(tmp_path / "init"),
               "--reader", "toy", "--reward", "f1", "--max-steps", "2", "--batch-size", "2",
               "--num-samples", "2", "--mini-batch-size", "4", "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0
    steps = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2]
    assert RLConfig.from_json(tmp_path / "out" / "rl_config.json").reward == "f1"
