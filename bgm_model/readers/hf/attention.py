"""SDPA for the reader's cached calls: ragged batched decoding, prompts run on a cached prefix, and answers
scored in a prompt's own pass.

Three cases of ``HFReader`` where plain SDPA does more work than the maths needs, all exact up to float rounding:

Ragged decoding. Left-padded to the longest prompt, a decoding group's cache is mostly padding (one question's
five evaluation prompts run from ~60 to ~1,400 tokens), and a masked SDPA step reads every padded cell. Here
the rows' cells lie back to back in one ``[1, kv_heads, cells, dim]`` tensor and ``bgm_row_spans`` says where
each stepped row's cells are: a one-token step runs one SDPA per row on its span ``[start, end)``, with no mask.
A row's numbers are those of the row decoded alone (same cells, same order); the weights are still read once
per step for the whole group, and no padding is stored or read.

Prompt on a cached prefix. ``n`` new tokens after ``P`` cached ones need a lower-right causal mask; given as a
mask, the CPU flash kernel computes all ``n x (P + n)`` scores (it skips blocks only for ``is_causal``, which
is top-left aligned, i.e. wrong here). With ``bgm_causal_prefix`` the new tokens attend to the prefix (no mask)
and to themselves (``is_causal``) in two flash calls whose outputs are merged by their log-sum-exp, so
``n x (P + n/2)`` scores are computed (SmolLM2, 821 new tokens after 543 cached: attention 0.87 s instead of
1.06 s of a 3.1 s forward pass).
CPU only (the merge needs the CPU flash kernel's log-sum-exp); elsewhere it is the masked SDPA call.

Targets scored in the prompt's pass. Silver search scores gold answers after every prompt it answers. With
``bgm_tree_mask`` (``[new tokens, cells]``, True = may attend) the prompt's new tokens and the tokens of several
answers run in one pass: the prompt causally, each answer over the whole prompt and its own earlier tokens
(a tree), instead of one more forward pass per answer later.

Sliding-window layers (Gemma-2/3, Mistral, Phi-3, Qwen2/3 with ``use_sliding_window``): the reader's cache
keeps every cell of them too (:func:`~bgm_model.readers.hf.kv_cache.full_kv_cache`), and the window arrives as
the layer's ``sliding_window`` argument. A ragged step reads only the last ``sliding_window`` cells of its
row's span; a tree mask is given per window (``{None: full, window: windowed}``); split prefix attention is
exact only while every key is inside the window, past that the layer takes the masked SDPA call (the model's
own windowed mask).

All are switched on per forward pass (``use_reader_attention(model)``) only for models whose attention
implementation is ``"sdpa"``, with no logit soft-capping, no attention sinks and no layer types but full and
sliding attention (:func:`reader_attention_blocker` says why not). Any other call of the model is unchanged,
also one made from another thread while the switch is on: without the ``bgm_*`` arguments the function is
plain SDPA and its mask function is SDPA's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from bgm_model.readers.hf.kv_cache import layer_windows

READER_ATTENTION = "bgm_reader_sdpa"
_registered = False
# The CPU flash-attention kernel; unlike the public SDPA it also returns each query's log-sum-exp.
_cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def reader_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    bgm_row_spans: list[tuple[int, int]] | None = None,
    bgm_causal_prefix: bool = False,
    bgm_tree_mask: torch.Tensor | Mapping[int | None, torch.Tensor] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA, except in the cases above (``bgm_row_spans``: ragged step; ``bgm_causal_prefix``: the batch-1,
    unpadded prompt after a cached prefix; ``bgm_tree_mask``: a prompt with targets scored in the same pass,
    one mask or one per sliding window, ``None`` for full-attention layers)."""
    window = kwargs.get("sliding_window")
    if bgm_row_spans is not None and query.shape[2] == 1:
        _check_plain(kwargs)
        return _ragged_step(query, key, value, bgm_row_spans, kwargs.get("scaling"), window)
    if bgm_tree_mask is not None:
        _check_plain(kwargs)
        if isinstance(bgm_tree_mask, Mapping):
            if window not in bgm_tree_mask:
                got = sorted(map(str, bgm_tree_mask))
                raise ValueError(f"no tree mask for a layer of sliding window {window}; got masks for {got}")
            bgm_tree_mask = bgm_tree_mask[window]
        elif window is not None and key.shape[2] > window:
            raise ValueError(
                f"a layer of sliding window {window} needs its own tree mask ({key.shape[2]} keys)"
            )
        return _tree_masked(query, key, value, bgm_tree_mask, kwargs.get("scaling"))
    prefix = key.shape[2] - query.shape[2]
    # Past the window the split would attend to cells the window hides: that layer takes the masked call.
    split = bgm_causal_prefix and (window is None or key.shape[2] <= window)
    if split and prefix > 0 and query.shape[2] > 1 and _split_ok(query, key, kwargs):
        return _prefix_then_causal(query, key, value, prefix, kwargs.get("scaling"))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _check_plain(kwargs: dict[str, Any]) -> None:
    """Refuse arguments that change the attention maths beyond SDPA (a wrong answer would be silent)."""
    extra = [k for k in ("softcap", "s_aux") if kwargs.get(k) is not None]
    if kwargs.get("dropout"):
        extra.append("dropout")
    if extra:
        raise ValueError(f"the reader's attention reproduces plain SDPA; this layer also asks for {extra}")


def _ragged_step(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    row_spans: list[tuple[int, int]],
    scale: float | None,
    window: int | None = None,
) -> tuple[torch.Tensor, None]:
    if len(row_spans) != query.shape[0]:
        raise ValueError(f"{len(row_spans)} row spans for a batch of {query.shape[0]} rows")
    if key.shape[0] != 1:
        raise ValueError(f"a ragged step reads rows back to back from one sequence; got a batch of {key.shape[0]}")
    heads, dim = query.shape[1], query.shape[3]
    kv_heads = key.shape[1]
    rows = []
    for r, (start, end) in enumerate(row_spans):
        if window is not None:  # the step's token (cell end - 1) sees itself and window - 1 cells before
            start = max(start, end - window)
        # Grouped-query attention: a one-token query's heads become the query length of its KV head.
        q = query[r : r + 1].reshape(1, kv_heads, heads // kv_heads, dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, key[:, :, start:end], value[:, :, start:end], scale=scale
        )
        rows.append(out.reshape(1, heads, 1, dim))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def _tree_masked(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float | None
) -> tuple[torch.Tensor, None]:
    if query.shape[0] != 1 or tuple(mask.shape) != (query.shape[2], key.shape[2]):
        raise ValueError(
            f"a tree mask of shape {tuple(mask.shape)} does not fit {query.shape[2]} queries over {key.shape[2]} "
            f"keys (batch {query.shape[0]}; only batch 1 is supported)"
        )
    groups = query.shape[1] // key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, groups), repeat_kv(value, groups), attn_mask=mask[None, None], scale=scale
    )
    return out.transpose(1, 2).contiguous(), None


def _split_ok(query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    return (
        _cpu_flash is not None
        and query.device.type == "cpu"
        and query.shape[0] == 1
        and query.dtype == key.dtype
        and not kwargs.get("dropout")
        and kwargs.get("position_bias") is None
    )


def _prefix_then_causal(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prefix: int,
    scale: float | None,
) -> tuple[torch.Tensor, None]:
    heads, n, dim = query.shape[1], query.shape[2], query.shape[3]
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    # Prefix part, no mask: each query row is independent, so a KV head's query heads stack along the query
    # length and the cached keys and values are read as they are (no repeat).
    folded = query.reshape(1, kv_heads, groups * n, dim)
    out_p, lse_p = _cpu_flash(folded, key[:, :, :prefix], value[:, :, :prefix], 0.0, False, scale=scale)[:2]
    out_p, lse_p = out_p.reshape(1, heads, n, dim), lse_p.reshape(1, heads, n)
    # The new tokens among themselves: square and causal (the kernel skips the blocks above the diagonal).
    k_new = repeat_kv(key[:, :, prefix:], groups)
    v_new = repeat_kv(value[:, :, prefix:], groups)
    out_n, lse_n = _cpu_flash(query, k_new, v_new, 0.0, True, scale=scale)[:2]
    lse = torch.logaddexp(lse_p, lse_n)
    out = out_p * (lse_p - lse).exp()[..., None] + out_n * (lse_n - lse).exp()[..., None]
    # The log-sum-exps are float32; a bf16/fp16 model gets its own dtype back.
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def reader_attention_blocker(model: Any) -> str | None:
    """Why ``reader_sdpa_forward`` cannot stand in for ``model``'s attention, or ``None`` when it can: causal
    SDPA whose layers attend fully or in a sliding window (the window handled per layer)."""
    config = getattr(model, "config", None)
    if config is None:
        return "the model has no config"
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != "sdpa":
        return f"attention implementation {implementation!r}, the reader's attention reproduces 'sdpa' only"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping, which SDPA lacks"
    if getattr(config, "sub_configs", None):
        return "a multimodal config"
    if getattr(config, "use_bidirectional_attention", None):
        return "bidirectional attention"
    windows, layout_problem = layer_windows(config)
    if windows is None:
        return f"the model's cache has {layout_problem}"
    if any(name.endswith("sinks") for name, _ in model.named_parameters()):
        return "attention sinks"
    return None


def supports_reader_attention(model: Any) -> bool:
    """Whether ``model`` runs plain causal SDPA attention with full attention on every layer (every case above
    applies to every layer). The reader itself asks :func:`reader_attention_blocker`, which also admits
    sliding-window layers."""
    if getattr(getattr(model, "config", None), "sliding_window", None):
        return False
    return reader_attention_blocker(model) is None


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(READER_ATTENTION, reader_sdpa_forward)
    AttentionMaskInterface.register(READER_ATTENTION, sdpa_mask)
    _registered = True


@contextmanager
def use_reader_attention(model: Any) -> Iterator[None]:
    """Run ``model`` with ``reader_sdpa_forward`` inside the block (its SDPA implementation restored after)."""
    _register()
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = READER_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
