"""The cross-encoder baseline on sentence-transformers: raw-logit scores, safetensors folders, today's listwise loss.

(Training behaviour, gold labels learnt pointwise and listwise, is tested in ``test_evaluation.py``.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bgm_model.assets import minilm_path
from bgm_model.evaluation.cross_encoder import CrossEncoder, _listnet_targets

QUESTION = "who wrote hamlet?"
PASSAGES = [
    "(Title: Hamlet) Hamlet is a tragedy written by William Shakespeare.",
    "(Title: Paris) Paris is the capital and largest city of France. " * 12,  # longer than max_length
    "(Title: Tea) Tea is an aromatic beverage.",
]


@pytest.fixture(scope="module")
def untrained() -> CrossEncoder:
    torch.manual_seed(0)
    return CrossEncoder(max_length=32, batch_size=2)


def test_scores_are_the_raw_logits_of_a_truncated_pair(untrained: CrossEncoder) -> None:
    from transformers import AutoTokenizer

    scores = untrained.score(QUESTION, PASSAGES)
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    # The same logits a plain forward gives: (question, passage) rows, longest text cut first to 32 tokens.
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    rows = tokenizer([QUESTION] * 3, PASSAGES, truncation="longest_first", max_length=32, padding=True,
                     return_tensors="pt")
    assert rows["input_ids"].shape[1] == 32
    with torch.inference_mode():
        logits = untrained.model.model.eval()(**rows).logits[:, 0]
    torch.testing.assert_close(torch.tensor(scores), logits.float(), atol=1e-5, rtol=1e-4)
    assert untrained.rerank_batch([QUESTION], [PASSAGES]) == [sorted(range(3), key=lambda i: -scores[i])]
    assert untrained.score_pairs([], []) == [] and untrained.rerank_batch([], []) == []


def test_saved_folder_is_safetensors_only_and_reloads_the_same_scores(untrained: CrossEncoder, tmp_path: Path) -> None:
    folder = untrained.save_pretrained(tmp_path / "ce")
    names = {p.name for p in folder.rglob("*") if p.is_file()}
    assert "model.safetensors" in names and "config.json" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))}
    again = CrossEncoder(folder, max_length=32)
    assert again.score(QUESTION, PASSAGES) == pytest.approx(untrained.score(QUESTION, PASSAGES), abs=1e-5)


def test_reads_a_folder_saved_by_the_previous_plain_transformers_baseline(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model.save_pretrained(tmp_path / "old")
    tokenizer.save_pretrained(tmp_path / "old")
    rows = tokenizer([QUESTION] * 3, PASSAGES, truncation="longest_first", max_length=64, padding=True,
                     return_tensors="pt")
    with torch.inference_mode():
        expected = model(**rows).logits[:, 0].tolist()
    assert CrossEncoder(tmp_path / "old", max_length=64).score(QUESTION, PASSAGES) == pytest.approx(expected, abs=1e-5)


def test_listwise_loss_is_cross_entropy_against_the_normalised_labels(untrained: CrossEncoder) -> None:
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    questions = [QUESTION, "what is tea?"]
    docs = [PASSAGES, PASSAGES[1:]]
    labels = [[1.0, 0.0, 0.5], [0.0, 2.0]]  # graded, and more than one positive
    untrained.model.eval()  # no dropout: the loss and the reference see the same logits
    loss = ListNetLoss(untrained.model, mini_batch_size=0)
    with torch.inference_mode():
        got = loss([questions, docs], [torch.tensor(_listnet_targets(ys)) for ys in labels])
        expected = 0.0
        for q, ps, ys in zip(questions, docs, labels, strict=True):
            logits = torch.tensor(untrained.score_pairs([q] * len(ps), ps))
            target = torch.tensor(ys) / sum(ys)
            expected -= float((target * torch.log_softmax(logits, dim=0)).sum())
    assert float(got) == pytest.approx(expected / len(labels), abs=1e-4)


def test_listwise_and_pointwise_training_check_their_input_first(untrained: CrossEncoder) -> None:
    with pytest.raises(ValueError, match="same length"):
        untrained.fit_listwise(["q"], [["a", "b"]], [])
    with pytest.raises(ValueError, match="labelled"):
        untrained.fit([])
    with pytest.raises(ValueError, match="questions for"):
        untrained.score_pairs(["q"], ["a", "b"])


def test_missing_sentence_transformers_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r'pip install "bgm-bridge\[train\]"'):
        CrossEncoder()
