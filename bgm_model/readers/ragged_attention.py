"""Batched greedy decoding without reading the padding: each row attends to its own KV cells only.

A decoding group keeps its rows' prompt caches left-padded to the longest prompt, and a masked SDPA step reads
every padded cell (on the evaluation workload, ~60% of the cells a step reads are padding: one question's five
prompts run from ~60 to ~1,400 tokens). This attention function is SDPA for every call except a decoding step
of a group: there it runs one SDPA per row on that row's cells ``[start_r, width)``, with no mask. The numbers
of a row are those of the row decoded alone (same cells, same order), and the weights are still read once
per step for the whole group.

It is switched on per forward pass (``use_ragged_attention(model)``) only for models whose attention
implementation is ``"sdpa"``, without a sliding window. Any other call of the model is unchanged, also one
made from another thread while the switch is on: without ``bgm_row_starts`` the function is plain SDPA and its
mask function is SDPA's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

RAGGED_IMPLEMENTATION = "bgm_ragged_sdpa"
_registered = False


def ragged_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    bgm_row_starts: list[int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA; in a one-token step with ``bgm_row_starts``, row ``r`` attends to ``key[r, :, start_r:]`` only."""
    if bgm_row_starts is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if len(bgm_row_starts) != query.shape[0]:
        raise ValueError(f"{len(bgm_row_starts)} row starts for a batch of {query.shape[0]} rows")
    heads, dim = query.shape[1], query.shape[3]
    kv_heads = key.shape[1]
    rows = []
    for r, start in enumerate(bgm_row_starts):
        # Grouped-query attention: a one-token query's heads become the query length of its KV head.
        q = query[r : r + 1].reshape(1, kv_heads, heads // kv_heads, dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, key[r : r + 1, :, start:], value[r : r + 1, :, start:], scale=kwargs.get("scaling")
        )
        rows.append(out.reshape(1, heads, 1, dim))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def supports_ragged_decoding(model: Any) -> bool:
    """Whether ``model`` runs plain causal SDPA attention (the case ``ragged_sdpa_forward`` reproduces)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None):
        return False
    return not getattr(config, "sub_configs", None)


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(RAGGED_IMPLEMENTATION, ragged_sdpa_forward)
    AttentionMaskInterface.register(RAGGED_IMPLEMENTATION, sdpa_mask)
    _registered = True


@contextmanager
def use_ragged_attention(model: Any) -> Iterator[None]:
    """Run ``model`` with ``ragged_sdpa_forward`` inside the block (its SDPA implementation restored after)."""
    _register()
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = RAGGED_IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous
