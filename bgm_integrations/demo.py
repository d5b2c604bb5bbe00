"""Deprecated: the demo application moved to :mod:`bgm_cli.demo_app` (an app on top of the adapters).

Names are looked up there on first use, so ``import bgm_integrations`` never imports the command line.
"""

from __future__ import annotations

import warnings
from typing import Any

_MOVED_NAMES = ("DemoConfig", "DemoResult", "build_rag_chain", "build_retriever", "demo_arrangements", "make_plots",
                "run_demo")


def __getattr__(name: str) -> Any:
    if name not in _MOVED_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from bgm_cli import demo_app

    warnings.warn("bgm_integrations.demo moved to bgm_cli.demo_app; this alias will be removed",
                  DeprecationWarning, stacklevel=2)
    return getattr(demo_app, name)
