"""Entry point of the ``bgm`` command: each sub-command lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from bgm_model.errors import BridgeError

# Each module defines ``register(subparsers)`` and sets ``func`` on its parsers.
_COMMAND_MODULES: tuple[str, ...] = ("synthesize", "traces", "evaluate", "train", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgm", description="bgm-bridge: train and use a bridge model between a retriever and an LLM."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"bgm_cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BridgeError as e:
        # Errors with a message written for the user: one clear line, not a traceback.
        logging.getLogger("bgm").debug("details", exc_info=True)
        print(f"bgm {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
