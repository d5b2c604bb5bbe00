"""The supervised stage: config round trip, input errors, learning on the toy environment, exact resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from bgm_model import BridgeModel
from bgm_model.training.sl_config import SLConfig
from bgm_model.training.sl_trainer import SLTrainer
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids


def _params(bridge: BridgeModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in bridge.state_dict().items()}


# ------------------------------------------------------------------------------------------------ config
def test_sl_config_json_round_trip(tmp_path):
    cfg = SLConfig(output_dir=str(tmp_path), learning_rate=1e-3, loss_reduction="token", save_steps=7)
    path = tmp_path / "c.json"
    text = cfg.to_json(path)
    assert json.loads(text) == json.loads(path.read_text())
    assert list(json.loads(text)) == sorted(json.loads(text)), "keys are written sorted"
    assert SLConfig.from_json(path) == cfg
    assert SLConfig.from_json(text) == cfg


def test_sl_config_drops_unknown_keys_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = SLConfig.from_dict({"learning_rate": 0.5, "from_the_future": 1})
    assert cfg.learning_rate == 0.5
    assert "from_the_future" in caplog.text


def test_every_config_field_is_documented():
    import dataclasses

    from bgm_model.training.rl_config import RLConfig

    for cls in (SLConfig, RLConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


@pytest.mark.parametrize(
    "bad", [{"learning_rate": 0}, {"batch_size": 0}, {"dev_fraction": 1.0}, {"loss_reduction": "mean"}]
)
def test_sl_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SLConfig(**bad)


# ------------------------------------------------------------------------------------------------ bad input
def test_empty_training_set_is_an_error(tiny_make_bridge, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        SLTrainer(tiny_make_bridge(), SLConfig(output_dir=str(tmp_path)), [])


def test_target_naming_a_missing_passage_is_an_error(tiny_make_bridge, tmp_path):
    record = {"id": "q1", "question": "q?", "passages": ["a", "b"], "ids": [0, 5]}
    with pytest.raises(ValueError, match=r"q1.*passage 5.*2 passages"):
        SLTrainer(tiny_make_bridge(), SLConfig(output_dir=str(tmp_path)), [record])


def test_target_longer_than_the_bridge_allows_is_an_error(tiny_make_bridge, tmp_path):
    record = {"id": "q1", "question": "q?", "passages": ["a", "b", "c"], "ids": [0, 1, 2, 0, 1]}
    with pytest.raises(ValueError, match="max_output_length"):
        SLTrainer(tiny_make_bridge(), SLConfig(output_dir=str(tmp_path)), [record])


def test_record_without_target_is_an_error(tiny_make_bridge, tmp_path):
    with pytest.raises(ValueError, match="no target 'ids'"):
        SLTrainer(
            tiny_make_bridge(), SLConfig(output_dir=str(tmp_path)), [{"question": "q", "passages": ["a"]}]
        )


# ------------------------------------------------------------------------------------------------ learning
def test_sl_fits_toy_optimum_and_keeps_best_and_final(tiny_make_bridge, tiny_silver_records, tmp_path):
    """Teacher forcing drives the greedy output to the known optimum [X, X] of the toy environment.

    The tiny random model learns it for the training queries; generalising to held-out queries needs it to
    learn the question/passage keyword match, which it does not within a test budget (see docs/training.md).
    The dev set is scored with the downstream metric (EM of the toy reader).
    """
    examples = make_toy_examples(12, n_passages=3, seed=5)
    train = tiny_silver_records(examples, toy_optimal_ids)
    bridge = tiny_make_bridge(dropout=0.0)
    before = _params(bridge)
    reader = ToyReader()
    cfg = SLConfig(
        output_dir=str(tmp_path),
        learning_rate=1e-2,
        num_epochs=60,
        batch_size=12,
        warmup_ratio=0.0,
        weight_decay=0.0,
        logging_steps=5,
        eval_metric="em",
    )
    trainer = SLTrainer(bridge, cfg, train, dev_data=train, reader=reader)
    untrained = trainer.evaluate()["reward"]
    result = trainer.train()

    outs = bridge.bridge_batch([e.question for e in examples], [e.passages for e in examples])
    hits = sum(o.ids == toy_optimal_ids(e) for o, e in zip(outs, examples))
    assert hits / len(examples) >= 0.9, [o.ids for o in outs]
    assert any(not torch.equal(before[k], v) for k, v in bridge.state_dict().items())

    # The downstream metric (EM of the toy reader on the greedy sequence) was evaluated each epoch and rose.
    rewards = [e["dev_reward"] for e in result.evaluations]
    assert len(rewards) == cfg.num_epochs
    assert untrained < 0.5 and rewards[-1] >= 0.9
    assert result.best_metric == max(rewards)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    for name in ("best", "final"):
        loaded = BridgeModel.from_pretrained(tmp_path / name)
        assert loaded.bridge_batch([examples[0].question], [examples[0].passages])[0].ids is not None
    final = BridgeModel.from_pretrained(tmp_path / "final")
    assert all(torch.equal(v, bridge.state_dict()[k]) for k, v in final.state_dict().items())


# ------------------------------------------------------------------------------------------------ resume
class _Crash(Exception):
    pass


def test_interrupted_then_resumed_run_ends_with_the_same_weights(
    tiny_make_bridge, tiny_silver_records, tmp_path
):
    """Dropout on, gradient accumulation, two epochs: the resumed run replays data order and RNG exactly."""
    records = tiny_silver_records(make_toy_examples(20, n_passages=3, seed=9), toy_optimal_ids)

    def config(out: str) -> SLConfig:
        return SLConfig(
            output_dir=out,
            learning_rate=5e-3,
            num_epochs=2,
            batch_size=3,
            gradient_accumulation_steps=2,
            save_steps=2,
            logging_steps=1,
            dev_fraction=0.2,
            seed=3,
        )

    full = tiny_make_bridge(seed=1)
    SLTrainer(full, config(str(tmp_path / "a")), records).train()

    def crash_at_5(record):
        if record["step"] == 5:
            raise _Crash

    first = tiny_make_bridge(seed=1)
    with pytest.raises(_Crash):
        SLTrainer(first, config(str(tmp_path / "b")), records, callbacks=[crash_at_5]).train()
    state = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # the step-5 work was lost and is redone

    resumed = tiny_make_bridge(seed=1)  # the same initial bridge, as a re-run of the same command would build
    result = SLTrainer(resumed, config(str(tmp_path / "b")), records).train()
    reference = full.state_dict()
    assert (
        result.global_step
        == json.loads((tmp_path / "a" / "checkpoint" / "trainer_state.json").read_text())["global_step"]
    )
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, reference[k]), k
    # ... and the interruption really mattered: training moved the weights away from the initial ones.
    assert any(not torch.equal(v, tiny_make_bridge(seed=1).state_dict()[k]) for k, v in reference.items())


def test_resume_is_off_when_asked(tiny_make_bridge, tiny_silver_records, tmp_path):
    records = tiny_silver_records(make_toy_examples(4, n_passages=3, seed=9), toy_optimal_ids)
    cfg = SLConfig(output_dir=str(tmp_path), num_epochs=1, batch_size=2, dev_fraction=0.0)
    assert SLTrainer(tiny_make_bridge(), cfg, records).train().global_step == 2
    # Resumed: everything is done already, no step is run again.
    assert SLTrainer(tiny_make_bridge(), cfg, records).train().global_step == 2
    fresh = SLConfig(**{**cfg.to_dict(), "resume": False, "num_epochs": 2, "logging_steps": 1})
    assert SLTrainer(tiny_make_bridge(), fresh, records).train().global_step == 4
    # Starting over keeps the earlier run's log beside the new one instead of mixing their curves.
    def steps(name: str) -> list[int]:
        lines = (tmp_path / name).read_text().splitlines()
        return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]

    assert steps("log.1.jsonl") == [2] and steps("log.jsonl") == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_help_documents_every_config_field(capsys):
    import dataclasses

    from bgm_cli.main import main
    from bgm_model.training.rl_config import RLConfig

    for stage, cls in (("sl", SLConfig), ("rl", RLConfig)):
        with pytest.raises(SystemExit):
            main(["train", stage, "--help"])
        text = capsys.readouterr().out
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in text, (stage, f.name)


def test_cli_trains_sl_from_a_silver_file(tiny_make_bridge, tmp_path):
    from bgm_cli.main import main
    from bgm_model.training.silver import synthesize_to_file

    synthesize_to_file(make_toy_examples(6, n_passages=3, seed=2), ToyReader(), tmp_path / "silver.jsonl")
    tiny_make_bridge().save_pretrained(tmp_path / "init")
    (tmp_path / "cfg.json").write_text(json.dumps({"num_epochs": 5, "batch_size": 2}))
    rc = main(["train", "sl", "--silver", str(tmp_path / "silver.jsonl"), "--init", str(tmp_path / "init"),
               "--reader", "toy", "--config", str(tmp_path / "cfg.json"), "--num-epochs", "1",
               "--output-dir", str(tmp_path / "out"), "--dev-fraction", "0.34"])  # fmt: skip
    assert rc == 0
    saved = SLConfig.from_json(tmp_path / "out" / "sl_config.json")
    assert (saved.num_epochs, saved.batch_size) == (1, 2), "flags override --config, which overrides defaults"
    state = json.loads((tmp_path / "out" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["evaluations"][0]["dev_reward"] is not None
    BridgeModel.from_pretrained(tmp_path / "out" / "final")


def test_cli_new_bridge_settings_reach_the_config():
    from bgm_cli.main import build_parser
    from bgm_cli.train import build_bridge

    args = build_parser().parse_args(["train", "sl", "--silver", "s.jsonl", "--from-encoder", "--max-passages", "12",
                                      "--relevance-prior", "20"])  # fmt: skip
    config = build_bridge(args).config
    assert (config.max_passages, config.relevance_prior) == (12, 20.0)
    with pytest.raises(ValueError, match="relevance_prior"):
        build_bridge(build_parser().parse_args(["train", "sl", "--silver", "s.jsonl", "--from-encoder",
                                                 "--relevance-prior", "-1"]))  # fmt: skip


def test_sl_reaches_the_toy_optimum_on_held_out_queries(tmp_path):
    """The bridge learns *which* passage to pick from its content, not the training queries by heart.

    MiniLM warm start (as users train it); the key passage's position varies, so only matching the question's
    keyword to a passage generalises to new queries.
    """
    from bgm_model import BridgeConfig, BridgeModel
    from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids

    torch.manual_seed(0)
    config = BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=24, max_output_length=3)
    bridge = BridgeModel.from_encoder(config=config, decoder_layers=1)
    train = [
        {"id": e.id, "question": e.question, "passages": e.passages, "answers": e.answers, "ids": toy_optimal_ids(e)}
        for e in make_toy_examples(320, n_passages=5, seed=1)
    ]
    held_out = make_toy_examples(40, n_passages=5, seed=2)
    untrained = bridge.bridge_batch([e.question for e in held_out], [e.passages for e in held_out])
    SLTrainer(
        bridge,
        SLConfig(output_dir=str(tmp_path / "sl"), learning_rate=1e-4, num_epochs=1, batch_size=8, max_steps=40,
                 warmup_ratio=0.0, dev_fraction=0.0, save_steps=0, seed=0),
        train_data=train,
    ).train()
    results = bridge.bridge_batch([e.question for e in held_out], [e.passages for e in held_out])
    optimal = [r.ids == toy_optimal_ids(e) for r, e in zip(results, held_out)]
    assert sum(r.ids == toy_optimal_ids(e) for r, e in zip(untrained, held_out)) <= 4
    assert sum(optimal) / len(held_out) >= 0.9
    # And the downstream reader agrees: exact-match answers on held-out queries.
    answers = ToyReader(cache=False).answer_batch([e.question for e in held_out],
                                                  [[e.passages[i] for i in r.ids] for r, e in zip(results, held_out)])
    assert sum(a == e.answers[0] for a, e in zip(answers, held_out)) / len(held_out) >= 0.9


# ------------------------------------------------------------------------------------------------ soft targets
def _searched(examples, reader):
    from bgm_model.training.silver import SilverConfig, synthesize_one

    return [synthesize_one(e, reader, reward="em", config=SilverConfig(top_m=None)) for e in examples]


def test_step_targets_follow_the_search_scores():
    from bgm_model.training.silver import END, SilverSequence, step_targets

    rec = SilverSequence(
        id="q", question="q?", passages=["a", "b", "c"], answers=["x"], ids=[1], answer="x", score=1.0,
        secondary_score=-0.5, stop_reason="no_improvement", reward="em", secondary="loglik", reader_calls=0,
        reader_batches=0, naive_reader_calls=0,
        trajectory=[{"ids": [], "primary": 0.0, "secondary": -3.0}, {"ids": [1], "primary": 1.0, "secondary": -0.5}],
        scanned=[[[0, 0.0, -2.0], [1, 1.0, -0.5], [2, 1.0, -0.5]], [[0, 0.0, -1.0], [1, 1.0, -0.7]]],
    )
    first, second = step_targets(rec, temperature=0.2, secondary_weight=0.1)
    assert sum(first.values()) == pytest.approx(1.0) and sum(second.values()) == pytest.approx(1.0)
    assert first[1] == pytest.approx(first[2]) and first[1] > 0.49  # two equally good passages share the mass
    assert first[0] < 0.01 and first.get(END, 0.0) < 0.01  # wrong answers and stopping early get little
    assert second[END] > second[1] > second[0]  # repeating costs likelihood, so stopping is the better target
    hard = step_targets(rec, temperature=1e-3)
    assert max(hard[1], key=hard[1].get) == END
    # A record without scans trains on its own silver decisions.
    plain = SilverSequence.from_dict({**rec.to_dict(), "scanned": []})
    assert step_targets(plain) == [{1: 1.0}, {END: 1.0}]
    with pytest.raises(ValueError, match="temperature"):
        step_targets(rec, temperature=0)


def test_soft_loss_with_weight_zero_is_the_hard_loss(tiny_make_bridge):
    from bgm_model.training.examples import TrainExample
    from bgm_model.training.sl_trainer import soft_step_log_probs

    bridge = tiny_make_bridge(dropout=0.0)
    batch = [TrainExample("a", "q one?", ["p0", "p1", "p2"], [], [2, 0], [{2: 0.5, 1: 0.5}, {0: 1.0}, {-1: 1.0}]),
             TrainExample("b", "q two?", ["p0", "p1"], [], [], None)]
    queries, passages, ids = [e.question for e in batch], [e.passages for e in batch], [e.ids for e in batch]
    hard, mask = bridge.step_log_probs(queries, passages, ids)
    dist, dist_mask = bridge.action_log_probs(queries, passages, ids)
    assert torch.equal(mask, dist_mask)
    assert torch.allclose(soft_step_log_probs(dist, mask, batch, 0.0), hard)
    soft = soft_step_log_probs(dist, mask, batch, 1.0)
    assert soft[0, 0].item() == pytest.approx(0.5 * (dist[0, 0, 2] + dist[0, 0, 1]).item(), abs=1e-6)
    assert torch.allclose(soft[1], hard[1])  # no soft targets: hard alone
    assert torch.isfinite(soft).all()


def test_sl_with_soft_targets_learns_the_toy_optimum(tiny_make_bridge, tmp_path):
    examples = make_toy_examples(12, n_passages=3, seed=5)
    records = _searched(examples, ToyReader())
    assert all(r.scanned for r in records)
    bridge = tiny_make_bridge(dropout=0.0)
    cfg = SLConfig(output_dir=str(tmp_path), learning_rate=1e-2, num_epochs=60, batch_size=12, warmup_ratio=0.0,
                   weight_decay=0.0, dev_fraction=0.0, soft_target_weight=1.0, soft_target_temperature=0.1)
    trainer = SLTrainer(bridge, cfg, records)
    assert all(ex.targets is not None for ex in trainer.train_data)
    trainer.train()
    outs = bridge.bridge_batch([e.question for e in examples], [e.passages for e in examples])
    assert sum(o.ids == toy_optimal_ids(e) for o, e in zip(outs, examples)) / len(examples) >= 0.9


def test_freezing_encoder_layers_keeps_them_fixed(tiny_make_bridge, tiny_silver_records, tmp_path):
    records = tiny_silver_records(make_toy_examples(6, n_passages=3, seed=9), toy_optimal_ids)
    bridge = tiny_make_bridge(dropout=0.0)
    before = _params(bridge)
    cfg = SLConfig(output_dir=str(tmp_path), learning_rate=1e-2, num_epochs=2, batch_size=3, dev_fraction=0.0,
                   freeze_encoder_layers=1)
    SLTrainer(bridge, cfg, records).train()
    after = bridge.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(before[k], v)}
    assert not any(k.startswith(("model.encoder.embeddings.", "model.encoder.encoder.layer.0.")) for k in changed)
    assert any(k.startswith("model.encoder.encoder.layer.1.") for k in changed)
    assert any(k.startswith("model.decoder.") for k in changed)
    with pytest.raises(ValueError, match=r"n must be in \[0, 2\]"):
        tiny_make_bridge().freeze_encoder_layers(3)
    with pytest.raises(ValueError, match="soft_target_weight"):
        SLConfig(soft_target_weight=1.5)
