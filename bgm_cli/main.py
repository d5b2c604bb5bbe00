"""Entry point of the ``bgm`` command: each sub-command lives in its own module with a ``register``.

Errors a user can fix end in one line on stderr, ``bgm <command>: error: <message>``, with exit status 2 for
a bad command line and 1 for an input that cannot be used (:mod:`bgm_cli.errors`); ``-v`` adds their
traceback. Anything else is a bug and keeps its traceback. :func:`main` returns the exit status; like
argparse, which raises ``SystemExit(2)`` for what it finds while parsing, it re-raises a ``SystemExit`` with
a message that a command raised (after printing it as that one line) as ``SystemExit(2)``, whose ``str()`` is
still the message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from bgm_model.errors import BridgeError

from .errors import INPUT_STATUS, USAGE_STATUS, CommandError

# Each module defines ``register(subparsers)`` and sets ``func`` on its parsers.
_COMMAND_MODULES: tuple[str, ...] = ("synthesize", "traces", "evaluate", "train", "demo")

EPILOG = (
    "exit status: 0 done; 2 the command line is wrong (an unknown option or value, a path that does not "
    "exist, options that do not fit together or do not fit the file being resumed); 1 an input exists but "
    "cannot be used (e.g. a traces file given as a dataset or as silver sequences, a folder that is not a "
    "saved bridge). Both print one line, 'bgm COMMAND: error: ...', on stderr; -v adds the traceback."
)

#: OS errors that name a path the command line gave (or implied) that is not there.
_MISSING_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults-showing help, except where the help already says its default, and for switches
    (``store_true``) and options without one (``None``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """The parser of ``bgm`` and its sub-commands (``add_parser`` makes more of this class): help that shows
    the defaults, errors as one line ``<prog>: error: <message>`` with exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.set_defaults(_bgm_prog=self.prog)  # the deepest sub-command's wins: "bgm traces inspect"

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_STATUS, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _CommandExit(SystemExit):
    """``SystemExit(status)`` whose message :func:`main` has printed; ``str()`` is the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bgm", description="bgm-bridge: train and use a bridge model between a retriever and an LLM.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level (and show the "
                        "traceback of an error)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"bgm_cli.{name}").register(subparsers)
    return parser


def _status_of(error: BaseException) -> int | None:
    """The exit status of an error written for the user; None for any other (a bug: keep its traceback)."""
    from bgm_model.training.silver import SilverSettingsError

    if isinstance(error, CommandError):
        return error.status
    if isinstance(error, SilverSettingsError):  # resuming a silver file with other flags
        return USAGE_STATUS
    if isinstance(error, BridgeError):
        return INPUT_STATUS
    if _is_served_reader_error(error):  # a server that is down or refuses: the message says what to check
        return INPUT_STATUS
    if isinstance(error, _MISSING_PATH_ERRORS) and error.filename is not None:
        return USAGE_STATUS
    if isinstance(error, PermissionError) and error.filename is not None:
        return INPUT_STATUS
    return None


def _is_served_reader_error(error: BaseException) -> bool:
    # Only when the served reader was loaded: importing it needs the openai extra.
    module = sys.modules.get("bgm_model.readers.openai_api")
    return module is not None and isinstance(error, module.ServedReaderError)


def _message_of(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and not isinstance(error, BridgeError):
        return f"{error.filename}: {error.strerror or error}"
    return " ".join(str(error).split()) or type(error).__name__


def _report(prog: str, message: str) -> None:
    logging.getLogger("bgm").debug("details", exc_info=True)  # -v: the traceback, for a bug report
    print(f"{prog}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return USAGE_STATUS
    prog = getattr(args, "_bgm_prog", f"bgm {args.command}")
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        message = " ".join(e.code.split())
        _report(prog, message)
        raise _CommandExit(USAGE_STATUS, message) from e
    except Exception as e:
        status = _status_of(e)
        if status is None:
            raise
        _report(prog, _message_of(e))
        return status


if __name__ == "__main__":
    sys.exit(main())
