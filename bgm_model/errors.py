"""Errors raised by bgm-bridge with messages a user can act on."""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of bgm-bridge errors."""


class BridgeLoadError(BridgeError, OSError):
    """A bridge checkpoint is missing, incomplete, or not a bridge."""


class TooManyPassagesError(BridgeError, ValueError):
    """More passages than the bridge's ID capacity (``BridgeConfig.max_passages``)."""


class CheckpointError(BridgeError, RuntimeError):
    """A training checkpoint cannot be resumed: unsafe to load, or written for other data or settings."""
