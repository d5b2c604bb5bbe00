"""A MiniLM cross-encoder reranker: the supervised baseline a user would train instead of a bridge.

It scores each (question, passage) pair independently with the same backbone the bridge warm-starts from,
and is trained on gold-passage labels (which a bridge never sees). The latency benchmark uses it untrained,
as the cost reference of one reranking pass.

The model is a ``sentence_transformers.cross_encoder.CrossEncoder`` (one output label, raw logits as scores) and
training is its ``CrossEncoderTrainer`` with one of its losses: ``BinaryCrossEntropyLoss`` for (question, passage,
label) pairs, ``ListNetLoss`` for a question's whole candidate list. sentence-transformers is in the
``bgm-bridge[train]`` extra and imported on first use.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bgm_model.assets import minilm_path
from bgm_model.modeling import quiet_transformers, resolve_device

logger = logging.getLogger(__name__)

#: ListNet's target is ``softmax(labels)``; this log-label gives a zero label no target mass (``exp`` underflows).
_NO_MASS = -1e4


def _listnet_targets(labels: Sequence[float]) -> list[float]:
    """Labels for ``ListNetLoss`` whose ``softmax`` is ``labels / sum(labels)`` (labels <= 0 get no mass)."""
    return [math.log(y) if y > 0 else _NO_MASS for y in labels]


def _cross_encoder_module() -> Any:
    try:
        from sentence_transformers import cross_encoder
    except ImportError as e:
        raise ImportError('the cross-encoder baseline needs sentence-transformers: pip install "bgm-bridge[train]"') from e
    return cross_encoder


class CrossEncoder:
    """``score(question, passages)`` -> one relevance logit per passage (higher is more relevant).

    Args:
        path: a saved cross-encoder (:meth:`save_pretrained`) or any BERT-style folder / hub id; default: the
            packaged all-MiniLM-L6-v2, with a new one-logit head.
        max_length: tokens per (question, passage) row; longer rows are truncated, longest text first.
        batch_size: rows per forward pass when scoring.
        device: torch device (default: CUDA when available).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_length: int = 181,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        ce = _cross_encoder_module()
        source = str(path) if path is not None else minilm_path()
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = resolve_device(device)
        with quiet_transformers():  # the new head's "missing weights" report is expected
            self.model = ce.CrossEncoder(
                source, num_labels=1, max_length=max_length, device=str(self.device),
                activation_fn=torch.nn.Identity(), trust_remote_code=False, model_kwargs={"use_safetensors": True},
            )

    def score_pairs(self, questions: Sequence[str], passages: Sequence[str]) -> list[float]:
        if len(questions) != len(passages):
            raise ValueError(f"{len(questions)} questions for {len(passages)} passages")
        if not passages:
            return []
        scores = self.model.predict(
            list(zip(questions, passages, strict=True)), batch_size=self.batch_size, show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(s) for s in scores.reshape(-1)]

    def score(self, question: str, passages: Sequence[str]) -> list[float]:
        return self.score_pairs([question] * len(passages), passages)

    def rerank_batch(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """Passage indices by descending score, for each question (one scoring pass over all pairs)."""
        flat_q = [q for q, ps in zip(questions, passage_lists, strict=True) for _ in ps]
        flat_p = [p for ps in passage_lists for p in ps]
        scores = self.score_pairs(flat_q, flat_p)
        out, start = [], 0
        for ps in passage_lists:
            chunk = scores[start : start + len(ps)]
            out.append(sorted(range(len(ps)), key=lambda i: -chunk[i]))
            start += len(ps)
        return out

    def fit(
        self,
        pairs: Sequence[tuple[str, str, float]],
        *,
        epochs: int = 2,
        learning_rate: float = 3e-5,
        batch_size: int = 16,
        seed: int = 0,
    ) -> list[float]:
        """Train on (question, passage, label in [0, 1]) with binary cross-entropy (``BinaryCrossEntropyLoss``,
        positives weighted so both classes count equally) at a constant rate; returns epoch losses."""
        if not pairs:
            raise ValueError("CrossEncoder.fit needs labelled (question, passage, label) pairs")
        positives = sum(1 for *_, y in pairs if y > 0.5)
        if positives == 0 or positives == len(pairs):
            raise ValueError(f"CrossEncoder.fit needs both labels; got {positives} positives of {len(pairs)}")
        ce = _cross_encoder_module()
        # Gold passages are rare among candidates: weight positives so both classes count equally.
        pos_weight = torch.tensor((len(pairs) - positives) / positives, device=self.model.device)
        loss = ce.losses.BinaryCrossEntropyLoss(self.model, pos_weight=pos_weight)
        columns: dict[str, list[Any]] = {"question": [q for q, _, _ in pairs], "passage": [p for _, p, _ in pairs],
                   "label": [float(y) for *_, y in pairs]}
        return self._train(columns, loss, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                           seed=seed, warmup_ratio=None, what="loss")

    def fit_listwise(
        self,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        labels: Sequence[Sequence[float]],
        *,
        epochs: int = 3,
        learning_rate: float = 2e-5,
        questions_per_batch: int = 4,
        warmup_ratio: float = 0.1,
        seed: int = 0,
    ) -> list[float]:
        """Train as a reranker: per question, softmax cross-entropy of the scores of its candidates against
        the labels (>= 0) normalised to a distribution (gold passages share the mass). Returns epoch losses.

        This is ``ListNetLoss`` given log-labels (its target is ``softmax(labels)``, so ``log(y)`` makes it
        ``y / sum(y)``), with a linear warm-up and decay. Listwise training compares each question's candidates
        with each other, the way the reranker is used; with few labelled questions it holds up far better than
        independent binary labels. Questions whose candidates carry no positive label teach nothing here and
        are skipped (logged).
        """
        if not (len(questions) == len(passage_lists) == len(labels)):
            raise ValueError("questions, passage_lists and labels must have the same length")
        groups = []
        for q, ps, ys in zip(questions, passage_lists, labels, strict=True):
            if len(ps) != len(ys):
                raise ValueError(f"question {q!r}: {len(ps)} passages but {len(ys)} labels")
            if len(ps) > 1 and sum(y for y in ys if y > 0) > 0:
                groups.append((q, list(ps), _listnet_targets(ys)))
        if not groups:
            raise ValueError("CrossEncoder.fit_listwise needs questions with several candidates and a positive label")
        if len(groups) < len(questions):
            logger.info("cross-encoder: %d of %d questions have no positive candidate; skipped",
                        len(questions) - len(groups), len(questions))
        ce = _cross_encoder_module()
        loss = ce.losses.ListNetLoss(self.model, mini_batch_size=0)  # each batch's rows in one forward pass
        columns: dict[str, list[Any]] = {"question": [g[0] for g in groups], "passages": [g[1] for g in groups],
                   "labels": [g[2] for g in groups]}
        return self._train(columns, loss, epochs=epochs, learning_rate=learning_rate,
                           batch_size=questions_per_batch, seed=seed, warmup_ratio=warmup_ratio,
                           what="listwise loss")

    def _train(
        self,
        columns: dict[str, list[Any]],
        loss: torch.nn.Module,
        *,
        epochs: int,
        learning_rate: float,
        batch_size: int,
        seed: int,
        warmup_ratio: float | None,
        what: str,
    ) -> list[float]:
        """``CrossEncoderTrainer`` over seeded shuffles of the rows in ``columns`` with AdamW (linear warm-up
        and decay with ``warmup_ratio``, else a constant rate); returns the mean loss of each epoch."""
        ce = _cross_encoder_module()
        try:
            from datasets import Dataset
        except ImportError as e:
            raise ImportError('training the cross-encoder needs datasets: pip install "bgm-bridge[train]"') from e

        rows = len(next(iter(columns.values())))
        steps = epochs * -(-rows // batch_size)
        schedule: dict[str, Any] = {"lr_scheduler_type": "constant", "warmup_steps": 0}
        if warmup_ratio is not None:
            schedule = {"lr_scheduler_type": "linear", "warmup_steps": max(1, int(warmup_ratio * steps))}
        with tempfile.TemporaryDirectory(prefix="bgm-cross-encoder-") as scratch:  # nothing is saved there
            args = ce.CrossEncoderTrainingArguments(
                output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
                learning_rate=learning_rate, weight_decay=0.01, seed=seed, data_seed=seed,
                logging_strategy="epoch", save_strategy="no", eval_strategy="no", report_to="none",
                use_cpu=self.device.type == "cpu", dataloader_num_workers=0, **schedule,
            )
            trainer = ce.CrossEncoderTrainer(
                model=self.model, args=args, train_dataset=Dataset.from_dict(columns), loss=loss
            )
            trainer.train()
        self.model.eval()
        losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
        for epoch, value in enumerate(losses, 1):
            logger.info("cross-encoder epoch %d: %s %.4f", epoch, what, value)
        return losses

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a sentence-transformers cross-encoder folder (safetensors weights, tokenizer, model card)."""
        path = Path(path)
        self.model.save_pretrained(str(path), safe_serialization=True)
        return path
