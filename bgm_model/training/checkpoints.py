"""Resume checkpoints and the output folder's layout: atomic writes, full RNG state, loads that never run
code, and the fingerprint that lets a checkpoint resume only the run that wrote it.

A run's output folder holds ``checkpoint/`` (:data:`CHECKPOINT_DIR`), ``best/``, ``final/``, ``log.jsonl`` and
``<stage>_config.json``; see the trainers' module docstrings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import pickle
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bgm_model.errors import CheckpointError

from .examples import TrainExample

if TYPE_CHECKING:
    from .base_config import BaseTrainConfig

logger = logging.getLogger(__name__)

__all__ = [
    "BEST_DIR",
    "CHECKPOINT_DIR",
    "FINAL_DIR",
    "LOG_FILE",
    "RESUME_FREE_FIELDS",
    "STATE_FILE",
    "CheckpointError",
    "aside_path",
    "check_resume_fingerprint",
    "find_checkpoint",
    "load_state_file",
    "load_trainer_state",
    "load_weights_into",
    "rng_state",
    "run_fingerprint",
    "save_bridge_atomically",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
FINAL_DIR = "final"
LOG_FILE = "log.jsonl"
STATE_FILE = "trainer_state.json"


# ---------------------------------------------------------------------------------------------- rng
def rng_state() -> dict[str, Any]:
    """Every RNG's state as plain Python values and tensors, so ``torch.load(weights_only=True)`` reads it."""
    import numpy as np

    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    if isinstance(saved, dict):
        saved = (saved["name"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                 saved["cached_gaussian"])
    np.random.set_state(saved)  # a tuple: the numpy state of checkpoints from bgm-bridge <= 0.1.0
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_array_globals() -> list[Any]:
    """What a pickled numpy array needs, and nothing that can run code (torch's documented allow-list)."""
    import importlib

    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    return [np.ndarray, np.dtype, multiarray._reconstruct, type(np.dtype(np.uint32))]


def load_state_file(path: Path, *, numpy_arrays: bool = False) -> Any:
    """``torch.load`` of a checkpoint's state file with tensors and plain Python values only: never unpickles
    code, so a file dropped into a checkpoint folder cannot run anything.

    ``numpy_arrays`` also allows numpy arrays (the RNG state of checkpoints written by bgm-bridge <= 0.1.0).
    """
    allowed = _numpy_array_globals() if numpy_arrays else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds more than tensors and plain values (refused: loading it could run code). It was not "
            "written by this version of bgm-bridge, or it was tampered with; delete the checkpoint folder "
            f"{path.parent} (or pass --no-resume) to start fresh."
        ) from e


# ---------------------------------------------------------------------------------------------- checkpoints
def find_checkpoint(output_dir: Path) -> Path | None:
    """The resume checkpoint of ``output_dir``; falls back to the previous one if a crash hit mid-swap."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        path = output_dir / name
        if (path / STATE_FILE).is_file():
            return path
    return None


def save_checkpoint(
    accelerator: Any,
    bridge: Any,
    output_dir: Path,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> Path:
    """Write ``output_dir/checkpoint`` atomically: a temp dir that replaces the old one only when complete.

    Holds the bridge (``save_pretrained`` format), optimizer, scheduler, every process's RNG state and
    ``trainer_state.json``. All processes must call it (they write their RNG state); assumes a shared
    filesystem across nodes. A failed write (a full disk) leaves the previous checkpoint as it was.
    """
    final = output_dir / CHECKPOINT_DIR
    tmp = output_dir / (CHECKPOINT_DIR + ".tmp")
    old = output_dir / (CHECKPOINT_DIR + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _explained_write_errors(tmp, final, tmp / f"rng_state_{accelerator.process_index}.pt") as target:
        _save_state_file(rng_state(), target)
    if accelerator.is_main_process:
        with _explained_write_errors(tmp, final, tmp) as target:
            bridge.save_pretrained(target)
        for name, obj in (("optimizer.pt", optimizer.state_dict()), ("scheduler.pt", scheduler.state_dict())):
            with _explained_write_errors(tmp, final, tmp / name) as target:
                _save_state_file(obj, target)
        with _explained_write_errors(tmp, final, tmp / STATE_FILE) as target:
            target.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _save_state_file(obj: Any, path: Path) -> None:
    # Through a Python file object: a full disk then raises OSError(ENOSPC), where torch's own file writer
    # raises an unexplained RuntimeError ("unexpected pos").
    with open(path, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def _explained_write_errors(tmp: Path, final: Path, target: Path) -> Iterator[Path]:
    """A failed write names the file and says whether the disk is full; the half-written temp folder goes."""
    try:
        yield target
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous checkpoint {final} is intact" if final.exists() else "no earlier checkpoint exists"
        reason = "the disk is full" if e.errno == errno.ENOSPC else f"the write failed ({e.strerror or e})"
        raise OSError(
            e.errno,
            f"Could not write the training checkpoint: {reason} (writing {target}); {kept}. Free space (or "
            "choose another output directory) and run the same command again to resume.",
        ) from e


def load_weights_into(bridge: Any, checkpoint: Path) -> None:
    """Copy the weights of a saved bridge into ``bridge`` (in place, so optimizer/DDP set-up stays valid)."""
    from bgm_model import BridgeModel

    saved = BridgeModel.from_pretrained(checkpoint, device="cpu")
    if saved.config.max_passages != bridge.config.max_passages:
        raise ValueError(
            f"checkpoint {checkpoint} has max_passages={saved.config.max_passages}, the bridge being trained "
            f"{bridge.config.max_passages}; resume with the same initial bridge"
        )
    bridge.load_state_dict(saved.state_dict())


def load_trainer_state(
    accelerator: Any, checkpoint: Path, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    optimizer.load_state_dict(load_state_file(checkpoint / "optimizer.pt"))
    scheduler.load_state_dict(load_state_file(checkpoint / "scheduler.pt"))
    rng_file = checkpoint / f"rng_state_{accelerator.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(load_state_file(rng_file, numpy_arrays=True))
    else:
        logger.warning("%s missing (different number of processes?): RNG state not restored", rng_file.name)
    return dict(json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------------- fingerprint
#: Settings a resumed run may change: they decide where and how often things are written, not what is trained.
RESUME_FREE_FIELDS = frozenset({"output_dir", "resume", "logging_steps", "save_steps", "eval_batch_size"})


def _records_digest(examples: Sequence[TrainExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps(dataclasses.asdict(e), sort_keys=True, ensure_ascii=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def run_fingerprint(
    config: BaseTrainConfig,
    bridge: Any,
    train: Sequence[TrainExample],
    dev: Sequence[TrainExample],
    **extra: Any,
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint (as JSON-able values)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in RESUME_FREE_FIELDS}
    fingerprint = {
        "settings": {**settings, **extra},
        "bridge": bridge.config.to_dict(),
        "train_data": {"records": len(train), "sha256": _records_digest(train)},
        "dev_data": {"records": len(dev), "sha256": _records_digest(dev)},
    }
    return dict(json.loads(json.dumps(fingerprint, default=str)))


def check_resume_fingerprint(saved: dict[str, Any] | None, current: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume a checkpoint written for other training data or settings, naming what changed.

    Resuming then would train on a mix of two runs, and the saved config would claim settings the optimizer
    and scheduler never had.
    """
    if saved is None:
        logger.warning(
            "%s has no fingerprint of its training inputs (written by an older bgm-bridge): cannot check that "
            "the data and settings are unchanged", checkpoint,
        )
        return
    changes = []
    for group in ("settings", "bridge"):
        before, now = saved.get(group, {}), current.get(group, {})
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                changes.append(f"{key}: {before.get(key)!r} in the checkpoint, {now.get(key)!r} now")
    for group, what in (("train_data", "the training data"), ("dev_data", "the dev data")):
        before, now = saved.get(group, {}), current.get(group, {})
        if before != now:
            changes.append(
                f"{what} changed ({before.get('records')} records in the checkpoint, {now.get('records')} now"
                + (", same count, other content" if before.get("records") == now.get("records") else "") + ")"
            )
    if changes:
        raise CheckpointError(
            f"Cannot resume from {checkpoint}: it was written for other training inputs: {'; '.join(changes)}. "
            "Resume with the same data and settings, or start fresh: pass --no-resume (resume=False), choose "
            f"another output directory, or delete {checkpoint}."
        )


# ---------------------------------------------------------------------------------------------- bridges
def save_bridge_atomically(bridge: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bridge.save_pretrained(tmp)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def aside_path(path: Path) -> Path:
    """``<stem>.<n><suffix>`` next to ``path`` with the first free ``n``: where an earlier file is kept."""
    n = 1
    while (aside := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
        n += 1
    return aside
