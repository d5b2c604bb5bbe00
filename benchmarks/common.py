"""What every benchmark needs: where the repository and the shared data are, the command line that ran, and
passages rendered exactly as the library renders them (so a benchmark reads what the library reads)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgm_model.data import render_passage

__all__ = ["RESULTS", "ROOT", "command_line", "paired_rows", "parse_with_recipe", "passage_text", "shared_data_dir"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def shared_data_dir(dataset: str | None = None) -> Path:
    """``../shared/data`` beside the repository (or ``/work/shared/data``), optionally one dataset's folder."""
    for base in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        candidate = base / dataset if dataset else base
        if candidate.is_dir():
            return candidate
    what = f"../shared/data/{dataset}" if dataset else "../shared/data"
    raise FileNotFoundError(f"{what} not found next to the repository; pass the data files explicitly")


def passage_text(record: dict[str, Any]) -> str:
    """A corpus or candidate record (``{"title", "text"}``) as the bridge and the reader see it."""
    return render_passage(record.get("title"), record["text"])


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, for the JSON it writes."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m", f"benchmarks.{module}", *args])


def parse_with_recipe(parser: argparse.ArgumentParser, argv: Sequence[str] | None, defaults: Any) -> argparse.Namespace:
    """Parse ``argv`` with the reader options and every training-recipe flag (``--reward``, ``--seed``,
    ``--validation-fraction``, ``--sl-*``, ``--rl-*``, ``--silver-*``, ``--bridge-*``, ``--config``) added;
    ``args.recipe`` is the recipe they describe over ``defaults`` (a bad one is a usage error)."""
    from bgm_cli.args import add_recipe_arguments, recipe_from_args
    from bgm_cli.common import add_reader_arguments

    add_reader_arguments(parser)
    add_recipe_arguments(parser, defaults)
    args = parser.parse_args(argv)
    try:
        args.recipe = recipe_from_args(args, defaults)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    return args


def paired_rows(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], metric: str) -> dict[str, float]:
    """Mean of ``a - b`` in ``metric`` over the same questions (per-question rows with an ``id``, as an
    evaluation report holds them) and its bootstrap 95% CI."""
    from bgm_model.evaluation import bootstrap_ci

    b_by_id = {r["id"]: r[metric] for r in rows_b}
    if {r["id"] for r in rows_a} != set(b_by_id):
        raise ValueError("paired differences need the same questions on both sides")
    diffs = [r[metric] - b_by_id[r["id"]] for r in rows_a]
    low, high = bootstrap_ci(diffs)
    return {"mean": sum(diffs) / len(diffs), "ci_low": low, "ci_high": high}
