"""The settings every training stage shares, with their help text and checks, and the JSON round trip of a
stage's config.

A stage's config (:class:`~bgm_model.training.sl_config.SLConfig`,
:class:`~bgm_model.training.rl_config.RLConfig`) subclasses :class:`BaseTrainConfig`, adds its own fields and
re-declares a shared field whose default or help text differs for that stage (a dataclass field override keeps
the field's place and changes its default and help).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["BaseTrainConfig", "JsonConfigMixin", "check_positive", "override"]

C = TypeVar("C", bound="JsonConfigMixin")


class JsonConfigMixin:
    """JSON round trip for a dataclass config: sorted, indented; unknown keys dropped with a warning (a file
    written by a newer version still loads)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning(
                "Ignoring unknown %s keys %s (written by a newer bgm-bridge?)", cls.__name__, unknown
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls: type[C], path_or_text: str | os.PathLike[str]) -> C:
        """Load from a JSON file path, or from JSON text (a string starting with ``{``)."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text(encoding="utf-8")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)


@dataclass
class BaseTrainConfig(JsonConfigMixin):
    """Settings shared by the SL and RL stages; the defaults are the supervised stage's.

    Round-trips to JSON (:class:`JsonConfigMixin`); every field's help text feeds ``bgm train``. A stage
    re-declares a shared field with :func:`override`; its ``__post_init__`` calls this one first, then checks
    its own fields.
    """

    output_dir: str = field(
        default="bgm-train",
        metadata={
            "help": "Directory for checkpoint/ (resume state), best/ and final/ bridges, log.jsonl and "
            "<stage>_config.json."
        },
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    num_epochs: int = field(default=3, metadata={"help": "Passes over the training set."})
    batch_size: int = field(default=8, metadata={"help": "Examples per step on each process."})
    max_steps: int = field(
        default=0, metadata={"help": "Stop after this many optimizer steps in total (0 = run all epochs)."}
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
    freeze_encoder_layers: int = field(
        default=0,
        metadata={
            "help": "Keep the encoder's embeddings and its first N layers fixed (0: train everything)."
        },
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
    eval_batch_size: int = field(default=16, metadata={"help": "Queries per bridge call during evaluation."})
    max_eval_examples: int = field(
        default=0, metadata={"help": "Evaluate on at most this many dev examples (0 = all)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log metrics every this many steps."})
    save_steps: int = field(
        default=0,
        metadata={"help": "Also write the resume checkpoint every this many steps (0 = only when the stage "
                  "ends an epoch or training)."},
    )
    resume: bool = field(
        default=True,
        metadata={"help": "Continue from output_dir/checkpoint if it exists (same data and seed)."},
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata={"help": "accelerate mixed precision on GPU."}
    )

    def __post_init__(self) -> None:
        check_positive(self, "learning_rate", "num_epochs", "batch_size", "eval_batch_size", "logging_steps")
        check_positive(
            self,
            "max_steps",
            "weight_decay",
            "max_grad_norm",
            "freeze_encoder_layers",
            "max_eval_examples",
            "save_steps",
            allow_zero=True,
        )
        for name in ("warmup_ratio", "dev_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be in [0, 1), got {value}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"{type(self).__name__}.mixed_precision must be no/fp16/bf16, got {self.mixed_precision!r}"
            )


def override(name: str, *, default: Any, help: str | None = None) -> Any:
    """A shared field re-declared in a stage's config: another ``default``, and the base's help text unless
    ``help`` replaces it. The field keeps its place among the fields (and the CLI's flags)."""
    shared = {f.name: f for f in dataclasses.fields(BaseTrainConfig)}
    if name not in shared:
        raise TypeError(f"override({name!r}): BaseTrainConfig has no such field; declare it with field()")
    base = shared[name]
    return field(default=default, metadata={**base.metadata, **({"help": help} if help is not None else {})})


def check_positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{type(obj).__name__}.{name} must be {bound}, got {value}")
