"""Command-line flags from dataclass configs: one generator for every ``bgm`` command and the benchmarks.

TRL's way (``trl/scripts/grpo.py``: one parser over several dataclasses, a config file merged with flag
overrides): a config's documented fields *are* its flags, nothing lists them again by hand.

* :func:`add_dataclass_arguments` adds one ``--prefix-field-name`` flag per field of a dataclass: the type
  comes from the annotation (``int``, ``float``, ``str``, ``Literal`` -> choices, ``bool`` ->
  ``--x/--no-x``, an optional number -> also ``none``), the help from ``metadata["help"]`` plus the default. A
  field holding a dataclass (a composed config such as :class:`~bgm_model.training.pipeline.BridgeRecipe`)
  adds that dataclass's flags under its name: ``--sl-num-epochs``, ``--rl-max-steps``, ``--silver-top-m``.
  Its metadata may name sub-fields without a flag (``"cli_exclude"``) or with another help
  (``"cli_help"``).
* :func:`dataclass_from_args` builds the config back: defaults, then a ``--config`` file (JSON or YAML), then
  the flags that were given.
* :func:`add_recipe_arguments` / :func:`recipe_from_args`: the training recipe's flags, as ``bgm demo`` and
  ``benchmarks/quality.py`` take them (with the short names they had before, e.g. ``--sl-epochs``).

Flags keep argparse's ``SUPPRESS`` default, so "not given" is never confused with a value and a config file
fills exactly what the flags leave out. ``transformers.HfArgumentParser`` builds flags from dataclasses too, but
has neither prefixes nor nested dataclasses, which a composed recipe needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

C = TypeVar("C")

#: Older flag names of the recipe (``bgm demo``, ``benchmarks/quality.py``, the docs) -> field paths.
RECIPE_FLAG_ALIASES: dict[str, str | tuple[str, ...]] = {
    "--sl-epochs": "sl.num_epochs",
    "--rl-steps": "rl.max_steps",
    "--rl-samples": "rl.num_samples",
    "--max-passage-tokens": "bridge.max_passage_tokens",
    "--relevance-prior": "bridge.relevance_prior",
    "--freeze-encoder-layers": ("sl.freeze_encoder_layers", "rl.freeze_encoder_layers"),
}


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    defaults: Any = None,
    include: Collection[str] | None = None,
    exclude: Collection[str] = (),
    aliases: Mapping[str, str | Sequence[str]] | None = None,
    title: str | None = None,
    namespace: str | None = None,
) -> None:
    """Add a flag for every (included, not excluded) field of the dataclass ``cls``, nested ones too.

    ``prefix``: prepended to each flag name (``"sl"`` -> ``--sl-num-epochs``). ``defaults``: the instance whose
    values the help shows (default: ``cls()``). ``aliases``: extra flag -> field path (``"sl.num_epochs"``),
    or several paths for one flag that sets them all. Values land in ``namespace``-prefixed destinations
    (default: the class name), read back by :func:`dataclass_from_args` with the same ``namespace``.
    """
    defaults = cls() if defaults is None else defaults
    ns = namespace or cls.__name__
    flags: dict[str, argparse.Action] = {}
    group = _add_fields(parser, cls, defaults, ns, path="", prefix=prefix, include=include, exclude=exclude,
                        help_overrides={}, title=title or f"{cls.__name__} options", description=None,
                        flags=flags)
    for flag, target in (aliases or {}).items():
        paths = [target] if isinstance(target, str) else list(target)
        actions = [flags[p] for p in paths]
        if len(actions) == 1:
            _add_option_string(parser, actions[0], flag)
            continue
        first = actions[0]
        if isinstance(first, argparse.BooleanOptionalAction):
            raise TypeError(f"{flag}: a flag for several fields must take a value")
        action = group.add_argument(
            flag, dest=first.dest, default=argparse.SUPPRESS, type=first.type, choices=first.choices,
            metavar=flag[2:].upper().replace("-", "_") if first.metavar else None, action=_StoreEach,
            help="sets " + " and ".join(a.option_strings[0] for a in actions) + " to one value (default: "
            + " and ".join(str(_value_at(defaults, p)) for p in paths) + ")",
        )
        action.dests = [a.dest for a in actions]  # type: ignore[attr-defined]


def dataclass_from_args(
    args: argparse.Namespace,
    cls: type[C],
    *,
    defaults: C | None = None,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    namespace: str | None = None,
) -> C:
    """The ``cls`` instance the flags of :func:`add_dataclass_arguments` describe.

    ``defaults`` (default: ``cls()``), then ``config`` (a file of :func:`load_config_file` or a mapping; nested
    entries change only the keys they name), then the flags that were given. Raises the config's
    ``ValueError`` / ``TypeError`` for a bad value.
    """
    from bgm_model.training.pipeline import replace_config

    value = cls() if defaults is None else defaults
    if config is not None:
        data = config if isinstance(config, Mapping) else load_config_file(config)
        value = replace_config(value, data)
    return replace_config(value, given_values(args, namespace or cls.__name__))


def given_values(args: argparse.Namespace, namespace: str) -> dict[str, Any]:
    """The flags of ``namespace`` that were given, as a nested dict (``{"sl": {"num_epochs": 2}}``)."""
    out: dict[str, Any] = {}
    start = namespace + "."
    for dest, value in vars(args).items():
        if not dest.startswith(start):
            continue
        *parents, name = dest[len(start):].split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return out


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config file's contents: JSON, or YAML for ``.yaml`` / ``.yml`` (needs PyYAML)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ImportError(f"reading {path} needs PyYAML: pip install pyyaml") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def add_config_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE",
        help=f"JSON or YAML {what} to start from (flags override it)",
    )


# ------------------------------------------------------------------------------------------------- recipe
RECIPE_NAMESPACE = "recipe"


def add_recipe_arguments(parser: argparse.ArgumentParser, defaults: Any = None) -> None:
    """``--config`` and every setting of :class:`~bgm_model.training.pipeline.BridgeRecipe` as a flag:
    top-level fields as ``--reward`` / ``--seed``, each stage's under its name (``--sl-num-epochs``)."""
    from bgm_model.training.pipeline import BridgeRecipe

    add_config_argument(parser, "BridgeRecipe (or a run's recipe.json / demo_config.json)")
    add_dataclass_arguments(parser, BridgeRecipe, defaults=defaults, aliases=RECIPE_FLAG_ALIASES,
                            title="training recipe", namespace=RECIPE_NAMESPACE)


def recipe_from_args(args: argparse.Namespace, defaults: Any = None) -> Any:
    """The recipe of :func:`add_recipe_arguments`' flags over ``--config`` over ``defaults``."""
    from bgm_model.training.pipeline import BridgeRecipe

    config = None
    if getattr(args, "config", None) is not None:
        config = load_config_file(args.config)
        if isinstance(config.get("recipe"), dict):  # a run's recipe.json stamp or a demo_config.json
            config = config["recipe"]
    return dataclass_from_args(args, BridgeRecipe, defaults=defaults, config=config, namespace=RECIPE_NAMESPACE)


# ---------------------------------------------------------------------------------------------- internals
def _value_at(config: Any, path: str) -> Any:
    """``config``'s value at a dotted field path (``"sl.num_epochs"``)."""
    for name in path.split("."):
        config = getattr(config, name)
    return config


class _StoreEach(argparse.Action):
    """One flag that sets several destinations (e.g. the same layer count for SL and RL)."""

    dests: list[str]

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        for dest in self.dests:
            setattr(namespace, dest, values)


def _add_option_string(parser: argparse.ArgumentParser, action: argparse.Action, flag: str) -> None:
    """Give an existing flag another name (argparse has no public way after ``add_argument``); a name that is
    taken already is an error."""
    names = [flag]
    if isinstance(action, argparse.BooleanOptionalAction):
        names.append("--no-" + flag[2:])
    for name in names:
        if name in parser._option_string_actions:  # noqa: SLF001
            raise ValueError(f"flag {name} is already defined")
        parser._option_string_actions[name] = action  # noqa: SLF001
        action.option_strings.append(name)  # type: ignore[attr-defined]  # a list at runtime


def _add_fields(
    parser: argparse.ArgumentParser, cls: type, defaults: Any, ns: str, *, path: str, prefix: str,
    include: Collection[str] | None, exclude: Collection[str], help_overrides: Mapping[str, str], title: str,
    description: str | None, flags: dict[str, argparse.Action],
) -> Any:
    """Add the flags of ``cls``'s fields to a new group (nested dataclasses: a group each); returns the group."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title, description)
    nested = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude or (include is not None and f.name not in include):
            continue
        default = getattr(defaults, f.name)
        flag = "--" + (f"{prefix}-" if prefix else "") + f.name.replace("_", "-")
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            nested.append((f, default, flag[2:]))
            continue
        help_text = help_overrides.get(f.name) or f.metadata.get("help", "")
        flags[path + f.name] = _add_flag(group, flag, f"{ns}.{path}{f.name}", hints[f.name], default,
                                         help_text, where=f"{cls.__name__}.{f.name}")
    for f, default, sub_prefix in nested:
        _add_fields(parser, type(default), default, ns, path=f"{path}{f.name}.", prefix=sub_prefix,
                    include=None, exclude=f.metadata.get("cli_exclude", ()),
                    help_overrides=f.metadata.get("cli_help", {}),
                    title=f"{sub_prefix} ({type(default).__name__})", description=f.metadata.get("help"),
                    flags=flags)
    return group


def _add_flag(group: Any, flag: str, dest: str, hint: Any, default: Any, help_text: str, *, where: str
              ) -> argparse.Action:
    help_text = f"{help_text} (default: {default})".strip().replace("%", "%%")
    metavar = flag[2:].upper().replace("-", "_")
    if hint is bool:
        return group.add_argument(flag, dest=dest, default=argparse.SUPPRESS,
                                  action=argparse.BooleanOptionalAction, help=help_text)
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, type=type(choices[0]),
                                  choices=choices, help=help_text)
    kind, optional = _cli_type(hint, where)
    if optional:
        help_text = help_text[:-1] + "; 'none': None)"
    return group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, metavar=metavar,
                              type=_or_none(kind) if optional else kind, help=help_text)


def _cli_type(hint: Any, where: str) -> tuple[type, bool]:
    """(type a flag parses, whether ``none`` means None) for an annotation; TypeError when no flag fits."""
    if hint in (int, float, str):
        return hint, False
    if typing.get_origin(hint) in (Union, types.UnionType):
        members = typing.get_args(hint)
        rest = [m for m in members if m is not type(None)]
        optional = len(rest) < len(members)
        if len(rest) == 1 and rest[0] in (int, float, str):
            # a plain optional string takes any string, "none" included (a folder may be called that)
            return rest[0], optional and rest[0] is not str
        if str in rest:  # e.g. a reward name or a callable: a flag can only give the name
            return str, optional
    raise TypeError(f"{where}: no command-line flag for the type {hint!r}; exclude the field or give it a "
                    "simple type (int, float, str, bool, Literal, Optional)")


def _or_none(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse
