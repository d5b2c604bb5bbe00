"""Deprecated: moved to :mod:`bgm_model.evaluation.cross_encoder`; this name is the same module object (monkeypatching works)."""

from __future__ import annotations

import importlib
import sys

sys.modules[__name__] = importlib.import_module("bgm_model.evaluation.cross_encoder")
