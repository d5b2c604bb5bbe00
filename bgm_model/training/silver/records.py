"""Silver files: JSON Lines of :class:`~bgm_model.training.silver.sequence.SilverSequence` records.

:func:`write_silver` appends flushed lines, :func:`read_silver` and :func:`silver_ids` read them back (a
truncated last line from a crash is ignored). The search settings of a file are kept beside it
(:func:`settings_path`, :func:`read_settings`), with the shard of a split run
(:mod:`~bgm_model.training.silver.shards`) and, under :data:`EXPECTED_RECORDS`, how many records the file holds
once its last run is done: a file with fewer was interrupted. :func:`synthesize_to_file` appends one line per
question as it is done and skips ids already in the file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgm_model.data import QAExample
from bgm_model.readers.base import Reader
from bgm_model.rewards import RewardFunc, get_reward, reward_name
from bgm_model.training.checkpoints import aside_path
from bgm_model.training.silver.search import (
    CountingReader,
    SearchProgress,
    SilverConfig,
    resolve_secondary,
    synthesize,
)
from bgm_model.training.silver.sequence import SilverSequence, record_problem

if TYPE_CHECKING:  # shards.py reads and writes silver files with this module
    from bgm_model.training.silver.shards import Shard

logger = logging.getLogger(__name__)


@dataclass
class SynthesisStats:
    """Totals of a :func:`synthesize_to_file` run (questions already in the file are not counted)."""

    written: int = 0
    skipped_done: int = 0
    skipped_no_answers: int = 0
    reader_calls: int = 0
    #: Reader method calls of the run (a lockstep round's call counts once, not once per question in it).
    reader_batches: int = 0
    naive_reader_calls: int = 0

    @property
    def call_reduction(self) -> float:
        """1 - calls / naive calls (0 when nothing was done)."""
        return 1.0 - self.reader_calls / self.naive_reader_calls if self.naive_reader_calls else 0.0


def _repair_tail(path: Path) -> None:
    """Drop a partial last line (a crash mid-write) so appended records start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a truncated last line (%d bytes)", path, len(data) - cut)
        f.truncate(cut)


def write_silver(records: Iterable[SilverSequence], path: str | os.PathLike[str]) -> int:
    """Append records to a JSON Lines file, one flushed line each (a crash loses at most the current one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            n += 1
    return n


def _iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a silver file; a line that is not one raises ``ValueError`` naming file and line."""
    with open(path, "rb") as f:
        lines = f.readlines()
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        truncated = lineno == len(lines) and not raw.endswith(b"\n")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if truncated:
                logger.warning("%s: ignoring a truncated last line", path)
                return
            reason = e.msg if isinstance(e, json.JSONDecodeError) else f"not UTF-8: {e.reason}"
            raise ValueError(f"{path}:{lineno}: not valid JSON ({reason})") from e
        except (RecursionError, ValueError) as e:
            # Complete JSON that Python cannot decode ("[[[[...]]]]" past the recursion limit, huge integers).
            raise ValueError(f"{path}:{lineno}: cannot decode the JSON ({type(e).__name__})") from None
        problem = record_problem(data)
        if problem:
            raise ValueError(f"{path}:{lineno}: {problem}")
        yield data


def read_silver(path: str | os.PathLike[str]) -> list[SilverSequence]:
    """All records of a silver file (a truncated last line from a crash is ignored with a warning).

    A line that is not a silver record (not a JSON object, missing fields, e.g. a traces file) raises
    ``ValueError`` naming the file, the line and the missing fields.
    """
    return [SilverSequence.from_dict(d) for d in _iter_records(Path(path))]


def silver_ids(path: str | os.PathLike[str]) -> set[str]:
    """Ids already in a silver file (empty if it does not exist).

    Checks every line as :func:`read_silver` does, so resuming into a file that is not a silver file fails
    before any reader call rather than after the whole run.
    """
    path = Path(path)
    return {str(d["id"]) for d in _iter_records(path)} if path.exists() else set()


class SilverSettingsError(ValueError):
    """A silver file was made with other search settings (or as another shard) than the ones asked for."""


#: The settings key of the number of records a silver file holds once its last run is done: the questions
#: with gold answers that run was given. Updated at the start of every run and not compared on resume (a
#: resume with a larger ``--limit`` is fine); :func:`~bgm_model.training.silver.shards.merge_silver_files`
#: refuses a shard file that holds fewer (an interrupted run).
EXPECTED_RECORDS = "expected_records"
#: The settings keys of the shard of a split run (``bgm synthesize --num-shards N --shard-index I``), compared
#: on resume like the search settings; a file of an unsplit run has none of them.
SHARD_SETTINGS = ("shard_index", "num_shards", "shard_rule")


def settings_path(path: str | os.PathLike[str]) -> Path:
    """Where the search settings of the silver file ``path`` are kept."""
    path = Path(path)
    return path.with_name(f"{path.stem}.settings.json")


def read_settings(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings kept beside the silver file ``path`` (None if it has none); ``ValueError`` naming the
    settings file if it is not a JSON object."""
    sidecar = settings_path(path)
    if not sidecar.exists():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{sidecar}: not a settings file (not valid JSON)") from e
    if not isinstance(data, dict):
        raise ValueError(f"{sidecar}: not a settings file (not a JSON object)")
    return data


def write_settings(path: str | os.PathLike[str], settings: dict[str, Any]) -> None:
    """Write the settings of the silver file ``path`` beside it (sorted, indented JSON)."""
    sidecar = settings_path(path)
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


#: Settings that say which reader the sequences are for; files written before they were recorded lack them
#: and are taken to match.
READER_SETTINGS = ("reader", "reader_prompt", "secondary_used")


def reader_settings(reader: Reader, primary: RewardFunc, config: SilverConfig) -> dict[str, Any]:
    """The reader (its cache name: model and decoding), a digest of its prompt layout, and the secondary score
    the search really uses (``"auto"`` is the answer log-likelihood only where the reader can score; else
    F1)."""
    probe = reader.prompt_text("{question}", ["{passage 1}", "{passage 2}"])
    secondary = resolve_secondary(config.secondary, primary, reader)
    return {
        "reader": reader.name,
        "reader_prompt": hashlib.sha256(probe.encode("utf-8")).hexdigest()[:16],
        "secondary_used": None if secondary is None else reward_name(secondary),
    }


def _settings(
    reward: str | RewardFunc, config: SilverConfig, shard: Shard | None = None, reader: Reader | None = None
) -> dict[str, Any]:
    primary = get_reward(reward) if isinstance(reward, str) else reward
    data = asdict(config)
    del data["lockstep"]  # how many questions share a batch changes the speed, not the sequences
    secondary = data["secondary"]
    data["secondary"] = secondary if secondary is None or isinstance(secondary, str) else reward_name(secondary)
    settings = {"reward": reward_name(primary), **data}
    if reader is not None:
        settings.update(reader_settings(reader, primary, config))
    if shard is not None:
        settings.update(zip(SHARD_SETTINGS, (shard.index, shard.count, shard.rule), strict=True))
    return settings


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """:class:`SilverSettingsError` if ``path`` was made with other settings (its progress not compared)."""
    saved = read_settings(path)
    if saved is None:
        if path.exists() and path.stat().st_size:
            logger.warning("%s has no %s: assuming it was made with the current settings", path,
                           settings_path(path).name)
        return
    saved.pop(EXPECTED_RECORDS, None)
    for key in READER_SETTINGS:
        if key not in saved and key in settings:
            saved[key] = settings[key]  # written before the reader was recorded
    if saved != settings:
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        diff = ", ".join(f"{k}: {saved.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
        hint = "each shard of a split writes its own file" if set(changed) <= set(SHARD_SETTINGS) else (
            "resume it with those settings, or write to another file")
        raise SilverSettingsError(f"{path} was made with other search settings ({diff}); {hint}")


def synthesize_to_file(
    examples: Iterable[QAExample],
    reader: Reader,
    path: str | os.PathLike[str],
    *,
    reward: str | RewardFunc = "em",
    config: SilverConfig | None = None,
    resume: bool = True,
    set_aside_mismatched: bool = False,
    shard: Shard | None = None,
    log_every: int = 10,
) -> SynthesisStats:
    """Synthesize and append to ``path`` question by question, skipping ids already there if ``resume``.

    With ``shard``, only the examples of that shard are synthesised (:meth:`Shard.select`, by a hash of the
    id) and the shard is kept in the settings, so the file is never resumed as another shard and
    :func:`~bgm_model.training.silver.shards.merge_silver_files` can check the set; a shard without examples
    still writes an empty file with its settings.

    The search settings (reward and :class:`SilverConfig`) are kept beside the file in
    ``<stem>.settings.json`` (with :data:`EXPECTED_RECORDS`, the number of records once this run is done);
    resuming a file made with other settings raises :class:`SilverSettingsError`
    rather than mixing two kinds of targets in one file (a file without one is assumed to match). With
    ``set_aside_mismatched`` such a file is renamed to ``<stem>.<n>.jsonl`` (kept, with its settings) and a
    new one is started: what a pipeline re-run with changed settings wants (the reader cache still has its
    calls).

    The progress bar counts questions as their search ends, after every lockstep round (see
    :class:`~bgm_model.training.silver.search.SearchProgress`), not as records are written: those wait for the
    slowest question of their lockstep group.
    """
    path = Path(path)
    if path.exists() and not resume:
        raise FileExistsError(f"{path} exists; pass resume=True to continue it or choose another path")
    if resume and path.exists():
        silver_ids(path)  # a file that is not a silver file fails here, before a settings file is written
    config = config or SilverConfig()
    settings = _settings(reward, config, shard, reader)
    try:
        _check_settings(path, settings)
    except SilverSettingsError as e:
        if not set_aside_mismatched:
            raise
        aside = aside_path(path)
        if path.exists():
            path.rename(aside)
        settings_path(path).rename(settings_path(aside))
        logger.warning("%s; moved it to %s and starting a new file", e, aside)
    examples = shard.select(examples) if shard else list(examples)
    # Written before the search: a file with fewer records than this was interrupted.
    write_settings(path, {**settings, EXPECTED_RECORDS: sum(1 for ex in examples if ex.answers)})
    done = silver_ids(path) if resume else set()
    stats = SynthesisStats(skipped_done=sum(1 for ex in examples if ex.id in done))
    stats.skipped_no_answers = sum(1 for ex in examples if ex.id not in done and not ex.answers)
    if stats.skipped_done:
        logger.info("%s: %d of %d questions already done, resuming", path, stats.skipped_done, len(examples))
    todo = len(examples) - stats.skipped_done - stats.skipped_no_answers

    from tqdm.auto import tqdm

    counting = CountingReader(reader)
    bar = tqdm(total=todo, desc="silver sequences", unit="q")

    def advance(progress: SearchProgress) -> None:
        bar.update(progress.finished)
        # Redraw after every round (update alone is rate-limited: a round that ends many questions at once
        # would leave the bar behind until the next round, minutes later with a local reader).
        bar.set_postfix(round=progress.round, searching=progress.running, refresh=True)

    def counted() -> Iterator[SilverSequence]:
        records = synthesize(examples, counting, reward=reward, config=config, skip_ids=done, progress=advance)
        for rec in records:
            stats.written += 1
            stats.reader_calls += rec.reader_calls
            stats.reader_batches = counting.calls
            stats.naive_reader_calls += rec.naive_reader_calls
            if log_every and stats.written % log_every == 0:
                logger.info(
                    "%d/%d silver sequences written, %d reader calls (naive greedy: %d)",
                    stats.written,
                    todo,
                    stats.reader_calls,
                    stats.naive_reader_calls,
                )
            yield rec

    try:
        write_silver(counted(), path)
    finally:
        bar.close()
    stats.reader_batches = counting.calls
    logger.info(
        "wrote %d silver sequences to %s: %d reader calls in %d batches (naive greedy: %d, -%.0f%%)",
        stats.written,
        path,
        stats.reader_calls,
        stats.reader_batches,
        stats.naive_reader_calls,
        100 * stats.call_reduction,
    )
    return stats
