"""Silver passage sequences: the greedy search, its tie rule, call savings, files, resumption and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from bgm_model.data import QAExample
from bgm_model.readers.base import Reader
from bgm_model.training.silver import (
    SilverConfig,
    SilverSequence,
    read_silver,
    settings_path,
    silver_ids,
    synthesize,
    synthesize_one,
    synthesize_to_file,
    write_silver,
)
from bgm_model.training.toy import (
    TOY_PARTIAL_F1,
    ToyReader,
    make_toy_examples,
    toy_key_index,
    toy_optimal_ids,
)


class FnReader(Reader):
    """Answers with ``fn(passages)``; counts prompts that reach it."""

    def __init__(self, fn: Callable[[tuple[str, ...]], str]) -> None:
        super().__init__("fn-reader", cache=False)
        self.fn = fn
        self.prompts = 0

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        self.prompts += len(questions)
        return [self.fn(tuple(p)) for p in passage_lists]


def _example(passages: list[str], answers: list[str] | None = None, ex_id: str = "e") -> QAExample:
    return QAExample(id=ex_id, question="q?", answers=answers or ["gold answer"], passages=passages)


# -- the search -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scoring", [False, True], ids=["f1-secondary", "loglik-secondary"])
@pytest.mark.parametrize("reward", ["em", "contains", "f1"])
def test_finds_the_known_toy_optimum(reward: str, scoring: bool) -> None:
    reader = ToyReader(supports_scoring=scoring)
    for ex in make_toy_examples(12, n_passages=8, seed=1):
        rec = synthesize_one(ex, reader, reward=reward)
        assert rec.ids == toy_optimal_ids(ex), ex.id
        assert rec.score == 1.0 and rec.stop_reason == "solved"
        assert rec.answer == ex.answers[0]


def test_toy_positions_of_the_key_passage_vary() -> None:
    positions = {toy_key_index(ex) for ex in make_toy_examples(30, n_passages=6, seed=0)}
    assert len(positions) >= 5


def test_trajectory_starts_empty_and_records_each_accepted_step() -> None:
    ex = make_toy_examples(1, 6, seed=2)[0]
    x = toy_key_index(ex)
    rec = synthesize_one(ex, ToyReader(), reward="em")
    assert [t["ids"] for t in rec.trajectory] == [[], [x], [x, x]]
    assert [t["primary"] for t in rec.trajectory] == [0.0, 0.0, 1.0]
    assert [t["secondary"] for t in rec.trajectory] == pytest.approx([0.0, TOY_PARTIAL_F1, 1.0])
    assert rec.secondary == "f1" and rec.passages_in_order == [ex.passages[x]] * 2


def test_secondary_breaks_the_em_tie_without_it_greedy_stops_empty() -> None:
    ex = make_toy_examples(1, 6, seed=2)[0]
    rec = synthesize_one(ex, ToyReader(), reward="em", config=SilverConfig(secondary=None))
    assert rec.ids == [] and rec.stop_reason == "no_improvement" and rec.secondary is None


def test_primary_outranks_a_better_secondary() -> None:
    # Passage "verbose" gives an answer that *contains* the gold but has lower F1 than "partial" gives.
    answers = {("verbose",): "it is gold answer for sure", ("partial",): "gold"}
    reader = FnReader(lambda ps: answers.get(ps[-1:], "nothing"))
    rec = synthesize_one(
        _example(["partial", "verbose"]), reader, reward="contains", config=SilverConfig(secondary="f1")
    )
    assert rec.ids == [1]  # contains=1, F1=0.5 beats contains=0, F1=0.67


def test_exact_ties_go_to_the_earlier_candidate() -> None:
    reader = FnReader(lambda ps: "gold" if ps and ps[-1] in {"b", "c"} else "none")
    rec = synthesize_one(_example(["a", "b", "c"]), reader, reward="em", config=SilverConfig(secondary="f1"))
    assert rec.ids == [1]  # "b" and "c" tie on (EM 0, F1 0.67); "b" comes first in retriever order


def test_empty_sequence_is_kept_when_passages_only_hurt() -> None:
    reader = FnReader(lambda ps: "gold answer" if not ps else "distracted")
    rec = synthesize_one(_example(["a", "b", "c"]), reader, reward="em", config=SilverConfig.naive())
    assert rec.ids == [] and rec.score == 1.0 and rec.stop_reason == "no_improvement"
    rec = synthesize_one(_example(["a", "b"]), reader, reward="em")
    assert rec.ids == [] and rec.stop_reason == "solved" and rec.reader_calls == 1


def test_repeat_and_length_caps_are_respected() -> None:
    ex = make_toy_examples(1, 5, seed=4)[0]
    x = toy_key_index(ex)
    once = synthesize_one(ex, ToyReader(), reward="em", config=SilverConfig(max_repeats=1))
    assert once.ids == [x] and once.score == 0.0  # [X, X] is out of reach
    short = synthesize_one(ex, ToyReader(), reward="em", config=SilverConfig(max_length=1))
    assert short.ids == [x] and short.stop_reason == "max_length"
    greedy_on = synthesize_one(ex, ToyReader(), reward="em", config=SilverConfig.naive(max_repeats=3))
    assert greedy_on.ids == [x, x]  # [X, X, X] ties [X, X]: not an improvement, so the shorter one stays


def test_loglik_primary_needs_no_generation() -> None:
    reader = ToyReader(supports_scoring=True)
    ex = make_toy_examples(1, 5, seed=5)[0]
    rec = synthesize_one(ex, reader, reward="loglik")
    assert rec.ids == toy_optimal_ids(ex) and rec.score == pytest.approx(0.0)
    assert reader.answer_calls == 0 and rec.answer is None and rec.secondary is None


def test_examples_without_answers_are_skipped_and_duplicate_ids_rejected() -> None:
    exs = make_toy_examples(2, 4, seed=0)
    exs[0].answers = []
    assert [r.id for r in synthesize(exs, ToyReader())] == [exs[1].id]
    with pytest.raises(ValueError, match="no gold answers"):
        synthesize_one(exs[0], ToyReader())
    with pytest.raises(ValueError, match="duplicate example id"):
        list(synthesize([exs[1], exs[1]], ToyReader()))


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="max_repeats"):
        SilverConfig(max_repeats=0)
    with pytest.raises(ValueError, match="top_m"):
        SilverConfig(top_m=0)


# -- fewer reader calls ---------------------------------------------------------------------------------------


def test_call_reduction_against_naive_greedy_on_the_toy() -> None:
    # 10 candidates, optimum [X, X]. Naive: 1 (empty) + 10 + 10 + 9 (the step that finds no gain) = 30 prompts
    # in 30 calls. Ours: 1 + 10 + top-5 = 16 prompts in 3 calls (stop at EM = 1, prune to the top 5).
    examples = make_toy_examples(10, n_passages=10, seed=7)
    naive_reader, fast_reader = ToyReader(), ToyReader()
    naive = list(synthesize(examples, naive_reader, reward="em", config=SilverConfig.naive()))
    fast = list(synthesize(examples, fast_reader, reward="em"))
    assert [r.ids for r in naive] == [r.ids for r in fast] == [toy_optimal_ids(e) for e in examples]
    assert [r.reader_calls for r in naive] == [30] * 10 and [r.reader_batches for r in naive] == [30] * 10
    assert [r.reader_calls for r in fast] == [16] * 10 and [r.reader_batches for r in fast] == [3] * 10
    assert naive_reader.answer_prompts == 300 and fast_reader.answer_prompts == 160
    # The ten searches ran in lockstep: one reader call per round for all of them.
    assert naive_reader.answer_calls == 300 and fast_reader.answer_calls == 3
    # The per-record estimate of the naive cost matches what naive greedy really sent.
    assert [r.naive_reader_calls for r in fast] == [r.reader_calls for r in naive]


@pytest.mark.parametrize("scoring", [False, True])
def test_lockstep_changes_the_batches_not_the_records(scoring: bool) -> None:
    # Solvable toy questions take 3 rounds; the unsolvable ones (no passage holds their answer) stop earlier,
    # so searches finish at different rounds and the next questions take their places mid-run.
    examples = make_toy_examples(9, n_passages=6, seed=11)
    for ex in examples[1::3]:
        ex.answers = ["no such code"]
    records = {}
    calls = {}
    for width in (1, 4, 16):
        reader = ToyReader(supports_scoring=scoring)
        records[width] = list(synthesize(examples, reader, reward="em", config=SilverConfig(lockstep=width)))
        calls[width] = reader.answer_calls
    assert [r.id for r in records[4]] == [e.id for e in examples]  # in input order
    stops = {r.stop_reason for r in records[1]}
    assert stops == {"solved", "no_improvement"}
    for width in (4, 16):
        for one, many in zip(records[1], records[width], strict=True):
            assert {**one.to_dict(), "reader_batches": 0} == {**many.to_dict(), "reader_batches": 0}
    assert calls[1] > calls[4] > calls[16] == 3
    assert sum(r.reader_batches for r in records[16]) > calls[16]  # each record counts the calls it shared
    with pytest.raises(ValueError, match="lockstep"):
        SilverConfig(lockstep=0)


def test_lockstep_width_is_not_a_search_setting(tmp_path: Path) -> None:
    examples = make_toy_examples(4, 5, seed=2)
    path = tmp_path / "silver.jsonl"
    synthesize_to_file(examples[:2], ToyReader(), path, config=SilverConfig(lockstep=1))
    stats = synthesize_to_file(examples, ToyReader(), path, config=SilverConfig(lockstep=8))  # no settings error
    assert stats.written == 2 and len(read_silver(path)) == 4


def test_call_counts_include_scoring_prompts() -> None:
    ex = make_toy_examples(1, 10, seed=7)[0]
    reader = ToyReader(supports_scoring=True)
    rec = synthesize_one(ex, reader, reward="em")
    # 16 states, each one generation + one gold scoring; 2 reader calls per step.
    assert rec.reader_calls == 32 and rec.reader_batches == 6 and rec.naive_reader_calls == 60
    naive = synthesize_one(ex, ToyReader(supports_scoring=True), reward="em", config=SilverConfig.naive())
    assert naive.reader_calls == 60 and naive.ids == rec.ids


def test_identical_prompts_are_evaluated_once() -> None:
    reader = FnReader(lambda ps: "gold answer" if ps[-1:] == ("key",) else "none")
    ex = _example(["dup", "dup", "key", "dup"])
    rec = synthesize_one(ex, reader, reward="em", config=SilverConfig(top_m=None, secondary=None))
    # Step 1 has 4 candidate prompts but only 2 distinct ones (+1 for the empty sequence).
    assert rec.ids == [2] and rec.reader_calls == 3
    off = synthesize_one(
        ex, reader, reward="em", config=SilverConfig(top_m=None, secondary=None, dedupe=False)
    )
    assert off.ids == [2] and off.reader_calls == 5


# -- files and resumption -------------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path) -> None:
    recs = list(synthesize(make_toy_examples(3, 4, seed=0), ToyReader()))
    path = tmp_path / "silver.jsonl"
    assert write_silver(recs, path) == 3
    back = read_silver(path)
    assert back == recs and isinstance(back[0], SilverSequence)
    assert silver_ids(path) == {r.id for r in recs} and silver_ids(tmp_path / "none.jsonl") == set()


def test_resumption_skips_done_ids_and_survives_a_truncated_line(tmp_path: Path) -> None:
    examples = make_toy_examples(6, 5, seed=3)
    path = tmp_path / "out" / "silver.jsonl"
    first = synthesize_to_file(examples[:4], ToyReader(), path)
    assert first.written == 4 and first.reader_calls == 4 * 11
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "toy-3-4", "question": "trunc')  # a crash in the middle of a line
    assert silver_ids(path) == {e.id for e in examples[:4]}

    reader = ToyReader()
    second = synthesize_to_file(examples, reader, path)
    assert second.skipped_done == 4 and second.written == 2
    assert reader.answer_prompts == 2 * 11  # only the two new questions reached the reader (3 lockstep calls)
    assert reader.answer_calls == 3 and second.reader_batches == 3  # the run's calls, each counted once
    records = read_silver(path)
    assert [r.id for r in records] == [e.id for e in examples]
    assert all(r.ids == toy_optimal_ids(e) for r, e in zip(records, examples, strict=True))
    assert path.read_text(encoding="utf-8").endswith("\n") and "trunc" not in path.read_text(encoding="utf-8")

    with pytest.raises(FileExistsError):
        synthesize_to_file(examples, reader, path, resume=False)


def _silver_file(tmp_path: Path, bad_line: str) -> Path:
    """A silver file of two good records with ``bad_line`` as its third line."""
    path = tmp_path / "silver.jsonl"
    write_silver(synthesize(make_toy_examples(2, 4, seed=0), ToyReader()), path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(bad_line + "\n")
    return path


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        (["ids", "passages"], "missing fields 'passages', 'ids'"),
        (["question"], "missing field 'question'"),
        (["id"], "missing field 'id'"),
    ],
)
def test_a_silver_line_missing_fields_names_the_file_line_and_fields(
    tmp_path: Path, drop: list[str], message: str
) -> None:
    rec = synthesize_one(make_toy_examples(1, 4, seed=5)[0], ToyReader()).to_dict()
    path = _silver_file(tmp_path, json.dumps({k: v for k, v in rec.items() if k not in drop}))
    expected = rf"^{path}:3: {message}$"
    with pytest.raises(ValueError, match=expected):
        read_silver(path)
    with pytest.raises(ValueError, match=expected):
        silver_ids(path)
    with pytest.raises(ValueError, match=rf"^{message}$"):
        SilverSequence.from_dict({k: v for k, v in rec.items() if k not in drop})


@pytest.mark.parametrize("line", ["[1, 2]", "5", '"text"', "null"])
def test_a_silver_line_that_is_not_an_object_names_the_file_and_line(tmp_path: Path, line: str) -> None:
    path = _silver_file(tmp_path, line)
    with pytest.raises(ValueError, match=rf"^{path}:3: expected a JSON object"):
        read_silver(path)
    with pytest.raises(ValueError, match=rf"^{path}:3: expected a JSON object"):
        silver_ids(path)


def test_a_pathologically_nested_silver_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = _silver_file(tmp_path, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=rf"^{path}:3: cannot decode the JSON \(RecursionError\)"):
        read_silver(path)


def test_a_traces_file_given_as_silver_file_says_so_before_any_reader_call(tmp_path: Path) -> None:
    from bgm_model.traces.schema import TracePassage, TraceRecord
    from bgm_model.traces.writer import TraceWriter

    path = tmp_path / "traces.jsonl"
    TraceWriter(path).write(TraceRecord(query="q?", passages=[TracePassage("d0", "text")], framework="test"))
    expected = rf"^{path}:1: missing fields 'id', 'question'.*is this a traces file\? .*--traces"
    with pytest.raises(ValueError, match=expected):
        read_silver(path)
    with pytest.raises(ValueError, match=expected):
        silver_ids(path)
    reader = ToyReader()
    with pytest.raises(ValueError, match=expected):  # resuming into it fails before the search starts
        synthesize_to_file(make_toy_examples(2, 4, seed=0), reader, path)
    assert reader.answer_prompts == 0
    assert not settings_path(path).exists(), "no settings file is left beside the traces file"


def test_cli_synthesizes_and_resumes(tmp_path: Path) -> None:
    from bgm_cli.main import main

    data = tmp_path / "toy.jsonl"
    examples = make_toy_examples(3, 4, seed=9)
    data.write_text(
        "".join(
            json.dumps(
                {
                    "id": e.id,
                    "question": e.question,
                    "answers": e.answers,
                    "passages": [{"title": "", "text": p} for p in e.passages],
                }
            )
            + "\n"
            for e in examples
        ),
        encoding="utf-8",
    )
    out = tmp_path / "silver.jsonl"
    assert main(["synthesize", str(data), "-o", str(out), "--reader", "toy", "--limit", "2",
                 "--reward", "em+0.5*f1"]) == 0
    # resuming with other search settings would mix two kinds of targets in one file: refused
    assert main(["synthesize", str(data), "-o", str(out), "--reader", "toy", "--reward", "em"]) == 2
    assert len(read_silver(out)) == 2
    assert main(["synthesize", str(data), "-o", str(out), "--reader", "toy", "--reward", "em+0.5*f1"]) == 0
    records = read_silver(out)
    assert [r.id for r in records] == [e.id for e in examples]
    assert [r.ids for r in records] == [toy_optimal_ids(e) for e in examples]
    assert records[2].reward == "1*em+0.5*f1"


def test_cli_reads_traces_with_gold_answers(tmp_path: Path) -> None:
    from bgm_cli.main import main
    from bgm_model.traces.schema import TracePassage, TraceRecord
    from bgm_model.traces.writer import TraceWriter

    examples = make_toy_examples(2, 4, seed=11)
    traces = tmp_path / "traces.jsonl"
    with TraceWriter(traces) as writer:
        for i, e in enumerate(examples):
            passages = [TracePassage(id=f"d{j}", content=p) for j, p in enumerate(e.passages)]
            gold = e.answers if i == 0 else []  # the second trace has no label: skipped
            writer.write(
                TraceRecord(query=e.question, passages=passages, framework="test", gold_answers=gold)
            )
    out = tmp_path / "silver.jsonl"
    assert main(["synthesize", str(traces), "--traces", "-o", str(out), "--reader", "toy"]) == 0
    records = read_silver(out)
    assert len(records) == 1 and records[0].ids == toy_optimal_ids(examples[0])
    assert records[0].source == "traces"


def test_cli_rejects_an_unknown_reward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bgm_cli.main import main

    # a bad command line: one line and exit status 2 (before the missing input is even looked at)
    assert main(["synthesize", str(tmp_path / "x.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--reward", "nope"]) == 2
    assert capsys.readouterr().err.startswith("bgm synthesize: error: --reward: unknown reward 'nope'")


# -- the real reader --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_silver_sequences_on_hotpotqa(tmp_path: Path) -> None:
    # Kept small for 2 shared CPU cores: the log-likelihood primary needs no generation (one forward pass per
    # prompt), 5 candidates per question and sequences of at most 2 passages.
    from bgm_model.assets import bundled_dataset
    from bgm_model.data import load_examples
    from bgm_model.readers.hf import load_smollm2_reader

    reader = load_smollm2_reader(cache=tmp_path / "reader-cache")
    examples = load_examples(bundled_dataset("hotpotqa", "dev"), limit=3)
    for ex in examples:
        ex.passages, ex.titles, ex.gold = ex.passages[:5], ex.titles[:5], ex.gold[:5]
    path = tmp_path / "silver.jsonl"
    config = SilverConfig(max_length=2, top_m=3)
    stats = synthesize_to_file(examples, reader, path, reward="loglik", config=config)
    records = read_silver(path)
    assert stats.written == 3 and [r.id for r in records] == [e.id for e in examples]
    for rec, ex in zip(records, examples, strict=True):
        assert len(rec.ids) <= 2 and all(0 <= i < len(ex.passages) for i in rec.ids)
        assert rec.trajectory[0]["ids"] == [] and rec.secondary is None and rec.answer is None
        assert rec.score <= 0.0 and rec.score == rec.trajectory[-1]["primary"]
        # Each accepted step strictly improves the gold answer's log-likelihood.
        assert all(
            b["primary"] > a["primary"] for a, b in zip(rec.trajectory, rec.trajectory[1:], strict=False)
        )
        # 1 (empty) + 5 (step 1) + at most 3 (step 2, top-3) states, one scoring prompt per gold answer.
        assert 0 < rec.reader_calls <= 9 * len(set(ex.answers)) and rec.reader_calls <= rec.naive_reader_calls
    # A second run resumes: nothing left to do, no reader call.
    before = reader.stats.calls
    again = synthesize_to_file(examples, reader, path, reward="loglik", config=config)
    assert again.written == 0 and again.skipped_done == 3 and reader.stats.calls == before


def test_scanned_records_every_extension_of_every_step() -> None:
    reader = FnReader(lambda ps: "gold answer" if ps.count("key") == 2 else "gold" if "key" in ps else "no")
    rec = synthesize_one(_example(["a", "key", "b"]), reader, reward="em",
                         config=SilverConfig(top_m=None, secondary="f1"))
    assert rec.ids == [1, 1]
    # one scan per accepted step, plus the step that found nothing better (unless the search was solved)
    assert len(rec.scanned) == len(rec.trajectory) - 1 + (rec.stop_reason != "solved")
    for step, scan in enumerate(rec.scanned):
        assert [c[0] for c in scan] == sorted(c[0] for c in scan)  # retriever order
        accepted = rec.trajectory[step + 1] if step + 1 < len(rec.trajectory) else None
        if accepted is not None:
            chosen = accepted["ids"][-1]
            row = next(c for c in scan if c[0] == chosen)
            assert row[1] == accepted["primary"] and max(c[1] for c in scan) == accepted["primary"]
    assert SilverSequence.from_dict(rec.to_dict()).scanned == rec.scanned


def test_without_secondary_extends_later_passages_must_raise_the_primary() -> None:
    answers = {("k",): "gold", ("k", "m"): "gold answer extra", ("k", "k"): "gold"}
    reader = FnReader(lambda ps: answers.get(ps, "no"))
    ex = _example(["k", "m"])
    loose = synthesize_one(ex, reader, reward="em", config=SilverConfig(top_m=None, secondary="f1"))
    assert loose.ids == [0, 1]  # F1 0.67 -> 0.8 with EM still 0: the secondary alone lengthened it
    strict = synthesize_one(ex, reader, reward="em",
                            config=SilverConfig(top_m=None, secondary="f1", secondary_extends=False))
    assert strict.ids == [0] and strict.stop_reason == "no_improvement"  # the first passage still comes from F1
    solved = {("k",): "gold", ("k", "k"): "gold answer"}
    again = synthesize_one(ex, FnReader(lambda ps: solved.get(ps, "no")), reward="em",
                           config=SilverConfig(top_m=None, secondary="f1", secondary_extends=False))
    assert again.ids == [0, 0]  # a primary gain still extends


def test_resuming_a_file_made_with_other_settings_is_refused_or_set_aside(tmp_path: Path) -> None:
    from bgm_model.training.silver import SilverSettingsError, settings_path

    examples = make_toy_examples(3, n_passages=3, seed=0)
    path = tmp_path / "silver.jsonl"
    synthesize_to_file(examples[:2], ToyReader(), path, reward="em")
    assert json.loads(settings_path(path).read_text())["reward"] == "em"
    synthesize_to_file(examples, ToyReader(), path, reward="em")  # same settings: resumes
    assert len(read_silver(path)) == 3
    with pytest.raises(SilverSettingsError, match=r"max_length: 5 there, 2 now"):
        synthesize_to_file(examples, ToyReader(), path, reward="em", config=SilverConfig(max_length=2))
    assert len(read_silver(path)) == 3  # nothing written
    stats = synthesize_to_file(examples, ToyReader(), path, reward="em", config=SilverConfig(max_length=2),
                               set_aside_mismatched=True)
    assert stats.written == 3 and len(read_silver(tmp_path / "silver.1.jsonl")) == 3  # the old file is kept
    assert json.loads(settings_path(tmp_path / "silver.1.jsonl").read_text())["max_length"] == 5
    assert json.loads(settings_path(path).read_text())["max_length"] == 2


def test_the_settings_name_the_reader_and_the_secondary_it_really_used(tmp_path: Path) -> None:
    from bgm_model.readers import CallableReader
    from bgm_model.training.silver import SilverSettingsError, settings_path

    examples = make_toy_examples(2, n_passages=3, seed=0)
    path = tmp_path / "silver.jsonl"
    synthesize_to_file(examples, ToyReader(supports_scoring=False), path, reward="em")
    saved = json.loads(settings_path(path).read_text())
    # "auto" falls back to F1 for a reader that cannot score (e.g. a chat endpoint): the file says so
    assert saved["secondary"] == "auto" and saved["secondary_used"] == "f1"
    assert saved["reader"] == ToyReader().name and len(saved["reader_prompt"]) == 16
    scoring = tmp_path / "scoring.jsonl"
    synthesize_to_file(examples, ToyReader(supports_scoring=True), scoring, reward="em")
    assert json.loads(settings_path(scoring).read_text())["secondary_used"] == "loglik"
    other = CallableReader(lambda q, ps: "unknown", name="another-llm")
    with pytest.raises(SilverSettingsError, match="reader: 'toy.*' there, 'another-llm' now"):
        synthesize_to_file(examples, other, path, reward="em")
    # a file from before the reader was recorded resumes
    legacy = {k: v for k, v in saved.items() if k not in ("reader", "reader_prompt", "secondary_used")}
    settings_path(path).write_text(json.dumps(legacy))
    assert synthesize_to_file(examples, ToyReader(supports_scoring=False), path, reward="em").written == 0


def test_every_old_import_of_the_silver_module_still_works() -> None:
    import bgm_model.training.silver as silver
    from bgm_model.training import soft_targets
    from bgm_model.training.silver import records, search, sequence

    assert all(hasattr(silver, name) for name in [*silver.__all__, "END", "settings_path"])
    assert silver.step_targets is soft_targets.step_targets and silver.END is soft_targets.END == -1
    assert silver.SilverSequence is sequence.SilverSequence and silver.synthesize is search.synthesize
    assert silver.synthesize_to_file is records.synthesize_to_file and silver.settings_path is records.settings_path


# -- progress: it moves as searches end, not as records are yielded in order ---------------------------------
def _slow_first(n: int = 16) -> list[QAExample]:
    """The first toy question takes three search rounds; the others are solved by the empty sequence (the
    toy reader answers "unknown" without the key passage) and end in the first round."""
    import dataclasses

    examples = make_toy_examples(n, n_passages=4, seed=5)
    return [examples[0], *(dataclasses.replace(e, answers=["unknown"]) for e in examples[1:])]


def test_progress_reports_questions_as_their_search_ends() -> None:
    from bgm_model.training.silver.search import SearchProgress

    events: list[object] = []
    records = synthesize(_slow_first(), ToyReader(cache=False), config=SilverConfig(lockstep=16),
                         progress=events.append)
    for record in records:
        events.append(record.id)
    first_record = next(i for i, e in enumerate(events) if isinstance(e, str))
    rounds = [e for e in events[:first_record] if isinstance(e, SearchProgress)]
    # 15 questions ended in round 1, while the first (whose record must come first) needed 3 rounds
    assert rounds[0] == SearchProgress(round=1, finished=15, done=15, running=1)
    assert rounds[-1] == SearchProgress(round=3, finished=1, done=16, running=0)
    assert len(events) - first_record == 16


def test_the_silver_bar_moves_before_the_records_are_written(tmp_path: Path, monkeypatch) -> None:
    """The bar of ``synthesize_to_file`` shows the 15 ended questions while the file is still empty (the bar
    used to count written records: 0 until the slowest question of the lockstep group was done)."""
    import tqdm.auto

    out = tmp_path / "silver.jsonl"
    shown: list[tuple[float, int]] = []

    class RecordingBar(tqdm.auto.tqdm):  # type: ignore[misc,name-defined]
        def display(self, *args, **kwargs):  # what the user sees, each time it is drawn
            lines = len(out.read_text().splitlines()) if out.exists() else 0
            shown.append((self.n, lines))
            return super().display(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    stats = synthesize_to_file(_slow_first(), ToyReader(cache=False), out, config=SilverConfig(lockstep=16))
    assert stats.written == 16
    assert (15, 0) in shown, shown  # drawn at 15/16 before a single record was written
    assert shown[-1][0] == 16
