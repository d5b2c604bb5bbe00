"""Baseline arrangements, the evaluation loop, and the cross-encoder baseline."""

from __future__ import annotations

import json
import time

import pytest
from llama_index.core.postprocessor import LongContextReorder
from llama_index.core.schema import NodeWithScore, TextNode

from bgm_cli.main import main as bgm_main
from bgm_model.evaluation import bootstrap_ci, evaluate
from bgm_model.evaluation.arrangements import (
    baseline_arrangements,
    bridge_arrangement,
    fixed_sequences,
    long_context_order,
    no_retrieval,
    retriever_order,
    top_k,
    top_k_variants,
)
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_key_index, toy_optimal_ids
from tests._helpers import make_tiny_bridge


@pytest.mark.parametrize("n", [0, 1, 2, 5, 10])
def test_long_context_order_matches_llama_index(n: int) -> None:
    nodes = [NodeWithScore(node=TextNode(text=str(i)), score=1.0 - i / 100) for i in range(n)]
    expected = [int(x.node.get_content()) for x in LongContextReorder().postprocess_nodes(nodes, query_str="q")]
    assert long_context_order(n) == expected
    if n >= 2:  # the two best passages sit at the two ends
        assert {long_context_order(n)[0], long_context_order(n)[-1]} == {0, 1}


def test_top_k_on_any_ranking() -> None:
    examples = make_toy_examples(2, n_passages=5)

    def key_first(batch):  # a perfect reranker of the toy task
        return [[toy_key_index(ex)] + [i for i in range(5) if i != toy_key_index(ex)] for ex in batch]

    method = top_k(2, reverse=True, repeat_top=True, ranker=key_first, label="oracle rerank")
    assert method.name == "oracle rerank, top-2, reversed, top repeated"
    for ex, ids in zip(examples, method(examples), strict=True):
        x = toy_key_index(ex)
        assert ids[-2:] == [x, x] and len(ids) == 3 and x not in ids[:1]
    variants = top_k_variants([1, 3], ranker=key_first, label="r")
    assert [m.name for m in variants] == ["r, top-1", "r, top-1, top repeated", "r, top-3", "r, top-3, top repeated",
                                          "r, top-3, reversed", "r, top-3, reversed, top repeated"]
    assert len({m.name for m in baseline_arrangements((1, 2))}) == 4 + 2 + 4


def test_top_k_variants_rank_each_batch_once_and_each_pays_for_it() -> None:
    examples = make_toy_examples(6, n_passages=5, seed=1)
    calls: list[int] = []

    def slow_key_first(batch):
        calls.append(len(batch))
        time.sleep(0.05)
        return [[toy_key_index(ex)] + [i for i in range(5) if i != toy_key_index(ex)] for ex in batch]

    variants = top_k_variants([1, 2], ranker=slow_key_first, label="r")
    first, second = examples[:3], examples[3:]
    for batch in (first, second):
        outputs = [m(batch) for m in variants]
        assert outputs[0] == [[toy_key_index(ex)] for ex in batch]  # the same rankings as an unshared ranker
        assert outputs[2] == top_k(2, ranker=slow_key_first)(batch)
    assert calls == [3, 3, 3, 3]  # once per batch here, plus the two unshared top_k calls above
    assert all(m.seconds >= 2 * 0.05 for m in variants)  # every variant is charged the ranking of both batches
    fresh = top_k_variants([1, 2], ranker=slow_key_first, label="r")
    report = evaluate(examples, ToyReader(cache=False), fresh, batch_size=4, show_progress=False)
    assert len(calls) == 4 + 2 and all(m.arrange_ms >= 1000 * 0.05 * 2 / 6 for m in report.methods)


def test_top_k_variants() -> None:
    (ex,) = make_toy_examples(1, n_passages=5)
    assert top_k(3)([ex]) == [[0, 1, 2]]
    assert top_k(3, reverse=True)([ex]) == [[2, 1, 0]]
    assert top_k(3, repeat_top=True)([ex]) == [[0, 1, 2, 0]]
    assert top_k(3, reverse=True, repeat_top=True)([ex]) == [[2, 1, 0, 0]]
    assert top_k(9)([ex]) == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError):
        top_k(0)
    names = [m.name for m in baseline_arrangements((1, 3))]
    assert len(names) == len(set(names)) and "top-1, reversed" not in names


def test_evaluate_scores_each_method_with_the_reader() -> None:
    examples = make_toy_examples(12, n_passages=5, seed=3)
    oracle = fixed_sequences("oracle", {ex.id: toy_optimal_ids(ex) for ex in examples})
    key_last = fixed_sequences("key last", {ex.id: [toy_key_index(ex)] for ex in examples})
    report = evaluate(examples, ToyReader(cache=False), [no_retrieval(), retriever_order(), key_last, oracle], batch_size=5,
                      show_progress=False)
    assert report.by_name("oracle").em == 1.0 and report.by_name("oracle").f1 == 1.0
    assert report.by_name("key last").em == 0.0 and report.by_name("key last").f1 == pytest.approx(2 / 3)
    assert report.by_name("no retrieval").f1 == 0.0
    assert report.by_name("oracle").passages == 2.0 and report.by_name("no retrieval").passages == 0.0
    assert report.by_name("all, retriever order").prompt_tokens > report.by_name("oracle").prompt_tokens
    assert report.reader_calls == 4 * 12
    lo, hi = report.by_name("key last").interval("f1")
    assert lo == pytest.approx(2 / 3) and hi == pytest.approx(2 / 3)
    assert "| oracle | 1.000 | 1.000 |" in report.table()


def test_evaluate_rejects_bad_input() -> None:
    examples = make_toy_examples(2)
    with pytest.raises(ValueError, match="no examples"):
        evaluate([], ToyReader(cache=False), [no_retrieval()])
    with pytest.raises(ValueError, match="unique"):
        evaluate(examples, ToyReader(cache=False), [no_retrieval(), no_retrieval()])
    examples[0].answers = []
    with pytest.raises(ValueError, match="no gold answers"):
        evaluate(examples, ToyReader(cache=False), [no_retrieval()])


def test_bridge_arrangement_uses_the_bridge_batched() -> None:
    examples = make_toy_examples(3, n_passages=4)
    bridge = make_tiny_bridge()
    ids = bridge_arrangement(bridge)(examples)
    assert ids == [r.ids for r in bridge.bridge_batch([e.question for e in examples], [e.passages for e in examples])]


def test_bootstrap_ci_brackets_the_mean() -> None:
    values = [0.0] * 50 + [1.0] * 50
    lo, hi = bootstrap_ci(values, samples=2000)
    assert lo < 0.5 < hi and hi - lo < 0.3


def test_evaluate_cli_with_a_saved_bridge(tmp_path, capsys) -> None:
    data = tmp_path / "toy.jsonl"
    with data.open("w") as f:
        for ex in make_toy_examples(4, n_passages=4):
            f.write(json.dumps({"id": ex.id, "question": ex.question, "answers": ex.answers,
                                "passages": [{"title": "", "text": p} for p in ex.passages]}) + "\n")
    bridge_dir = make_tiny_bridge().save_pretrained(tmp_path / "bridge")
    out = tmp_path / "report.json"
    code = bgm_main(["evaluate", "--data", str(data), "--reader", "toy", "--baselines", "basic",
                     "--bridge", f"tiny={bridge_dir}", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tiny |" in printed and "| all, retriever order |" in printed
    assert [m["name"] for m in json.loads(out.read_text())["methods"]] == ["no retrieval", "all, retriever order", "tiny"]


def test_cross_encoder_learns_gold_labels() -> None:
    from bgm_model.evaluation.cross_encoder import CrossEncoder

    examples = make_toy_examples(16, n_passages=4, seed=7)
    pairs = [(ex.question, p, float(i == toy_key_index(ex))) for ex in examples for i, p in enumerate(ex.passages)]
    ce = CrossEncoder(max_length=64)
    before = ce.rerank_batch([e.question for e in examples], [e.passages for e in examples])
    losses = ce.fit(pairs, epochs=3, learning_rate=5e-5, batch_size=16)
    after = ce.rerank_batch([e.question for e in examples], [e.passages for e in examples])
    hits_before = sum(order[0] == toy_key_index(ex) for order, ex in zip(before, examples))
    hits_after = sum(order[0] == toy_key_index(ex) for order, ex in zip(after, examples))
    assert len(losses) == 3 and losses[-1] < losses[0]  # one mean loss per epoch
    assert hits_after >= 12 and hits_after > hits_before
    with pytest.raises(ValueError, match="both labels"):
        ce.fit([("q", "p", 1.0)])


def test_cross_encoder_listwise_training_ranks_the_gold_passage_first() -> None:
    from bgm_model.evaluation.cross_encoder import CrossEncoder

    examples = make_toy_examples(16, n_passages=4, seed=7)
    labels = [[float(i == toy_key_index(ex)) for i in range(len(ex.passages))] for ex in examples]
    ce = CrossEncoder(max_length=64)
    questions, passages = [e.question for e in examples], [e.passages for e in examples]
    before = ce.rerank_batch(questions, passages)
    losses = ce.fit_listwise(questions, passages, labels, epochs=3, learning_rate=5e-5)
    after = ce.rerank_batch(questions, passages)
    hits_before = sum(order[0] == toy_key_index(ex) for order, ex in zip(before, examples))
    hits_after = sum(order[0] == toy_key_index(ex) for order, ex in zip(after, examples))
    assert len(losses) == 3 and losses[-1] < losses[0]  # one mean loss per epoch
    assert hits_after >= 12 and hits_after > hits_before
    with pytest.raises(ValueError, match="positive label"):
        ce.fit_listwise(["q"], [["a", "b"]], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="2 passages but 1 labels"):
        ce.fit_listwise(["q"], [["a", "b"]], [[1.0]])


def test_gold_passage_reference_reads_the_labels() -> None:
    from bgm_model.evaluation.arrangements import gold_passage

    examples = make_toy_examples(3, n_passages=4, seed=5)
    assert gold_passage(1)(examples) == [[toy_key_index(ex)] for ex in examples]
    assert gold_passage(2)(examples) == [[toy_key_index(ex)] * 2 for ex in examples]
    assert [gold_passage(n).name for n in (1, 2, 3)] == ["gold passage alone", "gold passage twice", "gold passage x3"]
    examples[0].gold = [False] * 4  # no gold candidate retrieved: falls back to the retriever's top-1
    assert gold_passage(1)(examples)[0] == [0]
    examples[1].gold = None
    with pytest.raises(ValueError, match="no gold-passage labels"):
        gold_passage(1)(examples)
    with pytest.raises(ValueError, match="copies"):
        gold_passage(0)


def test_evaluate_cli_gold_references(tmp_path, capsys) -> None:
    data = tmp_path / "toy.jsonl"
    examples = make_toy_examples(4, n_passages=4, seed=2)
    with data.open("w") as f:
        for ex in examples:
            f.write(json.dumps({"id": ex.id, "question": ex.question, "answers": ex.answers,
                                "passages": [{"title": "", "text": p, "is_gold": g}
                                             for p, g in zip(ex.passages, ex.gold, strict=True)]}) + "\n")
    out = tmp_path / "report.json"
    assert bgm_main(["evaluate", "--data", str(data), "--reader", "toy", "--reader-cache", "none",
                     "--baselines", "basic", "--gold-references", "--output", str(out)]) == 0
    methods = {m["name"]: m for m in json.loads(out.read_text())["methods"]}
    assert list(methods) == ["no retrieval", "all, retriever order", "gold passage alone", "gold passage twice"]
    assert methods["gold passage twice"]["em"] == 1.0 and methods["gold passage alone"]["em"] == 0.0  # toy reader

    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({"id": ex.id, "question": ex.question, "answers": ex.answers,
                                              "passages": [{"title": "", "text": p} for p in ex.passages]}) + "\n"
                                  for ex in examples))
    with pytest.raises(SystemExit, match="needs gold-passage labels"):
        bgm_main(["evaluate", "--data", str(unlabelled), "--reader", "toy", "--gold-references"])
