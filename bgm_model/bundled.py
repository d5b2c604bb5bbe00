"""Deprecated: use :mod:`bgm_model.assets` (every packaged file is located there)."""

from __future__ import annotations

from bgm_model.assets import BUNDLED_DATASETS as DATASETS
from bgm_model.assets import bundled_dataset

__all__ = ["DATASETS", "bundled_dataset"]
