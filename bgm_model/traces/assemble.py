"""Framework-neutral assembly of one trace record from the runs (spans) of one query.

The LangChain and LlamaIndex handlers and the OpenInference and LangSmith importers all describe what
happened as a tree of :class:`Run` s (retriever, rerank/bridge, LLM, other) and let :func:`assemble_record`
apply one rule for which run gives the passages, the bridge output and the answer. Keeping the rule in one
place means a trace recorded live and the same trace imported from Phoenix or LangSmith agree.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .schema import BridgeTrace, ChatMessage, LLMCall, TracePassage, TraceRecord, optional_float

logger = logging.getLogger(__name__)

#: Metadata keys the bridge adapters put on their output documents / nodes.
BGM_SOURCE_INDEX = "bgm_source_index"
BGM_RANK = "bgm_rank"
#: ``"bridge"`` for the bridge's own choices; ``"fill"`` / ``"overflow"`` for passages the adapter added
#: (``min_n``, ``overflow_rest="append"``), which are not recorded as bridge output.
BGM_ORIGIN = "bgm_origin"
#: Why the bridge chose a passage: the strongest alternative at that step (input index, None = "end").
BGM_ALTERNATIVE = "bgm_alternative"
BGM_ALTERNATIVE_SCORE = "bgm_alternative_score"
#: Metadata keys read as a passage's retriever score, in order of preference.
SCORE_KEYS: tuple[str, ...] = ("score", "relevance_score", "similarity_score")

RETRIEVER = "retriever"


def _optional_index(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
RERANK = "rerank"
LLM = "llm"
OTHER = "other"


def content_id(text: str) -> str:
    """A stable id for a passage that came without one (same text, same id)."""
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def make_passage(
    content: str, *, id: Any = None, score: Any = None, metadata: Mapping[str, Any] | None = None
) -> TracePassage:
    """A passage with the score taken from metadata when not given, and a content id when none is known."""
    md = dict(metadata or {})
    if score is None:
        for key in SCORE_KEYS:
            if md.get(key) is not None:
                score = md[key]
                break
    if id is None:
        id = md.get("id", md.get("doc_id"))
    content = "" if content is None else str(content)
    return TracePassage(
        id=str(id) if id is not None else content_id(content),
        content=content,
        score=optional_float(score),
        metadata=md,
    )


@dataclass
class Run:
    """One step of a query: what the handlers and importers know about a run / span."""

    run_id: str
    parent_id: str | None
    kind: str = OTHER
    name: str | None = None
    order: int = 0
    end_order: int | None = None
    query: str | None = None
    #: Output documents (retriever results, or a reranker's / the bridge's output).
    documents: list[TracePassage] | None = None
    #: Input documents of a reranker / the bridge, when known.
    input_documents: list[TracePassage] | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    prompt: str | None = None
    answer: str | None = None
    model: str | None = None
    start_time: str | None = None
    error: str | None = None
    #: An LLM call whose (streamed) answer has not arrived yet; the query's record waits for it.
    pending: bool = False
    #: The bridge adapter announced that it ran here (so an empty output is a bridge output too).
    bridge_ran: bool = False

    @property
    def ended(self) -> bool:
        return self.end_order is not None


def _is_bridge_output(docs: Sequence[TracePassage] | None) -> bool:
    return bool(docs) and all(BGM_SOURCE_INDEX in d.metadata for d in docs)  # type: ignore[union-attr]


def _depths(runs: Mapping[str, Run]) -> dict[str, int]:
    depths: dict[str, int] = {}

    def depth(rid: str) -> int:
        seen = []
        cur: str | None = rid
        while cur is not None and cur in runs and cur not in depths and cur not in seen:
            seen.append(cur)
            cur = runs[cur].parent_id
        base = depths.get(cur, -1) if cur is not None else -1
        for i, r in enumerate(reversed(seen)):
            depths[r] = base + 1 + i
        return depths[rid]

    for rid in runs:
        depth(rid)
    return depths


def _is_descendant(runs: Mapping[str, Run], rid: str, ancestor: str) -> bool:
    cur = runs[rid].parent_id
    for _ in range(len(runs)):
        if cur is None or cur not in runs:
            return False
        if cur == ancestor:
            return True
        cur = runs[cur].parent_id
    return False


def assemble_record(
    runs: Iterable[Run],
    *,
    trace_id: str,
    framework: str,
    timestamp: str | None = None,
    root_query: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> TraceRecord | None:
    """Build the record of one query from its runs, or ``None`` if no retriever ran (not a RAG query).

    Rules, applied to any pipeline shape:

    * **bridge**: the outermost run the bridge adapters marked (``bridge_ran``) or whose output documents all
      carry ``bgm_source_index`` metadata.
    * **passages** (retriever order): the bridge run's input documents when known (what the bridge saw,
      which its source indices point into); else the outermost plain retriever run under the bridge run;
      else the outermost plain retriever run of the query that returned passages (ties: the first started).
      A bridge that output nothing is recorded with empty ``ids`` when its adapter announced the run (the
      bgm-bridge adapters do); an unmarked empty output cannot be told from a retriever that found nothing.
    * **LLM**: of the innermost LLM runs, the one that ended last (its answer is the query's answer); earlier calls are counted in
      ``metadata["llm_calls"]``.
    * **query**: the bridge run's query, else the passages' retriever query, else ``root_query``.
    """
    by_id = {r.run_id: r for r in runs}
    if not by_id:
        return None
    depths = _depths(by_id)

    def outermost(cands: list[Run]) -> Run | None:
        return min(cands, key=lambda r: (depths[r.run_id], r.order)) if cands else None

    bridge_run = outermost([r for r in by_id.values() if r.bridge_ran or _is_bridge_output(r.documents)])
    plain = [
        r
        for r in by_id.values()
        if r.kind == RETRIEVER
        and r.documents is not None
        and not r.bridge_ran
        and not _is_bridge_output(r.documents)
    ]

    passages: list[TracePassage] | None = None
    passage_run: Run | None = None
    if bridge_run is not None and bridge_run.input_documents is not None:
        passages, passage_run = bridge_run.input_documents, bridge_run
    if passages is None and bridge_run is not None:
        passage_run = outermost([r for r in plain if _is_descendant(by_id, r.run_id, bridge_run.run_id)])
    if passage_run is None:
        # A wrapper retriever that returned nothing (a compressor dropped every passage) hides nothing:
        # prefer the outermost retriever that returned passages.
        passage_run = outermost([r for r in plain if r.documents]) or outermost(plain)
    if passages is None and passage_run is not None:
        passages = passage_run.documents
    if passages is None:
        if bridge_run is None:
            return None
        # A bridge ran on documents we never saw retrieved: keep what it output, in its order.
        logger.warning(
            "trace %s: bridge output without its input passages; recording the bridge output", trace_id
        )
        passages = [
            TracePassage(d.id, d.content, d.score, dict(d.metadata)) for d in bridge_run.documents or []
        ]

    extra: dict[str, Any] = dict(metadata or {})
    bridge: BridgeTrace | None = None
    if bridge_run is not None:
        docs = [d for d in bridge_run.documents or [] if d.metadata.get(BGM_ORIGIN, "bridge") == "bridge"]
        try:
            indices = [int(d.metadata[BGM_SOURCE_INDEX]) for d in docs]
        except (TypeError, ValueError):
            indices = []
        announced = bridge_run.bridge_ran or _is_bridge_output(bridge_run.documents)
        if (indices or (announced and not docs)) and all(0 <= i < len(passages) for i in indices):
            bridge = BridgeTrace(
                ids=[passages[i].id for i in indices],
                source_indices=indices,
                # The bridge's own score wins over a retriever "score" copied along in the metadata.
                scores=[optional_float(d.metadata.get("relevance_score", d.score)) for d in docs],
                model=bridge_run.model,
                alternatives=[
                    (_optional_index(d.metadata.get(BGM_ALTERNATIVE)),
                     optional_float(d.metadata.get(BGM_ALTERNATIVE_SCORE)))
                    for d in docs
                ] if any(BGM_ALTERNATIVE_SCORE in d.metadata for d in docs) else [],
            )
        else:
            logger.warning(
                "trace %s: bridge source indices %s do not index the %d retrieved passages; kept in metadata",
                trace_id,
                indices,
                len(passages),
            )
            extra["bridge_unmatched"] = [d.to_dict() for d in docs]

    # Nested LLM spans (LlamaIndex predict -> complete) are one call: keep the innermost.
    all_llm = [r for r in by_id.values() if r.kind == LLM]
    llm_runs = [r for r in all_llm if not any(_is_descendant(by_id, o.run_id, r.run_id) for o in all_llm)]
    llm: LLMCall | None = None
    if llm_runs:
        last = max(llm_runs, key=lambda r: (r.end_order if r.end_order is not None else -1, r.order))
        llm = LLMCall(messages=list(last.messages), prompt=last.prompt, answer=last.answer, model=last.model)
        if len(llm_runs) > 1:
            extra["llm_calls"] = len(llm_runs)

    query = None
    for r in (bridge_run, passage_run):
        if r is not None and r.query is not None:
            query = r.query
            break
    if query is None:
        query = root_query
    if query is None:
        logger.warning("trace %s: no query found; recording an empty query", trace_id)
        query = ""

    record = TraceRecord(
        trace_id=trace_id,
        framework=framework,
        query=query,
        passages=list(passages),
        bridge=bridge,
        llm=llm,
        metadata=extra,
    )
    if timestamp is not None:
        record.timestamp = timestamp
    return record


def message_role(kind: str) -> str:
    """Map framework message types to the OpenAI-style roles used in records."""
    return {"human": "user", "ai": "assistant", "AIMessageChunk": "assistant", "chat": "user"}.get(kind, kind)
