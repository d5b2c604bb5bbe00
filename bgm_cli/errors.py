"""What the ``bgm`` commands report as a user's error, and with which exit status.

``bgm`` ends a run it cannot do with one line on stderr, ``bgm <command>: error: <what is wrong>``, and:

* status **2** when the command line is wrong: an unknown option or value (``--reward bogus``, ``--dataset
  foo``), a path that does not exist, options that do not fit together or do not fit the file being resumed
  (:class:`UsageError`, and every error argparse finds);
* status **1** when an input exists but cannot be used: a traces file given as a dataset or as silver
  sequences, a silver file given as traces, a folder that is not a saved bridge, a file that is not JSON Lines
  (:class:`InputError`, :class:`~bgm_model.errors.BridgeError`).

``-v`` adds the traceback of such an error. Any other exception is a bug and shows its traceback as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

#: Exit status of a bad command line (argparse's) and of an input that cannot be used.
USAGE_STATUS = 2
INPUT_STATUS = 1


class CommandError(Exception):
    """An error whose message is written for the user: ``bgm`` prints it as one line and exits ``status``."""

    status = INPUT_STATUS


class UsageError(CommandError):
    """The command line asks for something that cannot be done (exit status 2)."""

    status = USAGE_STATUS


class InputError(CommandError):
    """An input file or folder exists but is not what the command needs (exit status 1)."""

    status = INPUT_STATUS


def existing_path(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a :class:`Path`; :class:`UsageError` naming ``what`` (e.g. ``"--silver"``) if it is
    missing."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} {path}: no such file or directory")
    return path


# ---------------------------------------------------------------------------------------- kinds of file
#: The JSONL files the commands read, and how each is told apart by the keys of its first record.
DATASET, TRACES, SILVER = "dataset", "traces file", "silver file"

_HINTS = {
    # (what the file is, what the command wanted) -> what to do instead
    (TRACES, DATASET): "give traces with --traces (bgm synthesize, bgm train rl)",
    (TRACES, SILVER): "build silver sequences from it with `bgm synthesize {path} --traces -o SILVER.jsonl`",
    (SILVER, TRACES): "silver sequences are the input of `bgm train sl --silver {path}`",
    (SILVER, DATASET): "silver sequences are the input of `bgm train sl --silver {path}`",
    (DATASET, TRACES): "give a dataset without --traces (bgm synthesize) or as --data (bgm train rl)",
    (DATASET, SILVER): "build silver sequences from it with `bgm synthesize {path} -o SILVER.jsonl`",
}


def file_kind(path: Path) -> str | None:
    """What the JSONL file ``path`` holds, from its first record's keys: :data:`DATASET`, :data:`TRACES`,
    :data:`SILVER`, or None (empty, or a record of none of them).

    :class:`InputError` if the file has lines but none is a JSON object (not JSON Lines at all); a line that
    is not JSON before the first record is allowed (a truncated write), as the readers allow it.
    """
    seen_line = False
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            seen_line = True
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                continue
            if not isinstance(record, dict):
                raise InputError(f"{path} is not JSON Lines of records: its lines are not JSON objects")
            if "trace_id" in record or "schema_version" in record:
                return TRACES
            if "trajectory" in record or "stop_reason" in record:
                return SILVER
            if "question" in record:
                return DATASET
            return None
    if seen_line:
        raise InputError(f"{path} is not a JSON Lines file: no line is a JSON object")
    return None


def check_file_kind(path: Path, wanted: str) -> None:
    """:class:`InputError` when ``path`` is recognisably another kind of file than ``wanted``, saying what to
    do instead; nothing when it looks right or cannot be told (the reader then checks every record)."""
    kind = file_kind(path)
    if kind is not None and kind != wanted:
        hint = _HINTS.get((kind, wanted), "").format(path=path)
        raise InputError(f"{path} is a {kind}, not a{'n' if wanted[0] in 'aeiou' else ''} {wanted}"
                         + (f": {hint}" if hint else ""))


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], wanted: str, option: str | None = None) -> Iterator[Path]:
    """Read ``path`` as a ``wanted`` file inside this block: a missing path is a :class:`UsageError` (naming
    ``option``, e.g. ``"--data"``), another kind of file or a record the reader rejects (``ValueError``, e.g.
    ``file:line: missing fields``) an :class:`InputError`.

    Only the reading belongs in the block: a ``ValueError`` raised by anything else would be reported as a
    problem of the file.
    """
    path = existing_path(path, option or wanted)
    if path.is_dir():
        raise UsageError(f"{option or wanted} {path}: a directory, not a {wanted}")
    check_file_kind(path, wanted)
    try:
        yield path
    except ValueError as e:  # TraceFormatError and the data loaders' errors name the file and line
        raise InputError(_one_line(str(e))) from e


def _one_line(message: str, limit: int = 400) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."
