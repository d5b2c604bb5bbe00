"""How both framework adapters are configured: which keywords they take, and the bridge they wrap.

An adapter is built from a bridge object (``bridge=``) or from a saved bridge (``model="path or hub id"``,
loaded once, with ``device=`` and ``bridge_overrides=`` going to ``BridgeModel.from_pretrained``). Its other
settings are the :class:`~bgm_model.selection.SelectionSettings`. A bridge setting may also be given flat
(``max_repeats=1`` is ``bridge_overrides={"max_repeats": 1}``); anything else is refused with one message,
the same for both adapters.

Serialisation keeps ``model``, ``device``, ``bridge_overrides`` and the selection settings, never the bridge
object: an adapter built from an in-memory bridge records ``model=None``, and rebuilding it needs ``bridge=``
again (:func:`resolve_bridge` says so).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any

from .config import BridgeConfig
from .protocols import SupportsBridge
from .selection import SelectionSettings

__all__ = [
    "ADAPTER_SETTINGS",
    "BRIDGE_SETTINGS",
    "LOAD_SETTINGS",
    "collect_settings",
    "load_bridge",
    "resolve_bridge",
]

#: How an adapter gets its bridge.
LOAD_SETTINGS: tuple[str, ...] = ("bridge", "model", "device", "bridge_overrides")
#: Every keyword both adapters take (each framework may add its own fields, e.g. LlamaIndex's callback_manager).
ADAPTER_SETTINGS: tuple[str, ...] = (*LOAD_SETTINGS, *SelectionSettings.names())
#: Settings of the bridge itself, forwarded to ``BridgeModel.from_pretrained`` when loading ``model=``.
BRIDGE_SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(BridgeConfig))


def _unknown_message(unknown: Iterable[str]) -> str:
    return (
        f"unknown setting(s) {sorted(unknown)}; the adapters take {list(ADAPTER_SETTINGS)} and, when loading "
        f"model=, the bridge settings {list(BRIDGE_SETTINGS)}"
    )


def collect_settings(data: Any, accepted: Iterable[str], *, ignore: Iterable[str] = ()) -> Any:
    """The keywords an adapter was called with, normalised before its own validation.

    A bridge setting given flat moves into ``bridge_overrides``; a path-like ``model`` and a ``torch.device``
    become strings; ``ignore`` d keys are dropped; any other keyword not in ``accepted`` raises ``ValueError``.
    """
    if not isinstance(data, Mapping):
        return data
    accepted = set(accepted)
    data = {k: v for k, v in data.items() if k not in set(ignore)}
    flat = {k: data.pop(k) for k in list(data) if k in BRIDGE_SETTINGS and k not in accepted}
    unknown = [k for k in data if k not in accepted]
    if unknown:
        raise ValueError(_unknown_message(unknown))
    if flat:
        overrides = dict(data.get("bridge_overrides") or {})
        twice = sorted(set(flat) & set(overrides))
        if twice:
            raise ValueError(f"bridge setting(s) {twice} given both flat and in bridge_overrides")
        data["bridge_overrides"] = {**overrides, **flat}
    if isinstance(data.get("model"), os.PathLike):
        data["model"] = os.fspath(data["model"])
    device = data.get("device")
    if device is not None and not isinstance(device, str) and type(device).__name__ == "device":
        data["device"] = str(device)  # torch.device
    overrides = data.get("bridge_overrides")
    if isinstance(overrides, Mapping):
        unknown = [k for k in overrides if k not in BRIDGE_SETTINGS]
        if unknown:
            raise ValueError(_unknown_message(unknown))
    return data


def load_bridge(model: str, device: str | None, overrides: Mapping[str, Any]) -> SupportsBridge:
    """``BridgeModel.from_pretrained(model, device=device, **overrides)``."""
    from .modeling import BridgeModel

    return BridgeModel.from_pretrained(model, device=device, **dict(overrides))


def resolve_bridge(
    bridge: SupportsBridge | None,
    model: str | None,
    device: str | None,
    overrides: Mapping[str, Any],
    *,
    owner: str,
) -> SupportsBridge:
    """The bridge an adapter wraps: ``bridge`` as given, else ``model`` loaded.

    With both, ``bridge`` is used and ``model`` only records where it comes from (what serialisation keeps).
    ``device`` and ``overrides`` describe loading, so they are refused next to a built ``bridge``. Raises
    ``TypeError`` (like a missing argument) when neither is given.
    """
    if bridge is not None:
        if not isinstance(bridge, SupportsBridge):
            raise TypeError(f"bridge must have a .bridge(query, passages) method, got {type(bridge).__name__}")
        given = [name for name, value in (("device", device), ("bridge_overrides", dict(overrides))) if value]
        if given:
            raise TypeError(
                f"{owner}: {' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} when loading model=; "
                "a bridge passed as bridge= keeps its own device and settings (set them when building it)"
            )
        return bridge
    if model is None:
        raise TypeError(
            f"{owner} needs a bridge: model='path or hub id' of a saved bridge, or bridge=<a built bridge>. "
            "(An adapter serialised from an in-memory bridge records model=None; pass bridge= to rebuild it.)"
        )
    return load_bridge(model, device, overrides)
