"""Greedy decoding and one-pass target scoring of :class:`~bgm_model.readers.hf.HFReader` (a mixin).

Batching rule: *prefill* runs call by call on the shared, cropped cache (on a CPU a forward pass over
~100 new tokens already keeps the matrix units busy, so stacking prompts into a padded batch would only add
padding and a per-row copy of the prefix KV). *Greedy decoding* is batched: a decoding step of one row is
bound by reading the weights, so up to ``decode_batch_size`` (64) calls that are consecutive in token order
decode together, one forward pass per step for the group, on a copy of their prompt caches with each row at
its true RoPE positions. On SDPA models the rows' cells lie back to back (no padding) and each row attends to
its own cells only (``attention``); a group is bounded by its cache memory (1 GiB) and a finished row leaves
the step at once. Otherwise rows are left-padded, the padding is masked, and a group closes early when its
padding would pass ~8k KV cells (each step reads every padded cell; past that a separate group is cheaper).
Scoring has no decoding and stays sequential. A prompt run after a cached prefix attends to the prefix and
to its own tokens in two flash-attention calls merged by log-sum-exp (``attention``; on CPU), which skips the
masked-out half of its own block instead of computing it under a mask.

Target scoring rides in the prompt's own prefill pass (:meth:`GreedyDecoding._prefill`): a tree mask lets
each target see the whole prompt and its own earlier tokens only (within the window, on a sliding layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from bgm_model.readers.base import ReaderStats
from bgm_model.readers.hf.attention import use_reader_attention
from bgm_model.readers.hf.kv_cache import PagedLayer, Pages, RoomyLayer

# A decoding group closes before its padding (rows x longest prompt - real prompt tokens) passes this many
# KV cells. Measured on SmolLM2, 1 thread: a step reads a padded cell for ~0.02 ms, while a step of one
# more group costs ~150-220 ms, so about 8k padded cells cost one extra group step.
_PAD_CELLS = 8192
# With ragged attention a group's rows lie back to back (no padding stored or read), so a group is bounded only
# by the memory of its cells (prompt + answer room of every row).
_GROUP_CACHE_BYTES = 1 << 30


class GreedyDecoding:
    """Greedy answers of :class:`~bgm_model.readers.hf.HFReader`: call by call on the shared prefix cache, or
    in decoding groups (ragged or masked), with target scores from the prefill pass.

    A mixin: the reader holds the model, its settings and the kept prefix cache (``_kv``, ``_kv_tokens``), and
    provides the prefix-reusing forward pass (``_reuse``, ``_run``, ``_remember_prompt``).
    """

    model: Any
    tokenizer: Any
    device: torch.device
    max_new_tokens: int
    decode_batch_size: int
    prefix_reuse: bool
    ragged_decoding: bool
    first_line_only: bool
    stats: ReaderStats
    _kv: Any
    _kv_tokens: list[int]
    _stop_ids: set[int]
    _cache_kwarg: str
    _lock: Any
    # Why the reader's attention cannot stand in for the model's (None: it can); each layer's sliding window.
    _attention_blocker: str | None
    _windows: list[int | None]

    if TYPE_CHECKING:  # provided by the reader

        def _check_length(self, n_tokens: int, what: str) -> None: ...

        def _order(self, seqs: list[list[int]]) -> list[int]: ...

        def _reuse(self, ids: list[int], first_logit: int, *, decoding: bool) -> int: ...

        def _run(self, ids: list[int], first_logit: int, *, decoding: bool = False) -> torch.Tensor: ...

        def _remember_prompt(self) -> None: ...

    @property
    def decodes_ragged(self) -> bool:
        """Whether batched decoding uses ragged attention (asked for, and the model's attention allows it)."""
        return self.ragged_decoding and self._attention_blocker is None

    def _answer_prompts(
        self, prompts: list[list[int]], targets: list[list[list[int]]] | None
    ) -> tuple[list[str], list[list[float]]]:
        """Greedy answers of ``prompts`` and, if ``targets`` are given, their scores after each prompt."""
        for p in prompts:
            self._check_length(len(p) + self.max_new_tokens, "prompt plus max_new_tokens")
        answers = [""] * len(prompts)
        scores: list[list[float]] = [[] for _ in prompts]
        order = self._order(prompts)
        with self._lock:
            if self.decode_batch_size > 1 and len(prompts) > 1:
                for group in self._decode_groups(order, prompts):
                    if len(group) == 1:  # nothing to batch: decode on the shared cache, no KV copy
                        i = group[0]
                        answers[i], scores[i] = self._greedy(prompts[i], targets[i] if targets else None)
                    else:
                        batch = self._greedy_group(
                            [prompts[i] for i in group], [targets[i] for i in group] if targets else None
                        )
                        for i, answer, score in zip(group, *batch, strict=True):
                            answers[i], scores[i] = answer, score
                    self.stats.prompt_tokens += sum(len(prompts[i]) for i in group)
            else:
                for i in order:
                    answers[i], scores[i] = self._greedy(prompts[i], targets[i] if targets else None)
                    self.stats.prompt_tokens += len(prompts[i])
                    if not self.prefix_reuse:
                        self._kv, self._kv_tokens = None, []
            if not self.prefix_reuse:
                self._kv, self._kv_tokens = None, []
        return answers, scores

    def _decode_groups(self, order: list[int], prompts: list[list[int]]) -> list[list[int]]:
        """Consecutive calls (in token order, so prefill reuse is untouched) that decode together.

        A group holds at most ``decode_batch_size`` rows. With ragged attention (rows back to back, each
        reading only its own cells) a row joins while the group's cells (prompt + answer room of every row)
        stay within ``_GROUP_CACHE_BYTES``; otherwise while the group's padding (rows x longest prompt - real
        prompt tokens) stays within ``_PAD_CELLS`` KV cells: every masked decoding step reads every padded
        cell, and past that budget a separate group's steps are cheaper.
        """
        cell_bytes = self._kv_cell_bytes() if self.decodes_ragged else None
        groups: list[list[int]] = []
        current: list[int] = []
        longest = real = 0
        for i in order:
            n = len(prompts[i])
            grown_longest, grown_real = max(longest, n), real + n
            rows = len(current) + 1
            if cell_bytes:
                too_big = (grown_real + rows * self.max_new_tokens) * cell_bytes > _GROUP_CACHE_BYTES
            else:
                too_big = rows * grown_longest - grown_real > _PAD_CELLS
            if current and (len(current) >= self.decode_batch_size or too_big):
                groups.append(current)
                current, grown_longest, grown_real = [], n, n
            current.append(i)
            longest, real = grown_longest, grown_real
        if current:
            groups.append(current)
        return groups

    def _kv_cell_bytes(self) -> int | None:
        """Bytes of one token's keys and values over all layers (``None`` if the config does not say)."""
        config = self.model.config
        layers = getattr(config, "num_hidden_layers", None)
        heads = getattr(config, "num_attention_heads", None)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // heads if heads and getattr(config, "hidden_size", None) else None
        )
        if not (layers and kv_heads and head_dim):
            return None
        item = next(self.model.parameters()).element_size()
        return int(layers * 2 * kv_heads * head_dim * item)

    def _greedy_group(
        self, prompts: list[list[int]], targets: list[list[list[int]]] | None = None
    ) -> tuple[list[str], list[list[float]]]:
        """Greedy answers of ``prompts``: each prefilled on the shared prefix cache, then decoded together.

        Each row's prompt KV is copied into one group cache with room for the answer (decoding writes in
        place), and every row gets its true RoPE positions, so a row's numbers are its own; only the batched
        matmuls' summation order may differ from one row alone. Ragged (SDPA models): rows lie back to back
        and each attends to its own cells; a finished row leaves the step at once. Masked (otherwise): rows
        are left-padded to the longest prompt and the padding is masked; finished rows stay in the batch
        (masked results, ignored) until half the rows are done, then the batch is compacted.
        """
        ragged = self.decodes_ragged
        lengths = [len(p) for p in prompts]
        pages = Pages(lengths, self.max_new_tokens, self.device) if ragged else None
        longest = max(lengths)
        buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        first: list[int] = []
        scores: list[list[float]] = []
        for r, prompt in enumerate(prompts):
            logits, score = self._prefill(prompt, targets[r] if targets else None)
            scores.append(score)
            first.append(int(logits.argmax()))
            for li, layer in enumerate(self._kv.layers):
                k, v = layer.keys[:, :, : lengths[r]], layer.values[:, :, : lengths[r]]  # [1, heads, len, dim]
                if r == 0:
                    if pages is not None:  # never read outside the rows' cells, so not zeroed
                        shape = (1, k.shape[1], pages.capacity, k.shape[3])
                        buffers.append((k.new_empty(shape), k.new_empty(shape)))
                    else:
                        shape = (len(prompts), k.shape[1], longest + self.max_new_tokens, k.shape[3])
                        buffers.append((k.new_zeros(shape), k.new_zeros(shape)))
                if pages is not None:
                    cells = slice(pages.starts[r], pages.ends[r])
                    buffers[li][0][:, :, cells] = k
                    buffers[li][1][:, :, cells] = v
                else:
                    pad = longest - lengths[r]
                    buffers[li][0][r, :, pad:longest] = k[0]
                    buffers[li][1][r, :, pad:longest] = v[0]
            if not self.prefix_reuse:
                self._kv, self._kv_tokens = None, []

        generated: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        tokens = first

        def take(r: int, token: int) -> None:
            tokens[r] = token
            if token in self._stop_ids:
                done[r] = True
                return
            generated[r].append(token)
            self.stats.generated_tokens += 1
            if (
                self.first_line_only
                and "\n" in self.tokenizer.decode(generated[r], skip_special_tokens=True).lstrip()
            ):
                done[r] = True

        for r in range(len(prompts)):
            take(r, tokens[r])
        if pages is not None:
            self._decode_ragged(buffers, pages, lengths, tokens, done, take)
        else:
            self._decode_masked(buffers, lengths, tokens, done, take)
        return [str(self.tokenizer.decode(g, skip_special_tokens=True)) for g in generated], scores

    def _step(self, cache: Any, tokens: list[int], positions: torch.Tensor, **step_kwargs: Any) -> list[int]:
        """One decoding step of a group: one token per row in, each row's greedy next token out."""
        out = self.model(
            input_ids=torch.tensor([[t] for t in tokens], dtype=torch.long, device=self.device),
            position_ids=positions[:, None],
            **{self._cache_kwarg: cache},
            use_cache=True,
            logits_to_keep=1,
            **step_kwargs,
        )
        self.stats.new_tokens += len(tokens)
        return [int(t) for t in out.logits[:, -1].argmax(-1).tolist()]

    def _decode_ragged(
        self,
        buffers: list[tuple[torch.Tensor, torch.Tensor]],
        pages: Pages,
        lengths: list[int],
        tokens: list[int],
        done: list[bool],
        take: Callable[[int, int], None],
    ) -> None:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        cache.layers = [PagedLayer(k, v, pages) for k, v in buffers]
        with use_reader_attention(self.model):
            for step in range(1, self.max_new_tokens):
                live = [r for r in range(len(lengths)) if not done[r]]
                if not live:
                    break
                spans = pages.begin_step(live)
                positions = torch.tensor([lengths[r] + step - 1 for r in live], device=self.device)
                best = self._step(cache, [tokens[r] for r in live], positions, bgm_row_spans=spans)
                pages.end_step()
                for r, token in zip(live, best, strict=True):
                    take(r, token)

    def _decode_masked(
        self,
        buffers: list[tuple[torch.Tensor, torch.Tensor]],
        lengths: list[int],
        tokens: list[int],
        done: list[bool],
        take: Callable[[int, int], None],
    ) -> None:
        from transformers import DynamicCache

        longest = max(lengths)
        rows = list(range(len(lengths)))  # batch row -> prompt index
        mask = torch.zeros(len(rows), longest + self.max_new_tokens, dtype=torch.long, device=self.device)
        for r in rows:
            mask[r, longest - lengths[r] :] = 1
        positions = torch.tensor(lengths, dtype=torch.long, device=self.device)
        cache = DynamicCache(config=self.model.config)
        roomy = [RoomyLayer(k, v, longest) for k, v in buffers]
        cache.layers = list(roomy)
        for step in range(1, self.max_new_tokens):
            live = [j for j, r in enumerate(rows) if not done[r]]
            if not live:
                break
            if len(live) <= len(rows) // 2:  # compact: finished rows would still cost their KV reads
                keep = torch.tensor(live, device=self.device)
                for layer in roomy:
                    layer.select(keep)
                mask, positions = mask[keep], positions[keep]
                rows = [rows[j] for j in live]
            best = self._step(
                cache, [tokens[r] for r in rows], positions + step - 1, attention_mask=mask[:, : longest + step]
            )
            for r, token in zip(rows, best, strict=True):
                if not done[r]:
                    take(r, token)

    def _greedy(self, prompt: list[int], targets: list[list[int]] | None) -> tuple[str, list[float]]:
        ids = list(prompt)
        generated: list[int] = []
        logits, scores = self._prefill(ids, targets)
        for step in range(self.max_new_tokens):
            token = int(logits.argmax())
            if token in self._stop_ids:
                break
            generated.append(token)
            self.stats.generated_tokens += 1
            if (
                self.first_line_only
                and "\n" in self.tokenizer.decode(generated, skip_special_tokens=True).lstrip()
            ):
                break
            if step + 1 < self.max_new_tokens:
                ids.append(token)
                logits = self._run(ids, first_logit=len(ids) - 1, decoding=True)[-1]
        return str(self.tokenizer.decode(generated, skip_special_tokens=True)), scores

    def _prefill(self, prompt: list[int], targets: list[list[int]] | None) -> tuple[torch.Tensor, list[float]]:
        """Run ``prompt`` (on the reused prefix) and remember it; returns the logits of its next token and the
        mean log-likelihood of each target after it.

        Targets ride along in the same forward pass: their tokens follow the prompt's new tokens, each
        target at the positions it would have right after the prompt, and a tree mask lets a target's tokens
        see the whole prompt and their own earlier tokens only (so each score is that of the target alone
        after the prompt). Their cells are then cropped, leaving exactly the prompt in the cache.
        """
        if not targets:
            logits = self._run(prompt, first_logit=len(prompt) - 1)[-1]
            self._remember_prompt()
            return logits, []
        reuse = self._reuse(prompt, len(prompt) - 1, decoding=False)
        new, n_prompt = prompt[reuse:], len(prompt)
        tails = [t[:-1] for t in targets]  # a target's last token is only predicted, never fed
        fed = sum(map(len, tails))
        positions = list(range(reuse, n_prompt))
        mask = torch.zeros(len(new) + fed, n_prompt + fed, dtype=torch.bool, device=self.device)
        mask[: len(new), :n_prompt] = torch.ones(len(new), n_prompt, dtype=torch.bool).tril(reuse)
        mask[len(new) :, :n_prompt] = True
        offset = 0
        for tail in tails:
            rows = slice(len(new) + offset, len(new) + offset + len(tail))
            cells = slice(n_prompt + offset, n_prompt + offset + len(tail))
            mask[rows, cells] = torch.ones(len(tail), len(tail), dtype=torch.bool).tril()
            positions += range(n_prompt, n_prompt + len(tail))
            offset += len(tail)
        tree: torch.Tensor | dict[int | None, torch.Tensor] = mask
        windows = {w for w in self._windows if w is not None}
        if any(w < n_prompt + fed for w in windows):  # on a sliding layer a token sees its window only
            query_pos = torch.tensor(positions, device=self.device)
            cell_pos = torch.cat([torch.arange(n_prompt, device=self.device), query_pos[len(new) :]])
            distance = query_pos[:, None] - cell_pos[None, :]
            tree = {None: mask, **{w: mask & (distance < w) for w in windows}}
        try:
            with use_reader_attention(self.model):
                out = self.model(
                    input_ids=torch.tensor([new + [t for tail in tails for t in tail]], device=self.device),
                    position_ids=torch.tensor([positions], device=self.device),
                    **{self._cache_kwarg: self._kv},
                    use_cache=True,
                    logits_to_keep=fed + 1,
                    bgm_tree_mask=tree,
                )
            if fed:
                self._kv.crop(-fed)  # v5: a negative count of tokens to remove
        except BaseException:
            self._kv, self._kv_tokens = None, []
            raise
        self._kv_tokens = list(prompt)
        self.stats.new_tokens += len(new) + fed
        self.stats.reused_tokens += reuse
        self.stats.prompt_tokens += fed
        logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)  # row 0: the prompt's last token
        self._remember_prompt()
        scores, offset = [], 0
        for target in targets:
            rows = [0, *range(1 + offset, offset + len(target))]
            offset += len(target) - 1
            picked = logprobs[rows].gather(1, torch.tensor(target, device=logprobs.device)[:, None])
            scores.append(float(picked.mean()))
        return logprobs[0], scores
