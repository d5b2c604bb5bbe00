"""``bgm synthesize --num-shards N --shard-index I`` splits a synthesis by question id, and ``bgm synthesize
merge`` puts the shard files back together into the file of a single run, refusing a set that is not one
complete split with one line that names what is wrong."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest

from bgm_cli.main import main
from bgm_model.training.silver import (
    EXPECTED_RECORDS,
    Shard,
    read_settings,
    read_silver,
    shard_of,
)
from bgm_model.training.toy import make_toy_examples

N_QUESTIONS = 9


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``bgm ARGV`` in-process (an argparse error raises SystemExit)."""
    capsys.readouterr()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:
        status = e.code  # type: ignore[assignment]
    return status, capsys.readouterr().err.splitlines()


def _fails(capsys: pytest.CaptureFixture[str], status: int, command: str, *argv: str, says: str | list[str]) -> None:
    got, lines = _run(capsys, *argv)
    assert got == status, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bgm {command}: error: "), lines[0]
    for text in [says] if isinstance(says, str) else says:
        assert text in lines[0], lines[0]


def _write_dataset(path: Path, examples: list) -> Path:
    path.write_text("".join(json.dumps({"id": e.id, "question": e.question, "answers": e.answers,
                                        "passages": [{"title": "", "text": p} for p in e.passages]}) + "\n"
                            for e in examples), encoding="utf-8")
    return path


def _synthesize(data: Path, out: Path, *flags: str) -> None:
    assert main(["synthesize", str(data), "-o", str(out), "--reader", "toy", "--reader-cache", "none",
                 *flags]) == 0


def _shards(data: Path, folder: Path, n: int, *flags: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part-{i}.jsonl" for i in range(n)]
    for i, path in enumerate(paths):
        _synthesize(data, path, "--num-shards", str(n), "--shard-index", str(i), *flags)
    return paths


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A toy dataset, its single-process silver file and the files of its 2-shard split."""
    root = tmp_path_factory.mktemp("shards")
    data = _write_dataset(root / "data.jsonl", make_toy_examples(N_QUESTIONS, n_passages=3, seed=6))
    _synthesize(data, root / "single.jsonl")
    two = _shards(data, root / "two", 2)
    return {"root": root, "data": data, "single": root / "single.jsonl", "part0": two[0], "part1": two[1]}


def _copy(paths: list[Path], folder: Path) -> list[Path]:
    """Copies of shard files with their settings, to spoil in a test."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, path in enumerate(paths):
        copy = folder / f"s{i}-{path.name}"
        shutil.copy(path, copy)
        shutil.copy(path.with_name(f"{path.stem}.settings.json"), copy.with_name(f"{copy.stem}.settings.json"))
        copies.append(copy)
    return copies


# ---------------------------------------------------------------------------------------------- the split
def test_shard_of_is_pinned_so_a_changed_hash_is_caught() -> None:
    ids = ["toy-0-0", "q1", "q2", "hotpot-5ab3b0bf5542992ade7c6e39", "ünïcode"]
    assert [shard_of(i, 3) for i in ids] == [1, 1, 2, 0, 2]
    assert [shard_of(i, 1000) for i in ids] == [338, 106, 115, 205, 954]
    assert {shard_of(i, 1) for i in ids} == {0}
    with pytest.raises(ValueError, match="num_shards"):
        shard_of("q1", 0)
    with pytest.raises(ValueError, match="0..2"):
        Shard(3, 3)


def test_the_split_is_by_id_not_by_position() -> None:
    examples = make_toy_examples(40, n_passages=2, seed=1)
    shards = [Shard(i, 3) for i in range(3)]
    parts = [s.select(examples) for s in shards]
    assert sorted(e.id for p in parts for e in p) == sorted(e.id for e in examples), "each question once"
    assert all(parts), "40 questions leave no shard of 3 empty"
    shuffled = random.Random(0).sample(examples, len(examples))
    assert [{e.id for e in s.select(shuffled)} for s in shards] == [{e.id for e in p} for p in parts]
    more = make_toy_examples(60, n_passages=2, seed=2) + examples  # new questions move none of the old ones
    assert [[e.id for e in s.select(more) if e in examples] for s in shards] == [[e.id for e in p] for p in parts]


# -------------------------------------------------------------------------------------- merged == single run
@pytest.mark.parametrize("n", [2, 3])
def test_merged_shards_equal_the_single_process_run(made: dict[str, Path], n: int, tmp_path: Path) -> None:
    parts = _shards(made["data"], tmp_path / "parts", n) if n != 2 else [made["part0"], made["part1"]]
    assert sum(len(read_silver(p)) for p in parts) == N_QUESTIONS and all(read_silver(p) for p in parts)
    settings = read_settings(parts[-1])
    assert settings is not None and (settings["shard_index"], settings["num_shards"]) == (n - 1, n)
    assert settings["shard_rule"] == "sha256-id-mod-v1" and settings[EXPECTED_RECORDS] == len(read_silver(parts[-1]))

    merged = tmp_path / "merged.jsonl"
    assert main(["synthesize", "merge", str(merged), *map(str, reversed(parts)), "--data", str(made["data"])]) == 0
    assert merged.read_bytes() == made["single"].read_bytes(), "with --data: the single run line for line"
    assert read_settings(merged) == read_settings(made["single"]), "the same settings, without the shard keys"

    by_id = tmp_path / "by_id.jsonl"
    assert main(["synthesize", "merge", str(by_id), *map(str, parts)]) == 0
    single = {r.id: r for r in read_silver(made["single"])}
    records = read_silver(by_id)
    assert [r.id for r in records] == sorted(single), "without --data: sorted by id"
    assert {r.id: r for r in records} == single
    assert read_settings(by_id) == read_settings(made["single"])


def test_the_shard_files_do_not_depend_on_the_dataset_order(made: dict[str, Path], tmp_path: Path) -> None:
    def records(path: Path) -> dict[str, dict]:  # by id, without the dataset file's name (``source``)
        return {r.id: {**r.to_dict(), "source": None} for r in read_silver(path)}

    examples = make_toy_examples(N_QUESTIONS, n_passages=3, seed=6)
    shuffled = _write_dataset(tmp_path / "shuffled.jsonl", random.Random(3).sample(examples, len(examples)))
    parts = _shards(shuffled, tmp_path / "parts", 2)
    for mine, theirs in zip(parts, (made["part0"], made["part1"]), strict=True):
        assert records(mine) == records(theirs)
    assert main(["synthesize", "merge", str(tmp_path / "a.jsonl"), *map(str, parts)]) == 0
    assert main(["synthesize", "merge", str(tmp_path / "b.jsonl"), str(made["part0"]), str(made["part1"])]) == 0
    assert list(records(tmp_path / "a.jsonl").items()) == list(records(tmp_path / "b.jsonl").items())


def test_an_empty_shard_writes_a_valid_empty_file_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    examples = make_toy_examples(2, n_passages=3, seed=6)
    data = _write_dataset(tmp_path / "data.jsonl", examples)
    empty = next(i for i in range(8) if not Shard(i, 8).select(examples))
    out = tmp_path / "empty.jsonl"
    with caplog.at_level(logging.WARNING, logger="bgm_cli.synthesize"):
        _synthesize(data, out, "--num-shards", "8", "--shard-index", str(empty))
    assert out.exists() and out.read_text() == "" and read_silver(out) == []
    settings = read_settings(out)
    assert settings is not None and settings[EXPECTED_RECORDS] == 0 and settings["shard_index"] == empty
    assert f"shard {empty} of 8 holds none of the 2 questions" in caplog.text and "empty silver file" in caplog.text
    parts = _shards(data, tmp_path / "all", 8)  # six or so of them empty: the merge takes them all
    assert main(["synthesize", "merge", str(tmp_path / "m.jsonl"), *map(str, parts), "--data", str(data)]) == 0
    assert [r.id for r in read_silver(tmp_path / "m.jsonl")] == [e.id for e in examples]


def test_the_merged_file_trains(made: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from bgm_model import BridgeConfig
    from tests._helpers import make_tiny_bridge

    merged = tmp_path / "merged.jsonl"
    assert main(["synthesize", "merge", str(merged), str(made["part0"]), str(made["part1"])]) == 0
    config = BridgeConfig(max_passages=8, max_query_tokens=12, max_passage_tokens=16, max_output_length=4)
    make_tiny_bridge(config, 0, hidden=32, max_positions=64).save_pretrained(tmp_path / "init")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "sl", "--silver", str(merged), "--init", str(tmp_path / "init"), "--reader", "toy",
                     "--num-epochs", "1", "--batch-size", "4", "--limit", "4", "--dev-fraction", "0",
                     "--output-dir", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(threads)
    state = json.loads((tmp_path / "out" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] == 1


# ------------------------------------------------------------------------------------- the command line: 2
def test_a_bad_shard_index_is_a_bad_command_line(made: dict[str, Path], capsys, tmp_path: Path) -> None:
    out = str(tmp_path / "o.jsonl")
    base = ["synthesize", str(made["data"]), "-o", out, "--reader", "toy"]
    _fails(capsys, 2, "synthesize", *base, "--num-shards", "3", "--shard-index", "3",
           says="--shard-index 3: must be in 0..2 for --num-shards 3")
    _fails(capsys, 2, "synthesize", *base, "--shard-index", "-1", says="--shard-index")
    _fails(capsys, 2, "synthesize", *base, "--num-shards", "0", "--shard-index", "0", says="--num-shards")
    _fails(capsys, 2, "synthesize", *base, "--shard-index", "1", says="--num-shards and --shard-index go together")
    _fails(capsys, 2, "synthesize", *base, "--num-shards", "2", says="--num-shards and --shard-index go together")
    assert not Path(out).exists()


def test_resuming_a_shard_file_as_another_shard_is_refused(made: dict[str, Path], capsys, tmp_path: Path) -> None:
    (part,) = _copy([made["part0"]], tmp_path)
    before = part.read_bytes(), read_settings(part)
    _fails(capsys, 2, "synthesize", "synthesize", str(made["data"]), "-o", str(part), "--reader", "toy",
           "--num-shards", "2", "--shard-index", "1", says=f"{part} was made with other search settings "
           "(shard_index: 0 there, 1 now); each shard of a split writes its own file")
    _fails(capsys, 2, "synthesize", "synthesize", str(made["data"]), "-o", str(part), "--reader", "toy",
           says="num_shards: 2 there, None now")
    assert (part.read_bytes(), read_settings(part)) == before, "nothing written"
    _synthesize(made["data"], part, "--num-shards", "2", "--shard-index", "0")  # the same shard resumes


def test_merge_refuses_a_missing_or_a_duplicate_shard(made: dict[str, Path], capsys, tmp_path: Path) -> None:
    out = str(tmp_path / "m.jsonl")
    _fails(capsys, 2, "synthesize merge", "synthesize", "merge", out, str(made["part1"]),
           says="shard 0 of 2 is missing: give the file of every shard 0..1")
    copy0, again0 = _copy([made["part0"], made["part0"]], tmp_path)
    _fails(capsys, 2, "synthesize merge", "synthesize", "merge", out, str(copy0), str(made["part1"]), str(again0),
           says=f"shard 0 of 2 is given twice: {copy0} and {again0}")
    _fails(capsys, 2, "synthesize merge", "synthesize", "merge", out, str(made["part0"]), str(made["part0"]),
           str(made["part1"]), says=f"{made['part0']} is given twice")
    _fails(capsys, 2, "synthesize merge", "synthesize", "merge", out, says="required: SHARD_FILE")
    assert not Path(out).exists()


def test_merge_refuses_shards_of_other_settings_or_splits(made: dict[str, Path], capsys, tmp_path: Path) -> None:
    other = _shards(made["data"], tmp_path / "short", 2, "--max-length", "2")
    _fails(capsys, 2, "synthesize merge", "synthesize", "merge", str(tmp_path / "m.jsonl"), str(made["part0"]),
           str(other[1]), says=["other settings", f"max_length: 5 in {made['part0']}, 2 in {other[1]}"])
    three = _shards(made["data"], tmp_path / "three", 3)
    _fails(capsys, 2, "synthesize merge", "synthesize", "merge", str(tmp_path / "m.jsonl"), str(made["part0"]),
           str(three[1]), says=f"{made['part0']} is shard 0 of 2, {three[1]} shard 1 of 3")
    _fails(capsys, 1, "synthesize merge", "synthesize", "merge", str(tmp_path / "m.jsonl"), str(made["single"]),
           says=f"{made['single']} is not a shard file")


def test_merge_refuses_an_example_twice(made: dict[str, Path], capsys, tmp_path: Path) -> None:
    part0, part1 = _copy([made["part0"], made["part1"]], tmp_path)
    line = part0.read_text().splitlines(keepends=True)[0]
    with open(part1, "a", encoding="utf-8") as f:
        f.write(line)
    twice = json.loads(line)["id"]
    _fails(capsys, 1, "synthesize merge", "synthesize", "merge", str(tmp_path / "m.jsonl"), str(part0), str(part1),
           says=f"example {twice!r} appears in {part0} and {part1}")


def test_merge_refuses_the_file_of_an_interrupted_run(made: dict[str, Path], capsys, tmp_path: Path) -> None:
    part0, part1 = _copy([made["part0"], made["part1"]], tmp_path)
    done = len(read_silver(part1))
    data = part1.read_bytes()
    part1.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 20])  # a crash in the middle of the last line
    out = tmp_path / "m.jsonl"
    _fails(capsys, 1, "synthesize merge", "synthesize", "merge", str(out), str(part0), str(part1),
           says=f"{part1} is incomplete: {done - 1} of its {done} questions are done")
    assert not out.exists()
    _synthesize(made["data"], part1, "--num-shards", "2", "--shard-index", "1")  # the same command finishes it
    assert main(["synthesize", "merge", str(out), str(part0), str(part1), "--data", str(made["data"])]) == 0
    assert out.read_bytes() == made["single"].read_bytes()


def test_merge_with_data_refuses_gaps_and_an_existing_output(made: dict[str, Path], capsys, tmp_path: Path) -> None:
    examples = make_toy_examples(N_QUESTIONS + 1, n_passages=3, seed=6)
    bigger = _write_dataset(tmp_path / "bigger.jsonl", examples)
    parts = [str(made["part0"]), str(made["part1"])]
    out = tmp_path / "m.jsonl"
    _fails(capsys, 2, "synthesize merge", "synthesize", "merge", str(out), *parts, "--data", str(bigger),
           says=f"1 question(s) of the dataset have no record in the shard files: {examples[-1].id!r}")
    assert main(["synthesize", "merge", str(out), *parts, "--data", str(bigger), "--limit", str(N_QUESTIONS)]) == 0
    _fails(capsys, 2, "synthesize merge", "synthesize", "merge", str(out), *parts,
           says=f"{out} exists: choose another OUT, or pass --force")
    assert main(["synthesize", "merge", str(out), *parts, "--force"]) == 0
