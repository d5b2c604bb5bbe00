"""``bgm_cli.args``: flags from dataclass fields (types, help, prefixes, nesting) and the config-file merge."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from bgm_cli.args import add_dataclass_arguments, dataclass_from_args, given_values, load_config_file


@dataclass
class Inner:
    steps: int = field(default=3, metadata={"help": "how many steps"})
    rate: float = field(default=0.5, metadata={"help": "a rate of 50%"})
    hidden: str = field(default="x", metadata={"help": "never a flag here"})


@dataclass
class Outer:
    name: str = field(default="a", metadata={"help": "a name"})
    limit: int | None = field(default=4, metadata={"help": "at most this many (None: all)"})
    folder: str | None = field(default=None, metadata={"help": "a folder"})
    mode: Literal["fast", "slow"] = field(default="fast", metadata={"help": "how"})
    check: bool = field(default=True, metadata={"help": "whether to check"})
    inner: Inner = field(default_factory=Inner, metadata={"help": "the inner stage", "cli_exclude": ("hidden",),
                                                          "cli_help": {"steps": "steps of the inner stage"}})


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_arguments(parser, Outer, **kwargs)
    return parser


def test_flags_follow_the_annotations_and_document_the_defaults() -> None:
    help_text = " ".join(_parser().format_help().split())  # unwrapped
    for flag in ("--name NAME", "--limit LIMIT", "--folder FOLDER", "--mode {fast,slow}", "--check, --no-check",
                 "--inner-steps INNER_STEPS", "--inner-rate INNER_RATE"):
        assert flag in help_text, flag
    assert "--inner-hidden" not in help_text  # cli_exclude
    assert "steps of the inner stage (default: 3)" in help_text  # cli_help replaces the field's help
    assert "a rate of 50% (default: 0.5)" in help_text  # a literal % in a help text is kept
    assert "(default: 4; 'none': None)" in help_text
    with pytest.raises(SystemExit):
        _parser().parse_args(["--mode", "medium"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["--limit", "many"])


def test_only_the_flags_given_change_the_defaults() -> None:
    parser = _parser()
    assert dataclass_from_args(parser.parse_args([]), Outer) == Outer()
    args = parser.parse_args(["--limit", "none", "--folder", "none", "--no-check", "--mode", "slow",
                              "--inner-steps", "7"])
    assert given_values(args, "Outer") == {"limit": None, "folder": "none", "check": False, "mode": "slow",
                                           "inner": {"steps": 7}}
    # a plain optional string takes "none" as a value (a folder may be called that); an optional number does not
    assert dataclass_from_args(args, Outer) == Outer(limit=None, folder="none", check=False, mode="slow",
                                                     inner=Inner(steps=7))
    # defaults other than the class's: the flags change only what they name
    base = Outer(name="b", inner=Inner(rate=0.25))
    assert dataclass_from_args(args, Outer, defaults=base).inner == Inner(steps=7, rate=0.25)


def test_a_config_file_fills_what_the_flags_leave_out(tmp_path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"name": "from-file", "limit": 9, "inner": {"steps": 1}}))
    (tmp_path / "c.yaml").write_text("name: from-yaml\ninner:\n  rate: 0.125\n")
    args = _parser().parse_args(["--inner-steps", "5"])
    from_json = dataclass_from_args(args, Outer, config=tmp_path / "c.json")
    assert (from_json.name, from_json.limit, from_json.inner) == ("from-file", 9, Inner(steps=5))  # flag wins
    from_yaml = dataclass_from_args(args, Outer, config=tmp_path / "c.yaml")
    assert (from_yaml.name, from_yaml.inner) == ("from-yaml", Inner(steps=5, rate=0.125))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config_file(tmp_path / "list.json")


def test_prefix_include_aliases_and_namespaces() -> None:
    parser = argparse.ArgumentParser(prog="t")
    add_dataclass_arguments(parser, Outer, prefix="o", include=("limit", "inner"), namespace="one",
                            aliases={"--n-steps": "inner.steps", "--both": ("inner.steps", "limit")})
    add_dataclass_arguments(parser, Inner, namespace="two")  # same field names, other flags and destinations
    help_text = " ".join(parser.format_help().split())
    assert "--o-limit" in help_text and "--o-name" not in help_text and "--o-inner-steps" in help_text
    assert "--o-inner-steps O_INNER_STEPS, --n-steps O_INNER_STEPS" in help_text
    args = parser.parse_args(["--n-steps", "2", "--rate", "0.75"])
    assert dataclass_from_args(args, Outer, namespace="one").inner.steps == 2
    assert dataclass_from_args(args, Inner, namespace="two") == Inner(rate=0.75)
    both = parser.parse_args(["--both", "6"])
    assert given_values(both, "one") == {"inner": {"steps": 6}, "limit": 6}


def test_a_field_no_flag_can_express_is_an_error_naming_it() -> None:
    @dataclass
    class Bad:
        ids: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match=r"Bad\.ids"):
        add_dataclass_arguments(argparse.ArgumentParser(), Bad)
    add_dataclass_arguments(argparse.ArgumentParser(), Bad, exclude=("ids",))


def test_a_flag_name_cannot_be_taken_twice() -> None:
    parser = _parser()
    with pytest.raises(argparse.ArgumentError):
        add_dataclass_arguments(parser, Outer, namespace="again")
