"""Supervised stage: teacher forcing on silver passage sequences (SPS).

The loss is minus the log-probability of the target ID sequence (end step included) under the *same*
constrained distribution the bridge decodes with (:meth:`BridgeModel.step_log_probs`), averaged over the batch
(``loss_reduction='sequence'``) or over all target steps (``'token'``).

Runs unchanged under ``accelerate launch``: the model and optimizer go through ``Accelerator.prepare`` and
the loss is computed by calling the prepared model (the bridge's ``forward`` returns step log-probs), so DDP
synchronises gradients. Data order is a function of (seed, epoch), and a checkpoint holds optimizer,
scheduler and every process's RNG state, so a resumed run ends with the same weights as an uninterrupted one.

Output directory::

    checkpoint/      resume state: the bridge (save_pretrained format) + optimizer.pt, scheduler.pt,
                     rng_state_<rank>.pt, trainer_state.json  (replaced atomically)
    best/            the bridge with the best dev metric so far
    final/           the bridge at the end of training
    log.jsonl        one record per logging step and per evaluation
    sl_config.json   the config of the run
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bgm_model.modeling import BridgeModel

from .base_trainer import BaseTrainer, TrainPlan, TrainRun
from .examples import TrainExample, as_train_examples, epoch_order, global_batches, split_dev
from .logs import Callback
from .sl_config import SLConfig

logger = logging.getLogger(__name__)

__all__ = ["SLResult", "SLTrainer"]


@dataclass
class SLResult:
    """What :meth:`SLTrainer.train` did."""

    global_step: int
    epochs_completed: int
    best_metric: float | None
    """Best dev value of the selection metric (reward with a reader, else exact-sequence accuracy)."""
    output_dir: Path
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def soft_step_log_probs(
    dist: torch.Tensor, mask: torch.Tensor, batch: Sequence[TrainExample], soft_weight: float
) -> torch.Tensor:
    """Per-step training signal (B, T+1) mixing the hard target's log-probability (weight ``1 - soft_weight``)
    with minus the cross-entropy against each step's soft target (``soft_weight``); examples without soft
    targets use the hard target alone. Target mass on actions the bridge cannot take there is dropped."""
    end = dist.shape[-1] - 1
    hard = torch.zeros_like(dist)
    soft = torch.zeros_like(dist)
    for b, ex in enumerate(batch):
        ids = ex.ids or []
        for t in range(len(ids) + 1):
            hard[b, t, ids[t] if t < len(ids) else end] = 1.0
            for action, p in (ex.targets[t] if ex.targets else {}).items():
                soft[b, t, end if action < 0 else action] = p
    allowed = torch.isfinite(dist)
    soft = soft * allowed
    total = soft.sum(-1, keepdim=True)
    has_soft = total.squeeze(-1) > 0
    soft = torch.where(total > 0, soft / total.clamp_min(1e-12), hard)
    weight = torch.where(has_soft, soft_weight, 0.0).unsqueeze(-1)
    target = (1 - weight) * hard + weight * soft
    safe = torch.where(allowed, dist, torch.zeros_like(dist))  # 0 * -inf would be nan
    return (target * safe).sum(-1).masked_fill(~mask, 0.0)


class SLTrainer(BaseTrainer[SLConfig, SLResult]):
    """Teacher-forcing trainer for a :class:`~bgm_model.BridgeModel` on silver passage sequences.

    Args:
        bridge: the bridge to train (in place); a resumed run must pass the same initial bridge.
        config: training settings.
        train_data: records with ``question``, ``passages`` and target ``ids`` (``SilverSequence`` objects,
            dicts, or anything with those attributes); ``answers`` are needed only for the reader metric.
        dev_data: held-out records; ``None`` splits ``config.dev_fraction`` off ``train_data`` (by seed).
        reader: a frozen :class:`~bgm_model.readers.base.Reader`; with it, dev is scored by the downstream
            metric (reward of the reader's answer on the bridge's greedy passage sequence).
        reward: a reward callable or name; defaults to ``config.eval_metric``.
        callbacks: called after each optimizer step with that step's record; an exception stops training.

    Set-up, resume, checkpoints, keep-best and the final save are :class:`BaseTrainer`'s; this class adds the
    teacher-forcing step, the epoch loop and the dev selection key.
    """

    stage = "sl"

    def __init__(
        self,
        bridge: BridgeModel,
        config: SLConfig | None = None,
        train_data: Sequence[Any] = (),
        dev_data: Sequence[Any] | None = None,
        reader: Any = None,
        reward: Any = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        config = config if config is not None else SLConfig()
        examples = as_train_examples(train_data, need_ids=True, what="train_data")
        if not examples:
            raise ValueError("train_data is empty: SL training needs silver passage sequences")
        if dev_data is None:
            train, dev = split_dev(examples, config.dev_fraction, config.seed)
        else:
            train, dev = examples, as_train_examples(dev_data, need_ids=reader is None, what="dev_data")
        if reader is not None:
            from bgm_model.rewards import get_reward

            reward = get_reward(reward or config.eval_metric) if not callable(reward) else reward
        else:
            reward = None
        super().__init__(bridge, config, train, dev, reader=reader, reward=reward, callbacks=callbacks)
        if config.soft_target_weight > 0:
            self.train_data = self._with_soft_targets(train_data, self.train_data)

    # ------------------------------------------------------------------------------------------ helpers
    def _with_soft_targets(self, raw: Sequence[Any], examples: list[TrainExample]) -> list[TrainExample]:
        """Attach ``step_targets`` to the training examples whose silver record has search scans."""
        from .silver import SilverSequence, step_targets

        records = {}
        for item in raw:
            rec = item if isinstance(item, SilverSequence) else None
            if rec is None and isinstance(item, dict) and "scanned" in item:
                rec = SilverSequence.from_dict(item)
            if rec is not None and rec.scanned:
                records[str(rec.id)] = rec
        cfg = self.config
        out = [
            dataclasses.replace(ex, targets=step_targets(
                records[ex.id], temperature=cfg.soft_target_temperature,
                secondary_weight=cfg.soft_target_secondary_weight,
            )) if ex.id in records and records[ex.id].ids == ex.ids else ex
            for ex in examples
        ]
        with_targets = sum(ex.targets is not None for ex in out)
        if with_targets < len(out):
            logger.warning("SL: soft targets for %d of %d training records (the others have no search scans; "
                           "they train on their silver sequence alone)", with_targets, len(out))
        return out

    def _loss(self, model: Any, batch: list[TrainExample]) -> torch.Tensor:
        cfg = self.config
        queries, passages, ids = [e.question for e in batch], [e.passages for e in batch], [e.ids for e in batch]
        soft = cfg.soft_target_weight if any(e.targets for e in batch) else 0.0
        with self.accelerator.autocast():
            if not soft:
                lp, mask = model(queries, passages, ids)
            else:
                dist, mask = model(queries, passages, ids, return_distribution=True)
                lp = soft_step_log_probs(dist, mask, batch, soft)
        if cfg.loss_reduction == "token":
            return -lp.sum() / mask.sum()
        return -lp.sum(-1).mean()

    def _selection_key(self, metrics: dict[str, float]) -> tuple[float, float]:
        # Higher is better; ties on the main metric go to the lower dev loss.
        main = metrics["reward"] if self.reader is not None else metrics["seq_acc"]
        loss = metrics["loss"]
        return (main if not math.isnan(main) else -math.inf, -loss if not math.isnan(loss) else -math.inf)

    # ------------------------------------------------------------------------------------------ training
    def _plan(self) -> TrainPlan:
        cfg, world = self.config, self.accelerator.num_processes
        micro_per_epoch = math.ceil(len(self.train_data) / (cfg.batch_size * world))
        steps_per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
        total_steps = steps_per_epoch * cfg.num_epochs
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)
        summary = (
            f"SL: {len(self.train_data)} train / {len(self.dev_data)} dev records, {total_steps} optimizer "
            f"steps ({steps_per_epoch} per epoch), {world} process(es)"
        )
        return TrainPlan(total_steps=total_steps, optimizer_steps=total_steps, summary=summary)

    def _initial_state(self) -> dict[str, Any]:
        return {**super()._initial_state(), "epoch": 0, "micro_in_epoch": 0}

    def _position(self, state: dict[str, Any]) -> str:
        return f"epoch {state['epoch']}, step {state['global_step']}"

    def _result(self, state: dict[str, Any]) -> SLResult:
        return SLResult(
            global_step=state["global_step"],
            epochs_completed=state["epoch"],
            best_metric=state["best_metric"],
            output_dir=self.output_dir,
            evaluations=list(state["evaluations"]),
        )

    def _run(self, run: TrainRun) -> None:
        cfg, acc, state = self.config, self.accelerator, run.state
        model, optimizer, scheduler, total_steps = run.model, run.optimizer, run.scheduler, run.total_steps
        world, rank = acc.num_processes, acc.process_index
        model.train()
        window: list[float] = []
        stop = state["global_step"] >= total_steps
        while not stop and state["epoch"] < cfg.num_epochs:
            epoch = state["epoch"]
            order = epoch_order(len(self.train_data), cfg.seed, epoch)
            batches = list(global_batches(order, cfg.batch_size, world, rank))
            accum = cfg.gradient_accumulation_steps
            for start in range(state["micro_in_epoch"], len(batches), accum):
                group = batches[start : start + accum]
                for j, idx in enumerate(group):
                    sync = j == len(group) - 1
                    with contextlib.nullcontext() if sync else acc.no_sync(model):
                        loss = self._loss(model, [self.train_data[i] for i in idx])
                        acc.backward(loss / len(group))
                    window.append(float(loss.detach()))
                grad_norm = (
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm else None
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                step = state["global_step"]
                run.bar.update(1)
                record: dict[str, Any] = {
                    "stage": "sl",
                    "step": step,
                    "epoch": epoch + (start + len(group)) / len(batches),
                    "loss": window[-1],
                    "lr": scheduler.get_last_lr()[0],
                }
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                if step % cfg.logging_steps == 0 or step == total_steps:
                    mean_loss = acc.reduce(torch.tensor(sum(window) / len(window), device=acc.device), "mean")
                    record["loss"] = float(mean_loss)
                    window.clear()
                    run.log.write(record)
                    run.bar.set_postfix(loss=f"{record['loss']:.4f}")
                    self._info("SL step %d: loss %.4f lr %.2e", step, record["loss"], record["lr"])
                self._call_back(record)
                micro_done = start + len(group)
                if step >= total_steps:
                    stop = micro_done < len(batches)  # mid-epoch stop: no epoch-end evaluation
                    if stop:
                        self._checkpoint_now(run, epoch=epoch, micro_in_epoch=micro_done)
                        break
                if cfg.save_steps and step % cfg.save_steps == 0 and micro_done < len(batches):
                    self._checkpoint_now(run, epoch=epoch, micro_in_epoch=micro_done)
            if stop:
                break
            if self.dev_data:
                self._evaluate_and_keep_best(run, epoch=epoch + 1)
            self._checkpoint_now(run, epoch=epoch + 1, micro_in_epoch=0)
            stop = state["global_step"] >= total_steps
