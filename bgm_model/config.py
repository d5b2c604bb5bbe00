"""Bridge-specific settings, stored under one namespaced entry (``bgm_bridge``) of the model's config.json."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

CONFIG_KEY = "bgm_bridge"


@dataclass
class BridgeConfig:
    """How the bridge reads passages and what it may output.

    Every field is saved with the checkpoint, so a loaded bridge decodes exactly as the trained one did.
    """

    max_passages: int = field(
        default=64,
        metadata={"help": "ID capacity: one special token per passage position. More passages than this "
                  "raise an error (or are cut, with overflow='truncate')."},
    )
    max_query_tokens: int = field(
        default=48, metadata={"help": "Query tokens kept in each encoder row."}
    )
    max_passage_tokens: int = field(
        default=128, metadata={"help": "Passage tokens kept in each encoder row (the rest is truncated)."}
    )
    max_output_length: int = field(
        default=10, metadata={"help": "Most passage IDs the bridge may emit before it is forced to stop."}
    )
    max_repeats: int = field(
        default=2, metadata={"help": "Most times one passage may appear in an output (1 = no repetition)."}
    )
    overflow: Literal["error", "truncate"] = field(
        default="error",
        metadata={"help": "More passages than max_passages: 'error' raises; 'truncate' keeps the first "
                  "max_passages (retriever order) and logs a warning."},
    )
    id_token_format: str = field(
        default="[P{}]", metadata={"help": "Text of the special token that names passage i."}
    )
    pointer_scoring: bool = field(
        default=True,
        metadata={"help": "Add a content term to each ID's logit: the decoder state dotted with the encoder "
                  "state of that passage's ID token (no extra parameters). Makes 'pick the passage that "
                  "matches' learnable from few examples; needs equal encoder and decoder hidden sizes."},
    )
    relevance_prior: float = field(
        default=0.0,
        metadata={"help": "Add this times cos(query, passage) to each ID's logit, both embedded on their own "
                  "by the bridge's encoder (mean pooling, as sentence-transformers do). From a MiniLM warm "
                  "start this is exactly all-MiniLM-L6-v2's similarity, so the untrained bridge already "
                  "prefers the passage most like the query whatever order passages arrive in, and training "
                  "learns departures from that. 0 = off (no extra encoder pass)."},
    )
    encoder_batch_size: int = field(
        default=64, metadata={"help": "Encoder rows (query+passage pairs) per forward pass."}
    )

    def __post_init__(self) -> None:
        # Types first: a float where an int belongs (2.5 passages) or a bool where a number belongs
        # (max_repeats=True) would otherwise decode "fine" and silently differ from what was trained.
        for name in _INT_FIELDS:
            _require_int(name, getattr(self, name))
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"BridgeConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("overflow", "id_token_format"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"BridgeConfig.{name} must be a str, got {getattr(self, name)!r}")
        if isinstance(self.relevance_prior, bool) or not isinstance(self.relevance_prior, (int, float)):
            raise TypeError(f"BridgeConfig.relevance_prior must be a number, got {self.relevance_prior!r}")
        for name in ("max_passages", "max_query_tokens", "max_passage_tokens", "max_repeats", "encoder_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BridgeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_output_length < 0:
            raise ValueError(f"BridgeConfig.max_output_length must be >= 0, got {self.max_output_length}")
        if not (math.isfinite(self.relevance_prior) and self.relevance_prior >= 0):
            raise ValueError(f"BridgeConfig.relevance_prior must be finite and >= 0, got {self.relevance_prior}")
        if self.overflow not in ("error", "truncate"):
            raise ValueError(f"BridgeConfig.overflow must be 'error' or 'truncate', got {self.overflow!r}")
        if self.id_token_format.count("{}") != 1 or self.id_token_format.strip() != self.id_token_format:
            raise ValueError(
                "BridgeConfig.id_token_format must contain '{}' exactly once for the passage index and no "
                f"surrounding whitespace, got {self.id_token_format!r}"
            )

    @property
    def id_tokens(self) -> list[str]:
        return [self.id_token_format.format(i) for i in range(self.max_passages)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BridgeConfig:
        """Build from a saved dict; unknown keys (from a newer version) are dropped with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"version"})
        if unknown:
            logger.warning("Ignoring unknown bridge config keys %s (saved by a newer bgm-bridge?)", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})


_INT_FIELDS = (
    "max_passages", "max_query_tokens", "max_passage_tokens", "max_output_length", "max_repeats",
    "encoder_batch_size",
)
_BOOL_FIELDS = ("pointer_scoring",)


def _require_int(name: str, value: Any) -> None:
    # bool is an int subclass: True would pass as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"BridgeConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
