"""What every training stage does around its own steps: set-up, resume, optimiser, checkpoints, keep-best,
the final bridge.

:class:`BaseTrainer` owns one run of :meth:`~BaseTrainer.train`:

1. seed every RNG, create the output folder, write ``<stage>_config.json``, open ``log.jsonl`` (a fresh start
   keeps the previous run's log beside it as ``log.<n>.jsonl``);
2. resume: find ``checkpoint/``, load its weights, then its optimizer, scheduler and RNG state, and refuse it
   when it was written for other data or settings (the fingerprint);
3. AdamW with a linear warm-up/decay schedule over the stage's optimizer steps, through
   ``Accelerator.prepare``;
4. the stage's loop (:meth:`~BaseTrainer._run`), which calls :meth:`~BaseTrainer._checkpoint_now` and
   :meth:`~BaseTrainer._evaluate_and_keep_best` (dev metrics logged, ``best/`` replaced when the stage's
   selection key improves);
5. ``final/``.

A stage (:class:`~bgm_model.training.sl_trainer.SLTrainer`, :class:`~bgm_model.training.rl_trainer.RLTrainer`)
names itself (``stage``), plans its steps, runs them, and says how to rank dev results.
"""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from .base_config import BaseTrainConfig
from .checkpoints import (
    BEST_DIR,
    FINAL_DIR,
    LOG_FILE,
    RESUME_FREE_FIELDS,
    check_resume_fingerprint,
    find_checkpoint,
    load_trainer_state,
    load_weights_into,
    run_fingerprint,
    save_bridge_atomically,
    save_checkpoint,
)
from .evaluate import evaluate_bridge
from .examples import TrainExample, check_fits
from .logs import Callback, JsonlLog, progress
from .optim import linear_schedule, make_optimizer

__all__ = ["BaseTrainer", "TrainPlan", "TrainRun", "make_accelerator", "seed_everything"]

ConfigT = TypeVar("ConfigT", bound=BaseTrainConfig)
ResultT = TypeVar("ResultT")


def make_accelerator(mixed_precision: str = "no") -> Any:
    try:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs
    except ImportError as e:
        raise ImportError("Training needs accelerate: pip install 'bgm-bridge[train]'") from e
    # Several processes without a GPU (``accelerate launch --multi_gpu`` or ``torchrun`` on a CPU machine):
    # accelerate only picks its gloo MULTI_CPU mode when asked for the CPU explicitly.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Parts of the HF model (e.g. the encoder's pooler) get no gradient: DDP must not wait for them.
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CUDA too) seeded at once: ``transformers.set_seed``."""
    from transformers import set_seed

    set_seed(seed)


@dataclass(frozen=True)
class TrainPlan:
    """How long a stage trains, decided before the optimizer exists."""

    total_steps: int
    """The steps ``global_step`` counts to: training ends there (and the progress bar is full)."""
    optimizer_steps: int
    """The optimizer steps the learning-rate schedule spans (warm-up is ``warmup_ratio`` of them)."""
    summary: str
    """Logged once before training starts."""


@dataclass
class TrainRun:
    """What the stage's loop works with during one :meth:`BaseTrainer.train`."""

    model: Any
    """The bridge as ``Accelerator.prepare`` returned it (call it for gradients; DDP-wrapped on several
    processes)."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: dict[str, Any]
    """What a checkpoint saves and a resumed run continues from (``global_step``, the best so far, the
    evaluations, and the stage's own position)."""
    log: JsonlLog
    bar: Any
    total_steps: int


class BaseTrainer(ABC, Generic[ConfigT, ResultT]):
    """The training loop around a stage's steps (see the module docstring).

    A subclass sets :attr:`stage`, normalises its data in ``__init__`` and passes it to ``super().__init__``,
    and implements :meth:`_plan`, :meth:`_run`, :meth:`_selection_key` and :meth:`_result`; it may extend
    :meth:`_initial_state`, :meth:`_fingerprint_extra` and :meth:`_position`.
    """

    stage: ClassVar[str]
    """``"sl"`` / ``"rl"``: names the config file, the log records, the messages and the progress bar."""

    def __init__(
        self,
        bridge: Any,
        config: ConfigT,
        train_data: list[TrainExample],
        dev_data: list[TrainExample],
        *,
        reader: Any,
        reward: Any,
        callbacks: Sequence[Callback],
    ) -> None:
        # Messages go to the stage's logger (``bgm_model.training.sl_trainer``, ...), not to this module's.
        self._logger = logging.getLogger(type(self).__module__)
        self.bridge = bridge
        self.config = config
        check_fits(bridge, train_data, "train_data")
        check_fits(bridge, dev_data, "dev_data")
        self.train_data, self.dev_data = train_data, dev_data
        if config.freeze_encoder_layers:
            frozen = bridge.freeze_encoder_layers(config.freeze_encoder_layers)
            self._logger.info("%s: froze the encoder's embeddings and first %d layers (%d parameters)",
                              self.stage.upper(), config.freeze_encoder_layers, frozen)
        self.reader = reader
        self.reward = reward
        self.callbacks = list(callbacks)
        self.accelerator = make_accelerator(config.mixed_precision)
        self.output_dir = Path(config.output_dir)

    # ------------------------------------------------------------------------------------------ per stage
    @abstractmethod
    def _plan(self) -> TrainPlan:
        """How many steps, and how many optimizer steps the schedule spans (the data is known, nothing else)."""

    @abstractmethod
    def _run(self, run: TrainRun) -> None:
        """The stage's steps, from ``run.state`` (a resumed position) to ``run.total_steps``."""

    @abstractmethod
    def _selection_key(self, metrics: dict[str, float]) -> tuple[float, ...]:
        """Ranks dev results, higher is better; element 0 is the reported ``best_metric``."""

    @abstractmethod
    def _result(self, state: dict[str, Any]) -> ResultT:
        """What :meth:`train` returns, from the final state."""

    def _initial_state(self) -> dict[str, Any]:
        return {"global_step": 0, "best_key": None, "best_metric": None, "best_step": None, "evaluations": []}

    def _fingerprint_extra(self) -> dict[str, Any]:
        """Inputs besides the config, bridge and data that a resumed run must share (e.g. the reward)."""
        return {}

    def _position(self, state: dict[str, Any]) -> str:
        return f"step {state['global_step']}"

    # ------------------------------------------------------------------------------------------ helpers
    def _info(self, msg: str, *args: Any) -> None:
        # Every process runs the same loop; only the main one reports.
        if self.accelerator.is_main_process:
            self._logger.info(msg, *args)

    def _call_back(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb(record)

    def evaluate(self, examples: Sequence[TrainExample] | None = None) -> dict[str, float]:
        """Greedy dev metrics of the bridge (see :func:`evaluate_bridge`); ``examples`` default to the dev
        set, cut to ``max_eval_examples``."""
        examples = self.dev_data if examples is None else examples
        if self.config.max_eval_examples:
            examples = list(examples)[: self.config.max_eval_examples]
        return evaluate_bridge(
            self.accelerator,
            self.bridge,
            examples,
            reader=self.reader,
            reward=self.reward,
            batch_size=self.config.eval_batch_size,
        )

    # ------------------------------------------------------------------------------------------ training
    def train(self) -> ResultT:
        """Train the bridge in place (continuing ``output_dir/checkpoint`` when ``config.resume``); writes
        ``best/`` on dev improvements and ``final/`` at the end."""
        cfg, acc = self.config, self.accelerator
        name = self.stage.upper()
        seed_everything(cfg.seed)
        out = self.output_dir
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            cfg.to_json(out / f"{self.stage}_config.json")
        acc.wait_for_everyone()
        log = JsonlLog(out / LOG_FILE, acc.is_main_process)

        checkpoint = find_checkpoint(out) if cfg.resume else None
        if checkpoint is not None:
            load_weights_into(self.bridge, checkpoint)
        else:
            log.set_aside()

        plan = self._plan()
        optimizer = make_optimizer(self.bridge, cfg.learning_rate, cfg.weight_decay)
        scheduler = linear_schedule(
            optimizer, int(cfg.warmup_ratio * plan.optimizer_steps), plan.optimizer_steps
        )
        model, optimizer = acc.prepare(self.bridge, optimizer)

        state = self._initial_state()
        fingerprint = run_fingerprint(
            cfg, self.bridge, self.train_data, self.dev_data, **self._fingerprint_extra()
        )
        state["fingerprint"] = fingerprint
        world = acc.num_processes
        if checkpoint is not None:
            saved_state = load_trainer_state(acc, checkpoint, optimizer, scheduler)
            check_resume_fingerprint(saved_state.get("fingerprint"), fingerprint, checkpoint)
            state.update(saved_state)
            self._info("Resuming %s from %s (%s)", name, checkpoint, self._position(state))
            if state.get("num_processes", world) != world:
                self._logger.warning(
                    "Checkpoint written by %s processes, resumed with %d: the data order differs",
                    state.get("num_processes"),
                    world,
                )

        self._info("%s", plan.summary)
        bar = progress(plan.total_steps, state["global_step"], acc.is_main_process, name)
        self._run(TrainRun(model, optimizer, scheduler, state, log, bar, plan.total_steps))
        bar.close()

        if acc.is_main_process:
            self._record_on_model_card(state)
            save_bridge_atomically(acc.unwrap_model(model), out / FINAL_DIR)
        acc.wait_for_everyone()
        return self._result(state)

    def _record_on_model_card(self, state: dict[str, Any]) -> None:
        """This stage's settings, data sizes and dev results, for the model card saved with the bridge."""
        import datetime

        from bgm_model.model_card import TrainingRecord
        from bgm_model.rewards import reward_name

        settings = {k: v for k, v in self.config.to_dict().items() if k not in RESUME_FREE_FIELDS}
        evaluations = state.get("evaluations") or []
        metrics: dict[str, Any] = {"optimizer_steps": state["global_step"]}
        if state.get("best_metric") is not None:
            metrics.update(best_dev_metric=state["best_metric"], best_step=state.get("best_step"))
        if evaluations:
            keys = [k for k in evaluations[-1] if k.startswith("dev_") or k in ("step", "epoch")]
            metrics["table"] = [{k: e.get(k) for k in keys} for e in evaluations]
        self.accelerator.unwrap_model(self.bridge).model_card_data.add_training(TrainingRecord(
            stage=self.stage,
            settings=settings,
            data={"train_examples": len(self.train_data), "dev_examples": len(self.dev_data),
                  **({"reward": reward_name(self.reward)} if self.reader is not None and self.reward else {})},
            metrics=metrics,
            date=datetime.date.today().isoformat(),
        ))

    def _checkpoint_now(self, run: TrainRun, **position: Any) -> None:
        """Write ``checkpoint/`` (every process must call it); ``position``: the stage's place in its loop."""
        acc = self.accelerator
        run.state.update(position, num_processes=acc.num_processes, seed=self.config.seed)
        model = acc.unwrap_model(run.model)
        save_checkpoint(acc, model, self.output_dir, run.state, run.optimizer, run.scheduler)

    def _evaluate_and_keep_best(self, run: TrainRun, **where: Any) -> None:
        """Evaluate on dev, log it (``where``: the stage's position, e.g. the epoch; default: the step) and
        replace ``best/`` when the stage's selection key beats the best so far."""
        state = run.state
        metrics = self.evaluate()
        record = {
            "stage": self.stage,
            "event": "eval",
            **where,
            "step": state["global_step"],
            **{f"dev_{k}": v for k, v in metrics.items()},
        }
        run.log.write(record)
        state["evaluations"].append(
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        )
        at = " ".join(f"{k} {v}" for k, v in where.items()) or f"step {state['global_step']}"
        values = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self._info("%s %s dev: %s", self.stage.upper(), at, values)
        key = self._selection_key(metrics)
        best = state["best_key"]
        if best is None and state["best_metric"] is not None:
            best = [state["best_metric"]]  # RL checkpoints from before the shared base kept only this
        if best is None or tuple(key) > tuple(best):
            state["best_key"] = list(key)
            state["best_metric"] = key[0] if math.isfinite(key[0]) else None
            state["best_step"] = state["global_step"]
            if self.accelerator.is_main_process:
                self._record_on_model_card(state)
                save_bridge_atomically(self.accelerator.unwrap_model(self.bridge), self.output_dir / BEST_DIR)
            self.accelerator.wait_for_everyone()
