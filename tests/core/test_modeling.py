"""The bridge core: constrained decoding, batching, training consistency, persistence, bad input."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

import bgm_model
from bgm_model import BridgeConfig, BridgeLoadError, BridgeModel, TooManyPassagesError
from tests._helpers import fit_bridge_to, make_tiny_bridge

PASSAGES = [
    "Hamlet is a tragedy written by William Shakespeare around 1600.",
    "Paris is the capital and most populous city of France.",
    "The Eiffel Tower was completed in 1889.",
    "Shakespeare was born in Stratford-upon-Avon.",
]


def _is_valid(ids: list[int], n: int, config: BridgeConfig) -> bool:
    return (
        all(0 <= i < n for i in ids)
        and len(ids) <= config.max_output_length
        and all(ids.count(i) <= config.max_repeats for i in set(ids))
    )


def test_public_api_is_pinned() -> None:
    assert sorted(bgm_model.__all__) == sorted(
        [
            "BridgeConfig", "BridgeError", "BridgeLoadError", "BridgeModel", "BridgeResult",
            "SupportsBridge", "TooManyPassagesError", "__version__",
        ]
    )


def test_every_sampled_output_is_a_valid_passage_sequence() -> None:
    bridge = make_tiny_bridge(BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=32,
                                           max_output_length=6, max_repeats=2))
    gen = torch.Generator().manual_seed(0)
    samples = bridge.sample(["q1", "q2"], [PASSAGES, PASSAGES[:2]], num_samples=64, temperature=3.0, generator=gen)
    lengths = set()
    for n, group in zip([4, 2], samples):
        for result in group:
            assert _is_valid(result.ids, n, bridge.config), result.ids
            assert len(result.scores) == len(result.ids)
            lengths.add(len(result.ids))
    # The high temperature explores: empty, short and capped outputs all occur and all stay valid.
    assert len(lengths) >= 3


def test_repetition_and_length_caps_are_enforced() -> None:
    no_repeat = make_tiny_bridge(BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=32,
                                              max_output_length=8, max_repeats=1))
    gen = torch.Generator().manual_seed(1)
    for group in no_repeat.sample(["q"], [PASSAGES], num_samples=64, temperature=5.0, generator=gen):
        for r in group:
            assert len(set(r.ids)) == len(r.ids)
    silent = make_tiny_bridge(BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=32,
                                           max_output_length=0))
    assert silent.bridge("q", PASSAGES).ids == []


def test_greedy_is_deterministic_and_batch_equals_single(tiny_bridge: BridgeModel) -> None:
    queries = ["who wrote hamlet?", "capital of france", "eiffel tower year"]
    lists = [PASSAGES, PASSAGES[1:3], PASSAGES[::-1]]
    batched = tiny_bridge.bridge_batch(queries, lists, batch_size=3)
    single = [tiny_bridge.bridge(q, ps) for q, ps in zip(queries, lists)]
    assert [r.ids for r in batched] == [r.ids for r in single]
    for a, b in zip(batched, single):
        assert a.scores == pytest.approx(b.scores, abs=1e-4)
    assert [r.ids for r in tiny_bridge.bridge_batch(queries, lists, batch_size=2)] == [r.ids for r in batched]


def test_sampled_log_probs_match_teacher_forcing(tiny_bridge: BridgeModel) -> None:
    gen = torch.Generator().manual_seed(3)
    groups = tiny_bridge.sample(["a", "b"], [PASSAGES, PASSAGES[:3]], num_samples=8, temperature=1.0, generator=gen)
    flat = [r for g in groups for r in g]
    queries = ["a"] * 8 + ["b"] * 8
    lists = [PASSAGES] * 8 + [PASSAGES[:3]] * 8
    recomputed = tiny_bridge.sequence_log_probs(queries, lists, [r.ids for r in flat])
    assert recomputed.requires_grad
    expected = torch.tensor([r.log_prob for r in flat])
    assert torch.allclose(recomputed.detach(), expected, atol=1e-4)


def test_teacher_forcing_learns_select_reorder_repeat() -> None:
    bridge = make_tiny_bridge(seed=5)
    target = [2, 0, 2]
    assert bridge.bridge("who wrote hamlet?", PASSAGES).ids != target
    before = [p.detach().clone() for p in bridge.parameters()]
    fit_bridge_to(bridge, "who wrote hamlet?", PASSAGES, target)
    result = bridge.bridge("who wrote hamlet?", PASSAGES)
    assert result.ids == target
    assert all(0.0 < s <= 1.0 for s in result.scores)
    assert any(not torch.equal(a, b) for a, b in zip(before, bridge.parameters()))


def test_step_log_probs_rejects_invalid_targets(tiny_bridge: BridgeModel) -> None:
    with pytest.raises(ValueError, match="names passage 7"):
        tiny_bridge.step_log_probs(["q"], [PASSAGES], [[7]])
    with pytest.raises(ValueError, match="max_repeats"):
        tiny_bridge.step_log_probs(["q"], [PASSAGES], [[1, 1, 1]])
    with pytest.raises(ValueError, match="max_output_length"):
        tiny_bridge.step_log_probs(["q"], [PASSAGES], [[0, 1, 2, 3, 0]])


def test_no_passages_gives_empty_result_without_a_model_call(tiny_bridge: BridgeModel, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("the model must not run for an empty passage list")

    monkeypatch.setattr(tiny_bridge, "_encode", boom)
    result = tiny_bridge.bridge("anything", [])
    assert result.ids == [] and result.scores == []
    assert [r.ids for r in tiny_bridge.bridge_batch(["a", "b"], [[], []])] == [[], []]


def test_odd_passages_are_handled(tiny_bridge: BridgeModel) -> None:
    huge = "word " * 20_000  # 100k characters
    odd = ["", "   \n\t ", "Ünïcödé ✓ 東京 — ümlaut", huge, "only one"]
    result = tiny_bridge.bridge("näive quéry ✓", odd)
    assert _is_valid(result.ids, len(odd), tiny_bridge.config)
    assert _is_valid(tiny_bridge.bridge("q", ["single passage"]).ids, 1, tiny_bridge.config)
    # The 100k-character passage is cut before tokenization, not tokenized whole.
    assert len(tiny_bridge._clean(huge, tiny_bridge.config.max_passage_tokens)) < 1_000


def test_passage_text_cannot_inject_id_tokens(tiny_bridge: BridgeModel) -> None:
    cleaned = tiny_bridge._clean("see [P3] and [P0]", 100)
    ids = tiny_bridge.tokenizer(cleaned, add_special_tokens=False).input_ids
    assert not set(ids) & set(tiny_bridge._action_token_ids.tolist())


def test_bad_arguments_raise_clear_errors(tiny_bridge: BridgeModel) -> None:
    with pytest.raises(TypeError, match="query must be a str, got int"):
        tiny_bridge.bridge(42, PASSAGES)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="passages must be a sequence of str"):
        tiny_bridge.bridge("q", "one long string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"passages\[1\] must be a str, got NoneType"):
        tiny_bridge.bridge("q", ["a", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="on_error"):
        tiny_bridge.bridge("q", ["a"], on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 queries but 1 passage lists"):
        tiny_bridge.bridge_batch(["a", "b"], [["x"]])


def test_too_many_passages_names_the_limit(tiny_bridge: BridgeModel, caplog) -> None:
    many = [f"passage {i}" for i in range(9)]
    with pytest.raises(TooManyPassagesError, match="at most 8"):
        tiny_bridge.bridge("q", many)
    truncating = make_tiny_bridge(BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=32,
                                               max_output_length=4, overflow="truncate"))
    with caplog.at_level(logging.WARNING, logger="bgm_model.modeling"):
        result = truncating.bridge("q", many)
    assert all(i < 8 for i in result.ids)
    assert "keeping the first 8" in caplog.text


def test_on_error_passthrough_returns_input_order(tiny_bridge: BridgeModel, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tiny_bridge, "_generate", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        tiny_bridge.bridge("q", PASSAGES)
    with caplog.at_level(logging.WARNING, logger="bgm_model.modeling"):
        result = tiny_bridge.bridge("q", PASSAGES, on_error="passthrough")
    assert result.fallback and result.ids == [0, 1, 2, 3]
    assert "passing their passages through unchanged" in caplog.text


def test_save_and_load_round_trip(tiny_bridge: BridgeModel, tmp_path) -> None:
    path = tiny_bridge.save_pretrained(tmp_path / "bridge")
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    saved = json.loads((path / "config.json").read_text())["bgm_bridge"]
    assert saved["version"] == bgm_model.__version__ and saved["max_passages"] == 8
    assert "bgm-bridge" in (path / "README.md").read_text()

    loaded = BridgeModel.from_pretrained(path)
    assert loaded.config == tiny_bridge.config
    for q, ps in [("who wrote hamlet?", PASSAGES), ("x", PASSAGES[:2])]:
        a, b = tiny_bridge.bridge(q, ps), loaded.bridge(q, ps)
        assert a.ids == b.ids and a.scores == pytest.approx(b.scores, abs=1e-5)
    assert BridgeModel.from_pretrained(path, max_repeats=1).config.max_repeats == 1


def test_loading_errors_are_clear(tiny_bridge: BridgeModel, tmp_path) -> None:
    with pytest.raises(BridgeLoadError, match="not found"):
        BridgeModel.from_pretrained(tmp_path / "nope")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    (no_weights / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(BridgeLoadError, match="safetensors only"):
        BridgeModel.from_pretrained(no_weights)
    plain = tmp_path / "plain"
    tiny_bridge.model.save_pretrained(plain)  # a seq2seq checkpoint without the bridge entry
    cfg = json.loads((plain / "config.json").read_text())
    cfg.pop("bgm_bridge", None)
    (plain / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BridgeLoadError, match="from_seq2seq"):
        BridgeModel.from_pretrained(plain)


def test_from_seq2seq_accepts_a_t5_checkpoint(tmp_path) -> None:
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from bgm_model.assets import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    config = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
                      decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.sep_token_id)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    bridge = BridgeModel.from_seq2seq(str(tmp_path / "t5"), BridgeConfig(max_passages=6, max_output_length=3))
    result = bridge.bridge("q", PASSAGES)
    assert _is_valid(result.ids, 4, bridge.config)
    fit_bridge_to(bridge, "q", PASSAGES, [3, 3], steps=80)
    assert bridge.bridge("q", PASSAGES).ids == [3, 3]


def test_config_validation_and_forward_compatibility(caplog) -> None:
    with pytest.raises(ValueError, match="max_passages"):
        BridgeConfig(max_passages=0)
    with pytest.raises(ValueError, match="overflow"):
        BridgeConfig(overflow="drop")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        cfg = BridgeConfig.from_dict({"max_passages": 5, "future_field": 1, "version": "9.9"})
    assert cfg.max_passages == 5 and "future_field" in caplog.text


def test_repeated_queries_are_encoded_once_with_identical_log_probs(tiny_bridge: BridgeModel, monkeypatch) -> None:
    targets = [[0], [1, 1], [], [2, 0]]
    expected = torch.cat([tiny_bridge.sequence_log_probs(["q"], [PASSAGES], [t]) for t in targets])
    rows: list[int] = []
    original = tiny_bridge._encode

    def counting(queries, passage_lists):
        rows.append(sum(len(p) for p in passage_lists))
        return original(queries, passage_lists)

    monkeypatch.setattr(tiny_bridge, "_encode", counting)
    batched = tiny_bridge.sequence_log_probs(["q"] * 4, [PASSAGES] * 4, targets)
    assert rows == [len(PASSAGES)]  # one query's passages encoded once, not four times
    assert torch.allclose(batched, expected, atol=1e-5)


def test_relevance_prior_is_minilm_similarity_from_a_warm_start() -> None:
    import numpy as np

    from bgm_model.data.retrieval import MiniLMEmbedder

    query = "who wrote hamlet?"
    bridge = BridgeModel.from_encoder(config=BridgeConfig(max_passages=8, relevance_prior=20.0))
    relevance = bridge._encode([query], [PASSAGES]).relevance[0].detach().numpy()
    vectors = MiniLMEmbedder().embed([query, *PASSAGES])
    np.testing.assert_allclose(relevance, vectors[1:] @ vectors[0], atol=1e-4)
    assert int(relevance.argmax()) == 0  # the Hamlet passage


def test_relevance_prior_picks_the_same_passage_in_any_input_order(tiny_bridge: BridgeModel) -> None:
    query = "who wrote hamlet?"
    prior = make_tiny_bridge(dataclasses.replace(tiny_bridge.config, relevance_prior=1000.0))
    firsts = set()
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]):
        passages = [PASSAGES[i] for i in order]
        result = prior.bridge(query, passages)
        relevance = prior._encode([query], [passages]).relevance[0]
        assert result.ids and result.ids[0] == int(relevance.argmax())
        firsts.add(passages[result.ids[0]])
    assert len(firsts) == 1  # the same passage wherever it stands
    # Off (the default), nothing is computed and positions are not overruled.
    assert tiny_bridge.config.relevance_prior == 0.0
    assert not tiny_bridge._encode([query], [PASSAGES]).relevance.any()


def test_relevance_prior_trains_and_round_trips(tmp_path) -> None:
    bridge = make_tiny_bridge(BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=32,
                                           max_output_length=4, relevance_prior=5.0), seed=3)
    gen = torch.Generator().manual_seed(0)
    flat = [r for g in bridge.sample(["a"], [PASSAGES], num_samples=8, generator=gen) for r in g]
    recomputed = bridge.sequence_log_probs(["a"] * 8, [PASSAGES] * 8, [r.ids for r in flat])
    assert torch.allclose(recomputed.detach(), torch.tensor([r.log_prob for r in flat]), atol=1e-4)
    fit_bridge_to(bridge, "who wrote hamlet?", PASSAGES, [3, 1])  # training can overrule the prior
    assert bridge.bridge("who wrote hamlet?", PASSAGES).ids == [3, 1]
    loaded = BridgeModel.from_pretrained(bridge.save_pretrained(tmp_path / "bridge"))
    assert loaded.config.relevance_prior == 5.0
    assert loaded.bridge("who wrote hamlet?", PASSAGES).ids == [3, 1]
    with pytest.raises(ValueError, match="relevance_prior"):
        BridgeConfig(relevance_prior=-1.0)


# ------------------------------------------------------------------------------------------ broken models and bad input
def _nan_bridge() -> BridgeModel:
    """A bridge with one corrupted weight: every decoder logit becomes NaN."""
    bridge = make_tiny_bridge()
    with torch.no_grad():
        bridge.model.decoder.cls.predictions.bias.fill_(float("nan"))
    return bridge


def test_nan_scores_raise_instead_of_answering_passage_zero() -> None:
    """Reproducer: NaN logits decoded to [0, 0, 0, 0] with NaN scores and fallback=False."""
    with pytest.raises(bgm_model.BridgeError, match="non-finite scores"):
        _nan_bridge().bridge("q", PASSAGES)


def test_nan_scores_with_passthrough_return_the_input_unchanged_and_logged(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = _nan_bridge().bridge("q", PASSAGES, on_error="passthrough")
    assert result.fallback and result.ids == [0, 1, 2, 3]
    assert "non-finite scores" in caplog.text


def test_nan_scores_reach_the_langchain_chain_as_the_input_documents() -> None:
    from langchain_core.documents import Document

    from bgm_integrations.langchain import BGMDocumentCompressor

    docs = [Document(page_content=p) for p in PASSAGES]
    out = BGMDocumentCompressor(bridge=_nan_bridge(), on_error="passthrough").compress_documents(docs, "q")
    assert [d.page_content for d in out] == PASSAGES, "not five copies of the first document"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_passages", 2.5, TypeError), ("max_passages", "8", TypeError), ("max_repeats", True, TypeError),
        ("max_output_length", None, TypeError), ("encoder_batch_size", 0, ValueError),
        ("relevance_prior", float("inf"), ValueError), ("relevance_prior", float("nan"), ValueError),
        ("relevance_prior", True, TypeError), ("relevance_prior", "1", TypeError),
        ("pointer_scoring", 1, TypeError), ("overflow", 1, TypeError), ("id_token_format", "[P{}{}]", ValueError),
        ("id_token_format", None, TypeError),
    ],  # fmt: skip
)
def test_every_bridge_config_field_is_type_and_range_checked(field: str, value, error: type) -> None:
    with pytest.raises(error, match=f"BridgeConfig.{field}"):
        BridgeConfig(**{field: value})


def test_bridge_config_checks_cover_every_field() -> None:
    from bgm_model.config import _BOOL_FIELDS, _INT_FIELDS

    checked = {*_INT_FIELDS, *_BOOL_FIELDS, "overflow", "id_token_format", "relevance_prior"}
    assert checked == {f.name for f in dataclasses.fields(BridgeConfig)}, "a new field needs its type check"


@pytest.mark.parametrize("where", ["query", "passage"])
def test_a_lone_surrogate_is_a_value_error_naming_the_argument(tiny_bridge: BridgeModel, where: str) -> None:
    query, passages = ("bad \ud800 query", PASSAGES) if where == "query" else ("q", ["ok", "bad \udfff text"])
    name = "query" if where == "query" else r"passages\[1\]"
    with pytest.raises(ValueError, match=f"{name} is not valid Unicode text: a lone surrogate"):
        tiny_bridge.bridge(query, passages)


def test_sampling_and_batching_arguments_are_checked_by_name(tiny_bridge: BridgeModel) -> None:
    for temperature in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            tiny_bridge.sample(["q"], [PASSAGES], temperature=temperature)
    with pytest.raises(TypeError, match="num_samples must be an int, got 1.5"):
        tiny_bridge.sample(["q"], [PASSAGES], num_samples=1.5)  # type: ignore[arg-type]
    for batch_size in (1.5, "16", True):
        with pytest.raises(TypeError, match="batch_size must be an int"):
            tiny_bridge.bridge_batch(["q"], [PASSAGES], batch_size=batch_size)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="queries must be a sequence .* got generator"):
        tiny_bridge.bridge_batch((q for q in ["q"]), [PASSAGES])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="passages_per_query must be a sequence .* got NoneType"):
        tiny_bridge.bridge_batch(["q"], None)  # type: ignore[arg-type]


def test_typed_bert_special_tokens_are_neutralised_like_id_tokens(tiny_bridge: BridgeModel) -> None:
    tok = tiny_bridge.tokenizer
    text = "a [SEP] b [CLS] c [MASK] d [PAD] e [UNK] f [P3]"
    specials = {tok.sep_token_id, tok.cls_token_id, tok.mask_token_id, tok.pad_token_id, tok.unk_token_id}
    assert set(tok(text, add_special_tokens=False).input_ids) & specials, "the raw text does hit them"
    cleaned = tiny_bridge._clean(text, 100)
    ids = tok(cleaned, add_special_tokens=False).input_ids
    assert not set(ids) & (specials | set(tiny_bridge._action_token_ids.tolist()))


def test_many_id_tokens_are_added_with_one_vocabulary_lookup(monkeypatch) -> None:
    """max_passages=1024 took 21 s: the vocabulary was rebuilt once per ID token."""
    from transformers import AutoTokenizer

    from bgm_model.assets import minilm_path

    tokenizer_class = type(AutoTokenizer.from_pretrained(minilm_path()))
    calls = {"get_vocab": 0}
    for name in calls:
        original = getattr(tokenizer_class, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(tokenizer_class, name, counted)
    bridge = make_tiny_bridge(BridgeConfig(max_passages=1024, max_query_tokens=16, max_passage_tokens=32))
    assert len(bridge.config.id_tokens) == 1024
    assert calls == {"get_vocab": 1}  # was 1,025


def test_the_model_card_is_rendered_from_training_records_that_survive_save_and_load(tmp_path) -> None:
    from bgm_model.model_card import TrainingRecord

    bridge = make_tiny_bridge()
    assert "no training record" in (bridge.save_pretrained(tmp_path / "untrained") / "README.md").read_text()
    table = [{"method": "top-1", "contains": 0.4}, {"method": "BGM", "contains": 0.45}]
    bridge.model_card_data.add_training(
        TrainingRecord("sl", settings={"num_epochs": 3}, data={"train_examples": 80}, metrics={"table": table})
    )
    loaded = BridgeModel.from_pretrained(bridge.save_pretrained(tmp_path / "sl"))
    assert [r.stage for r in loaded.model_card_data.training] == ["sl"]
    loaded.model_card_data.add_training(TrainingRecord("rl", metrics={"dev_reward": 0.5}))
    card = (loaded.save_pretrained(tmp_path / "rl") / "README.md").read_text()
    # The RL bridge's card still tells how its SL start was trained, with the measured table.
    assert "### sl" in card and "train_examples=80" in card and "num_epochs=3" in card
    assert "| method | contains |" in card and "| BGM | 0.45 |" in card
    assert "### rl" in card and "dev_reward=0.5" in card
    assert f"Passage capacity: {bridge.config.max_passages}" in card
    from huggingface_hub import ModelCard

    hub_card = ModelCard.load(tmp_path / "rl" / "README.md")  # what a hub shows: metadata parsed from the header
    assert hub_card.data.library_name == "bgm-bridge" and "reranking" in hub_card.data.tags


def test_min_length_forbids_the_end_until_that_many_ids_or_none_is_left() -> None:
    bridge = make_tiny_bridge(BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=32,
                                           max_output_length=6, max_repeats=1))  # fmt: skip
    free = bridge.bridge_batch(["q", "q"], [PASSAGES, PASSAGES[:2]])
    forced = bridge.bridge_batch(["q", "q"], [PASSAGES, PASSAGES[:2]], min_length=4)
    assert len(forced[0].ids) >= 4 and _is_valid(forced[0].ids, 4, bridge.config)
    assert sorted(forced[1].ids) == [0, 1], "two passages without repeats: it stops when no ID is left"
    assert len(free[0].ids) < 4, "without the constraint this bridge stops earlier"
    assert forced[0].ids[: len(free[0].ids)] == free[0].ids, "the same choices, only the end is delayed"
    with pytest.raises(TypeError, match="min_length"):
        bridge.bridge_batch(["q"], [PASSAGES], min_length=-1)
