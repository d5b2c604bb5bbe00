"""LangChain adapter: the bridge as a ``BaseDocumentCompressor``, and ``BGMRetriever`` for ``k`` and batching.

Only translates types: each document's text (with its title, :func:`bgm_model.passages.render_document`) goes
to the core, and the core's selection (:mod:`bgm_model.selection`: overflow, fill-up, cap, passthrough)
comes back as copies of the documents in bridge order (a repeated passage appears again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_classic.retrievers.contextual_compression import ContextualCompressionRetriever
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManager,
    CallbackManagerForRetrieverRun,
    Callbacks,
)
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list, run_in_executor
from pydantic import ConfigDict, Field, model_validator

from bgm_model.adapter_config import collect_settings, load_bridge, resolve_bridge
from bgm_model.outputs import BridgeResult
from bgm_model.passages import render_document
from bgm_model.protocols import SupportsBridge
from bgm_model.selection import (
    ORIGIN_KEY,
    RANK_KEY,
    RETRIEVAL_SCORE_KEY,
    SCORE_KEY,
    SOURCE_INDEX_KEY,
    Selection,
    SelectionSettings,
    bookkeeping,
    kept_score,
    select_batch,
)
from bgm_model.validation import check_count

__all__ = [
    "BRIDGE_EVENT",
    "ORIGIN_KEY",
    "RANK_KEY",
    "RETRIEVAL_SCORE_KEY",
    "SCORE_KEY",
    "SOURCE_INDEX_KEY",
    "BGMDocumentCompressor",
    "BGMRetriever",
]

#: Name of the custom callback event sent for every bridge call (read by ``BGMTraceCallbackHandler``).
BRIDGE_EVENT = "bgm_bridge"
_DEFAULTS = SelectionSettings()


class BGMDocumentCompressor(BaseDocumentCompressor):
    """Selects, reorders and repeats retrieved documents with a BGM bridge model.

    ``BGMDocumentCompressor(model="path/or/hub-id", top_n=5)`` or ``BGMDocumentCompressor(bridge=bridge)``;
    use it as ``base_compressor`` of a ``ContextualCompressionRetriever`` (or of :class:`BGMRetriever`, which
    adds LangChain's ``k`` and one bridge call per ``batch``) or inside a ``DocumentCompressorPipeline``.

    Returned documents are copies, each with its own ``metadata`` dict (shallow: the values are the
    caller's objects). The metadata is kept and ``bgm_rank`` (position in the output), ``bgm_source_index``
    (position in the input), ``bgm_origin`` (``"bridge"``, or ``"fill"`` / ``"overflow"`` for passages added
    by ``min_n`` / ``overflow_rest="append"``) and ``relevance_score`` (the bridge's probability for that
    choice, 0.0 for added passages: LangChain's rerankers write their score there) are set. An incoming
    ``relevance_score`` (a retriever's or an earlier reranker's) moves to ``retrieval_score`` unless the
    document already has one. With ``on_error="passthrough"`` a failure returns plain copies of the input.

    Serialisation (``model_dump_json``, pickle) keeps ``model`` and the settings, never the bridge object;
    see :mod:`bgm_model.adapter_config`.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    bridge: SupportsBridge | None = Field(default=None, exclude=True, repr=False)
    """A built bridge, e.g. ``BridgeModel.from_pretrained(path)``; give this or ``model``."""
    model: str | None = None
    """Path or hub id of a saved bridge, loaded once when the compressor is built (what serialisation keeps)."""
    device: str | None = None
    """Where ``model`` is loaded (``None``: CUDA when available, else CPU)."""
    bridge_overrides: dict[str, Any] = Field(default_factory=dict)
    """Bridge settings applied when loading ``model`` (e.g. ``{"max_repeats": 1}``); may be given flat."""
    top_n: int | None = _DEFAULTS.top_n
    """At most this many documents come back (``None``: no cap)."""
    min_n: int = _DEFAULTS.min_n
    """At least this many come back when the input allows: the best-ranked unchosen documents are appended."""
    overflow_rest: Literal["drop", "append"] = _DEFAULTS.overflow_rest
    """Documents beyond the bridge's ``max_passages`` (it reads the first ones): drop them, or append them."""
    on_error: Literal["raise", "passthrough"] = _DEFAULTS.on_error
    """On a failure in the bridge call: ``"raise"``, or ``"passthrough"`` the documents unchanged (logged)."""
    batch_size: int = _DEFAULTS.batch_size
    """Queries per bridge forward pass when several are bridged at once (:meth:`compress_documents_batch`)."""
    title_key: str | None = _DEFAULTS.title_key
    """Metadata key of a document's title, given to the bridge as ``"(Title: ...) text"`` like in training."""
    max_context_tokens: int | None = _DEFAULTS.max_context_tokens
    """Token budget of the returned documents (the bridge's tokenizer counts): the bridge never picks a
    document that would go past it. ``None``: no budget."""
    min_score: float | None = _DEFAULTS.min_score
    """The bridge stops at the first document whose probability is below this (``None``: off)."""

    @model_validator(mode="before")
    @classmethod
    def _collect_settings(cls, data: Any) -> Any:
        return collect_settings(data, cls.model_fields)

    @model_validator(mode="after")
    def _check_settings(self) -> BGMDocumentCompressor:
        self.settings()
        return self

    def model_post_init(self, context: Any) -> None:
        # Once per construction (an after-validator would run again each time the compressor is passed to
        # another model's field, e.g. ContextualCompressionRetriever(base_compressor=...)).
        super().model_post_init(context)
        self.bridge = resolve_bridge(
            self.bridge, self.model, self.device, self.bridge_overrides, owner=type(self).__name__
        )

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, device: str | None = None, **kwargs: Any
    ) -> BGMDocumentCompressor:
        """Load a saved bridge and wrap it: ``kwargs`` are compressor settings or bridge settings
        (``max_repeats=1``, ``overflow="truncate"``), the latter forwarded to ``BridgeModel.from_pretrained``."""
        return cls(model=name_or_path, device=device, **kwargs)

    def settings(self) -> SelectionSettings:
        return SelectionSettings.from_attributes(self)

    def __getstate__(self) -> dict[Any, Any]:
        # With a model path the pickle holds the settings and the path, not the weights: unpickling reloads.
        state = super().__getstate__()
        if self.model is not None:
            state = {**state, "__dict__": {**state["__dict__"], "bridge": None}}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        if self.bridge is None and self.model is not None:
            self.__dict__["bridge"] = load_bridge(self.model, self.device, self.bridge_overrides)

    # ------------------------------------------------------------------ one query
    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        return self.compress_documents_batch([documents], [query], callbacks_per_query=[callbacks])[0]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        return (await self.acompress_documents_batch([documents], [query], callbacks_per_query=[callbacks]))[0]

    # ------------------------------------------------------------------ several queries, one bridge call
    def compress_documents_batch(
        self,
        documents_per_query: Sequence[Sequence[Document]],
        queries: Sequence[str],
        *,
        callbacks_per_query: Sequence[Callbacks | None] | None = None,
        k: int | None = None,
    ) -> list[list[Document]]:
        """:meth:`compress_documents` for several queries, bridged in one ``bridge_batch`` call.

        ``k``: exactly ``k`` documents per query when the input allows (``top_n = min_n = k``).
        """
        docs, selections = self._select(documents_per_query, queries, k)
        for result, callbacks in self._events(selections, callbacks_per_query):
            dispatch_custom_event(BRIDGE_EVENT, _event_data(result), config={"callbacks": callbacks})
        return [_documents_in_order(d, s) for d, s in zip(docs, selections)]

    async def acompress_documents_batch(
        self,
        documents_per_query: Sequence[Sequence[Document]],
        queries: Sequence[str],
        *,
        callbacks_per_query: Sequence[Callbacks | None] | None = None,
        k: int | None = None,
    ) -> list[list[Document]]:
        """The async :meth:`compress_documents_batch` (the bridge runs in the default executor)."""
        docs, selections = await run_in_executor(None, self._select, documents_per_query, queries, k)
        for result, callbacks in self._events(selections, callbacks_per_query):
            await adispatch_custom_event(BRIDGE_EVENT, _event_data(result), config={"callbacks": callbacks})
        return [_documents_in_order(d, s) for d, s in zip(docs, selections)]

    def _select(
        self, documents_per_query: Sequence[Sequence[Document]], queries: Sequence[str], k: int | None
    ) -> tuple[list[list[Document]], list[Selection]]:
        settings = self.settings().with_count(k)
        docs = [list(d) for d in documents_per_query]
        passages = [[render_document(d.page_content, d.metadata, title_key=settings.title_key) for d in ds] for ds in docs]
        assert self.bridge is not None  # set by validation
        return docs, select_batch(self.bridge, list(queries), passages, settings)

    @staticmethod
    def _events(
        selections: list[Selection], callbacks_per_query: Sequence[Callbacks | None] | None
    ) -> list[tuple[BridgeResult, Callbacks]]:
        callbacks = list(callbacks_per_query) if callbacks_per_query is not None else [None] * len(selections)
        if len(callbacks) != len(selections):
            raise ValueError(f"{len(callbacks)} callbacks for {len(selections)} queries")
        return [
            (s.result, cb) for s, cb in zip(selections, callbacks)
            if cb is not None and s.result is not None and not s.fallback
        ]


def _event_data(result: BridgeResult) -> dict[str, Any]:
    return {"ids": list(result.ids), "scores": list(result.scores)}


def _documents_in_order(docs: list[Document], selection: Selection) -> list[Document]:
    # Metadata is copied shallowly (a new dict, the same values), as LangChain's own compressors do: a value
    # may not be deep-copyable (a lock, a client, a generator). Each returned document gets its own dict.
    if selection.fallback:
        return [d.model_copy(update={"metadata": dict(d.metadata)}) for d in docs]
    out = []
    for rank, pick in enumerate(selection.picks):
        source = docs[pick.index]
        metadata = {
            **source.metadata,
            **kept_score(source.metadata, source.metadata.get(SCORE_KEY)),
            **bookkeeping(pick, rank),
            SCORE_KEY: pick.score,
        }
        out.append(Document(page_content=source.page_content, metadata=metadata, id=source.id))
    return out


class BGMRetriever(ContextualCompressionRetriever):
    """A ``ContextualCompressionRetriever`` around :class:`BGMDocumentCompressor` with LangChain's ``k``.

    ``BGMRetriever(base_compressor=BGMDocumentCompressor(model=path), base_retriever=store.as_retriever(
    search_kwargs={"k": 20}), k=5)``: the base retriever fetches the candidates (its own ``k``), the bridge
    chooses, and ``k`` documents come back — ``k`` is the compressor's ``top_n`` and ``min_n`` at once, so a
    short bridge choice is filled up with the best-ranked unchosen candidates and a long one is cut. Fewer
    come back only when there are fewer than ``k`` candidates. ``invoke(query, k=3)`` sets it for one call;
    other keywords go to the base retriever. ``k=None``: the compressor's own ``top_n`` / ``min_n``.

    ``batch`` / ``abatch`` retrieve for every query, then send all queries to the bridge in one
    ``bridge_batch`` call (``batch_size`` queries per forward pass). LangChain gives a compressor no batch
    hook (``ContextualCompressionRetriever.batch`` calls ``compress_documents`` once per query, in threads),
    hence this class. Each query still gets its own retriever run (callbacks, traces).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    base_compressor: BGMDocumentCompressor
    """The bridge compressor (its settings apply; ``k`` overrides ``top_n`` and ``min_n``)."""
    k: int | None = Field(default=None, ge=1)
    """Documents to return per query (``None``: as the compressor's ``top_n`` / ``min_n`` decide)."""

    def _k(self, k: int | None) -> int | None:
        if k is None:
            return self.k
        check_count("k", k)
        return k

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None, **kwargs: Any
    ) -> list[Document]:
        docs = self.base_retriever.invoke(query, config={"callbacks": run_manager.get_child()}, **kwargs)
        return self.base_compressor.compress_documents_batch(
            [docs], [query], callbacks_per_query=[run_manager.get_child()], k=self._k(k)
        )[0]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None, **kwargs: Any
    ) -> list[Document]:
        docs = await self.base_retriever.ainvoke(query, config={"callbacks": run_manager.get_child()}, **kwargs)
        return (
            await self.base_compressor.acompress_documents_batch(
                [docs], [query], callbacks_per_query=[run_manager.get_child()], k=self._k(k)
            )
        )[0]

    def _run_options(self, config: RunnableConfig, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "inheritable_callbacks": config.get("callbacks"),
            "local_callbacks": None,
            "verbose": kwargs.get("verbose", False),
            "inheritable_tags": config.get("tags"),
            "local_tags": self.tags,
            "inheritable_metadata": {**(config.get("metadata") or {}), **self._get_ls_params(**kwargs)},
            "local_metadata": self.metadata,
        }

    @staticmethod
    def _child_config(run: Any, config: RunnableConfig) -> RunnableConfig:
        child: RunnableConfig = {"callbacks": run.get_child()}
        if config.get("max_concurrency") is not None:
            child["max_concurrency"] = config["max_concurrency"]
        return child

    def batch(  # type: ignore[override]
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Retrieve for every query (the base retriever's ``batch``), then one bridge call for all of them."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        k = self._k(kwargs.pop("k", None))
        runs = [
            CallbackManager.configure(**self._run_options(c, kwargs)).on_retriever_start(
                None, q, name=c.get("run_name") or self.get_name(), run_id=c.get("run_id")
            )
            for q, c in zip(inputs, configs)
        ]
        outs: list[Any] = self.base_retriever.batch(
            list(inputs), [self._child_config(r, c) for r, c in zip(runs, configs)], return_exceptions=True, **kwargs
        )
        ok = [i for i, o in enumerate(outs) if not isinstance(o, Exception)]
        compressed: list[Any]
        try:
            compressed = self.base_compressor.compress_documents_batch(
                [outs[i] for i in ok], [inputs[i] for i in ok],
                callbacks_per_query=[runs[i].get_child() for i in ok], k=k,
            )
        except Exception as e:
            compressed = [e] * len(ok)
        for i, docs in zip(ok, compressed):
            outs[i] = docs
        for run, out in zip(runs, outs):
            if isinstance(out, Exception):
                run.on_retriever_error(out)
            else:
                run.on_retriever_end(out)
        return _results_or_raise(outs, return_exceptions)

    async def abatch(  # type: ignore[override]
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """The async :meth:`batch`."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        k = self._k(kwargs.pop("k", None))
        runs = [
            await AsyncCallbackManager.configure(**self._run_options(c, kwargs)).on_retriever_start(
                None, q, name=c.get("run_name") or self.get_name(), run_id=c.get("run_id")
            )
            for q, c in zip(inputs, configs)
        ]
        outs: list[Any] = await self.base_retriever.abatch(
            list(inputs), [self._child_config(r, c) for r, c in zip(runs, configs)], return_exceptions=True, **kwargs
        )
        ok = [i for i, o in enumerate(outs) if not isinstance(o, Exception)]
        compressed: list[Any]
        try:
            compressed = await self.base_compressor.acompress_documents_batch(
                [outs[i] for i in ok], [inputs[i] for i in ok],
                callbacks_per_query=[runs[i].get_child() for i in ok], k=k,
            )
        except Exception as e:
            compressed = [e] * len(ok)
        for i, docs in zip(ok, compressed):
            outs[i] = docs
        for run, out in zip(runs, outs):
            if isinstance(out, Exception):
                await run.on_retriever_error(out)
            else:
                await run.on_retriever_end(out)
        return _results_or_raise(outs, return_exceptions)


def _results_or_raise(outs: list[Any], return_exceptions: bool) -> list[Any]:
    if not return_exceptions:
        for out in outs:
            if isinstance(out, Exception):
                raise out
    return outs
