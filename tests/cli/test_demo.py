"""The main job's pipeline end to end (toy reader on bundled HotpotQA; the real run is `make demo`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bgm_cli.errors import UsageError
from bgm_cli.main import build_parser


def test_demo_cli_documents_every_setting() -> None:
    """Every demo setting is a flag; the recipe's are too (``tests/cli/test_recipe_flags.py``)."""
    from bgm_cli.common import ReaderOptions
    from bgm_cli.demo_app import DemoConfig

    help_text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()  # type: ignore[union-attr]
    reader_flags = {"cache": "reader_cache", "device": "reader_device"}
    names = [n for n in DemoConfig.__dataclass_fields__ if n not in ("recipe", "reader_options")]
    names += [reader_flags.get(n, n) for n in ReaderOptions.__dataclass_fields__]
    for name in names:
        assert "--" + name.replace("_", "-") in help_text
    assert "--config FILE" in help_text and "--sl-num-epochs" in help_text


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end(tmp_path) -> None:
    from bgm_cli.demo_app import DemoConfig, run_demo
    from bgm_model import BridgeModel
    from bgm_model.training.pipeline import BridgeRecipe
    from bgm_model.training.toy import ToyReader

    recipe = BridgeRecipe.from_dict({"sl": {"num_epochs": 1}, "rl": {"max_steps": 1, "batch_size": 2},
                                     "validation_fraction": 0.5})
    cfg = DemoConfig(dataset="hotpotqa", train_questions=6, dev_questions=4, output_dir=str(tmp_path / "out"),
                     recipe=recipe)
    result = run_demo(cfg, reader=ToyReader(cache=False))
    out = tmp_path / "out"
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 6 and all(len(t["passages"]) == 10 for t in traces)
    assert len((out / "silver.jsonl").read_text().splitlines()) == 3  # the other 3 are validation questions
    report = json.loads(result.report_path.read_text())
    # the table ends with the verdict: the bridge against the best fixed arrangement on those 3
    assert result.verdict and result.table.endswith(result.verdict)
    assert report["validation_verdict"]["questions"] == 3
    names = [m["name"] for m in report["methods"]]
    assert names[-2:] == ["BGM SL", "BGM SL+RL"] and "all, retriever order" in names
    assert all(p.exists() and p.stat().st_size > 10_000 for p in result.plots)
    assert isinstance(BridgeModel.from_pretrained(result.bridge_dir), BridgeModel)


def test_demo_reader_option_builds_the_named_reader() -> None:
    from bgm_cli.common import make_reader
    from bgm_cli.demo import config_from_args
    from bgm_model.training.toy import ToyReader

    assert isinstance(make_reader("toy"), ToyReader)
    with pytest.raises(UsageError, match="unknown --reader 'gpt-9'"):
        make_reader("gpt-9")
    cfg = config_from_args(build_parser().parse_args(["demo", "--reader", "toy", "--train-questions", "3"]))
    assert cfg.reader == "toy" and cfg.train_questions == 3 and cfg.dataset == "nq_open"
    assert cfg.recipe.validation_fraction == 0.25 and not cfg.recipe.require_better  # the verdict, not a refusal
    strict = config_from_args(build_parser().parse_args(["demo", "--require-better"]))
    assert strict.recipe.require_better


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
    with pytest.raises(UsageError, match="num_samples"):
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


def test_toy_demo_prints_absolute_paths_and_the_loading_code_and_removes_checkpoints(
        tmp_path, monkeypatch, capsys) -> None:
    """``bgm demo`` end to end on the toy reader, with a tiny bridge in place of the MiniLM warm start."""
    import bgm_model.training.pipeline as pipeline
    from bgm_cli.main import main
    from bgm_model import BridgeConfig
    from tests._helpers import make_tiny_bridge

    real_train_bridge, seen = pipeline.train_bridge, {}

    def tiny_train_bridge(*args, **kwargs):
        seen.update(kwargs)
        config = BridgeConfig(max_passages=16, max_query_tokens=16, max_passage_tokens=32, max_output_length=3)
        return real_train_bridge(*args, bridge=make_tiny_bridge(config), **kwargs)

    monkeypatch.setattr(pipeline, "train_bridge", tiny_train_bridge)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--reader", "toy", "--dataset", "hotpotqa", "--train-questions", "3", "--dev-questions",
                 "2", "--sl-epochs", "1", "--rl-steps", "1", "--rl-samples", "2", "--rl-batch-size", "3",
                 "--freeze-encoder-layers", "1", "--output-dir", "out"]) == 0
    out = (tmp_path / "out").resolve()
    printed = capsys.readouterr().out
    bridge = out / "bridge"
    assert f"trained bridge: {bridge}\n" in printed
    assert f"report: {out / 'report.json'}\n" in printed
    assert f"plots: {out / 'training_curves.png'}, {out / 'methods.png'}\n" in printed
    assert f"compressor = BGMDocumentCompressor.from_pretrained({str(bridge)!r})" in printed
    assert f"postprocessor = BGMNodePostprocessor.from_pretrained({str(bridge)!r})" in printed
    assert "from bgm_integrations.langchain import BGMDocumentCompressor" in printed
    assert "from bgm_integrations.llama_index import BGMNodePostprocessor" in printed

    assert seen["keep_checkpoints"] is False
    assert not [p for p in out.rglob("checkpoint*") if p.is_dir()]  # ~0.3 GB each with the real bridge
    for name in ("training_curves.png", "methods.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name


def test_keep_checkpoints_is_a_demo_flag() -> None:
    from bgm_cli.demo import config_from_args

    assert config_from_args(build_parser().parse_args(["demo", "--keep-checkpoints"])).keep_checkpoints is True
    assert config_from_args(build_parser().parse_args(["demo"])).keep_checkpoints is False


def test_the_printed_snippet_loads_the_bridge(tmp_path) -> None:
    """The code ``bgm demo`` prints runs as printed."""
    from bgm_cli.demo_app import usage_snippet
    from tests._helpers import make_tiny_bridge

    make_tiny_bridge().save_pretrained(tmp_path / "bridge")
    scope: dict[str, object] = {}
    exec(usage_snippet(tmp_path / "bridge"), scope)  # noqa: S102
    assert type(scope["compressor"]).__name__ == "BGMDocumentCompressor"
    assert type(scope["postprocessor"]).__name__ == "BGMNodePostprocessor"


def test_plots_are_written_with_one_step_or_none(tmp_path) -> None:
    """The demo's two figures: non-empty PNGs, also for runs that logged one step or skipped RL."""
    from bgm_model.evaluation.evaluate import EvaluationReport, MethodResult
    from bgm_model.evaluation.plots import plot_methods, plot_training_curves

    rows = [{"em": float(i % 2), "f1": 0.5, "contains": float(i % 3 == 0)} for i in range(12)]
    methods = [MethodResult(name, 0.5, 0.5, 0.33, tokens, 2.0, 0.0, rows) for name, tokens in
               (("no retrieval", 50.0), ("all, retriever order", 900.0), ("BGM SL+RL", 300.0))]
    report = EvaluationReport(methods, 12, "toy", 0.0, 0)
    paths = [plot_methods(tmp_path / "methods.png", report, "contains"),
             plot_training_curves(tmp_path / "one.png", [{"step": 1, "loss": 3.2}],
                                  [{"step": 1, "reward": 0.0, "kl": 0.0}]),
             plot_training_curves(tmp_path / "no_rl.png", [{"step": s, "loss": 1 / s} for s in range(1, 9)], [])]
    for path in paths:
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000, path
