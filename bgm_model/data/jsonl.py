"""JSON Lines, read one way everywhere: each error names the file and the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["JsonlError", "iter_jsonl", "iter_jsonl_rows"]


class JsonlError(ValueError):
    """A line of a JSON Lines file that cannot be read; the message starts with ``path:line:``."""

    def __init__(self, path: str | os.PathLike[str], lineno: int, reason: str, *, truncated: bool = False) -> None:
        super().__init__(f"{path}:{lineno}: {reason}")
        self.path, self.lineno, self.reason = str(path), lineno, reason
        #: True for a last line without its newline (an interrupted write), which callers may skip.
        self.truncated = truncated


def iter_jsonl_rows(path: str | os.PathLike[str], *, objects: bool = True) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line, lazily.

    Raises :class:`JsonlError` for a line that is not JSON (also nested past the recursion limit or holding an
    integer past Python's digit limit), that is not UTF-8, or (``objects``) that is not a JSON object.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            truncated = not raw.endswith(b"\n")
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise JsonlError(path, lineno, "not UTF-8 text", truncated=truncated) from None
            except json.JSONDecodeError as e:
                raise JsonlError(path, lineno, f"not valid JSON ({e.msg})", truncated=truncated) from None
            except (RecursionError, ValueError) as e:
                raise JsonlError(path, lineno, f"cannot decode the JSON ({type(e).__name__})") from None
            if objects and not isinstance(value, dict):
                raise JsonlError(path, lineno, f"expected a JSON object, got {type(value).__name__}")
            yield lineno, value


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records (JSON objects) of a JSON Lines file; see :func:`iter_jsonl_rows` for the errors."""
    for _, record in iter_jsonl_rows(path):
        yield record
