"""LangSmith run exports -> trace records.

Accepts runs as LangSmith returns them (``Client.read_run(..., load_child_runs=True)`` or ``list_runs``,
saved with ``run.dict()`` / ``model_dump(mode="json")``): a JSON list, JSON Lines, or one root run, with
children nested under ``child_runs`` and/or given flat with ``parent_run_id`` (and ``trace_id``). Each root
run becomes one record (its ``id`` is the record's trace id, so feedback exported from LangSmith by run id
joins directly). ``retriever`` runs give the query (``inputs.query``) and documents
(``outputs.documents``); ``llm`` runs give ``inputs.messages`` / ``inputs.prompts``, the answer from
``outputs.generations`` and the model from ``extra.metadata.ls_model_name`` or invocation params.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..assemble import LLM, OTHER, RETRIEVER, Run, assemble_record, make_passage, message_role
from ..schema import ChatMessage, TraceFormatError, TracePassage, TraceRecord

logger = logging.getLogger(__name__)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b if isinstance(b, str) else str(b.get("text", "")) for b in content if isinstance(b, (str, dict))
        )
    return "" if content is None else json.dumps(content, default=str)


def _message(m: Any) -> ChatMessage:
    if isinstance(m, Mapping):
        if "kwargs" in m and m.get(
            "lc"
        ):  # dumpd form: {"lc":1,"type":"constructor","id":[...,"HumanMessage"],"kwargs":{...}}
            kw = m["kwargs"]
            kind = (
                kw.get("type")
                or str(m.get("id", ["", "human"])[-1])
                .replace("MessageChunk", "")
                .replace("Message", "")
                .lower()
            )
            return ChatMessage(message_role(kind), _content_text(kw.get("content")))
        if "data" in m and isinstance(m["data"], Mapping):  # message_to_dict form
            return ChatMessage(
                message_role(str(m.get("type", "human"))), _content_text(m["data"].get("content"))
            )
        role = m.get("role") or m.get("type") or "user"
        return ChatMessage(message_role(str(role)), _content_text(m.get("content")))
    return ChatMessage("user", _content_text(m))


def _document(d: Any) -> TracePassage:
    if isinstance(d, Mapping) and "kwargs" in d and d.get("lc"):
        d = {**d["kwargs"], "id": d["kwargs"].get("id")}
    if not isinstance(d, Mapping):
        return make_passage(str(d))
    return make_passage(d.get("page_content", ""), id=d.get("id"), metadata=d.get("metadata") or {})


def _model(run: Mapping[str, Any]) -> str | None:
    extra = run.get("extra") or {}
    params = extra.get("invocation_params") or {}
    for value in (
        (extra.get("metadata") or {}).get("ls_model_name"),
        params.get("model"),
        params.get("model_name"),
        params.get("_type"),
    ):
        if value:
            return str(value)
    llm_output = (run.get("outputs") or {}).get("llm_output") or {}
    return llm_output.get("model_name") or llm_output.get("model") or run.get("name")


def _answer(outputs: Mapping[str, Any] | None) -> str | None:
    gens = (outputs or {}).get("generations")
    if not gens:
        return None
    first = gens[0]
    if isinstance(first, list):  # generations is list[list[Generation]]
        first = first[0] if first else None
    if not isinstance(first, Mapping):
        return None
    if first.get("text"):
        return str(first["text"])
    msg = first.get("message")
    return _message(msg).content if msg is not None else first.get("text")


def _root_query(inputs: Any) -> str | None:
    if isinstance(inputs, Mapping):
        for key in ("question", "query", "input"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
    return inputs if isinstance(inputs, str) else None


def _flatten(runs: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    for run in runs:
        children = run.get("child_runs") or []
        flat = {k: v for k, v in run.items() if k != "child_runs"}
        yield flat
        for child in children:
            child = dict(child)
            child.setdefault("parent_run_id", run.get("id"))
            yield from _flatten([child])


def _to_run(data: Mapping[str, Any], order: int, end_order: int) -> Run:
    run_type = data.get("run_type")
    kind = {"retriever": RETRIEVER, "llm": LLM}.get(str(run_type), OTHER)
    parent = data.get("parent_run_id")
    run = Run(
        run_id=str(data["id"]),
        parent_id=None if parent is None else str(parent),
        kind=kind,
        name=data.get("name"),
        order=order,
        end_order=end_order,
        error=data.get("error"),
    )
    inputs, outputs = data.get("inputs") or {}, data.get("outputs") or {}
    if kind == RETRIEVER:
        run.query = _root_query(inputs)
        run.documents = [_document(d) for d in outputs.get("documents") or []]
    elif kind == LLM:
        messages = inputs.get("messages")
        if messages:
            first = messages[0] if isinstance(messages[0], list) else messages
            run.messages = [_message(m) for m in first]
        prompts = inputs.get("prompts")
        if prompts:
            run.prompt = str(prompts[0])
        run.answer = _answer(outputs)
        run.model = _model(data)
    elif (
        isinstance(outputs.get("output"), list)
        and outputs["output"]
        and all(isinstance(d, Mapping) and "page_content" in d for d in outputs["output"])
    ):
        # A chain step that returned documents (e.g. the bridge compressor called from a lambda).
        run.documents = [_document(d) for d in outputs["output"]]
    return run


def records_from_runs(
    runs: Iterable[Mapping[str, Any]], *, framework: str = "langsmith"
) -> Iterator[TraceRecord]:
    """One record per root run that ran a retriever; failed roots (``error`` set) are skipped."""
    flat = list(_flatten(runs))
    seen: dict[str, dict[str, Any]] = {}
    for r in flat:  # a run given both nested and flat is kept once
        if "id" not in r:
            raise TraceFormatError(f"a LangSmith run without an 'id': {sorted(r)[:8]}")
        seen.setdefault(str(r["id"]), r)
    children: dict[str | None, list[str]] = defaultdict(list)
    for rid, r in seen.items():
        parent = r.get("parent_run_id")
        children[str(parent) if parent is not None and str(parent) in seen else None].append(rid)
    for root_id in children[None]:
        root = seen[root_id]
        if root.get("error"):
            logger.warning("run %s failed (%s); skipped", root_id, str(root["error"])[:200])
            continue
        members: list[dict[str, Any]] = []
        stack = [root_id]
        while stack:
            rid = stack.pop()
            members.append(seen[rid])
            stack.extend(children.get(rid, []))
        by_start = sorted(
            members, key=lambda r: (str(r.get("start_time") or ""), str(r.get("dotted_order") or ""))
        )
        end_rank = {
            str(r["id"]): i for i, r in enumerate(sorted(members, key=lambda r: str(r.get("end_time") or "")))
        }
        built = [_to_run(r, i, end_rank[str(r["id"])]) for i, r in enumerate(by_start)]
        for b in built:
            if b.run_id == root_id:
                b.parent_id = None
        start = root.get("start_time")
        record = assemble_record(
            built,
            trace_id=root_id,
            framework=framework,
            timestamp=None if start is None else str(start),
            root_query=_root_query(root.get("inputs")),
            metadata={"source": "langsmith", "root_run": root.get("name")},
        )
        if record is None:
            logger.debug("run %s ran no retriever; skipped", root_id)
            continue
        yield record


def read_runs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Runs from a JSON file (a list or one run) or a JSON Lines file."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
        return list(doc) if isinstance(doc, list) else [doc]
    except json.JSONDecodeError:
        pass
    runs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TraceFormatError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return runs


def import_langsmith(path: str | os.PathLike[str]) -> list[TraceRecord]:
    return list(records_from_runs(read_runs(path)))
