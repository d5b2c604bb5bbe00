"""Deprecated: use :mod:`bgm_model.assets` (every packaged file is located there)."""

from __future__ import annotations

from bgm_model.assets import minilm_path

__all__ = ["minilm_path"]
