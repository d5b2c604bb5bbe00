"""Both adapters take the same settings, refuse the same mistakes, apply the same policies and serialise alike.

Every test runs on LangChain's ``BGMDocumentCompressor`` (with real ``Document`` s) and LlamaIndex's
``BGMNodePostprocessor`` (with real ``NodeWithScore`` s), and most compare the two.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError

from bgm_integrations.langchain import BGMDocumentCompressor
from bgm_integrations.llama_index import BGMNodePostprocessor
from bgm_model import BridgeModel, BridgeResult, TooManyPassagesError
from bgm_model.adapter_config import ADAPTER_SETTINGS, BRIDGE_SETTINGS
from bgm_model.selection import SelectionSettings
from tests._helpers import FixedBridge
from tests.integrations.conftest import MAX_PASSAGES

QUERY = "who wrote hamlet?"
TEXTS = [f"Passage number {i} about topic {i}." for i in range(20)]
ADAPTERS = [BGMDocumentCompressor, BGMNodePostprocessor]
Picks = list[tuple[int, str, float]]


def _run(adapter: Any, texts: Sequence[str], scores: Sequence[float] | None = None) -> Picks:
    """(source index, origin, bridge score) of each returned passage, through the adapter's framework types."""
    scores = scores if scores is not None else [1.0 - i / 100 for i in range(len(texts))]
    if isinstance(adapter, BGMDocumentCompressor):
        docs = [Document(page_content=t, metadata={"relevance_score": s}) for t, s in zip(texts, scores)]
        out = adapter.compress_documents(docs, QUERY)
        return [(d.metadata["bgm_source_index"], d.metadata["bgm_origin"], d.metadata["relevance_score"]) for d in out]
    nodes = [NodeWithScore(node=TextNode(text=t), score=s) for t, s in zip(texts, scores)]
    return [
        (n.node.metadata["bgm_source_index"], n.node.metadata["bgm_origin"], n.score)
        for n in adapter.postprocess_nodes(nodes, query_str=QUERY)
    ]


def _passed_through(adapter: Any, texts: Sequence[str]) -> bool:
    """The adapter returned its input unchanged (plain copies in input order, no bookkeeping keys)."""
    if isinstance(adapter, BGMDocumentCompressor):
        out = adapter.compress_documents([Document(page_content=t) for t in texts], QUERY)
        return [d.page_content for d in out] == list(texts) and all(d.metadata == {} for d in out)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in texts]
    out = adapter.postprocess_nodes(nodes, query_str=QUERY)
    return [n.node.text for n in out] == list(texts) and all(n.node.metadata == {} and n.score == 0.5 for n in out)


def _error(build: Callable[[], Any]) -> tuple[str, list[str]]:
    """The error a construction raises, named by kind and message (the adapter's name taken out)."""
    with pytest.raises((ValidationError, TypeError, ValueError)) as info:
        build()
    e = info.value
    if isinstance(e, ValidationError):
        return "ValidationError", [err["msg"] for err in e.errors()]
    return type(e).__name__, [str(e).replace("BGMDocumentCompressor", "<adapter>").replace("BGMNodePostprocessor", "<adapter>")]


# ---------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("cls", ADAPTERS)
def test_each_adapter_has_every_shared_setting_with_the_core_default(cls: type) -> None:
    fields = cls.model_fields
    assert set(ADAPTER_SETTINGS) - {"bridge"} <= set(fields)
    for f in SelectionSettings.__dataclass_fields__.values():
        assert fields[f.name].default == f.default, f.name
    assert not set(BRIDGE_SETTINGS) & set(fields)  # bridge settings travel in bridge_overrides


@pytest.mark.parametrize("how", ["from_pretrained", "constructor", "overrides_dict"])
@pytest.mark.parametrize("cls", ADAPTERS)
def test_a_path_or_hub_id_is_loaded_once_with_the_bridge_settings_forwarded(cls, how, saved_bridge_path, monkeypatch) -> None:
    loads: list[tuple[str, dict[str, Any]]] = []
    real_load = BridgeModel.from_pretrained

    def counting_load(name_or_path: str, **kwargs: Any) -> BridgeModel:
        loads.append((name_or_path, kwargs))
        return real_load(name_or_path, **kwargs)

    monkeypatch.setattr(BridgeModel, "from_pretrained", counting_load)
    settings = {"top_n": 2, "min_n": 1, "overflow_rest": "append", "on_error": "passthrough", "batch_size": 4, "title_key": "name"}
    bridge_settings = {"max_repeats": 1, "overflow": "truncate"}
    if how == "from_pretrained":
        adapter = cls.from_pretrained(saved_bridge_path, device="cpu", **settings, **bridge_settings)
    elif how == "constructor":
        adapter = cls(model=saved_bridge_path, device="cpu", **settings, **bridge_settings)
    else:
        adapter = cls(model=saved_bridge_path, device="cpu", bridge_overrides=bridge_settings, **settings)
    assert isinstance(adapter.bridge, BridgeModel)
    assert (adapter.bridge.config.max_repeats, adapter.bridge.config.overflow) == (1, "truncate")
    assert adapter.bridge.device.type == "cpu"
    assert (adapter.model, adapter.device, adapter.bridge_overrides) == (saved_bridge_path, "cpu", bridge_settings)
    assert adapter.settings() == SelectionSettings(**settings)
    _run(adapter, TEXTS[:3])
    _run(adapter, TEXTS[:4])
    assert loads == [(saved_bridge_path, {"device": "cpu", **bridge_settings})]  # loaded once, at construction


BAD_SETTINGS: list[dict[str, Any]] = [
    {"top_k": 3},  # another reranker's name
    {"max_reapets": 1},  # a typo of a bridge setting
    {"bridge_overrides": {"nope": 1}},
    {"max_repeats": 1, "bridge_overrides": {"max_repeats": 2}},
    {"top_n": 0},
    {"min_n": -1},
    {"min_n": 3, "top_n": 2},
    {"batch_size": 0},
    {"overflow_rest": "keep"},
    {"on_error": "ignore"},
]


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda d: ",".join(d))
def test_both_adapters_refuse_the_same_settings_with_the_same_error(bad: dict[str, Any]) -> None:
    errors = [_error(lambda cls=cls: cls(bridge=FixedBridge([0]), **bad)) for cls in ADAPTERS]
    assert errors[0] == errors[1]
    assert errors[0][0] == "ValidationError"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "needs a bridge"),
        ({"bridge": FixedBridge([0]), "device": "cpu"}, "device applies when loading model="),
        ({"bridge": FixedBridge([0]), "max_repeats": 1}, "bridge_overrides applies when loading model="),
    ],
)
def test_both_adapters_refuse_a_missing_bridge_and_load_settings_beside_a_built_one(kwargs, message) -> None:
    errors = [_error(lambda cls=cls: cls(**kwargs)) for cls in ADAPTERS]
    assert errors[0] == errors[1]
    assert errors[0][0] == "TypeError" and message in errors[0][1][0]


# ---------------------------------------------------------------------------------------------- policies
@pytest.mark.parametrize(
    "ids, settings, n, expected",
    [
        # Fill-up: the best-ranked unchosen inputs, in retriever order, until min_n.
        ([2], {"min_n": 3}, 4, [(2, "bridge", 0.5), (0, "fill", 0.0), (1, "fill", 0.0)]),
        # The cap cuts the bridge's own sequence (a repeat counts each time).
        ([1, 1, 0, 3], {"top_n": 2}, 4, [(1, "bridge", 0.5), (1, "bridge", 0.5)]),
        # Fewer distinct inputs than min_n: every input once, nothing repeated to pad.
        ([], {"min_n": 5}, 3, [(0, "fill", 0.0), (1, "fill", 0.0), (2, "fill", 0.0)]),
        ([3, 3], {"min_n": 3, "top_n": 3}, 4, [(3, "bridge", 0.5), (3, "bridge", 0.5), (0, "fill", 0.0)]),
        # No settings: the bridge decides, empty included.
        ([], {}, 3, []),
    ],
)
@pytest.mark.parametrize("cls", ADAPTERS)
def test_fill_up_and_cap(cls, ids, settings, n, expected) -> None:
    assert _run(cls(bridge=FixedBridge(ids), **settings), TEXTS[:n]) == expected


@pytest.mark.parametrize("overflow_rest", ["drop", "append"])
@pytest.mark.parametrize("on_error", ["raise", "passthrough"])
@pytest.mark.parametrize("cls", ADAPTERS)
def test_more_passages_than_the_bridge_reads_never_raise(cls, on_error, overflow_rest, saved_bridge_path, monkeypatch) -> None:
    adapter = cls(model=saved_bridge_path, device="cpu", on_error=on_error, overflow_rest=overflow_rest, min_n=2)
    assert adapter.bridge.config.overflow == "error"  # the bridge alone would raise on 20 passages
    with pytest.raises(TooManyPassagesError):
        adapter.bridge.bridge(QUERY, TEXTS)
    seen: list[int] = []
    real = adapter.bridge.bridge
    monkeypatch.setattr(adapter.bridge, "bridge", lambda q, ps, **kw: seen.append(len(ps)) or real(q, ps, **kw))

    picks = _run(adapter, TEXTS)
    assert seen == [MAX_PASSAGES]  # the bridge read the first 16, in retriever order
    chosen = [p for p in picks if p[1] != "overflow"]
    assert len(chosen) >= 2 and all(i < MAX_PASSAGES for i, _, _ in chosen)
    rest = [p for p in picks if p[1] == "overflow"]
    assert rest == ([(i, "overflow", 0.0) for i in range(MAX_PASSAGES, len(TEXTS))] if overflow_rest == "append" else [])


class _RaisingBridge:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def bridge(self, query: str, passages: Sequence[str], *, on_error: str = "raise") -> BridgeResult:
        raise self.error


class _WrongIdsBridge:
    def bridge(self, query: str, passages: Sequence[str], *, on_error: str = "raise") -> BridgeResult:
        return BridgeResult(ids=[len(passages) + 3], scores=[0.9])


@pytest.mark.parametrize(
    "bridge, raised",
    [
        (_RaisingBridge(TooManyPassagesError("too many")), TooManyPassagesError),
        (_RaisingBridge(RuntimeError("CUDA out of memory")), RuntimeError),
        (_RaisingBridge(KeyError("tokenizer")), KeyError),
        (_WrongIdsBridge(), Exception),
    ],
    ids=["too-many", "runtime", "key", "wrong-ids"],
)
@pytest.mark.parametrize("cls", ADAPTERS)
def test_passthrough_lets_nothing_the_bridge_raises_escape(cls, bridge, raised, caplog) -> None:
    with pytest.raises(raised):
        _run(cls(bridge=bridge), TEXTS[:3])
    with caplog.at_level(logging.WARNING):
        assert _passed_through(cls(bridge=bridge, on_error="passthrough"), TEXTS[:3])
    assert "unchanged" in caplog.text


# ---------------------------------------------------------------------------------------------- serialisation
def _dump(adapter: Any) -> str:
    return adapter.model_dump_json() if isinstance(adapter, BGMDocumentCompressor) else adapter.to_json()


def _load(cls: type, data: str, **kwargs: Any) -> Any:
    if cls is BGMDocumentCompressor:
        return cls.model_validate({**json.loads(data), **kwargs})
    return cls.from_json(data, **kwargs)


@pytest.mark.parametrize("cls", ADAPTERS)
def test_a_loaded_adapter_serialises_its_path_and_settings_and_round_trips(cls, saved_bridge_path) -> None:
    adapter = cls(model=saved_bridge_path, device="cpu", top_n=2, min_n=2, max_repeats=1)
    data = json.loads(_dump(adapter))
    assert {k: data[k] for k in ("model", "device", "bridge_overrides", "top_n", "min_n")} == {
        "model": saved_bridge_path, "device": "cpu", "bridge_overrides": {"max_repeats": 1}, "top_n": 2, "min_n": 2,
    }
    assert "bridge" not in data
    again = _load(cls, _dump(adapter))
    assert again.bridge is not adapter.bridge and again.bridge.config == adapter.bridge.config
    assert again.settings() == adapter.settings()
    assert _run(again, TEXTS[:5]) == _run(adapter, TEXTS[:5])
    if cls is BGMNodePostprocessor:  # LlamaIndex's own dict round trip too
        assert BGMNodePostprocessor.from_dict(adapter.to_dict()).settings() == adapter.settings()


@pytest.mark.parametrize("cls", ADAPTERS)
def test_pickle_by_path_reloads_the_bridge_and_holds_no_weights(cls, saved_bridge_path) -> None:
    adapter = cls(model=saved_bridge_path, device="cpu", top_n=3, overflow="truncate")
    blob = pickle.dumps(adapter)
    assert len(blob) < 20_000  # the path and settings, not the model
    again = pickle.loads(blob)
    assert isinstance(again.bridge, BridgeModel) and again.bridge.config.overflow == "truncate"
    assert again.settings() == adapter.settings()
    assert _run(again, TEXTS[:5]) == _run(adapter, TEXTS[:5])


def test_an_unpicklable_llama_index_callback_manager_is_rebuilt_not_fatal(saved_bridge_path) -> None:
    import threading

    from llama_index.core.callbacks import CallbackManager, LlamaDebugHandler

    handler = LlamaDebugHandler()
    handler.lock = threading.Lock()  # a handler holding something pickle refuses
    post = BGMNodePostprocessor(model=saved_bridge_path, device="cpu", callback_manager=CallbackManager([handler]))
    again = pickle.loads(pickle.dumps(post))
    assert isinstance(again.callback_manager, CallbackManager) and again.callback_manager.handlers == []
    assert _run(again, TEXTS[:3]) == _run(post, TEXTS[:3])


@pytest.mark.parametrize("cls", ADAPTERS)
def test_an_in_memory_bridge_serialises_as_model_none_and_pickles_with_its_bridge(cls) -> None:
    adapter = cls(bridge=FixedBridge([1, 0]), top_n=1)
    assert json.loads(_dump(adapter))["model"] is None
    with pytest.raises(TypeError, match="needs a bridge.*in-memory bridge records model=None; pass bridge="):
        _load(cls, _dump(adapter))
    assert _run(_load(cls, _dump(adapter), bridge=FixedBridge([1, 0])), TEXTS[:3]) == [(1, "bridge", 0.5)]
    again = pickle.loads(pickle.dumps(adapter))
    assert isinstance(again.bridge, FixedBridge) and _run(again, TEXTS[:3]) == [(1, "bridge", 0.5)]


@pytest.mark.parametrize("cls", ADAPTERS)
def test_repr_is_short_and_names_no_torch_module(cls, saved_bridge_path, tiny_bridge) -> None:
    for adapter in (cls(model=saved_bridge_path, device="cpu"), cls(bridge=tiny_bridge)):
        text = repr(adapter)
        assert len(text) < 500 and "Embedding" not in text and "Linear" not in text, text
