"""Settings of the RL (PPO) stage, see :class:`~bgm_model.training.rl_trainer.RLTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._common import TrainConfigMixin, check_positive

__all__ = ["RLConfig"]


@dataclass
class RLConfig(TrainConfigMixin):
    """PPO on the bridge with a group-mean baseline and a KL penalty to the frozen SL reference.

    Round-trips to JSON (:meth:`to_json` / :meth:`from_json`); every field's help text feeds ``bgm train rl``.
    """

    output_dir: str = field(
        default="bgm-rl",
        metadata={
            "help": "Directory for checkpoint/ (resume state), best/ and final/ bridges, log.jsonl and "
            "rl_config.json."
        },
    )
    reward: str = field(
        default="em",
        metadata={
            "help": "Downstream reward of the reader's answer (bgm_model.rewards name or a weighted sum "
            "such as 'em+0.5*f1')."
        },
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate of AdamW."})
    num_epochs: int = field(
        default=1, metadata={"help": "Passes over the training queries (one rollout per query and pass)."}
    )
    max_steps: int = field(
        default=0,
        metadata={
            "help": "Number of rollout steps; overrides num_epochs when > 0 (the query stream "
            "wraps around into further epochs)."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Queries per rollout step on each process."})
    num_samples: int = field(
        default=4,
        metadata={
            "help": "Sampled passage sequences per query (the group whose mean reward is the baseline; >= 2)."
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the rollouts (1 = on-policy)."}
    )
    ppo_epochs: int = field(default=2, metadata={"help": "Optimisation passes over each rollout batch."})
    mini_batch_size: int = field(
        default=16, metadata={"help": "Sampled sequences per optimizer step on each process."}
    )
    clip_range: float = field(default=0.2, metadata={"help": "PPO ratio clipping epsilon."})
    kl_coef: float = field(
        default=0.05,
        metadata={
            "help": "Weight of the KL penalty to the frozen reference (the initial/SL "
            "bridge); 0 drops the reference model."
        },
    )
    scale_rewards: bool = field(
        default=False,
        metadata={
            "help": "Divide advantages by the group's reward std (GRPO) instead of only "
            "subtracting the group mean."
        },
    )
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "Fraction of optimizer steps with linear warm-up."}
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clipping; 0 disables it."})
    freeze_encoder_layers: int = field(
        default=0,
        metadata={"help": "Keep the encoder's embeddings and its first N layers fixed (0: train everything); "
                  "use the SL stage's value."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the dev split, query order and sampling."})
    dev_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of the queries held out for dev evaluation when no dev set is "
            "given (deterministic by seed)."
        },
    )
    eval_steps: int = field(
        default=0,
        metadata={
            "help": "Evaluate the greedy bridge on dev every this many steps (0 = at the end "
            "only); the best is saved to best/."
        },
    )
    eval_at_start: bool = field(
        default=True,
        metadata={
            "help": "With a dev set, evaluate the starting bridge before the first step; it competes for "
            "best/, so best/ is never worse on dev than where RL began."
        },
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Queries per bridge call during evaluation."})
    max_eval_examples: int = field(
        default=0, metadata={"help": "Evaluate on at most this many dev queries (0 = all)."}
    )
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every this many rollout steps."})
    save_steps: int = field(
        default=50,
        metadata={"help": "Write the resume checkpoint every this many steps (0 = only at the end)."},
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
            "num_samples",
            "temperature",
            "ppo_epochs",
            "mini_batch_size",
            "clip_range",
            "eval_batch_size",
            "logging_steps",
        )
        check_positive(
            self,
            "max_steps",
            "freeze_encoder_layers",
            "kl_coef",
            "weight_decay",
            "max_grad_norm",
            "eval_steps",
            "max_eval_examples",
            "save_steps",
            allow_zero=True,
        )
        if self.num_samples < 2:
            raise ValueError(
                "RLConfig.num_samples must be >= 2: the baseline is the mean of a query's samples"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"RLConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.dev_fraction < 1:
            raise ValueError(f"RLConfig.dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"RLConfig.mixed_precision must be no/fp16/bf16, got {self.mixed_precision!r}")
