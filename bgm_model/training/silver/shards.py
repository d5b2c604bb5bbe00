"""Silver synthesis split over processes or machines: which shard a question belongs to, and the merge back.

The split is by question id, not by position: :func:`shard_of` takes the first 8 bytes of the SHA-256 of
the UTF-8 id as a big-endian integer, modulo the number of shards (rule :data:`SHARD_RULE`). So it is the
same in every process and Python version (unlike the salted ``hash()``), does not depend on the dataset's
order, and adding questions moves none of the others. Each shard is one run of
:func:`~bgm_model.training.silver.records.synthesize_to_file` with ``shard=Shard(index, count)`` into its own
file; its settings record the shard (compared on resume) and how many records the file holds once done.

:func:`merge_silver_files` checks that the shard files make one complete split and writes one silver file
equal to a single-process run: the same records, and the same settings without the shard keys. The order
is that of ``order`` (the dataset's ids) when given, so the file equals the single run line for line, else
by id. Its errors say what is wrong: :class:`ShardSetError` when the files given do not make one split
(a shard missing or given twice, other settings or shard counts, ids that do not match ``order``),
:class:`ShardFileError` when one file cannot be used (no shard settings, an interrupted run, an example
twice or in the wrong shard).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bgm_model.training.silver.records import (
    EXPECTED_RECORDS,
    SHARD_SETTINGS,
    read_settings,
    read_silver,
    settings_path,
    write_settings,
    write_silver,
)
from bgm_model.training.silver.sequence import SilverSequence

logger = logging.getLogger(__name__)

#: Name and version of the split rule, kept in every shard file's settings (a new rule gets a new name).
SHARD_RULE = "sha256-id-mod-v1"

T = TypeVar("T")


def shard_of(example_id: str, num_shards: int) -> int:
    """The shard (``0 .. num_shards - 1``) of the question ``example_id``: SHA-256 of the UTF-8 id, first 8
    bytes big-endian, modulo ``num_shards``."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    digest = hashlib.sha256(str(example_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the questions whose id :func:`shard_of` puts there."""

    index: int
    count: int
    rule: str = field(default=SHARD_RULE, init=False)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"the number of shards must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"the shard index must be in 0..{self.count - 1} for {self.count} shards, got {self.index}"
            )

    def holds(self, example_id: str) -> bool:
        return shard_of(example_id, self.count) == self.index

    def select(self, examples: Iterable[T]) -> list[T]:
        """The examples (anything with an ``id``) of this shard, in their order."""
        return [ex for ex in examples if self.holds(ex.id)]  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


class ShardMergeError(ValueError):
    """The shard files cannot be merged; the message names the files, shards or ids."""


class ShardSetError(ShardMergeError):
    """The files given do not make one complete split (a shard missing or twice, differing settings)."""


class ShardFileError(ShardMergeError):
    """One shard file cannot be used (no shard settings, an interrupted run, an example twice)."""


@dataclass
class _ShardFile:
    path: Path
    settings: dict[str, Any]
    index: int
    count: int
    expected: int
    records: list[SilverSequence] = field(default_factory=list)


@dataclass
class MergeStats:
    """What :func:`merge_silver_files` wrote."""

    records: int
    shards: int
    settings: dict[str, Any]


def _read_shard_settings(path: Path) -> _ShardFile:
    settings = read_settings(path)
    if settings is None:
        raise ShardFileError(f"{path} has no settings file {settings_path(path).name}: not a file of "
                             "`bgm synthesize --num-shards`")
    missing = [k for k in (*SHARD_SETTINGS, EXPECTED_RECORDS) if k not in settings]
    if missing:
        raise ShardFileError(f"{path} is not a shard file: its settings have no {', '.join(missing)} (made "
                             "without --num-shards?)")
    if settings["shard_rule"] != SHARD_RULE:
        raise ShardFileError(f"{path} was split by rule {settings['shard_rule']!r}, not {SHARD_RULE!r}: merge it "
                             "with the version that wrote it")
    return _ShardFile(path, settings, int(settings["shard_index"]), int(settings["num_shards"]),
                      int(settings[EXPECTED_RECORDS]))


def _search_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in SHARD_SETTINGS and k != EXPECTED_RECORDS}


def _check_set(shards: list[_ShardFile]) -> None:
    seen: dict[Path, Path] = {}
    for s in shards:
        key = s.path.resolve()
        if key in seen:
            raise ShardSetError(f"{s.path} is given twice")
        seen[key] = s.path
    first = shards[0]
    for s in shards[1:]:
        if s.count != first.count:
            raise ShardSetError(f"the files are of different splits: {first.path} is shard {first.index} of "
                                f"{first.count}, {s.path} shard {s.index} of {s.count}")
        a, b = _search_settings(first.settings), _search_settings(s.settings)
        if a != b:
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            diff = ", ".join(f"{k}: {a.get(k)!r} in {first.path}, {b.get(k)!r} in {s.path}" for k in changed)
            raise ShardSetError(f"the shard files were made with other settings ({diff})")
    by_index: dict[int, _ShardFile] = {}
    for s in shards:
        if s.index in by_index:
            raise ShardSetError(
                f"shard {s.index} of {s.count} is given twice: {by_index[s.index].path} and {s.path}"
            )
        by_index[s.index] = s
    missing = [i for i in range(first.count) if i not in by_index]
    if missing:
        raise ShardSetError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of "
                            f"{first.count} {'are' if len(missing) > 1 else 'is'} missing: give the file of every "
                            f"shard 0..{first.count - 1}")


def _check_records(shards: list[_ShardFile]) -> dict[str, SilverSequence]:
    merged: dict[str, SilverSequence] = {}
    where: dict[str, Path] = {}
    for s in shards:
        for rec in s.records:
            if rec.id in merged:
                twice = f"twice in {s.path}" if where[rec.id] == s.path else f"in {where[rec.id]} and {s.path}"
                raise ShardFileError(f"example {rec.id!r} appears {twice}")
            owner = shard_of(rec.id, s.count)
            if owner != s.index:
                raise ShardFileError(f"{s.path}: example {rec.id!r} belongs to shard {owner}, not {s.index} (was "
                                     "the file written by another split?)")
            merged[rec.id] = rec
            where[rec.id] = s.path
    for s in shards:
        n = len(s.records)
        if n < s.expected:
            raise ShardFileError(f"{s.path} is incomplete: {n} of its {s.expected} questions are done (an "
                                 "interrupted run? run the same command again to finish it)")
        if n > s.expected:
            raise ShardFileError(f"{s.path} holds {n} records but its last run was of {s.expected} questions "
                                 "(resumed with another --limit or dataset?)")
    return merged


def _ids_list(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _in_order(merged: dict[str, SilverSequence], order: Iterable[str]) -> list[SilverSequence]:
    ids = list(dict.fromkeys(map(str, order)))
    missing = [i for i in ids if i not in merged]
    if missing:
        raise ShardSetError(f"{len(missing)} question(s) of the dataset have no record in the shard files: "
                            f"{_ids_list(missing)}")
    wanted = set(ids)
    extra = [i for i in merged if i not in wanted]
    if extra:
        raise ShardSetError(f"{len(extra)} record(s) of the shard files are not questions of the dataset: "
                            f"{_ids_list(extra)}")
    return [merged[i] for i in ids]


def merge_silver_files(
    shard_paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    order: Iterable[str] | None = None,
    overwrite: bool = False,
) -> MergeStats:
    """Check that ``shard_paths`` are the complete files of one split and write their records to ``out``.

    Checked, before anything is written: every file has shard settings of :data:`SHARD_RULE`; they have the
    same shard count and otherwise the same settings; every shard ``0 .. N-1`` is there exactly once; no
    example is there twice or in another shard than its file's; every file holds the records its last run
    was given (fewer: an interrupted run). With ``order`` (the ids of the questions with gold answers, in
    dataset order) the records must be exactly those ids and are written in that order; without it, sorted by
    id. ``out`` gets the settings of the shards without the shard keys, so it is the file a single-process
    run writes, and a normal silver file (``bgm train sl --silver``). It is written to a temporary file
    first, then renamed.

    Raises :class:`ShardSetError` or :class:`ShardFileError` (see the module docstring), ``ValueError`` for
    a line of a file that is not a silver record, ``FileExistsError`` if ``out`` exists and not
    ``overwrite``.
    """
    if not shard_paths:
        raise ShardSetError("no shard file given")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose another path or overwrite it")
    shards = [_read_shard_settings(Path(p)) for p in shard_paths]
    if any(s.path.resolve() == out.resolve() for s in shards):
        raise ShardSetError(f"{out} is one of the shard files: write the merged file elsewhere")
    _check_set(shards)  # cheap checks of the settings first, then the records
    for s in shards:
        s.records = read_silver(s.path)
    merged = _check_records(shards)
    records = _in_order(merged, order) if order is not None else [merged[i] for i in sorted(merged)]
    settings = {**_search_settings(shards[0].settings), EXPECTED_RECORDS: len(records)}
    partial = out.with_name(f".{out.name}.partial")
    partial.unlink(missing_ok=True)
    write_silver(records, partial)
    write_settings(out, settings)
    os.replace(partial, out)
    logger.info("merged %d shard files (%d records) into %s", len(shards), len(records), out)
    return MergeStats(records=len(records), shards=len(shards), settings=settings)
