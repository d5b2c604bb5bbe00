"""Pieces shared by the SL and RL trainers: JSON configs, training examples, deterministic data order,
atomic checkpoints with full resume state, the JSONL log and the ``accelerate`` set-up."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from bgm_model.errors import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "TrainConfigMixin", "TrainExample", "as_train_examples"]

C = TypeVar("C", bound="TrainConfigMixin")

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
FINAL_DIR = "final"
LOG_FILE = "log.jsonl"
STATE_FILE = "trainer_state.json"

#: Called after every optimizer step with the step's log record; raising stops training (no checkpoint).
Callback = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------- configs
class TrainConfigMixin:
    """JSON round trip for dataclass configs: sorted, indented; unknown keys dropped with a warning."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning(
                "Ignoring unknown %s keys %s (written by a newer bgm-bridge?)", cls.__name__, unknown
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls: type[C], path_or_text: str | os.PathLike[str]) -> C:
        """Load from a JSON file path, or from JSON text (a string starting with ``{``)."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text(encoding="utf-8")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)


def check_positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{type(obj).__name__}.{name} must be {bound}, got {value}")


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainExample:
    """What the trainers read from a silver sequence or a QA example (``ids`` is the SL target)."""

    id: str
    question: str
    passages: list[str]
    answers: list[str]
    ids: list[int] | None = None
    #: Soft SL targets, one ``{action: probability}`` per step (action -1 = end); see ``step_targets``.
    targets: list[dict[int, float]] | None = None


def _get(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def as_train_examples(data: Sequence[Any], *, need_ids: bool, what: str) -> list[TrainExample]:
    """Normalise ``SilverSequence`` / ``QAExample`` objects or dicts, with clear errors on bad records."""
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise TypeError(f"{what} must be a sequence of records, got {type(data).__name__}")
    out: list[TrainExample] = []
    for n, item in enumerate(data):
        question, passages = _get(item, "question"), _get(item, "passages")
        ex_id = str(_get(item, "id", n))
        if not isinstance(question, str):
            raise TypeError(f"{what}[{n}] (id {ex_id!r}) has no string 'question'")
        if isinstance(passages, str) or not isinstance(passages, Sequence):
            raise TypeError(f"{what}[{n}] (id {ex_id!r}) has no list of 'passages'")
        answers = list(_get(item, "answers", None) or [])
        ids = _get(item, "ids")
        if need_ids:
            if ids is None:
                raise ValueError(
                    f"{what}[{n}] (id {ex_id!r}) has no target 'ids' (a silver passage sequence)"
                )
            bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < len(passages)]
            if bad:
                raise ValueError(
                    f"{what}[{n}] (id {ex_id!r}): target ids {list(ids)} name passage {bad[0]}, but the record "
                    f"has {len(passages)} passages"
                )
        out.append(
            TrainExample(ex_id, question, list(passages), answers, list(ids) if ids is not None else None)
        )
    return out


def split_dev(
    examples: list[TrainExample], dev_fraction: float, seed: int
) -> tuple[list[TrainExample], list[TrainExample]]:
    """A deterministic (by ``seed``) train/dev split; dev gets round(fraction * n), at least 1 if fraction > 0."""
    if dev_fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_dev = min(len(examples) - 1, max(1, round(dev_fraction * len(examples))))
    dev = set(order[:n_dev])
    return [e for i, e in enumerate(examples) if i not in dev], [
        e for i, e in enumerate(examples) if i in dev
    ]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def global_batches(order: list[int], per_process: int, world: int, rank: int) -> Iterator[list[int]]:
    """This process's slice of each global batch (``per_process * world`` examples).

    With several processes the last global batch is filled up from the start of the order, so every process
    runs the same number of steps (DDP needs matching backward calls), as ``accelerate``'s even_batches does.
    """
    size = per_process * world
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        if world > 1 and len(chunk) < size:
            chunk = chunk + [order[i % len(order)] for i in range(size - len(chunk))]
        part = chunk[rank * per_process : (rank + 1) * per_process]
        if part:
            yield part


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> Any:
    """Linear warm-up to the base learning rate, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # No decay on biases and LayerNorm weights (1-D tensors), as usual for transformers.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


# ---------------------------------------------------------------------------------------------- accelerate
def make_accelerator(mixed_precision: str = "no") -> Any:
    try:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs
    except ImportError as e:
        raise ImportError("Training needs accelerate: pip install 'bgm-bridge[train]'") from e
    # Several processes without a GPU (``accelerate launch --multi_gpu`` or ``torchrun`` on a CPU machine):
    # accelerate only picks its gloo MULTI_CPU mode when asked for the CPU explicitly.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Parts of the HF model (e.g. the encoder's pooler) get no gradient: DDP must not wait for them.
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


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


#: Settings a resumed run may change: they decide where and how often things are written, not what is trained.
RESUME_FREE_FIELDS = frozenset({"output_dir", "resume", "logging_steps", "save_steps", "eval_batch_size"})


def _records_digest(examples: Sequence[TrainExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps(dataclasses.asdict(e), sort_keys=True, ensure_ascii=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def run_fingerprint(
    config: TrainConfigMixin,
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


class JsonlLog:
    """Appends one JSON object per line to ``output_dir/log.jsonl`` (main process only), flushed each time."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def set_aside(self) -> Path | None:
        """A run that starts over keeps the previous run's log as ``log.<n>.jsonl`` (the first free ``n``), so
        its curves do not mix with the new ones and nothing is lost."""
        if not (self.enabled and self.path.exists()):
            return None
        kept = aside_path(self.path)
        self.path.rename(kept)
        logger.info("starting over: the previous log is kept as %s", kept)
        return kept

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean, sort_keys=True) + "\n")


def progress(total: int, initial: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_bridge(
    accelerator: Any,
    bridge: Any,
    examples: Sequence[TrainExample],
    *,
    reader: Any = None,
    reward: Any = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Dev metrics of ``bridge``'s greedy output, each process on its shard, gathered.

    ``reward`` (when a reader is given): mean downstream reward of the reader's answer on the greedy passage
    sequence; ``seq_acc``: greedy output == target ids; ``loss``: mean target NLL (records with targets only);
    ``length``: mean output length.
    """
    from accelerate.utils import gather_object

    from bgm_model.rewards import reward_batch, reward_needs_answer

    shard = list(examples[accelerator.process_index :: accelerator.num_processes])
    rows: list[tuple[float, float, float, float, float]] = []  # reward, has_target, seq_acc, nll, length
    was_training = bridge.training
    bridge.eval()
    try:
        for start in range(0, len(shard), batch_size):
            chunk = shard[start : start + batch_size]
            qs, ps = [e.question for e in chunk], [e.passages for e in chunk]
            outs = bridge.bridge_batch(qs, ps, batch_size=batch_size)
            rewards = [math.nan] * len(chunk)
            if reader is not None:
                ordered = [[e.passages[i] for i in o.ids] for e, o in zip(chunk, outs)]
                answers = (
                    reader.answer_batch(qs, ordered) if reward_needs_answer(reward) else [""] * len(chunk)
                )
                rewards = reward_batch(
                    reward,
                    answers,
                    [e.answers for e in chunk],
                    questions=qs,
                    passage_lists=ordered,
                    reader=reader,
                )
            with_t = [j for j, e in enumerate(chunk) if e.ids is not None]
            nll = [math.nan] * len(chunk)
            if with_t:
                with torch.no_grad():
                    lp = bridge.sequence_log_probs(
                        [qs[j] for j in with_t], [ps[j] for j in with_t], [chunk[j].ids for j in with_t]
                    )
                for j, v in zip(with_t, lp.tolist()):
                    nll[j] = -v
            for j, (e, o) in enumerate(zip(chunk, outs)):
                has_t = e.ids is not None
                rows.append(
                    (float(rewards[j]), float(has_t), float(has_t and o.ids == e.ids), nll[j], len(o.ids))
                )
    finally:
        bridge.train(was_training)
    rows = list(gather_object(rows)) if accelerator.num_processes > 1 else rows

    def mean(values: list[float]) -> float:
        values = [v for v in values if not math.isnan(v)]
        return float(sum(values) / len(values)) if values else math.nan

    targeted = [r for r in rows if r[1]]
    return {
        "reward": mean([r[0] for r in rows]),
        "seq_acc": mean([r[2] for r in targeted]) if targeted else math.nan,
        "loss": mean([r[3] for r in targeted]) if targeted else math.nan,
        "length": mean([r[4] for r in rows]),
        "n": float(len(rows)),
    }


def check_fits(bridge: Any, examples: Sequence[TrainExample], what: str) -> None:
    """Fail before training, with the record named, on inputs the bridge would reject mid-run."""
    cfg = bridge.config
    for n, e in enumerate(examples):
        if len(e.passages) > cfg.max_passages and cfg.overflow == "error":
            raise ValueError(
                f"{what}[{n}] (id {e.id!r}) has {len(e.passages)} passages; the bridge takes at most "
                f"{cfg.max_passages} (BridgeConfig.max_passages)"
            )
        if e.ids is None:
            continue
        if len(e.ids) > cfg.max_output_length:
            raise ValueError(
                f"{what}[{n}] (id {e.id!r}): target has {len(e.ids)} ids; the bridge's max_output_length is "
                f"{cfg.max_output_length}"
            )
        if e.ids and max(e.ids.count(i) for i in set(e.ids)) > cfg.max_repeats:
            raise ValueError(
                f"{what}[{n}] (id {e.id!r}): target {e.ids} repeats a passage more than max_repeats="
                f"{cfg.max_repeats} times"
            )
        if any(i >= cfg.max_passages for i in e.ids) and cfg.overflow == "truncate":
            raise ValueError(f"{what}[{n}] (id {e.id!r}): target {e.ids} names a passage beyond max_passages")
