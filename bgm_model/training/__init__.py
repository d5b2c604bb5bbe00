"""Training the bridge: silver passage sequences (stage 1 targets), supervised learning and RL.

See ``docs/training.md``. The toy environment (:mod:`bgm_model.training.toy`) has a known optimum for tests.
"""

from __future__ import annotations

from bgm_model.training.silver import (
    SilverConfig,
    SilverSequence,
    SynthesisStats,
    read_silver,
    silver_ids,
    synthesize,
    synthesize_one,
    synthesize_to_file,
    write_silver,
)
from bgm_model.training.toy import ToyReader, make_toy_examples, toy_optimal_ids

__all__ = [
    "SilverConfig",
    "SilverSequence",
    "SynthesisStats",
    "ToyReader",
    "make_toy_examples",
    "read_silver",
    "silver_ids",
    "synthesize",
    "synthesize_one",
    "synthesize_to_file",
    "toy_optimal_ids",
    "write_silver",
]
