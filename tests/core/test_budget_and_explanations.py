"""Inference limits inside the constrained decoder (a token budget, a score threshold) and the strongest
alternative reported for every chosen ID."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

from bgm_model import BridgeConfig, BridgeModel, BridgeResult, SupportsBridge
from tests._helpers import FixedBridge, fit_bridge_to, make_tiny_bridge

PASSAGES = [
    "Hamlet is a tragedy written by William Shakespeare around 1600.",  # 10 words
    "Paris is the capital and most populous city of France.",  # 10 words
    "The Eiffel Tower was completed in 1889.",  # 7 words
    "Shakespeare was born in Stratford-upon-Avon.",  # 5 words
]
TARGET = [2, 0, 2, 1]
QUERIES = ["who wrote hamlet?", "capital of france", "eiffel tower year"]
LISTS = [PASSAGES, PASSAGES[1:3], PASSAGES[::-1]]


def words(text: str) -> int:
    return len(text.split())


def _config(**overrides) -> BridgeConfig:
    settings = dict(max_passages=8, max_query_tokens=16, max_passage_tokens=32, max_output_length=6, max_repeats=2)
    return BridgeConfig(**{**settings, **overrides})


def _is_valid(ids: list[int], n: int, config: BridgeConfig) -> bool:
    return (
        all(0 <= i < n for i in ids)
        and len(ids) <= config.max_output_length
        and all(ids.count(i) <= config.max_repeats for i in set(ids))
    )


@pytest.fixture(scope="module")
def fitted() -> BridgeModel:
    """A bridge whose greedy output for ("q", PASSAGES) is TARGET; tests must not train it further."""
    bridge = make_tiny_bridge(_config(), seed=5)
    fit_bridge_to(bridge, "q", PASSAGES, TARGET)
    assert bridge.bridge("q", PASSAGES).ids == TARGET
    return bridge


@pytest.fixture(scope="module")
def untrained() -> BridgeModel:
    """A random bridge: near-uniform scores, so min_length makes long outputs with varied probabilities."""
    return make_tiny_bridge(_config(), seed=5)


# ------------------------------------------------------------------------------------------ token budget
def test_without_limits_the_outputs_are_exactly_those_of_a_call_without_the_arguments(fitted, untrained) -> None:
    for bridge, min_length in ((fitted, 0), (untrained, 6)):
        plain = bridge.bridge_batch(QUERIES, LISTS, min_length=min_length)
        off = bridge.bridge_batch(
            QUERIES, LISTS, min_length=min_length, max_context_tokens=None, count_tokens=None, min_score=None
        )
        assert off == plain  # ids, scores, step log-probs and alternatives, to the last bit
        assert bridge.bridge_batch(QUERIES, LISTS, min_length=min_length, min_score=0.0) == plain
        unlimited = bridge.bridge_batch(QUERIES, LISTS, min_length=min_length, max_context_tokens=10**9)
        assert unlimited == plain, "a budget that everything fits masks nothing"
    assert fitted.bridge("q", PASSAGES, count_tokens=words) == fitted.bridge("q", PASSAGES), "no budget, no counting"


def test_the_budget_cuts_the_sequence_inside_the_decoder(fitted) -> None:
    # TARGET [2, 0, 2, 1] costs 7 + 10 + 7 + 10 words.
    assert fitted.bridge("q", PASSAGES, max_context_tokens=34, count_tokens=words).ids == TARGET
    assert fitted.bridge("q", PASSAGES, max_context_tokens=24, count_tokens=words).ids == [2, 0, 2]
    assert fitted.bridge("q", PASSAGES, max_context_tokens=17, count_tokens=words).ids == [2, 0]
    # Inside the distribution, not a filter afterwards: steps where everything fits keep their scores; at the
    # third step [P0] and [P1] (10 words, 7 left) are masked and the probability renormalises over what fits.
    free = fitted.bridge("q", PASSAGES)
    cut = fitted.bridge("q", PASSAGES, max_context_tokens=24, count_tokens=words)
    assert cut.scores[:2] == free.scores[:2] and cut.scores[2] > free.scores[2]
    assert cut.alternatives[2][0] in (None, 3), "the runner-up is an action that fits"
    assert math.isfinite(cut.log_prob) and len(cut.step_log_probs) == 4


def test_a_repeated_passage_counts_again(fitted) -> None:
    costs = {p: (7 if i == 2 else 1) for i, p in enumerate(PASSAGES)}
    assert fitted.bridge("q", PASSAGES, max_context_tokens=16, count_tokens=costs.__getitem__).ids == TARGET
    assert fitted.bridge("q", PASSAGES, max_context_tokens=15, count_tokens=costs.__getitem__).ids == [2, 0, 2]
    once = fitted.bridge("q", PASSAGES, max_context_tokens=14, count_tokens=costs.__getitem__).ids
    assert once[:2] == [2, 0] and once.count(2) == 1, "7 + 1 + 7 > 14: the second [P2] does not fit"


def test_budgeted_outputs_are_valid_fill_the_budget_and_never_hold_a_passage_longer_than_it(untrained) -> None:
    cfg = untrained.config
    for budget in (0, 4, 5, 9, 12, 17, 25):
        results = untrained.bridge_batch(QUERIES, LISTS, min_length=6, max_context_tokens=budget, count_tokens=words)
        for passages, result in zip(LISTS, results):
            costs = [words(p) for p in passages]
            used = sum(costs[i] for i in result.ids)
            assert _is_valid(result.ids, len(passages), cfg), result.ids
            assert used <= budget, (budget, result.ids)
            assert all(costs[i] <= budget for i in result.ids)
            assert len(result.scores) == len(result.alternatives) == len(result.ids)
            if len(result.ids) < cfg.max_output_length:  # min_length kept it going until nothing fitted
                left = [i for i in range(len(passages)) if result.ids.count(i) < cfg.max_repeats]
                assert all(used + costs[i] > budget for i in left), (budget, result.ids)
        if budget in (9, 17):  # the budget is per query, also in a batch
            singles = [untrained.bridge_batch([q], [ps], min_length=6, max_context_tokens=budget, count_tokens=words)[0]
                       for q, ps in zip(QUERIES, LISTS)]  # fmt: skip
            assert [r.ids for r in results] == [r.ids for r in singles]


def test_a_zero_budget_gives_an_empty_output(fitted, untrained) -> None:
    for bridge in (fitted, untrained):
        for result in bridge.bridge_batch(QUERIES, LISTS, min_length=6, max_context_tokens=0):
            assert result.ids == [] and result.scores == [] and result.alternatives == []
            assert result.step_log_probs == [0.0], "only the end was allowed"


def test_the_default_counter_is_the_bridge_tokenizer_on_the_whole_text(untrained) -> None:
    def tokens(text: str) -> int:
        return len(untrained.tokenizer.encode(text, add_special_tokens=False))

    long = "Shakespeare " * 120  # 120 tokens: far past max_passage_tokens=32, which the encoder row keeps
    passages = [*PASSAGES, long]
    assert tokens(long) == 120
    for budget in (0, 11, 21, 30, 119, 200):
        result = untrained.bridge_batch(["q"], [passages], min_length=6, max_context_tokens=budget)[0]
        assert sum(tokens(passages[i]) for i in result.ids) <= budget
        if budget < 120:
            assert 4 not in result.ids, "counted as the text given, not as the truncated row"
        same = untrained.bridge_batch(["q"], [passages], min_length=6, max_context_tokens=budget,
                                      count_tokens=untrained.tokenizer)[0]  # fmt: skip
        assert same == result
    assert untrained.bridge_batch(["q"], [[long]], min_length=1, max_context_tokens=120)[0].ids == [0]


def test_a_tokenizer_object_is_measured_by_its_encode(untrained) -> None:
    class WordTokenizer:
        def encode(self, text: str) -> list[str]:
            return text.split()

    by_object = untrained.bridge_batch(QUERIES, LISTS, min_length=6, max_context_tokens=17, count_tokens=WordTokenizer())
    assert by_object == untrained.bridge_batch(QUERIES, LISTS, min_length=6, max_context_tokens=17, count_tokens=words)


def test_each_distinct_passage_is_counted_once_per_call(untrained) -> None:
    seen: list[str] = []

    def counting(text: str) -> int:
        seen.append(text)
        return words(text)

    untrained.bridge_batch(QUERIES, LISTS, min_length=6, max_context_tokens=30, count_tokens=counting)
    assert sorted(seen) == sorted(set(PASSAGES)), "once per text: not per step, not per query"
    seen.clear()
    untrained.bridge_batch(["q"], [[]], max_context_tokens=30, count_tokens=counting)
    assert seen == []


def test_the_passthrough_fallback_keeps_the_budget_and_fills_alternatives(untrained, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(untrained, "_generate", broken)
    plain = untrained.bridge("q", PASSAGES, on_error="passthrough")
    assert plain.fallback and plain.ids == [0, 1, 2, 3]
    assert plain.alternatives == [(None, 0.0)] * 4 and plain.scores == [0.0] * 4
    budgeted = untrained.bridge("q", PASSAGES, on_error="passthrough", max_context_tokens=17, count_tokens=words)
    assert budgeted.fallback and budgeted.ids == [0, 2], "input order, skipping what does not fit (10 + 7)"
    assert budgeted.alternatives == [(None, 0.0)] * 2
    thresholded = untrained.bridge("q", PASSAGES, on_error="passthrough", min_score=0.5)
    assert thresholded.ids == [0, 1, 2, 3], "no scores to threshold: min_score does not apply to the fallback"


# ------------------------------------------------------------------------------------------ score threshold
def test_min_score_ends_the_sequence_at_the_first_id_scored_below_it(fitted, untrained) -> None:
    queries, lists = ["q", *QUERIES], [PASSAGES, *LISTS]
    for bridge, min_length in ((fitted, 0), (untrained, 6)):
        free = bridge.bridge_batch(queries, lists, min_length=min_length)
        scores = sorted({s for r in free for s in r.scores})
        picked = [scores[0], scores[len(scores) // 2], scores[-1]]
        # A score equal to the threshold is kept; the next float above it cuts the sequence there.
        for t in sorted({0.0, 1.0, *picked, *(min(1.0, math.nextafter(s, 2.0)) for s in picked)}):
            for f, got in zip(free, bridge.bridge_batch(queries, lists, min_length=min_length, min_score=t)):
                cut = next((j for j, s in enumerate(f.scores) if s < t), len(f.ids))
                assert got.ids == f.ids[:cut] and got.scores == f.scores[:cut], (t, f, got)
                assert got.alternatives == f.alternatives[:cut]
                assert all(s >= t for s in got.scores)
                assert len(got.step_log_probs) == cut + 1
                assert math.isfinite(got.log_prob), "the end imposed by the threshold has a real probability"


def test_min_score_wins_over_min_length_and_works_with_the_budget(untrained) -> None:
    free = untrained.bridge_batch(["q"], [PASSAGES], min_length=6)[0]
    assert len(free.ids) == 6 and min(free.scores) < 0.45
    short = untrained.bridge_batch(["q"], [PASSAGES], min_length=6, min_score=0.45)[0]
    assert len(short.ids) < 6 and all(s >= 0.45 for s in short.scores)
    both = untrained.bridge_batch(["q"], [PASSAGES], min_length=6, min_score=0.3, max_context_tokens=17,
                                  count_tokens=words)[0]  # fmt: skip
    assert sum(words(PASSAGES[i]) for i in both.ids) <= 17 and all(s >= 0.3 for s in both.scores)


# ------------------------------------------------------------------------------------------ alternatives
def _check_alternatives(result: BridgeResult, n: int) -> None:
    assert len(result.alternatives) == len(result.ids)
    for chosen, score, (alt, p) in zip(result.ids, result.scores, result.alternatives):
        assert alt != chosen
        assert alt is None or (isinstance(alt, int) and 0 <= alt < n)
        assert 0.0 <= p <= score, "greedy: the chosen action is the most probable one"
        assert score + p <= 1.0 + 1e-6


def test_every_chosen_id_comes_with_a_weaker_other_action(fitted, untrained) -> None:
    for bridge in (fitted, untrained):
        for min_length, budget in ((0, None), (6, None), (6, 20)):
            results = bridge.bridge_batch(QUERIES, LISTS, min_length=min_length, max_context_tokens=budget,
                                          count_tokens=words)  # fmt: skip
            for passages, result in zip(LISTS, results):
                _check_alternatives(result, len(passages))
    # After the trained [2, 0, 2] the bridge wanted 1, then the end: stopping was the alternative each time.
    result = fitted.bridge("q", PASSAGES)
    assert [alt for alt, _ in result.alternatives[:3]] == [None, None, None]


def test_alternatives_are_the_runner_up_of_the_teacher_forced_distribution(fitted) -> None:
    k, checked = fitted.config.max_passages, 0
    for q, ps in zip(["q", *QUERIES], [PASSAGES, *LISTS]):
        result = fitted.bridge(q, ps)
        with torch.no_grad():
            dist, _ = fitted.action_log_probs([q], [ps], [result.ids])
        for step, (chosen, (alt, p)) in enumerate(zip(result.ids, result.alternatives)):
            probs = dist[0, step].exp()
            probs[chosen] = -1.0
            best = int(probs.argmax())
            assert alt == (None if best == k else best)
            assert p == pytest.approx(float(probs[best]), abs=1e-5)
            checked += 1
    assert checked >= 4


def test_a_forced_step_has_no_alternative() -> None:
    bridge = make_tiny_bridge(_config(max_repeats=1))
    result = bridge.bridge_batch(["q"], [PASSAGES[:1]], min_length=1)[0]
    assert result.ids == [0] and result.scores == [1.0]
    assert result.alternatives == [(None, 0.0)], "min_length forbade the end and no other passage exists"


def test_the_result_stays_backward_compatible() -> None:
    old = BridgeResult([1, 0], [0.5, 0.4], [-0.7, -0.9, -0.1], False)
    assert old.alternatives == [] and old.log_prob == pytest.approx(-1.7)
    assert BridgeResult(ids=[], scores=[]).alternatives == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        old.alternatives = []  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(BridgeResult)][:4] == ["ids", "scores", "step_log_probs", "fallback"]


def test_the_protocol_names_the_new_keywords_as_optional_and_simple_stand_ins_still_satisfy_it() -> None:
    assert isinstance(FixedBridge([0]), SupportsBridge)
    protocol = inspect.signature(SupportsBridge.bridge).parameters
    model = inspect.signature(BridgeModel.bridge).parameters
    for name in ("on_error", "max_context_tokens", "count_tokens", "min_score"):
        assert protocol[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert protocol[name].default == model[name].default
    for name in ("max_context_tokens", "count_tokens", "min_score"):
        assert protocol[name].default is None
        assert name in inspect.signature(BridgeModel.bridge_batch).parameters
    assert "max_context_tokens" not in inspect.signature(BridgeModel.sample).parameters


# ------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_context_tokens": -1}, ValueError, "max_context_tokens"),
        ({"max_context_tokens": True}, TypeError, "max_context_tokens"),
        ({"max_context_tokens": 10.0}, TypeError, "max_context_tokens"),
        ({"max_context_tokens": float("nan")}, TypeError, "max_context_tokens"),
        ({"max_context_tokens": "100"}, TypeError, "max_context_tokens"),
        ({"min_score": -0.1}, ValueError, "min_score"),
        ({"min_score": 1.5}, ValueError, "min_score"),
        ({"min_score": float("nan")}, ValueError, "min_score"),
        ({"min_score": float("inf")}, ValueError, "min_score"),
        ({"min_score": True}, TypeError, "min_score"),
        ({"min_score": "0.5"}, TypeError, "min_score"),
        ({"max_context_tokens": 10, "count_tokens": "gpt2"}, TypeError, "count_tokens"),
        ({"max_context_tokens": 10, "count_tokens": 42}, TypeError, "count_tokens"),
        ({"count_tokens": "gpt2"}, TypeError, "count_tokens"),
        ({"max_context_tokens": 10, "count_tokens": lambda t: 3.5}, TypeError, "count_tokens must return an int"),
        ({"max_context_tokens": 10, "count_tokens": lambda t: True}, TypeError, "count_tokens must return an int"),
        ({"max_context_tokens": 10, "count_tokens": lambda t: None}, TypeError, "count_tokens must return an int"),
        ({"max_context_tokens": 10, "count_tokens": lambda t: -1}, ValueError, "count_tokens must return a count"),
    ],
)
def test_bad_limits_raise_naming_the_argument(tiny_bridge: BridgeModel, kwargs, error, name) -> None:
    with pytest.raises(error, match=name):
        tiny_bridge.bridge("q", PASSAGES, **kwargs)
    with pytest.raises(error, match=name):
        tiny_bridge.bridge_batch(["q"], [PASSAGES], on_error="passthrough", **kwargs)


def test_limits_combine_with_min_length_type_checks(tiny_bridge: BridgeModel) -> None:
    with pytest.raises(TypeError, match="min_length"):
        tiny_bridge.bridge_batch(["q"], [PASSAGES], min_length=-1, max_context_tokens=10)
    result = tiny_bridge.bridge_batch(["q"], [PASSAGES], min_length=2, max_context_tokens=6, count_tokens=words)[0]
    assert result.ids == [3], "the only passage that fits (5 words); then nothing does"
