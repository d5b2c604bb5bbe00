"""The main job's pipeline end to end (toy reader on bundled HotpotQA; the real run is `make demo`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bgm_cli.main import build_parser


def test_demo_cli_documents_every_setting() -> None:
    """Every demo setting is a flag; the recipe's are too (``tests/cli/test_recipe_flags.py``)."""
    from bgm_cli.demo_app import DemoConfig

    help_text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()  # type: ignore[union-attr]
    for name in DemoConfig.__dataclass_fields__:
        if name != "recipe":
            assert "--" + name.replace("_", "-") in help_text
    assert "--config FILE" in help_text and "--sl-num-epochs" in help_text


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end(tmp_path) -> None:
    from bgm_cli.demo_app import DemoConfig, run_demo
    from bgm_model import BridgeModel
    from bgm_model.training.pipeline import BridgeRecipe
    from bgm_model.training.toy import ToyReader

    recipe = BridgeRecipe.from_dict({"sl": {"num_epochs": 1}, "rl": {"max_steps": 1, "batch_size": 2}})
    cfg = DemoConfig(dataset="hotpotqa", train_questions=6, dev_questions=4, output_dir=str(tmp_path / "out"),
                     recipe=recipe)
    result = run_demo(cfg, reader=ToyReader(cache=False))
    out = tmp_path / "out"
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 6 and all(len(t["passages"]) == 10 for t in traces)
    assert len((out / "silver.jsonl").read_text().splitlines()) == 6
    report = json.loads(result.report_path.read_text())
    names = [m["name"] for m in report["methods"]]
    assert names[-2:] == ["BGM SL", "BGM SL+RL"] and "all, retriever order" in names
    assert all(p.exists() and p.stat().st_size > 10_000 for p in result.plots)
    assert isinstance(BridgeModel.from_pretrained(result.bridge_dir), BridgeModel)


def test_demo_reader_option_builds_the_named_reader() -> None:
    from bgm_cli.common import make_reader
    from bgm_cli.demo import config_from_args
    from bgm_model.training.toy import ToyReader

    assert isinstance(make_reader("toy"), ToyReader)
    with pytest.raises(SystemExit, match="unknown --reader 'gpt-9'"):
        make_reader("gpt-9")
    cfg = config_from_args(build_parser().parse_args(["demo", "--reader", "toy", "--train-questions", "3"]))
    assert cfg.reader == "toy" and cfg.train_questions == 3 and cfg.dataset == "nq_open"


def test_demo_flags_and_config_file_reach_the_recipe(tmp_path) -> None:
    """The short flags the README and docs use still work; a recipe file fills what the flags leave out; what
    the demo wrote (demo_config.json) can be given back as --config."""
    from bgm_cli.demo import config_from_args
    from bgm_cli.demo_app import DemoConfig

    (tmp_path / "recipe.yaml").write_text("sl:\n  num_epochs: 5\n  learning_rate: 0.001\nrl:\n  max_steps: 9\n")
    args = build_parser().parse_args(["demo", "--config", str(tmp_path / "recipe.yaml"), "--sl-epochs", "2",
                                      "--rl-samples", "3", "--silver-top-m", "none", "--seed", "7"])
    recipe = config_from_args(args).recipe
    assert (recipe.sl.num_epochs, recipe.sl.learning_rate, recipe.rl.max_steps) == (2, 0.001, 9)
    assert (recipe.rl.num_samples, recipe.silver.top_m, recipe.seed) == (3, None, 7)
    assert recipe.rl.batch_size == DemoConfig().recipe.rl.batch_size  # untouched: the demo's default

    written = tmp_path / "demo_config.json"
    written.write_text(json.dumps({"dataset": "hotpotqa", "recipe": recipe.to_dict()}))
    again = config_from_args(build_parser().parse_args(["demo", "--config", str(written)]))
    assert again.recipe == recipe and again.dataset == "nq_open"  # --config is the recipe only
    with pytest.raises(SystemExit, match="num_samples"):
        config_from_args(build_parser().parse_args(["demo", "--rl-num-samples", "1"]))


def test_old_demo_and_cli_paths_still_work_and_stay_lazy() -> None:
    """``bgm_integrations.demo`` and ``bgm_model.cli.main`` are deprecated aliases of the new homes; importing
    the adapters or the core package loads no command-line code."""
    code = (
        "import sys, warnings; import bgm_integrations, bgm_integrations.demo, bgm_model.cli.main\n"
        "assert not [m for m in sys.modules if m.startswith('bgm_cli')], 'imported too early'\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from bgm_integrations.demo import DemoConfig\n"
        "    from bgm_model.cli.main import build_parser\n"
        "import bgm_cli.demo_app, bgm_cli.main\n"
        "assert DemoConfig is bgm_cli.demo_app.DemoConfig and build_parser is bgm_cli.main.build_parser\n"
        "assert [x.category for x in w] == [DeprecationWarning] * 2, w\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    run = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-m", "bgm_model.cli.main", "--help"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "moved to bgm_cli.main" in run.stderr
    run = subprocess.run([sys.executable, "-m", "bgm_model.cli.main", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "usage: bgm" in run.stdout
