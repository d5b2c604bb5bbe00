"""KV-cache pieces of :class:`~bgm_model.readers.hf.HFReader`.

:func:`common_prefix_len` measures how much of the kept cache a call can reuse. :func:`layer_windows` reads
the model's cache layout and :func:`full_kv_cache` builds the reader's own cache, which keeps every cell of
every layer, also of sliding-window layers: transformers' sliding layer keeps only the last window of cells,
so it can be neither cropped back past the window nor copied whole into a decoding group. A full layer gives
the same attention (the model's mask still applies the window), at the memory of the whole prompt. The other
layers hold the cache of a batched decoding group (see :mod:`bgm_model.readers.hf.decoding`):
:class:`RoomyLayer` for left-padded rows with room for the answer, :class:`Pages` and :class:`PagedLayer` for
ragged rows that lie back to back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

# The layer types whose attention the reader's cache and attention reproduce (not chunked, recurrent, ...).
_ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention"}


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def layer_windows(config: Any) -> tuple[list[int | None] | None, str]:
    """Each layer's sliding window (``None``: full attention) as transformers lays out ``config``'s cache, and
    ``""``; or ``None`` and what the cache has instead when some layer is of another kind (chunked
    attention, recurrent state, KV shared with another layer...)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None)
    if types is not None and not set(types) <= _ATTENTION_LAYER_TYPES:
        return None, f"layer types {sorted(set(types) - _ATTENTION_LAYER_TYPES)}"
    if getattr(text, "attention_chunk_size", None):
        return None, "chunked attention layers"
    windows: list[int | None] = []
    for layer in DynamicCache(config=config).layers:
        # Exact types: a subclass (quantised, offloaded, linear-attention hybrid) may keep other state.
        if type(layer) is DynamicSlidingWindowLayer:
            windows.append(int(layer.sliding_window))
        elif type(layer) is DynamicLayer:
            windows.append(None)
        else:
            return None, f"layers of type {type(layer).__name__}"
    return windows, ""


def full_kv_cache(config: Any) -> DynamicCache:
    """A cache for ``config``'s model with a full (croppable, copyable) layer in place of each layer."""
    cache = DynamicCache(config=config)
    cache.layers = [DynamicLayer() for _ in cache.layers]
    return cache


class RoomyLayer(DynamicLayer):
    """A KV-cache layer with room preallocated for the answer: a decoding step writes in place.

    (``DynamicLayer.update`` concatenates, i.e. copies the whole batched cache at every step.)
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()
        self._room_k, self._room_v = keys, values
        self.length = length
        self.device = keys.device
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys = self._room_k[:, :, : self.length]
        self.values = self._room_v[:, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self.length + n > self._room_k.shape[-2]:
            raise RuntimeError("decoding ran past the room reserved for the answer")
        self._room_k[:, :, self.length : self.length + n] = key_states
        self._room_v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self._room_k[:, :, : self.length], self._room_v[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def select(self, rows: torch.Tensor) -> None:
        self._room_k, self._room_v = self._room_k[rows], self._room_v[rows]
        self._views()


class Pages:
    """Where each row of a ragged decoding group lives in the flat cache: cells ``[start, end)`` so far."""

    def __init__(self, lengths: Sequence[int], room: int, device: torch.device) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        cursor = 0
        for n in lengths:
            self.starts.append(cursor)
            self.ends.append(cursor + n)
            cursor += n + room
        self.capacity = cursor
        self.device = device
        self.live: list[int] = []
        self.write_index = torch.empty(0, dtype=torch.long, device=device)

    def begin_step(self, live: list[int]) -> list[tuple[int, int]]:
        """Rows ``live`` get one token each this step; returns their attention spans (including that token)."""
        self.live = live
        self.write_index = torch.tensor([self.ends[r] for r in live], dtype=torch.long, device=self.device)
        return [(self.starts[r], self.ends[r] + 1) for r in live]

    def end_step(self) -> None:
        for r in self.live:
            self.ends[r] += 1


class PagedLayer(DynamicLayer):
    """A KV-cache layer of a ragged decoding group: all rows' cells back to back in one ``[1, heads, cells, dim]``
    tensor, each row followed by room for its answer. Nothing is padded, finished rows simply stop being
    stepped (no compaction copy), and a step writes each live row's new cell in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, pages: Pages) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.pages = pages
        self.device = keys.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [live rows, heads, 1, dim] -> one new cell per live row.
        self.keys.index_copy_(2, self.pages.write_index, key_states.transpose(0, 2))
        self.values.index_copy_(2, self.pages.write_index, value_states.transpose(0, 2))
        return self.keys, self.values

    def get_seq_length(self) -> int:
        # Only read for mask sizes; a one-token ragged step needs no mask whatever the length.
        return self.pages.capacity

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # The ragged attention ignores the mask (each row reads its own span, windowed in the attention); a
        # query-sized one lets a sliding-window layer skip building a mask over every cell of the group.
        return query_length, 0
