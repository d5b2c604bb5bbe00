"""Settings of the RL (PPO) stage, see :class:`~bgm_model.training.rl_trainer.RLTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import BaseTrainConfig, check_positive, override

__all__ = ["RLConfig"]


@dataclass
class RLConfig(BaseTrainConfig):
    """PPO on the bridge with a group-mean baseline and a KL penalty to the frozen SL reference.

    The shared settings come from :class:`~bgm_model.training.base_config.BaseTrainConfig`; ``override``
    re-declares those whose default or help text differs here, the fields after them are this stage's own.
    Round-trips to JSON (:meth:`to_json` / :meth:`from_json`); every field's help text feeds ``bgm train rl``.
    """

    output_dir: str = override(
        "output_dir",
        default="bgm-rl",
        help="Directory for checkpoint/ (resume state), best/ and final/ bridges, log.jsonl and "
        "rl_config.json.",
    )
    learning_rate: float = override("learning_rate", default=1e-5)
    num_epochs: int = override(
        "num_epochs", default=1, help="Passes over the training queries (one rollout per query and pass)."
    )
    batch_size: int = override("batch_size", default=8, help="Queries per rollout step on each process.")
    max_steps: int = override(
        "max_steps",
        default=0,
        help="Number of rollout steps; overrides num_epochs when > 0 (the query stream wraps around into "
        "further epochs).",
    )
    warmup_ratio: float = override(
        "warmup_ratio", default=0.0, help="Fraction of optimizer steps with linear warm-up."
    )
    weight_decay: float = override("weight_decay", default=0.0)
    freeze_encoder_layers: int = override(
        "freeze_encoder_layers",
        default=0,
        help="Keep the encoder's embeddings and its first N layers fixed (0: train everything); use the SL "
        "stage's value.",
    )
    seed: int = override("seed", default=42, help="Seed of the dev split, query order and sampling.")
    dev_fraction: float = override(
        "dev_fraction",
        default=0.0,
        help="Fraction of the queries held out for dev evaluation when no dev set is given (deterministic by "
        "seed).",
    )
    max_eval_examples: int = override(
        "max_eval_examples", default=0, help="Evaluate on at most this many dev queries (0 = all)."
    )
    logging_steps: int = override(
        "logging_steps", default=1, help="Log metrics every this many rollout steps."
    )
    save_steps: int = override(
        "save_steps",
        default=50,
        help="Write the resume checkpoint every this many steps (0 = only at the end).",
    )
    reward: str = field(
        default="em",
        metadata={
            "help": "Downstream reward of the reader's answer (bgm_model.rewards name or a weighted sum "
            "such as 'em+0.5*f1')."
        },
    )
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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "num_samples", "temperature", "ppo_epochs", "mini_batch_size", "clip_range")
        check_positive(self, "kl_coef", "eval_steps", allow_zero=True)
        if self.num_samples < 2:
            raise ValueError(
                "RLConfig.num_samples must be >= 2: the baseline is the mean of a query's samples"
            )
