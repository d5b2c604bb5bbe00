"""What a training run writes as it goes: the JSONL log, the progress bar, and the per-step callback type."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoints import aside_path

logger = logging.getLogger(__name__)

__all__ = ["Callback", "JsonlLog", "progress"]

#: Called after every optimizer step with the step's log record; raising stops training (no checkpoint).
Callback = Callable[[dict[str, Any]], None]


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
