"""Deprecated: use ``bgm_cli.main`` (``python -m bgm_cli.main`` / ``accelerate launch -m bgm_cli.main``)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

_MOVED = "bgm_model.cli.main moved to bgm_cli.main; this alias will be removed"


def main(argv: Sequence[str] | None = None) -> int:
    from bgm_cli.main import main as _main

    warnings.warn(_MOVED, DeprecationWarning, stacklevel=2)
    return _main(argv)


def __getattr__(name: str) -> Any:
    import bgm_cli.main

    if name.startswith("__"):
        raise AttributeError(name)
    warnings.warn(_MOVED, DeprecationWarning, stacklevel=2)
    return getattr(bgm_cli.main, name)


if __name__ == "__main__":
    sys.exit(main())
