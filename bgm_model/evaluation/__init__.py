"""Evaluation: a bridge against fixed arrangements with the same reader, paired bootstrap CIs, and the
trained cross-encoder baseline (``CrossEncoder``, loaded on first use)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bgm_model.evaluation.arrangements import Arrangement, baseline_arrangements, bridge_arrangement
from bgm_model.evaluation.evaluate import (
    METRICS,
    EvaluationReport,
    MethodResult,
    bootstrap_ci,
    evaluate,
    prompt_tokens,
)

if TYPE_CHECKING:
    from bgm_model.evaluation.cross_encoder import CrossEncoder

__all__ = [
    "METRICS",
    "Arrangement",
    "CrossEncoder",
    "EvaluationReport",
    "MethodResult",
    "baseline_arrangements",
    "bootstrap_ci",
    "bridge_arrangement",
    "evaluate",
    "prompt_tokens",
]


def __getattr__(name: str) -> Any:
    if name == "CrossEncoder":
        return importlib.import_module("bgm_model.evaluation.cross_encoder").CrossEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
