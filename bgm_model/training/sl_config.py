"""Settings of the supervised (teacher-forcing) stage, see :class:`~bgm_model.training.sl_trainer.SLTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._common import TrainConfigMixin, check_positive

__all__ = ["SLConfig"]


@dataclass
class SLConfig(TrainConfigMixin):
    """Supervised training of the bridge on silver passage sequences (SPS).

    Round-trips to JSON (:meth:`to_json` / :meth:`from_json`); every field's help text feeds ``bgm train sl``.
    """

    output_dir: str = field(
        default="bgm-sl",
        metadata={
            "help": "Directory for checkpoint/ (resume state), best/ and final/ bridges, log.jsonl and "
            "config.json."
        },
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    num_epochs: int = field(default=3, metadata={"help": "Passes over the training set."})
    batch_size: int = field(
        default=8,
        metadata={"help": "Examples per forward pass on each process (global batch = this x processes)."},
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Forward passes whose gradients are summed before one optimizer step."}
    )
    warmup_ratio: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of optimizer steps with a linear learning-rate warm-up; "
            "linear decay to 0 afterwards."
        },
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clipping; 0 disables it."})
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
    freeze_encoder_layers: int = field(
        default=0,
        metadata={"help": "Keep the encoder's embeddings and its first N layers fixed (0: train everything). "
                  "Fewer trained weights for small silver sets, and no backward pass through them."},
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed of initialisation-free randomness: dev split, data order, dropout."},
    )
    dev_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of the training records held out as dev set when no dev set is "
            "given (deterministic by seed); 0 trains on everything without evaluation."
        },
    )
    eval_metric: str = field(
        default="em",
        metadata={
            "help": "Reward (bgm_model.rewards name, e.g. em, f1, contains, loglik) of the reader's answer "
            "on the bridge's greedy output, used on dev each epoch when a reader is given. Without a "
            "reader, dev loss and exact-sequence accuracy are used."
        },
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Queries per bridge call during evaluation."})
    max_eval_examples: int = field(
        default=0, metadata={"help": "Evaluate on at most this many dev examples (0 = all)."}
    )
    logging_steps: int = field(
        default=10, metadata={"help": "Log the mean loss every this many optimizer steps."}
    )
    save_steps: int = field(
        default=0,
        metadata={
            "help": "Also write the resume checkpoint every this many optimizer steps "
            "(0 = only at the end of each epoch)."
        },
    )
    max_steps: int = field(
        default=0, metadata={"help": "Stop after this many optimizer steps in total (0 = run all epochs)."}
    )
    resume: bool = field(
        default=True,
        metadata={"help": "Continue from output_dir/checkpoint if it exists (same data and seed)."},
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata={"help": "accelerate mixed precision on GPU."}
    )

    def __post_init__(self) -> None:
        check_positive(
            self,
            "learning_rate",
            "num_epochs",
            "batch_size",
            "gradient_accumulation_steps",
            "eval_batch_size",
            "logging_steps",
        )
        check_positive(
            self,
            "weight_decay",
            "max_grad_norm",
            "save_steps",
            "max_steps",
            "max_eval_examples",
            allow_zero=True,
        )
        if not 0 <= self.soft_target_weight <= 1:
            raise ValueError(f"SLConfig.soft_target_weight must be in [0, 1], got {self.soft_target_weight}")
        check_positive(self, "soft_target_temperature")
        check_positive(self, "soft_target_secondary_weight", "freeze_encoder_layers", allow_zero=True)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"SLConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.dev_fraction < 1:
            raise ValueError(f"SLConfig.dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if self.loss_reduction not in ("sequence", "token"):
            raise ValueError(
                f"SLConfig.loss_reduction must be 'sequence' or 'token', got {self.loss_reduction!r}"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"SLConfig.mixed_precision must be no/fp16/bf16, got {self.mixed_precision!r}")
