"""attach_feedback and the `bgm traces` command."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from bgm_cli.main import main
from bgm_model.traces import TraceWriter, attach_feedback, read_traces
from tests.traces.test_traces_io import make_record


def _traces(path: Path, n: int = 3) -> list[str]:
    writer = TraceWriter(path)
    ids = []
    for i in range(n):
        rec = make_record(i)
        rec.feedback, rec.gold_answers = [], []
        writer.write(rec)
        ids.append(rec.trace_id)
    return ids


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_attach_by_trace_id_and_by_query_to_a_new_file(tmp_path):
    src, out = tmp_path / "t.jsonl", tmp_path / "out.jsonl"
    ids = _traces(src)
    before = src.read_bytes()
    fb = _jsonl(
        tmp_path / "fb.jsonl",
        [
            {"trace_id": ids[0], "score": 1, "label": "correct", "comment": "nice"},
            {"query": "  QUESTION 2? ", "gold_answers": ["g2"]},
            {"trace_id": "nope", "score": 0},
        ],
    )
    stats = attach_feedback(src, fb, out)
    assert src.read_bytes() == before  # the original is untouched
    recs = read_traces(out)
    assert recs[0].feedback[0].score == 1.0 and recs[0].feedback[0].label == "correct"
    assert recs[2].gold_answers == ["g2"] and recs[1].feedback == [] and recs[1].gold_answers == []
    assert stats.rows_matched == 2 and stats.unmatched_lines == [3] and stats.traces_updated == 2
    attach_feedback(out, fb, in_place=True)  # attaching again does not duplicate
    assert len(read_traces(out)[0].feedback) == 1


def test_in_place_keeps_records_appended_concurrently(tmp_path):
    src = tmp_path / "t.jsonl"
    ids = _traces(src, 50)
    fb = _jsonl(tmp_path / "fb.jsonl", [{"trace_id": i, "score": 1} for i in ids])
    writer = TraceWriter(src)

    def keep_writing():
        for i in range(200):
            rec = make_record(1000 + i)
            rec.trace_id = f"late-{i}"
            writer.write(rec)

    t = threading.Thread(target=keep_writing)
    t.start()
    for _ in range(5):
        attach_feedback(src, fb, in_place=True)
    t.join()
    recs = read_traces(src)
    assert {r.trace_id for r in recs} == set(ids) | {f"late-{i}" for i in range(200)}
    assert all(len(r.feedback) == 1 for r in recs if r.trace_id in set(ids))


def test_attach_copies_unreadable_lines_unchanged(tmp_path):
    src = tmp_path / "t.jsonl"
    _traces(src, 1)
    with src.open("ab") as f:
        f.write(b'{"schema_version": 1, "trunc')
    attach_feedback(
        src, _jsonl(tmp_path / "fb.jsonl", [{"query": "question 0?", "score": 0.5}]), in_place=True
    )
    assert src.read_bytes().endswith(b'{"schema_version": 1, "trunc\n')
    assert read_traces(src)[0].feedback[0].score == 0.5


def test_attach_copies_a_pathologically_nested_line_unchanged(tmp_path):
    """One line nested past Python's recursion limit must not abort attaching feedback to the others."""
    src = tmp_path / "t.jsonl"
    _traces(src, 1)
    nested = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    with src.open("ab") as f:
        f.write(nested)
    attach_feedback(
        src, _jsonl(tmp_path / "fb.jsonl", [{"query": "question 0?", "score": 0.5}]), in_place=True
    )
    assert src.read_bytes().endswith(nested)
    assert read_traces(src, skip_invalid=True)[0].feedback[0].score == 0.5


def test_a_pathologically_nested_feedback_row_names_its_line(tmp_path):
    src = tmp_path / "t.jsonl"
    _traces(src, 1)
    feedback = tmp_path / "fb.jsonl"
    feedback.write_text(json.dumps({"query": "question 0?", "score": 1.0}) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=f"{feedback}:2: cannot decode the JSON"):
        attach_feedback(src, feedback, in_place=True)


def test_cli_import_inspect_attach(tmp_path, capsys):
    data = tmp_path / "ds.jsonl"
    _jsonl(
        data,
        [
            {
                "id": "a",
                "question": "q a",
                "answers": ["A"],
                "passages": [{"title": "t", "text": "x", "is_gold": True}],
            },
            {
                "id": "b",
                "question": "q b",
                "answers": ["B"],
                "passages": [{"title": "t", "text": "y", "is_gold": False}] * 3,
            },
        ],
    )
    out = tmp_path / "traces.jsonl"
    assert main(["traces", "import", "--from", "dataset", str(data), "-o", str(out)]) == 0
    assert [r.query for r in read_traces(out)] == ["q a", "q b"]
    fb = _jsonl(tmp_path / "fb.jsonl", [{"query": "q a", "score": 1}, {"query": "q b", "label": "bad"}])
    assert main(["traces", "attach-feedback", str(out), str(fb), "--in-place"]) == 0
    capsys.readouterr()
    assert main(["traces", "inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 2
    assert (
        summary["fields"]["gold_answers"] == 2
        and summary["fields"]["feedback"] == 2
        and summary["fields"]["answer"] == 0
    )
    assert summary["passages_per_record"] == {"min": 1, "mean": 2.0, "max": 3}
    assert main(["traces", "inspect", str(out)]) == 0
    assert "2 record(s)" in capsys.readouterr().out


def test_cli_errors_are_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**make_record().to_dict(), "schema_version": 7}) + "\n")
    assert main(["traces", "inspect", str(bad)]) == 1
    assert main(["traces", "inspect", str(tmp_path / "missing.jsonl")]) == 2
    assert (
        main(
            [
                "traces",
                "import",
                "--from",
                "langsmith",
                str(tmp_path / "missing.json"),
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    with pytest.raises(SystemExit):
        main(["traces", "attach-feedback", str(bad), str(bad)])  # needs -o or --in-place
