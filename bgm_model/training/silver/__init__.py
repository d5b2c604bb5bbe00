"""Silver passage sequences (SPS): the supervision of BGM's first training stage (Ke et al., ACL 2024,
sec. 3.2).

One module per job: ``search`` (the greedy search against the frozen reader, :class:`SilverConfig`,
:func:`synthesize`; its docstring holds the search, the tie rule and the call savings), ``sequence``
(:class:`SilverSequence`, the record of one question), ``records`` (silver files, their settings sidecar
and :func:`synthesize_to_file`) and ``shards`` (a synthesis split over processes by :func:`shard_of`, and
:func:`merge_silver_files`). The soft SL targets built from a record (:func:`step_targets`) live beside
the SL trainer in :mod:`bgm_model.training.soft_targets` and are importable from here too.
"""

from __future__ import annotations

from bgm_model.training.silver.records import (
    EXPECTED_RECORDS,
    SilverSettingsError,
    SynthesisStats,
    read_settings,
    read_silver,
    silver_ids,
    synthesize_to_file,
    write_silver,
)
from bgm_model.training.silver.records import settings_path as settings_path  # outside __all__, as before
from bgm_model.training.silver.search import SilverConfig, synthesize, synthesize_one
from bgm_model.training.silver.sequence import SilverSequence
from bgm_model.training.silver.shards import (
    SHARD_RULE,
    MergeStats,
    Shard,
    ShardFileError,
    ShardMergeError,
    ShardSetError,
    merge_silver_files,
    shard_of,
)
from bgm_model.training.soft_targets import END as END  # outside __all__, as before
from bgm_model.training.soft_targets import step_targets

__all__ = [
    "EXPECTED_RECORDS",
    "SHARD_RULE",
    "MergeStats",
    "Shard",
    "ShardFileError",
    "ShardMergeError",
    "ShardSetError",
    "SilverConfig",
    "SilverSequence",
    "SilverSettingsError",
    "SynthesisStats",
    "merge_silver_files",
    "read_settings",
    "read_silver",
    "shard_of",
    "silver_ids",
    "step_targets",
    "synthesize",
    "synthesize_one",
    "synthesize_to_file",
    "write_silver",
]
