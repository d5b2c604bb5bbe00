"""RL stage: PPO on the bridge against the frozen reader, starting from the SL checkpoint.

The policy is the bridge; an *action* is a whole passage-ID sequence sampled with constrained decoding
(:meth:`BridgeModel.sample`); the reward is the downstream score of the frozen reader's answer on the chosen
passages in that order. One rollout step:

1. take ``batch_size`` queries and sample ``num_samples`` sequences for each (the sampling log-probs are the
   "old" policy's);
2. answer *all* samples with ONE ``reader.answer_batch`` call (the reader de-duplicates, caches and reuses
   shared prompt prefixes), and score them with the reward;
3. advantage of a sample = its reward minus the mean reward of its query's group (GRPO/RLOO-style baseline,
   no value head), optionally divided by the group's std (``scale_rewards``). The advantage of the whole
   sequence is given to each of its decoding steps (end step included);
4. ``ppo_epochs`` passes of mini-batch updates of the clipped objective with **per-step** ratios
   ``exp(log pi(a_t) - log pi_old(a_t))``, plus ``kl_coef`` times the **k3** estimator of KL(pi || pi_ref) on the
   sampled steps, ``exp(r) - r - 1`` with ``r = log pi_ref(a_t) - log pi(a_t)`` (unbiased, non-negative);
   the loss is averaged over all valid steps of the mini-batch.

Dropout is off during RL (the model stays in eval mode while gradients flow), so the recomputed log-probs
of the first PPO pass equal the sampling ones and the ratio starts at exactly 1.

Why not TRL: its ``PPOTrainer``/``GRPOTrainer`` train decoder-only causal LMs (``AutoModelForCausalLM``) on free
text: they concatenate prompt and completion token ids and take log-softmax over the *full vocabulary*. The
bridge is an encoder-decoder (Fusion-in-Decoder) model whose actions are passage IDs under a constrained
distribution (only existing passages, at most ``max_repeats`` times, forced end); TRL has no hook for that
action mask, so its ratios and KL would be computed under a different distribution than the one we sample
from. This module is the compact replacement, tested on a toy environment with a known optimum.

Logged per step (``log.jsonl`` and ``logging``): reward mean/std, KL to the reference, entropy (sample
estimate: minus the mean step log-prob of the sampled actions), sequence length, clip fraction, approximate
KL between the old and the updated policy, loss, learning rate. Checkpoints and resume as in the SL stage.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bgm_model.modeling import BridgeModel
from bgm_model.rewards import reward_name

from .base_trainer import BaseTrainer, TrainPlan, TrainRun
from .examples import TrainExample, as_train_examples, epoch_order, split_dev
from .logs import Callback
from .rl_config import RLConfig

logger = logging.getLogger(__name__)

__all__ = ["RLResult", "RLTrainer", "ppo_loss"]


@dataclass
class RLResult:
    """What :meth:`RLTrainer.train` did."""

    global_step: int
    best_metric: float | None
    """Best dev reward of the greedy bridge (None without a dev set)."""
    best_step: int | None
    """The step whose bridge is in best/ (0: the starting bridge; None without a dev set)."""
    output_dir: Path
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def ppo_loss(
    new_lp: torch.Tensor,
    old_lp: torch.Tensor,
    ref_lp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO loss with per-step ratios, a sequence-level advantage and a k3 KL penalty.

    ``new_lp``, ``old_lp``, ``ref_lp`` and ``mask``: (N, T) per-step log-probs of the taken actions;
    ``advantages``: (N,). Returns the loss averaged over valid steps and detached statistics.
    """
    m = mask.float()
    n_steps = m.sum().clamp(min=1)
    log_ratio = (new_lp - old_lp) * m
    ratio = log_ratio.exp()
    adv = advantages.unsqueeze(-1)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    per_step = -surrogate
    kl = torch.zeros_like(new_lp)
    if ref_lp is not None and kl_coef > 0:
        r = (ref_lp - new_lp) * m
        kl = r.exp() - r - 1
        per_step = per_step + kl_coef * kl
    loss = (per_step * m).sum() / n_steps
    with torch.no_grad():
        stats = {
            "clip_frac": float((((ratio - 1).abs() > clip_range).float() * m).sum() / n_steps),
            "approx_kl": float((((ratio - 1) - log_ratio) * m).sum() / n_steps),
            "kl_policy": float((kl * m).sum() / n_steps),
        }
    return loss, stats


class RLTrainer(BaseTrainer[RLConfig, RLResult]):
    """PPO trainer for the bridge (see the module docstring for the algorithm).

    Args:
        bridge: the policy, trained in place; normally the SL checkpoint. A resumed run must pass the same
            initial bridge (the reference is built from it).
        config: RL settings.
        train_data: queries with ``question``, ``passages`` and gold ``answers`` (``QAExample``,
            ``SilverSequence``, dicts); records without answers are dropped with a warning.
        reader: the frozen :class:`~bgm_model.readers.base.Reader`.
        reward: a reward callable or name; defaults to ``config.reward``.
        dev_data: held-out queries for greedy evaluation; ``None`` splits ``config.dev_fraction`` off.
        ref_model: the frozen reference of the KL penalty; defaults to a copy of ``bridge`` as given.
        callbacks: called after each rollout step with its record; an exception stops training.

    Set-up, resume, checkpoints, keep-best and the final save are :class:`BaseTrainer`'s; this class adds the
    rollout, the PPO update and the step loop.
    """

    stage = "rl"

    def __init__(
        self,
        bridge: BridgeModel,
        config: RLConfig | None = None,
        train_data: Sequence[Any] = (),
        reader: Any = None,
        reward: Any = None,
        dev_data: Sequence[Any] | None = None,
        ref_model: BridgeModel | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        from bgm_model.rewards import get_reward

        config = config if config is not None else RLConfig()
        if reader is None:
            raise ValueError("RLTrainer needs a reader: the reward is the score of the reader's answer")
        reward = reward if callable(reward) else get_reward(reward or config.reward)
        # RL needs no targets: silver records can be passed as they are, their ids are ignored.
        examples = [
            dataclasses.replace(e, ids=None)
            for e in as_train_examples(train_data, need_ids=False, what="train_data")
        ]
        labelled = [e for e in examples if e.answers]
        if len(labelled) < len(examples):
            logger.warning("Dropping %d training queries without gold answers", len(examples) - len(labelled))
        if not labelled:
            raise ValueError("train_data has no queries with gold answers: RL needs them to compute rewards")
        if dev_data is None:
            train, dev = split_dev(labelled, config.dev_fraction, config.seed)
        else:
            train = labelled
            dev = [
                dataclasses.replace(e, ids=None)
                for e in as_train_examples(dev_data, need_ids=False, what="dev_data")
            ]
        super().__init__(bridge, config, train, dev, reader=reader, reward=reward, callbacks=callbacks)
        self.ref_model: BridgeModel | None = None
        if config.kl_coef > 0:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(bridge)
            self.ref_model.eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------------ helpers
    def _queries_for_step(self, step: int) -> list[TrainExample]:
        # A stream over epochs of seeded permutations: positions depend on the step only, so resume is exact.
        cfg, acc = self.config, self.accelerator
        n, per = len(self.train_data), cfg.batch_size
        start = (step * acc.num_processes + acc.process_index) * per
        orders: dict[int, list[int]] = {}
        result = []
        for pos in range(start, start + per):
            epoch, i = divmod(pos, n)
            if epoch not in orders:
                orders[epoch] = epoch_order(n, cfg.seed, epoch)
            result.append(self.train_data[orders[epoch][i]])
        return result

    def _step_seed(self, step: int) -> int:
        return (self.config.seed * 1_000_003 + step) * 1009 + self.accelerator.process_index

    def _rollout(self, step: int) -> dict[str, Any]:
        """Sample, answer (one reader call), reward and baseline for one step's queries."""
        from bgm_model.rewards import reward_batch, reward_needs_answer

        cfg = self.config
        exs = self._queries_for_step(step)
        g = torch.Generator(device=self.bridge.device).manual_seed(self._step_seed(step))
        groups = self.bridge.sample(
            [e.question for e in exs],
            [e.passages for e in exs],
            num_samples=cfg.num_samples,
            temperature=cfg.temperature,
            generator=g,
            batch_size=len(exs),
        )
        flat = [(e, s) for e, group in zip(exs, groups) for s in group]
        questions = [e.question for e, _ in flat]
        ordered = [[e.passages[i] for i in s.ids] for e, s in flat]
        golds = [e.answers for e, _ in flat]
        if reward_needs_answer(self.reward):
            answers = self.reader.answer_batch(questions, ordered)
        else:
            answers = [""] * len(flat)
        rewards = torch.tensor(
            reward_batch(
                self.reward, answers, golds, questions=questions, passage_lists=ordered, reader=self.reader
            ),
            dtype=torch.float32,
        ).view(len(exs), cfg.num_samples)
        adv = rewards - rewards.mean(1, keepdim=True)
        if cfg.scale_rewards:
            adv = adv / (rewards.std(1, keepdim=True) + 1e-4)
        return {
            "questions": questions,
            "passages": [e.passages for e, _ in flat],
            "ids": [s.ids for _, s in flat],
            "old_lp": [s.step_log_probs for _, s in flat],
            "rewards": rewards.view(-1),
            "advantages": adv.view(-1),
        }

    @staticmethod
    def _pad(rows: list[list[float]], width: int, device: torch.device) -> torch.Tensor:
        out = torch.zeros(len(rows), width, device=device)
        for b, r in enumerate(rows):
            out[b, : len(r)] = torch.tensor(r[:width], device=device)
        return out

    # ------------------------------------------------------------------------------------------ training
    def _plan(self) -> TrainPlan:
        cfg, world = self.config, self.accelerator.num_processes
        steps_per_epoch = math.ceil(len(self.train_data) / (cfg.batch_size * world))
        total_steps = steps_per_epoch * cfg.num_epochs
        if cfg.max_steps:
            total_steps = cfg.max_steps
        n_seq = cfg.batch_size * cfg.num_samples
        updates_per_step = cfg.ppo_epochs * math.ceil(n_seq / cfg.mini_batch_size)
        summary = (
            f"RL: {len(self.train_data)} train / {len(self.dev_data)} dev queries, {total_steps} steps x "
            f"{cfg.num_samples} samples/query, {world} process(es)"
        )
        return TrainPlan(total_steps, optimizer_steps=total_steps * updates_per_step, summary=summary)

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {"reward": reward_name(self.reward)}

    def _selection_key(self, metrics: dict[str, float]) -> tuple[float]:
        return (metrics["reward"],)

    def _result(self, state: dict[str, Any]) -> RLResult:
        return RLResult(
            state["global_step"], state["best_metric"], state.get("best_step"), self.output_dir,
            list(state["evaluations"]),
        )

    def _run(self, run: TrainRun) -> None:
        cfg, state, total_steps = self.config, run.state, run.total_steps
        if self.ref_model is not None:
            self.ref_model.to(self.accelerator.device)
        run.model.eval()  # no dropout: sampling and the recomputed log-probs must be the same distribution
        if self.dev_data and cfg.eval_at_start and state["global_step"] == 0:
            # The start (normally the SL bridge) is a candidate too: RL that does not help ships nothing
            # worse.
            self._evaluate_and_keep_best(run)
        while state["global_step"] < total_steps:
            step = state["global_step"]
            record = self._train_step(step, run.model, run.optimizer, run.scheduler)
            state["global_step"] = step + 1
            run.bar.update(1)
            run.bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.4f}")
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == total_steps:
                run.log.write(record)
                self._info(
                    "RL step %d: reward %.4f kl %.4f entropy %.3f length %.2f clip %.3f",
                    step + 1,
                    record["reward"],
                    record["kl"],
                    record["entropy"],
                    record["length"],
                    record["clip_frac"],
                )
            self._call_back(record)
            last = step + 1 == total_steps
            if self.dev_data and ((cfg.eval_steps and (step + 1) % cfg.eval_steps == 0) or last):
                self._evaluate_and_keep_best(run)
            if last or (cfg.save_steps and (step + 1) % cfg.save_steps == 0):
                self._checkpoint_now(run)

    def _train_step(self, step: int, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        cfg, acc, device = self.config, self.accelerator, self.accelerator.device
        roll = self._rollout(step)
        n = len(roll["ids"])
        width = max(len(r) for r in roll["old_lp"])
        old_all = self._pad(roll["old_lp"], width, device)
        ref_all = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_all, _ = self.ref_model.step_log_probs(roll["questions"], roll["passages"], roll["ids"])
        adv_all = roll["advantages"].to(device)
        shuffle = torch.Generator().manual_seed(self._step_seed(step) + 7)
        stats: dict[str, list[float]] = {"loss": [], "clip_frac": [], "approx_kl": [], "grad_norm": []}
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n, generator=shuffle).tolist()
            for start in range(0, n, cfg.mini_batch_size):
                idx = perm[start : start + cfg.mini_batch_size]
                with acc.autocast():
                    new_lp, mask = model(
                        [roll["questions"][i] for i in idx],
                        [roll["passages"][i] for i in idx],
                        [roll["ids"][i] for i in idx],
                    )
                t = new_lp.shape[1]
                ref = ref_all[idx, :t] if ref_all is not None else None
                loss, s = ppo_loss(
                    new_lp.float(),
                    old_all[idx, :t],
                    ref,
                    adv_all[idx],
                    mask,
                    clip_range=cfg.clip_range,
                    kl_coef=cfg.kl_coef,
                )
                acc.backward(loss)
                if cfg.max_grad_norm:
                    stats["grad_norm"].append(
                        float(acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                    )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                stats["loss"].append(float(loss.detach()))
                stats["clip_frac"].append(s["clip_frac"])
                stats["approx_kl"].append(s["approx_kl"])

        valid = torch.zeros(n, width, dtype=torch.bool, device=device)
        for b, r in enumerate(roll["old_lp"]):
            valid[b, : len(r)] = True
        n_steps = valid.sum().clamp(min=1)
        kl = torch.tensor(0.0, device=device)
        if ref_all is not None:
            r = (ref_all[:, :width] - old_all) * valid
            kl = ((r.exp() - r - 1) * valid).sum() / n_steps
        local = {
            "reward": roll["rewards"].mean().item(),
            "reward_std": roll["rewards"].std().item() if n > 1 else 0.0,
            "kl": float(kl),
            "entropy": float(-(old_all * valid).sum() / n_steps),
            "length": sum(len(i) for i in roll["ids"]) / n,
            "zero_adv_frac": float((roll["advantages"].abs() < 1e-8).float().mean()),
            **{k: (sum(v) / len(v) if v else math.nan) for k, v in stats.items()},
        }
        keys = sorted(local)
        values = acc.reduce(
            torch.tensor([local[k] for k in keys], device=device, dtype=torch.float32), "mean"
        )
        record: dict[str, Any] = {"stage": "rl", "step": step + 1, "lr": scheduler.get_last_lr()[0]}
        record.update({k: float(v) for k, v in zip(keys, values.tolist())})
        return record
