"""Settings of the supervised (teacher-forcing) stage, see :class:`~bgm_model.training.sl_trainer.SLTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .base_config import BaseTrainConfig, check_positive, override

__all__ = ["SLConfig"]


@dataclass
class SLConfig(BaseTrainConfig):
    """Supervised training of the bridge on silver passage sequences (SPS).

    The shared settings (learning rate, epochs, warm-up, dev split, ...) and their defaults come from
    :class:`~bgm_model.training.base_config.BaseTrainConfig`; ``override`` re-declares the shared ones whose
    help text differs here, the others below are this stage's own.
    Round-trips to JSON (:meth:`to_json` / :meth:`from_json`); every field's help text feeds ``bgm train sl``.
    """

    output_dir: str = override(
        "output_dir",
        default="bgm-sl",
        help="Directory for checkpoint/ (resume state), best/ and final/ bridges, log.jsonl and config.json.",
    )
    batch_size: int = override(
        "batch_size",
        default=8,
        help="Examples per forward pass on each process (global batch = this x processes).",
    )
    freeze_encoder_layers: int = override(
        "freeze_encoder_layers",
        default=0,
        help="Keep the encoder's embeddings and its first N layers fixed (0: train everything). Fewer "
        "trained weights for small silver sets, and no backward pass through them.",
    )
    logging_steps: int = override(
        "logging_steps", default=10, help="Log the mean loss every this many optimizer steps."
    )
    save_steps: int = override(
        "save_steps",
        default=0,
        help="Also write the resume checkpoint every this many optimizer steps (0 = only at the end of each "
        "epoch).",
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Forward passes whose gradients are summed before one optimizer step."}
    )
    loss_reduction: Literal["sequence", "token"] = field(
        default="sequence",
        metadata={
            "help": "'sequence': minus the mean log-probability of whole target sequences (end step "
            "included), as a seq2seq NLL; 'token': minus the mean per-step log-probability over all steps "
            "of the batch (longer targets weigh more)."
        },
    )
    soft_target_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight in [0, 1] of the soft-target loss: cross-entropy at each step against the "
            "distribution step_targets() builds from every extension the silver search scored (needs silver "
            "records with 'scanned'); the hard silver sequence gets 1 - weight. 0: the paper's SL."
        },
    )
    soft_target_temperature: float = field(
        default=0.2, metadata={"help": "Temperature of the soft targets (smaller: closer to the hard sequence)."}
    )
    soft_target_secondary_weight: float = field(
        default=0.1,
        metadata={"help": "Weight of the search's dense secondary score (e.g. gold log-likelihood) in a soft "
                  "target's value, next to the primary reward."},
    )
    eval_metric: str = field(
        default="em",
        metadata={
            "help": "Reward (bgm_model.rewards name, e.g. em, f1, contains, loglik) of the reader's answer "
            "on the bridge's greedy output, used on dev each epoch when a reader is given. Without a "
            "reader, dev loss and exact-sequence accuracy are used."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "gradient_accumulation_steps", "soft_target_temperature")
        check_positive(self, "soft_target_secondary_weight", allow_zero=True)
        if not 0 <= self.soft_target_weight <= 1:
            raise ValueError(f"SLConfig.soft_target_weight must be in [0, 1], got {self.soft_target_weight}")
        if self.loss_reduction not in ("sequence", "token"):
            raise ValueError(
                f"SLConfig.loss_reduction must be 'sequence' or 'token', got {self.loss_reduction!r}"
            )
