"""A MiniLM cross-encoder reranker: the supervised baseline a user would train instead of a bridge.

It scores each (question, passage) pair independently with the same backbone the bridge warm-starts from,
and is trained on gold-passage labels (which a bridge never sees). The latency benchmark uses it untrained,
as the cost reference of one reranking pass.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bgm_model.assets import minilm_path
from bgm_model.modeling import quiet_transformers, resolve_device

logger = logging.getLogger(__name__)


class CrossEncoder:
    """``score(question, passages)`` -> one relevance logit per passage (higher is more relevant)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_length: int = 181,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        source = str(path) if path is not None else minilm_path()
        with quiet_transformers():
            self.model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=1, use_safetensors=True, trust_remote_code=False
            )
        self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.model.to(self.device).eval()

    def _rows(self, questions: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(questions), list(passages), truncation="longest_first", max_length=self.max_length,
            padding="longest", return_tensors="pt",
        ).to(self.device)

    @torch.inference_mode()
    def score_pairs(self, questions: Sequence[str], passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        self.model.eval()
        rows = self._rows(questions, passages)
        logits = [
            self.model(**{k: v[i : i + self.batch_size] for k, v in rows.items()}).logits[:, 0]
            for i in range(0, len(passages), self.batch_size)
        ]
        return torch.cat(logits).float().tolist()

    def score(self, question: str, passages: Sequence[str]) -> list[float]:
        return self.score_pairs([question] * len(passages), passages)

    def rerank_batch(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """Passage indices by descending score, for each question (one scoring pass over all pairs)."""
        flat_q = [q for q, ps in zip(questions, passage_lists) for _ in ps]
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
        """Train on (question, passage, label in [0, 1]) with binary cross-entropy; returns epoch losses."""
        if not pairs:
            raise ValueError("CrossEncoder.fit needs labelled (question, passage, label) pairs")
        positives = sum(1 for *_, y in pairs if y > 0.5)
        if positives == 0 or positives == len(pairs):
            raise ValueError(f"CrossEncoder.fit needs both labels; got {positives} positives of {len(pairs)}")
        # Gold passages are rare among candidates: weight positives so both classes count equally.
        pos_weight = torch.tensor((len(pairs) - positives) / positives, device=self.device)

        def loss(batch: list[tuple[str, str, float]]) -> torch.Tensor:
            logits = self.model(**self._rows([b[0] for b in batch], [b[1] for b in batch])).logits[:, 0]
            labels = torch.tensor([float(b[2]) for b in batch], device=self.device)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)

        return self._train(list(pairs), loss, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                           seed=seed, what="loss")

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
        the labels normalised to a distribution (gold passages share the mass). Returns epoch losses.

        Listwise training compares each question's candidates with each other, the way the reranker is
        used; with few labelled questions it holds up far better than independent binary labels. Questions
        whose candidates carry no positive label teach nothing here and are skipped (logged).
        """
        if not (len(questions) == len(passage_lists) == len(labels)):
            raise ValueError("questions, passage_lists and labels must have the same length")
        groups = []
        for q, ps, ys in zip(questions, passage_lists, labels, strict=True):
            if len(ps) != len(ys):
                raise ValueError(f"question {q!r}: {len(ps)} passages but {len(ys)} labels")
            if len(ps) > 1 and sum(ys) > 0:
                groups.append((q, list(ps), [float(y) for y in ys]))
        if not groups:
            raise ValueError("CrossEncoder.fit_listwise needs questions with several candidates and a positive label")
        if len(groups) < len(questions):
            logger.info("cross-encoder: %d of %d questions have no positive candidate; skipped",
                        len(questions) - len(groups), len(questions))

        def loss(batch: list[tuple[str, list[str], list[float]]]) -> torch.Tensor:
            rows = self._rows([q for q, ps, _ in batch for _ in ps], [p for _, ps, _ in batch for p in ps])
            logits = self.model(**rows).logits[:, 0].float()
            total = logits.new_zeros(())
            offset = 0
            for _, ps, ys in batch:
                target = torch.tensor(ys, device=self.device)
                logp = torch.log_softmax(logits[offset : offset + len(ps)], dim=0)
                total = total - (target / target.sum() * logp).sum()
                offset += len(ps)
            return total / len(batch)

        return self._train(groups, loss, epochs=epochs, learning_rate=learning_rate,
                           batch_size=questions_per_batch, seed=seed, warmup_ratio=warmup_ratio,
                           what="listwise loss")

    def _train(
        self,
        items: list[Any],
        loss_fn: Callable[[list[Any]], torch.Tensor],
        *,
        epochs: int,
        learning_rate: float,
        batch_size: int,
        seed: int,
        warmup_ratio: float | None = None,
        what: str,
    ) -> list[float]:
        """AdamW over seeded shuffles of ``items`` (linear warm-up and decay with ``warmup_ratio``, else a
        constant rate); returns the mean loss of each epoch."""
        rng = random.Random(seed)
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(self.model.parameters(), lr=learning_rate, weight_decay=0.01)
        sched = None
        if warmup_ratio is not None:
            steps = epochs * -(-len(items) // batch_size)
            warmup = max(1, int(warmup_ratio * steps))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda i: min((i + 1) / warmup, max(0.0, (steps - i) / max(1, steps - warmup)))
            )
        from tqdm.auto import tqdm  # progress of a long fit (minutes per epoch on CPU)

        order = list(range(len(items)))
        losses = []
        self.model.train()
        for epoch in range(epochs):
            rng.shuffle(order)
            total = 0.0
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc=f"cross-encoder epoch {epoch + 1}/{epochs}", unit="batch", leave=False):
                batch = [items[i] for i in order[start : start + batch_size]]
                loss = loss_fn(batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(batch)
            losses.append(total / len(items))
            logger.info("cross-encoder epoch %d: %s %.4f", epoch + 1, what, losses[-1])
        self.model.eval()
        return losses

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path
