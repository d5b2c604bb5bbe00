"""Argument checks shared by the bridge and the readers: fail with the argument's name, not deep inside a
tokenizer or torch."""

from __future__ import annotations

from typing import Any

__all__ = ["check_count", "check_unicode"]


def check_unicode(text: str, name: str) -> None:
    """Refuse a lone surrogate ("\\ud800", e.g. from a bad decode): it is not text, and a tokenizer fails on it
    with an unrelated message ("TextInputSequence must be str")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{name} is not valid Unicode text: a lone surrogate {text[e.start]!r} at position {e.start} "
            "(decode the source with errors='replace')"
        ) from None


def check_count(name: str, value: Any) -> None:
    """An int >= 1 (``True`` and ``1.5`` are refused: bool is an int subclass, floats are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
