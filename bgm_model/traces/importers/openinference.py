"""OpenInference spans (OTLP JSON, as exported by Arize Phoenix or an OTLP file exporter) -> trace records.

The spans of one OpenTelemetry trace become one record: ``RETRIEVER`` spans give the query and the passages
(``retrieval.documents.N.document.*``), ``RERANKER`` spans or retriever spans whose documents carry
``bgm_source_index`` give the bridge output, and the last ``LLM`` span gives the messages
(``llm.input_messages``), prompt (``llm.prompts``), answer (``llm.output_messages`` / ``output.value``) and
``llm.model_name``. Works for spans from the openinference LangChain and LlamaIndex instrumentors alike.

Accepted inputs: OTLP/JSON ``{"resourceSpans": [...]}`` documents (one per line, or one per file, or a list),
and the OpenTelemetry SDK's ``ReadableSpan.to_json()`` objects (a list or JSONL).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..assemble import LLM, OTHER, RERANK, RETRIEVER, Run, assemble_record, make_passage, message_role
from ..schema import ChatMessage, TraceFormatError, TracePassage, TraceRecord

logger = logging.getLogger(__name__)

_KINDS = {"RETRIEVER": RETRIEVER, "RERANKER": RERANK, "LLM": LLM}


@dataclass
class Span:
    """The parts of an OpenTelemetry span the importer uses (attributes flattened to a dict)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status_error: bool = False


# --- decoding ---------------------------------------------------------------------------------------------


def _hex_id(value: Any) -> str | None:
    """OTLP/JSON ids are hex; protobuf's generic JSON mapping writes base64. Accept both."""
    if value in (None, ""):
        return None
    if isinstance(value, int):
        return format(value, "x")
    s = str(value)
    if s.startswith("0x"):
        return s[2:]
    if re.fullmatch(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}", s):
        return s.lower()
    try:
        return base64.b64decode(s, validate=True).hex()
    except (binascii.Error, ValueError):
        return s


def _any_value(v: Mapping[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_any_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: _any_value(kv.get("value", {})) for kv in v["kvlistValue"].get("values", [])}
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def _otlp_attributes(attrs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _any_value(a.get("value", {})) for a in attrs}


def _iso_from_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat()


def _parse_time(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    try:  # the SDK's to_json() writes ISO times
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0


def spans_from_json(doc: Any) -> Iterator[Span]:
    """Spans from one decoded JSON value (an OTLP request, an SDK span, or a list of either)."""
    if isinstance(doc, list):
        for item in doc:
            yield from spans_from_json(item)
        return
    if not isinstance(doc, Mapping):
        raise TraceFormatError(f"expected an OTLP JSON object or a span, got {type(doc).__name__}")
    if "resourceSpans" in doc or "resource_spans" in doc:
        for rs in doc.get("resourceSpans", doc.get("resource_spans")) or []:
            for ss in rs.get("scopeSpans", rs.get("scope_spans")) or []:
                for s in ss.get("spans") or []:
                    status = s.get("status") or {}
                    yield Span(
                        trace_id=_hex_id(s.get("traceId", s.get("trace_id"))) or "",
                        span_id=_hex_id(s.get("spanId", s.get("span_id"))) or "",
                        parent_id=_hex_id(s.get("parentSpanId", s.get("parent_span_id"))),
                        name=s.get("name", ""),
                        start_ns=_parse_time(s.get("startTimeUnixNano", s.get("start_time_unix_nano"))),
                        end_ns=_parse_time(s.get("endTimeUnixNano", s.get("end_time_unix_nano"))),
                        attributes=_otlp_attributes(s.get("attributes") or []),
                        status_error=status.get("code") in (2, "STATUS_CODE_ERROR"),
                    )
        return
    if "context" in doc:  # ReadableSpan.to_json()
        ctx = doc["context"] or {}
        yield Span(
            trace_id=_hex_id(ctx.get("trace_id")) or "",
            span_id=_hex_id(ctx.get("span_id")) or "",
            parent_id=_hex_id(doc.get("parent_id")),
            name=doc.get("name", ""),
            start_ns=_parse_time(doc.get("start_time")),
            end_ns=_parse_time(doc.get("end_time")),
            attributes=dict(doc.get("attributes") or {}),
            status_error=(doc.get("status") or {}).get("status_code") == "ERROR",
        )
        return
    raise TraceFormatError("not OTLP JSON (no 'resourceSpans') nor an OpenTelemetry SDK span (no 'context')")


def read_spans(path: str | os.PathLike[str]) -> list[Span]:
    """Spans from a file: one JSON document, or JSON Lines of documents."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return list(spans_from_json(json.loads(text)))
    except json.JSONDecodeError:
        pass
    from bgm_model.data.jsonl import JsonlError, iter_jsonl_rows

    spans: list[Span] = []
    try:
        for lineno, doc in iter_jsonl_rows(path, objects=False):
            try:
                spans.extend(spans_from_json(doc))
            except TraceFormatError as e:
                raise TraceFormatError(f"{path}:{lineno}: {e}") from None
    except JsonlError as e:
        raise TraceFormatError(str(e)) from None
    return spans


# --- OpenInference attributes -> runs ---------------------------------------------------------------------


def _indexed(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``prefix.N.field`` attributes as a list of dicts ordered by N."""
    items: dict[int, dict[str, Any]] = defaultdict(dict)
    plen = len(prefix) + 1
    for key, value in attrs.items():
        if not key.startswith(prefix + "."):
            continue
        idx, _, rest = key[plen:].partition(".")
        if idx.isdigit() and rest:
            items[int(idx)][rest] = value
    return [items[i] for i in sorted(items)]


def _json_or(value: Any, default: Any = None) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return default if default is not None else value
    return value if value is not None else default


def _documents(attrs: Mapping[str, Any], prefix: str) -> list[TracePassage] | None:
    docs = _indexed(attrs, prefix)
    if not docs and prefix == "retrieval.documents":
        return None
    # The LangChain instrumentor leaves document.id out of the attributes but keeps it in output.value.
    out_docs = _json_or(attrs.get("output.value"), {}) or {}
    out_docs = out_docs.get("documents") if isinstance(out_docs, Mapping) else None
    passages = []
    for i, d in enumerate(docs):
        metadata = _json_or(d.get("document.metadata"), {})
        doc_id = d.get("document.id")
        if (
            doc_id is None
            and isinstance(out_docs, list)
            and len(out_docs) == len(docs)
            and isinstance(out_docs[i], Mapping)
        ):
            doc_id = out_docs[i].get("id")
        passages.append(
            make_passage(
                d.get("document.content", ""),
                id=doc_id,
                score=d.get("document.score"),
                metadata=metadata if isinstance(metadata, Mapping) else {"value": metadata},
            )
        )
    return passages


def _messages(attrs: Mapping[str, Any], prefix: str) -> list[ChatMessage]:
    out = []
    for m in _indexed(attrs, prefix):
        content = m.get("message.content")
        if content is None:  # multimodal: message.contents.N.message_content.text
            parts = [
                v for k, v in sorted(m.items()) if k.startswith("message.contents.") and k.endswith(".text")
            ]
            content = "".join(str(p) for p in parts)
        out.append(ChatMessage(role=message_role(str(m.get("message.role", "user"))), content=str(content)))
    return out


def _model_name(attrs: Mapping[str, Any]) -> str | None:
    for key in ("llm.model_name", "llm.response.model_name", "llm.request.model_name", "reranker.model_name"):
        if attrs.get(key):
            return str(attrs[key])
    md = _json_or(attrs.get("metadata"), {})
    if isinstance(md, Mapping) and md.get("ls_model_name"):
        return str(md["ls_model_name"])
    params = _json_or(attrs.get("llm.invocation_parameters"), {})
    if isinstance(params, Mapping):
        for key in ("model", "model_name", "_type"):
            if params.get(key):
                return str(params[key])
    return None


def _text_input(attrs: Mapping[str, Any]) -> str | None:
    value = attrs.get("input.value")
    if value is None:
        return None
    if attrs.get("input.mime_type") == "application/json":
        data = _json_or(value, {})
        if isinstance(data, Mapping):
            for key in ("query", "question", "input", "query_str", "str_or_query_bundle"):
                if isinstance(data.get(key), str):
                    return data[key]
            return None
        return data if isinstance(data, str) else None
    return str(value)


def span_to_run(span: Span, order: int, end_order: int) -> Run:
    a = span.attributes
    kind = _KINDS.get(str(a.get("openinference.span.kind", "")).upper(), OTHER)
    run = Run(
        run_id=span.span_id,
        parent_id=span.parent_id,
        kind=kind,
        name=span.name,
        order=order,
        end_order=end_order,
    )
    if span.status_error:
        run.error = "span status ERROR"
    if kind == RETRIEVER:
        run.query = _text_input(a)
        run.documents = _documents(a, "retrieval.documents") or []
    elif kind == RERANK:
        run.query = a.get("reranker.query") or _text_input(a)
        run.input_documents = _documents(a, "reranker.input_documents")
        run.documents = _documents(a, "reranker.output_documents")
        run.model = _model_name(a)
    elif kind == LLM:
        run.messages = _messages(a, "llm.input_messages")
        prompts = a.get("llm.prompts")
        if isinstance(prompts, list) and prompts:
            run.prompt = str(prompts[0])
        elif _indexed(a, "llm.prompts"):
            run.prompt = str(_indexed(a, "llm.prompts")[0].get("prompt.text", ""))
        outputs = _messages(a, "llm.output_messages")
        if outputs:
            run.answer = outputs[-1].content
        elif a.get("output.value") is not None and a.get("output.mime_type") != "application/json":
            run.answer = str(a["output.value"])
        run.model = _model_name(a)
    return run


def records_from_spans(spans: Iterable[Span], *, framework: str = "openinference") -> Iterator[TraceRecord]:
    """One record per trace that ran a retriever; failed traces (root status ERROR) are skipped."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    for trace_id, group in by_trace.items():
        ids = {s.span_id for s in group}
        roots = [s for s in group if s.parent_id is None or s.parent_id not in ids]
        root = min(roots, key=lambda s: s.start_ns) if roots else min(group, key=lambda s: s.start_ns)
        if root.status_error:
            logger.warning("trace %s failed (root span status ERROR); skipped", trace_id)
            continue
        by_start = sorted(group, key=lambda s: (s.start_ns, s.end_ns))
        end_rank = {s.span_id: i for i, s in enumerate(sorted(group, key=lambda s: s.end_ns))}
        runs = [span_to_run(s, i, end_rank[s.span_id]) for i, s in enumerate(by_start)]
        record = assemble_record(
            runs,
            trace_id=trace_id,
            framework=framework,
            timestamp=_iso_from_ns(root.start_ns) if root.start_ns else None,
            root_query=_text_input(root.attributes),
            metadata={"source": "openinference", "root_span": root.name},
        )
        if record is None:
            logger.debug("trace %s ran no retriever; skipped", trace_id)
            continue
        yield record


def import_openinference(path: str | os.PathLike[str]) -> list[TraceRecord]:
    """Records from a file of OpenInference spans (see the module docstring for accepted layouts)."""
    return list(records_from_spans(read_spans(path)))


# --- export helper ----------------------------------------------------------------------------------------


def _otlp_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [_otlp_value(x) for x in v]}}
    return {"stringValue": str(v)}


def otlp_json_from_spans(spans: Iterable[Any]) -> dict[str, Any]:
    """Encode OpenTelemetry SDK ``ReadableSpan`` s as one OTLP/JSON request (hex ids, string int64s).

    Useful to save spans from an ``InMemorySpanExporter`` in the same layout a collector or Phoenix writes.
    """
    out = []
    for s in spans:
        ctx = s.context
        out.append(
            {
                "traceId": format(ctx.trace_id, "032x"),
                "spanId": format(ctx.span_id, "016x"),
                "parentSpanId": format(s.parent.span_id, "016x") if s.parent is not None else "",
                "name": s.name,
                "kind": int(getattr(s.kind, "value", 0)) + 1,  # SDK enum starts at 0, OTLP at 1
                "startTimeUnixNano": str(s.start_time or 0),
                "endTimeUnixNano": str(s.end_time or 0),
                "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in (s.attributes or {}).items()],
                "status": {"code": {"UNSET": 0, "OK": 1, "ERROR": 2}.get(s.status.status_code.name, 0)},
            }
        )
    return {
        "resourceSpans": [
            {"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "bgm-bridge"}, "spans": out}]}
        ]
    }
