"""One recipe, one set of flags: every setting of the training recipe's stages is a flag of ``bgm demo`` and of
``benchmarks/quality.py``, and the value given reaches the recipe they train with.

Nothing here lists the settings: they are read from the dataclasses, so a field added to ``SLConfig`` (or any
stage config) is checked, and offered, by that one edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from bgm_cli.args import add_recipe_arguments, recipe_from_args
from bgm_cli.main import build_parser
from bgm_model.training.pipeline import BridgeRecipe, replace_config
from bgm_model.training.sl_config import SLConfig
from tests._helpers import load_benchmark

#: Stage settings train_bridge decides itself or does not use: the only ones without a flag.
DECIDED_BY_THE_PIPELINE = {
    "sl": {"output_dir", "dev_fraction", "resume", "seed", "eval_metric"},
    "rl": {"output_dir", "dev_fraction", "resume", "seed", "reward", "num_epochs"},
}


def _demo(argv: list[str]) -> tuple[str, BridgeRecipe, BridgeRecipe]:
    from bgm_cli.demo import config_from_args
    from bgm_cli.demo_app import DemoConfig

    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]  # type: ignore[union-attr]
    return demo.format_help(), config_from_args(parser.parse_args(["demo", *argv])).recipe, DemoConfig().recipe


def _quality(argv: list[str]) -> tuple[str, BridgeRecipe, BridgeRecipe]:
    quality = load_benchmark("quality")  # its parser is checked by parsing every flag (no help text needed)
    return "", quality.parse_args(argv).recipe, quality.default_recipe()


def _settings(recipe: BridgeRecipe) -> Iterator[tuple[str, str, Any, Any]]:
    """(path, flag, type, default) of every recipe setting that should have a flag."""
    hints = typing.get_type_hints(BridgeRecipe)
    for f in dataclasses.fields(BridgeRecipe):
        value = getattr(recipe, f.name)
        if not dataclasses.is_dataclass(value):
            yield f.name, "--" + f.name.replace("_", "-"), hints[f.name], value
            continue
        assert set(f.metadata.get("cli_exclude", ())) == DECIDED_BY_THE_PIPELINE.get(f.name, set())
        stage_hints = typing.get_type_hints(type(value))
        for g in dataclasses.fields(value):
            if g.name not in DECIDED_BY_THE_PIPELINE.get(f.name, set()):
                yield (f"{f.name}.{g.name}", f"--{f.name}-{g.name.replace('_', '-')}", stage_hints[g.name],
                       getattr(value, g.name))


def _other_value(kind: Any, value: Any) -> Any:
    """A valid value different from ``value``."""
    if kind is bool:
        return not value
    if typing.get_origin(kind) is Literal:
        return next(c for c in typing.get_args(kind) if c != value)
    if isinstance(value, bool):
        raise AssertionError(kind)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(f"no test value for {kind!r}")


def _argv(flag: str, kind: Any, value: Any) -> list[str]:
    if kind is bool:
        return [flag] if value else ["--no-" + flag[2:]]
    return [flag, repr(value) if isinstance(value, float) else str(value)]


def _nested(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in changes.items():
        stage, _, name = path.rpartition(".")
        (out.setdefault(stage, {}) if stage else out)[name] = value
    return out


@pytest.mark.parametrize("entry", [_demo, _quality], ids=["bgm demo", "benchmarks/quality.py"])
def test_every_recipe_setting_is_a_flag_whose_value_reaches_the_recipe(
        entry: Callable[[list[str]], tuple[str, BridgeRecipe, BridgeRecipe]]) -> None:
    help_text, parsed_defaults, defaults = entry([])
    assert parsed_defaults == defaults  # no flag given: the entry point's own defaults
    settings = list(_settings(defaults))
    assert len(settings) > 60 and {p.split(".")[0] for p, *_ in settings} >= {"bridge", "silver", "sl", "rl"}
    for _, flag, _, _ in settings:
        assert not help_text or flag in help_text, flag

    changes = {path: _other_value(kind, value) for path, _, kind, value in settings}
    argv = [a for path, flag, kind, _ in settings for a in _argv(flag, kind, changes[path])]
    _, recipe, _ = entry(argv)
    assert recipe == replace_config(defaults, _nested(changes))
    for path, value in changes.items():  # spelled out, so a failure names the setting
        stage, _, name = path.rpartition(".")
        assert getattr(getattr(recipe, stage) if stage else recipe, name) == value, path


@pytest.mark.parametrize("entry", [_demo, _quality], ids=["bgm demo", "benchmarks/quality.py"])
def test_the_short_flags_of_the_docs_still_work(entry: Callable[..., Any]) -> None:
    _, recipe, _ = entry(["--sl-epochs", "5", "--rl-steps", "40", "--rl-samples", "8", "--freeze-encoder-layers",
                          "2", "--max-passage-tokens", "64", "--relevance-prior", "20", "--rl-eval-steps", "5"])
    assert (recipe.sl.num_epochs, recipe.rl.max_steps, recipe.rl.num_samples, recipe.rl.eval_steps) == (5, 40, 8, 5)
    assert (recipe.sl.freeze_encoder_layers, recipe.rl.freeze_encoder_layers) == (2, 2)
    assert (recipe.bridge.max_passage_tokens, recipe.bridge.relevance_prior) == (64, 20.0)


def test_a_field_added_to_a_stage_config_is_a_flag_and_reaches_the_trainer(tmp_path) -> None:
    """What adding ``new_setting`` to SLConfig gives, with no other edit: a ``--sl-new-setting`` flag where the
    recipe's flags are built (``bgm demo`` and the quality benchmark both build them here), a recipe
    carrying the value, and the SLConfig ``train_bridge`` hands to the SL trainer carrying it too."""

    @dataclass
    class NewSLConfig(SLConfig):
        new_setting: int = field(default=7, metadata={"help": "a setting added to SLConfig"})

    defaults = dataclasses.replace(BridgeRecipe(), sl=NewSLConfig(**dataclasses.asdict(BridgeRecipe().sl)))
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser, defaults)
    assert "a setting added to SLConfig (default: 7)" in " ".join(parser.format_help().split())
    recipe = recipe_from_args(parser.parse_args(["--sl-new-setting", "3", "--sl-epochs", "2"]), defaults)
    assert (recipe.sl.new_setting, recipe.sl.num_epochs) == (3, 2)
    assert recipe.sl_config(tmp_path).new_setting == 3
    assert BridgeRecipe.from_dict(recipe.to_dict()).sl.num_epochs == 2  # and it is part of the recipe's JSON
    assert recipe.to_dict()["sl"]["new_setting"] == 3
