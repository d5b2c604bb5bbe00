"""Paths of the datasets shipped inside the package (see ``bundled_data/README.md`` for provenance)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DATASETS = ("nq_open", "hotpotqa")


def bundled_dataset(name: str, split: str) -> Path:
    """``bundled_dataset("nq_open", "dev")`` -> the path of that JSONL file."""
    if name not in DATASETS:
        raise ValueError(f"unknown bundled dataset {name!r}; choose one of {', '.join(DATASETS)}")
    path = Path(str(resources.files("bgm_model") / "bundled_data" / name / f"{split}.jsonl"))
    if not path.is_file():
        raise FileNotFoundError(f"{name} has no {split!r} split (no {path})")
    return path
