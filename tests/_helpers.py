"""Helpers shared by tests: tiny offline bridges, a fixed-answer bridge, benchmark scripts as modules."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from bgm_model import BridgeConfig, BridgeModel, BridgeResult
from bgm_model.data import QAExample
from bgm_model.readers.base import Reader

#: Six one-line passages the adapter and trace tests retrieve from.
SAMPLE_TEXTS = [
    "Hamlet is a tragedy written by William Shakespeare.",
    "Paris is the capital of France.",
    "The Eiffel Tower was completed in 1889.",
    "Shakespeare was born in Stratford-upon-Avon.",
    "Mount Everest is the highest mountain on Earth.",
    "The Nile is a major river in Africa.",
]


def make_tiny_bridge(
    config: BridgeConfig | None = None,
    seed: int = 0,
    *,
    hidden: int = 32,
    dropout: float = 0.1,
    max_positions: int = 256,
) -> BridgeModel:
    """A randomly initialised 2+2-layer BERT2BERT bridge with the real MiniLM tokenizer (fast, offline).

    The one tiny-bridge factory of the tests; deterministic by ``seed``.
    """
    from transformers import AutoTokenizer, BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    from bgm_model.assets import minilm_path

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    enc = BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    dec = BertConfig(**{**enc.to_dict(), "is_decoder": True, "add_cross_attention": True})
    model = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
    model.config.decoder_start_token_id = tok.cls_token_id
    model.config.eos_token_id = tok.sep_token_id
    model.config.pad_token_id = tok.pad_token_id
    config = config or BridgeConfig(max_passages=8, max_query_tokens=16, max_passage_tokens=32, max_output_length=4)
    return BridgeModel(model, tok, config)


class FixedBridge:
    """A bridge with a fixed answer (to check exact adapter mapping); satisfies ``SupportsBridge``."""

    def __init__(self, ids: Sequence[int], scores: Sequence[float] | None = None) -> None:
        self.ids = list(ids)
        self.scores = list(scores) if scores is not None else [0.5] * len(self.ids)
        self.calls: list[tuple[str, list[str]]] = []

    def bridge(self, query: str, passages: Sequence[str], *, on_error: str = "raise") -> BridgeResult:
        self.calls.append((query, list(passages)))
        return BridgeResult(ids=list(self.ids), scores=list(self.scores), step_log_probs=[])


def fit_bridge_to(bridge: BridgeModel, query: str, passages: list[str], target: list[int], steps: int = 60) -> None:
    """Overfit ``bridge`` so its greedy output for (query, passages) is ``target`` (teacher forcing)."""
    bridge.train()
    opt = torch.optim.Adam(bridge.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = -bridge.sequence_log_probs([query], [passages], [target]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bridge.eval()


def write_dataset(path: Path, examples: Sequence[QAExample]) -> Path:
    """``examples`` as a dataset JSONL file (``{id, question, answers, passages}`` lines) at ``path``."""
    path.write_text("".join(
        json.dumps({"id": e.id, "question": e.question, "answers": e.answers, "passages": list(e.passages)}) + "\n"
        for e in examples
    ), encoding="utf-8")
    return path


def load_benchmark(script: str) -> ModuleType:
    """The benchmark module ``benchmarks.<script>`` (benchmarks are a package run with ``python -m``)."""
    return importlib.import_module(f"benchmarks.{script}")


def key_once_reader() -> Reader:
    """A second toy reader with another preference than :class:`~bgm_model.training.toy.ToyReader`'s (the key
    passage twice): it answers the code only from the key passage shown alone, once. A CLI factory
    (``--reader langchain:tests._helpers:key_once_reader``) for the reader-specific benchmark's tests."""
    from bgm_model.readers import CallableReader
    from bgm_model.training.toy import _key_code

    def answer(question: str, passages: Sequence[str]) -> str:
        code = _key_code(question, passages[0]) if len(passages) == 1 else None
        return code or "unknown"

    return CallableReader(answer, name="toy-key-once-v1", cache=False)
