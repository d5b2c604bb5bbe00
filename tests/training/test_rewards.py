"""Rewards: SQuAD-style metrics, BLEU/ROUGE-L, reader log-likelihood, composition and the registry."""

from __future__ import annotations

import math
import sys

import pytest

from bgm_model import rewards as R
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_key_index


def test_public_api_is_pinned() -> None:
    assert sorted(R.__all__) == sorted(
        [
            "AnswerLogLikelihood",
            "BatchReward",
            "RewardFunc",
            "WeightedReward",
            "answer_contains",
            "answer_loglik",
            "available_rewards",
            "bleu",
            "combine",
            "exact_match",
            "get_reward",
            "normalize_answer",
            "reward_batch",
            "reward_max_value",
            "reward_name",
            "reward_needs_answer",
            "reward_needs_reader",
            "rouge_l",
            "token_f1",
            "weighted",
        ]
    )


def test_normalize_answer_follows_squad() -> None:
    assert R.normalize_answer("  The Eiffel-Tower!  ") == "eiffeltower"
    assert R.normalize_answer("An apple, a PEAR and the plum.") == "apple pear and plum"


def test_exact_match_normalises_and_takes_any_gold() -> None:
    assert R.exact_match("the Eiffel Tower.", ["Louvre", "Eiffel tower"]) == 1.0
    assert R.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert R.exact_match("", ["x"]) == 0.0


def test_token_f1_partial_and_max_over_golds() -> None:
    assert R.token_f1("violet", ["violet falcon"]) == pytest.approx(2 / 3)
    assert R.token_f1("violet falcon", ["nothing", "violet falcon"]) == 1.0
    assert R.token_f1("red bird", ["violet falcon"]) == 0.0
    assert R.token_f1("anything", []) == 0.0


def test_contains_matches_whole_words_only() -> None:
    assert R.answer_contains("It was Paris, France.", ["paris"]) == 1.0
    assert R.answer_contains("november", ["no"]) == 0.0
    assert R.answer_contains("anything", ["", "  "]) == 0.0  # empty golds never match


def test_bleu_orders_answers_and_is_scaled() -> None:
    gold = ["the quick brown fox jumps over the lazy dog"]
    assert R.bleu("the quick brown fox jumps over the lazy dog", gold) == pytest.approx(1.0)
    close = R.bleu("the quick brown fox jumped over the lazy dog", gold)
    far = R.bleu("a cat sat", gold)
    assert 0.0 <= far < close < 1.0


def test_bleu_names_the_install_command_without_sacrebleu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # makes `import sacrebleu` raise ImportError
    with pytest.raises(ImportError, match=r"pip install sacrebleu.*bgm-bridge\[train\]"):
        R.bleu("x", ["x"])


def test_rouge_l_is_the_lcs_f_measure() -> None:
    # LCS("cat sat on mat", "cat on big mat") = "cat on mat" -> P = R = 3/4.
    assert R.rouge_l("cat sat on mat", ["cat on big mat"]) == pytest.approx(0.75)
    # Order matters for LCS but not for bag-of-words F1.
    assert R.rouge_l("mat on cat", ["cat on mat"]) == pytest.approx(1 / 3)
    assert R.token_f1("mat on cat", ["cat on mat"]) == 1.0


def test_a_single_string_as_golds_is_rejected() -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        R.exact_match("a", "a")  # type: ignore[arg-type]


def _toy_context() -> tuple[ToyReader, str, list[str], list[str], int]:
    ex = make_toy_examples(1, 4, seed=3)[0]
    return ToyReader(supports_scoring=True), ex.question, ex.passages, ex.answers, toy_key_index(ex)


def test_loglik_scores_the_gold_under_the_reader_and_takes_the_best_gold() -> None:
    reader, q, passages, golds, x = _toy_context()
    good = R.answer_loglik("ignored", golds, reader=reader, question=q, passages=[passages[x]] * 2)
    half = R.answer_loglik("ignored", golds, reader=reader, question=q, passages=[passages[x]])
    none = R.answer_loglik("ignored", golds, reader=reader, question=q, passages=[])
    assert good == pytest.approx(0.0)
    assert none == pytest.approx(math.log(0.05)) and none < half < good
    best = R.answer_loglik("", ["wrong words", *golds], reader=reader, question=q, passages=[passages[x]] * 2)
    assert best == pytest.approx(0.0)


def test_loglik_needs_a_scoring_reader_and_context() -> None:
    _, q, passages, golds, _ = _toy_context()
    with pytest.raises(ValueError, match="needs reader"):
        R.answer_loglik("a", golds, question=q, passages=passages)
    with pytest.raises(ValueError, match="supports_scoring=False"):
        R.answer_loglik("a", golds, reader=ToyReader(), question=q, passages=passages)


def test_loglik_batch_is_one_reader_call() -> None:
    reader, q, passages, golds, x = _toy_context()
    lists = [[p] for p in passages]
    values = R.reward_batch(
        R.answer_loglik,
        [""] * len(lists),
        [golds] * len(lists),
        questions=[q] * len(lists),
        passage_lists=lists,
        reader=reader,
    )
    assert reader.score_calls == 1 and reader.score_prompts == len(lists)
    assert max(range(len(values)), key=values.__getitem__) == x
    assert R.reward_needs_reader(R.answer_loglik) and not R.reward_needs_answer(R.answer_loglik)


def test_reward_batch_falls_back_to_per_item_calls_with_context() -> None:
    seen = []

    def custom(answer: str, gold_answers: list[str], **context: object) -> float:
        seen.append(context["question"])
        return float(len(answer))

    out = R.reward_batch(
        custom, ["ab", "abc"], [["x"], ["y"]], questions=["q1", "q2"], passage_lists=[[], []]
    )
    assert out == [2.0, 3.0] and seen == ["q1", "q2"]


def test_combine_and_weighted_make_weighted_sums() -> None:
    combo = R.combine({"em": 1.0, R.token_f1: 0.5})
    assert combo("violet", ["violet falcon"]) == pytest.approx(0.5 * 2 / 3)
    assert combo("violet falcon", ["violet falcon"]) == pytest.approx(1.5)
    assert combo.max_value == pytest.approx(1.5) and not combo.needs_reader
    same = R.weighted(("em", 1.0), ("f1", 0.5))
    assert same("violet", ["violet falcon"]) == combo("violet", ["violet falcon"])
    assert R.weighted(("em", -1.0)).max_value is None  # a negative weight has no known maximum


def test_combined_reward_with_loglik_is_batched_and_needs_reader() -> None:
    reader, q, passages, golds, x = _toy_context()
    combo = R.combine({"em": 1.0, "loglik": 0.1})
    assert combo.needs_reader and combo.needs_answer
    lists = [[passages[x]] * 2, []]
    values = combo.batch(
        [golds[0], "unknown"], [golds, golds], questions=[q, q], passage_lists=lists, reader=reader
    )
    assert values == pytest.approx([1.0, 0.1 * math.log(0.05)])
    assert reader.score_calls == 1


def test_registry_resolves_every_name_and_parses_sums() -> None:
    assert R.available_rewards() == ["em", "f1", "contains", "bleu", "rougeL", "loglik"]
    for name in R.available_rewards():
        assert callable(R.get_reward(name)) and R.reward_name(R.get_reward(name)) == name
    parsed = R.get_reward("em+0.5*f1")
    assert isinstance(parsed, R.WeightedReward)
    assert parsed("violet", ["violet falcon"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="unknown reward 'bert'.*em, f1"):
        R.get_reward("bert")
    with pytest.raises(ValueError, match="cannot parse"):
        R.get_reward("em+2*bogus")
