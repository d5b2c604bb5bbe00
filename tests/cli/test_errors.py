"""A user's mistake ends ``bgm`` with one line, ``bgm <command>: error: ...``, and exit status 2 (the command
line) or 1 (an input that cannot be used); a bug keeps its traceback. And every ``--help`` shows the defaults
and describes every positional."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from bgm_cli.main import build_parser, main
from bgm_model.training.toy import ToyReader, make_toy_examples


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Exit status and stderr lines of ``bgm ARGV`` in-process (an argparse error raises SystemExit)."""
    try:
        status = main(list(argv))
    except SystemExit as e:
        status = e.code  # type: ignore[assignment]
    return status, capsys.readouterr().err.splitlines()


def _fails(capsys: pytest.CaptureFixture[str], status: int, command: str, *argv: str, says: str) -> None:
    got, lines = _run(capsys, *argv)
    assert got == status, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bgm {command}: error: "), lines[0]
    assert says in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dataset, a traces file and a silver file of the same toy questions, a text file, a folder."""
    from bgm_model.traces import TracePassage, TraceRecord, TraceWriter
    from bgm_model.training.silver import synthesize_to_file

    root = tmp_path_factory.mktemp("files")
    examples = make_toy_examples(3, n_passages=3, seed=4)
    dataset = root / "data.jsonl"
    dataset.write_text("".join(json.dumps({"id": e.id, "question": e.question, "answers": e.answers,
                                           "passages": [{"title": "", "text": p} for p in e.passages]}) + "\n"
                               for e in examples))
    traces = root / "traces.jsonl"
    with TraceWriter(traces) as writer:
        for e in examples:
            passages = [TracePassage(id=str(i), content=p) for i, p in enumerate(e.passages)]
            writer.write(TraceRecord(query=e.question, framework="test", gold_answers=e.answers, passages=passages))
    silver = root / "silver.jsonl"
    synthesize_to_file(examples, ToyReader(cache=False), silver)
    text = root / "notes.txt"
    text.write_text("not JSON\nat all\n")
    folder = root / "not_a_bridge"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return {"dataset": dataset, "traces": traces, "silver": silver, "text": text, "folder": folder,
            "missing": root / "missing.jsonl"}


# ------------------------------------------------------------------------------------ the command line: 2
def test_a_missing_input_is_a_bad_command_line(capsys, files) -> None:
    missing = str(files["missing"])
    _fails(capsys, 2, "synthesize", "synthesize", missing, "-o", "o.jsonl", "--reader", "toy",
           says=f"INPUT {missing}: no such file")
    _fails(capsys, 2, "train sl", "train", "sl", "--silver", missing, "--from-encoder", "--no-reader",
           says=f"--silver {missing}: no such file")
    _fails(capsys, 2, "train rl", "train", "rl", "--data", missing, "--from-encoder", "--reader", "toy",
           says=f"--data {missing}: no such file")
    _fails(capsys, 2, "evaluate", "evaluate", "--data", missing, "--reader", "toy", says=f"--data {missing}")
    _fails(capsys, 2, "traces inspect", "traces", "inspect", missing, says=f"FILE {missing}: no such file")


def test_a_missing_bridge_is_a_bad_command_line(capsys, files) -> None:
    missing = str(files["folder"] / "nowhere")
    _fails(capsys, 2, "evaluate", "evaluate", "--data", str(files["dataset"]), "--reader", "toy",
           "--bridge", missing, says=f"--bridge {missing}: ")


def test_an_unknown_reward_is_a_bad_command_line(capsys, files) -> None:
    _fails(capsys, 2, "synthesize", "synthesize", str(files["dataset"]), "-o", "o.jsonl", "--reward", "bogus",
           says="--reward: unknown reward 'bogus'; choose from em, f1")
    _fails(capsys, 2, "train rl", "train", "rl", "--data", str(files["dataset"]), "--from-encoder",
           "--reader", "toy", "--reward", "bogus", says="--reward: unknown reward 'bogus'")
    _fails(capsys, 2, "demo", "demo", "--reader", "toy", "--reward", "bogus", says="unknown reward 'bogus'")


def test_an_unknown_dataset_or_reader_is_a_bad_command_line(capsys, files) -> None:
    _fails(capsys, 2, "demo", "demo", "--dataset", "foo",
           says="argument --dataset: invalid choice: 'foo' (choose from 'nq_open', 'hotpotqa')")
    _fails(capsys, 2, "demo", "demo", "--reader", "gpt-9", says="unknown --reader 'gpt-9'")
    _fails(capsys, 2, "evaluate", "evaluate", "--data", str(files["dataset"]), "--reader", "hf:/no/such/dir",
           says="--reader hf:/no/such/dir: no such folder")


def test_argparse_errors_are_one_line_too(capsys) -> None:
    _fails(capsys, 2, "synthesize", "synthesize",
           says="the following arguments are required: input, -o/--output")
    _fails(capsys, 2, "train rl", "train", "rl", "--init", "x", "--limit", "-1",
           says="argument --limit: must be >= 0")
    _fails(capsys, 2, "evaluate", "evaluate", "--data", "d.jsonl", "--top-k", "many",
           says="argument --top-k: invalid int value: 'many'")


def test_options_that_do_not_fit_together_are_a_bad_command_line(capsys, files) -> None:
    _fails(capsys, 2, "train rl", "train", "rl", "--from-encoder", "--reader", "toy",
           says="give exactly one of --data and --traces")
    _fails(capsys, 2, "evaluate", "evaluate", "--data", str(files["dataset"]), "--baselines", "none",
           says="nothing to evaluate")


def test_a_command_s_system_exit_is_one_line_and_keeps_its_message(capsys, files) -> None:
    """``--gold-references`` on data without gold-passage labels: the command's SystemExit(message)."""
    with pytest.raises(SystemExit, match="needs gold-passage labels") as stop:
        main(["evaluate", "--data", str(files["dataset"]), "--reader", "toy", "--reader-cache", "none",
              "--gold-references"])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bgm evaluate: error: --gold-references needs"), lines


# ---------------------------------------------------------------------------- inputs that cannot be used: 1
def test_a_folder_that_is_not_a_bridge_is_a_bad_input(capsys, files) -> None:
    folder = str(files["folder"])
    _fails(capsys, 1, "evaluate", "evaluate", "--data", str(files["dataset"]), "--reader", "toy",
           "--bridge", folder, says=f"--bridge {folder}: {folder} has no config.json")
    _fails(capsys, 1, "train sl", "train", "sl", "--silver", str(files["silver"]), "--init", folder,
           "--no-reader", says=f"--init {folder}: ")


def test_a_traces_file_given_as_a_dataset(capsys, files) -> None:
    traces = str(files["traces"])
    _fails(capsys, 1, "evaluate", "evaluate", "--data", traces, "--reader", "toy",
           says=f"{traces} is a traces file, not a dataset: give traces with --traces")
    _fails(capsys, 1, "synthesize", "synthesize", traces, "-o", "o.jsonl", "--reader", "toy",
           says=f"{traces} is a traces file, not a dataset")
    _fails(capsys, 1, "train rl", "train", "rl", "--data", traces, "--from-encoder", "--reader", "toy",
           says=f"{traces} is a traces file, not a dataset")


def test_a_traces_file_given_as_silver_sequences(capsys, files) -> None:
    traces = str(files["traces"])
    _fails(capsys, 1, "train sl", "train", "sl", "--silver", traces, "--from-encoder", "--no-reader",
           says=f"{traces} is a traces file, not a silver file: build silver sequences from it with "
                f"`bgm synthesize {traces} --traces -o SILVER.jsonl`")


def test_a_silver_file_given_as_traces(capsys, files) -> None:
    silver = str(files["silver"])
    for argv in (["synthesize", silver, "--traces", "-o", "o.jsonl", "--reader", "toy"],
                 ["train", "rl", "--traces", silver, "--from-encoder", "--reader", "toy"],
                 ["traces", "inspect", silver]):
        command = " ".join(argv[:2]) if argv[0] in ("train", "traces") else argv[0]
        _fails(capsys, 1, command, *argv, says=f"{silver} is a silver file, not a traces file")


def test_a_file_that_is_not_json_lines(capsys, files) -> None:
    text = str(files["text"])
    _fails(capsys, 1, "traces inspect", "traces", "inspect", text, says=f"{text} is not a JSON Lines file")
    _fails(capsys, 1, "train sl", "train", "sl", "--silver", text, "--from-encoder", "--no-reader",
           says=f"{text} is not a JSON Lines file")


def test_inspect_still_reads_a_traces_file(capsys, files) -> None:
    assert main(["traces", "inspect", str(files["traces"])]) == 0
    assert f"{files['traces']}: 3 record(s)" in capsys.readouterr().out


def test_a_config_file_that_is_not_json(capsys, files, tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for argv in (["train", "sl", "--silver", str(files["silver"]), "--from-encoder", "--config", str(bad)],
                 ["demo", "--reader", "toy", "--config", str(bad)]):
        command = "train sl" if argv[0] == "train" else "demo"
        _fails(capsys, 1, command, *argv, says=f"{bad}: not valid JSON")


# ------------------------------------------------------------------------------------------------- bugs
def test_an_unexpected_error_keeps_its_traceback(monkeypatch, files) -> None:
    """Only errors known to be the user's become one line: a ValueError from the work itself is a bug."""
    import bgm_cli.synthesize

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug in the search")

    monkeypatch.setattr(bgm_cli.synthesize, "synthesize_to_file", broken)
    with pytest.raises(ValueError, match="a bug in the search"):
        main(["synthesize", str(files["dataset"]), "-o", "o.jsonl", "--reader", "toy"])


def test_verbose_logs_the_traceback_of_a_user_error(capsys, caplog, files) -> None:
    caplog.set_level(logging.DEBUG, logger="bgm")
    assert main(["-v", "traces", "inspect", str(files["silver"])]) == 1
    assert any(r.name == "bgm" and r.exc_info for r in caplog.records)
    assert len(capsys.readouterr().err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------- help
def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    if not subs:
        return [parser]
    children = [child for sub in subs for child in dict.fromkeys(sub.choices.values())]
    return [leaf for child in children for leaf in _leaf_parsers(child)]


def _rendered(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser.formatter_class(prog=parser.prog)
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


def test_every_help_shows_the_defaults_and_describes_every_positional() -> None:
    parser = build_parser()
    assert "exit status: 0 done; 2 the command line is wrong" in " ".join(parser.format_help().split())
    leaves = _leaf_parsers(parser)
    assert {p.prog for p in leaves} >= {"bgm synthesize", "bgm traces inspect", "bgm traces import",
                                        "bgm traces attach-feedback", "bgm evaluate", "bgm train sl",
                                        "bgm train rl", "bgm demo"}
    for leaf in leaves:
        leaf.format_help()  # renders
        for action in leaf._actions:  # noqa: SLF001
            if isinstance(action, argparse._HelpAction):  # noqa: SLF001
                continue
            if not action.option_strings:
                assert action.help and action.help != argparse.SUPPRESS, (leaf.prog, action.dest)
                continue
            # flags from a dataclass (default SUPPRESS) say the field's default in their help
            has_default = action.nargs != 0 and action.default is not None
            if has_default or (action.default is argparse.SUPPRESS and action.nargs != 0):
                text = _rendered(leaf, action)
                assert "default" in text.lower(), (leaf.prog, text)
    demo = next(p for p in leaves if p.prog == "bgm demo")
    dataset = next(a for a in demo._actions if a.dest.endswith(".dataset"))  # noqa: SLF001
    assert "(default: nq_open)" in _rendered(demo, dataset)
