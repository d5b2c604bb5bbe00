"""TraceRecord round trip, the writer's safety guarantees and the reader's error handling."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest

import bgm_model.traces as traces
from bgm_model.traces import (
    SCHEMA_VERSION,
    BridgeTrace,
    ChatMessage,
    Feedback,
    LLMCall,
    ReadStats,
    TraceFormatError,
    TracePassage,
    TraceRecord,
    TraceSchemaVersionError,
    TraceWriter,
    iter_traces,
    read_traces,
)


def make_record(i: int = 0, **kw) -> TraceRecord:
    return TraceRecord(
        query=f"question {i}?",
        framework="test",
        passages=[
            TracePassage(
                id=f"p{i}-0", content="first passage\nwith a newline", score=0.9, metadata={"title": "T"}
            ),
            TracePassage(id=f"p{i}-1", content="second passage é", score=None),
        ],
        bridge=BridgeTrace(
            ids=[f"p{i}-1", f"p{i}-0", f"p{i}-1"], source_indices=[1, 0, 1], scores=[0.5, 0.4, 0.3]
        ),
        llm=LLMCall(messages=[ChatMessage("user", "hi")], answer=f"answer {i}", model="fake"),
        gold_answers=["gold"],
        feedback=[Feedback(score=1.0, label="good", comment="ok")],
        **kw,
    )


def test_public_api_is_pinned():
    assert sorted(traces.__all__) == sorted(
        [
            "SCHEMA_VERSION",
            "BridgeTrace",
            "ChatMessage",
            "Feedback",
            "FeedbackJoinStats",
            "LLMCall",
            "ReadStats",
            "Redactor",
            "TraceFormatError",
            "TracePassage",
            "TraceRecord",
            "TraceSchemaVersionError",
            "TraceWriter",
            "attach_feedback",
            "iter_traces",
            "join_feedback",
            "read_feedback",
            "read_traces",
        ]
    )


def test_core_trace_package_imports_no_framework():
    import subprocess
    import sys

    code = "import sys, bgm_model.traces, bgm_model.traces.importers; print([m for m in ('langchain_core', 'llama_index') if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert out.stdout.strip() == "[]"


def test_record_round_trips_with_openinference_document_keys(tmp_path: Path):
    record = make_record(3, metadata={"app": "x"})
    d = record.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION
    assert set(d["passages"][0]) == {"document.id", "document.content", "document.score", "document.metadata"}
    path = tmp_path / "t.jsonl"
    TraceWriter(path).write(record)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 and lines[0].endswith(b"\n")
    (back,) = read_traces(path)
    assert back == record
    assert back.answer == "answer 3"
    assert [p.id for p in back.bridge_passages()] == ["p3-1", "p3-0", "p3-1"]


def test_bridge_indices_out_of_range_are_rejected_before_writing(tmp_path: Path):
    record = make_record()
    record.bridge.source_indices = [5]
    with pytest.raises(TraceFormatError, match="out of range"):
        TraceWriter(tmp_path / "t.jsonl").write(record)
    assert not (tmp_path / "t.jsonl").exists() or (tmp_path / "t.jsonl").read_text() == ""


def test_truncated_last_line_is_skipped_with_warning_and_count(tmp_path: Path, caplog):
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(path)
    for i in range(3):
        writer.write(make_record(i))
    full = path.read_bytes()
    path.write_bytes(full + full.splitlines(keepends=True)[0][:40])  # a crash mid-write
    stats = ReadStats()
    with caplog.at_level(logging.WARNING):
        records = read_traces(path, stats=stats)
    assert [r.query for r in records] == ["question 0?", "question 1?", "question 2?"]
    assert stats.truncated == 1 and stats.truncated_lines == [4]
    assert "truncated" in caplog.text


def test_writer_after_a_partial_line_starts_a_new_line(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(make_record(0).to_dict()).encode() + b"\n" + b'{"schema_version": 1, "tra')
    TraceWriter(path).write(make_record(1))
    stats = ReadStats()
    assert [r.query for r in read_traces(path, stats=stats)] == ["question 0?", "question 1?"]
    assert stats.truncated_lines == [2]


def test_unknown_schema_version_names_file_and_line(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    good = make_record(0).to_dict()
    bad = {**make_record(1).to_dict(), "schema_version": 99}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TraceSchemaVersionError) as e:
        read_traces(path)
    assert f"{path}:2" in str(e.value) and "99" in str(e.value)
    with pytest.raises(TraceSchemaVersionError):  # never skipped silently
        read_traces(path, skip_invalid=True)


def test_missing_required_fields_are_reported_by_line_number(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    rows = [make_record(i).to_dict() for i in range(4)]
    del rows[1]["query"]
    del rows[3]["passages"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TraceFormatError) as e:
        read_traces(path)
    msg = str(e.value)
    assert "line 2: missing required field(s): query" in msg
    assert "line 4: missing required field(s): passages" in msg
    stats = ReadStats()
    ok = read_traces(path, skip_invalid=True, stats=stats)
    assert [r.query for r in ok] == ["question 0?", "question 2?"]
    assert [n for n, _ in stats.invalid_lines] == [2, 4]
    with pytest.raises(TraceFormatError, match=r":2: missing"):
        list(iter_traces(path))


def test_redaction_hook_runs_before_anything_is_written(tmp_path: Path):
    path = tmp_path / "t.jsonl"

    def redact(record: TraceRecord) -> TraceRecord | None:
        if "drop" in record.query:
            return None
        record.query = record.query.replace("alice@example.com", "<email>")
        for p in record.passages:
            p.content = p.content.replace("alice@example.com", "<email>")
        return record

    writer = TraceWriter(path, redact=redact)
    r = make_record(0)
    r.query = "mail alice@example.com?"
    r.passages[0].content = "contact alice@example.com"
    assert writer.write(r) is True
    d = make_record(1)
    d.query = "drop me"
    assert writer.write(d) is False
    assert "alice@example.com" not in path.read_text()
    (back,) = read_traces(path)
    assert back.query == "mail <email>?" and back.passages[0].content == "contact <email>"

    def broken(record: TraceRecord) -> TraceRecord:
        raise RuntimeError("redactor bug")

    with pytest.raises(RuntimeError):
        TraceWriter(path, redact=broken).write(make_record(2))
    assert len(read_traces(path)) == 1  # nothing unredacted got through


def _write_many(path: str, worker: int, n: int) -> None:
    writer = TraceWriter(path)
    for i in range(n):
        rec = make_record(i)
        rec.trace_id = f"w{worker}-{i}"
        rec.passages[0].content = f"worker {worker} " + "x" * 2000  # long lines make interleaving likely
        writer.write(rec)


def test_four_processes_writing_one_file_do_not_interleave(tmp_path: Path):
    path = str(tmp_path / "t.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, w, 500)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    stats = ReadStats()
    records = read_traces(path, stats=stats)
    assert stats.truncated == 0 and not stats.invalid_lines
    assert len(records) == 2000
    assert {r.trace_id for r in records} == {f"w{w}-{i}" for w in range(4) for i in range(500)}
    for r in records:
        assert r.passages[0].content.startswith(f"worker {r.trace_id[1]} ")


# -- bad input ------------------------------------------------------------------------------------------------


def test_lone_surrogates_are_written_as_replacement_characters_not_lost(tmp_path: Path, caplog):
    path = tmp_path / "t.jsonl"
    record = make_record(0, metadata={"note\ud800": "x\udc80"})
    record.trace_id = "t-surrogate"
    record.query = "bad \ud800 query"
    record.passages[1].content = "bad \udfff passage"
    record.llm.answer = "\ud83d\ude00 \ud800"  # a valid pair becomes its character, the lone one U+FFFD
    with caplog.at_level(logging.WARNING, logger="bgm_model.traces.writer"):
        assert TraceWriter(path).write(record) is True
    assert [r.getMessage() for r in caplog.records if "surrogate" in r.getMessage()] == [
        "trace 't-surrogate': text with lone surrogates (not valid Unicode); writing them as U+FFFD"
    ]
    (back,) = read_traces(path)
    assert back.query == "bad \ufffd query"
    assert back.passages[1].content == "bad \ufffd passage"
    assert back.answer == "\U0001f600 \ufffd"
    assert back.metadata == {"note\ufffd": "x\ufffd"}
    assert record.query == "bad \ud800 query"  # the caller's record is not changed


def test_non_finite_scores_are_written_as_null(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    record = make_record(0)
    record.passages[0].score = float("nan")
    record.passages[1].score = float("inf")
    record.bridge.scores = [float("-inf"), 0.5, float("nan")]
    record.feedback[0].score = float("nan")
    TraceWriter(path).write(record)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    (back,) = read_traces(path)
    assert [p.score for p in back.passages] == [None, None]
    assert back.bridge.scores == [None, 0.5, None]
    assert back.feedback[0].score is None


@pytest.mark.parametrize("version", ["1", [1], 1.5, 1.0, True, None, {"v": 1}], ids=repr)
def test_schema_version_of_the_wrong_type_is_a_skippable_format_error(tmp_path: Path, version):
    path = tmp_path / "t.jsonl"
    bad = {**make_record(1).to_dict(), "schema_version": version}
    path.write_text("".join(json.dumps(r) + "\n" for r in [make_record(0).to_dict(), bad]))
    with pytest.raises(TraceFormatError, match=r":2: schema_version must be an integer") as e:
        list(iter_traces(path))
    assert not isinstance(e.value, TraceSchemaVersionError)
    stats = ReadStats()
    assert [r.query for r in read_traces(path, skip_invalid=True, stats=stats)] == ["question 0?"]
    assert [n for n, _ in stats.invalid_lines] == [2]


def test_a_record_with_a_bool_schema_version_is_not_written(tmp_path: Path):
    with pytest.raises(TraceFormatError, match="schema version must be an integer"):
        TraceWriter(tmp_path / "t.jsonl").write(make_record(0, schema_version=True))


def test_a_pathologically_nested_line_is_an_invalid_record_and_the_rest_is_read(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    lines = [
        json.dumps(make_record(0).to_dict()),
        "[" * 100_000 + "]" * 100_000,  # json.loads raises RecursionError
        json.dumps(make_record(1).to_dict())[:-1] + ', "n": ' + "9" * 5000 + "}",  # past the digit limit
        json.dumps(make_record(2).to_dict()),
    ]
    path.write_text("\n".join(lines) + "\n")
    stats = ReadStats()
    records = read_traces(path, skip_invalid=True, stats=stats)
    assert [r.query for r in records] == ["question 0?", "question 2?"]
    assert [n for n, _ in stats.invalid_lines] == [2, 3] and stats.truncated == 0
    assert "RecursionError" in stats.invalid_lines[0][1]
    with pytest.raises(TraceFormatError, match=r":2: cannot decode the JSON \(RecursionError"):
        list(iter_traces(path))
    with pytest.raises(TraceFormatError, match="line 2: cannot decode.*line 3: cannot decode"):
        read_traces(path)


@pytest.mark.parametrize(
    "change",
    [
        {"passages": 5},
        {"passages": [5]},
        {"passages": ["document.content"]},
        {"passages": [{"document.content": "c", "document.metadata": ["ab"]}]},
        {"query": {"a": 1}},
        {"bridge": 5},
        {"bridge": {"source_indices": "01"}},
        {"bridge": {"source_indices": [0.7]}},
        {"bridge": {"source_indices": [True]}},
        {"bridge": {"source_indices": [0], "ids": "ab"}},
        {"llm": "answer"},
        {"llm": {"answer": {"text": "x"}}},
        {"llm": {"messages": "hi"}},
        {"llm": {"messages": [5]}},
        {"gold_answers": "gold"},
        {"gold_answers": 5},
        {"feedback": {"score": 1}},
        {"feedback": [{"comment": 5}]},
        {"metadata": [["a", 1]]},
        {"metadata": "x"},
    ],
    ids=lambda c: json.dumps(c)[:60],
)
def test_fields_of_the_wrong_type_are_format_errors_naming_the_line(tmp_path: Path, change):
    path = tmp_path / "t.jsonl"
    bad = {**make_record(1).to_dict(), **change}
    path.write_text("".join(json.dumps(r) + "\n" for r in [make_record(0).to_dict(), bad]))
    with pytest.raises(TraceFormatError, match=rf"^{path}:2: "):
        list(iter_traces(path))
    stats = ReadStats()
    assert [r.query for r in read_traces(path, skip_invalid=True, stats=stats)] == ["question 0?"]
    assert [n for n, _ in stats.invalid_lines] == [2]
