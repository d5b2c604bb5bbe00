"""The main job's pipeline end to end (toy reader on bundled HotpotQA; the real run is `make demo`)."""

from __future__ import annotations

import json

import pytest

from bgm_model.cli.main import build_parser


def test_demo_cli_documents_every_setting() -> None:
    from bgm_integrations.demo import DemoConfig

    help_text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()  # type: ignore[union-attr]
    for name in DemoConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text


@pytest.mark.slow
def test_demo_pipeline_runs_end_to_end(tmp_path) -> None:
    from bgm_integrations.demo import DemoConfig, run_demo
    from bgm_model import BridgeModel
    from bgm_model.training.toy import ToyReader

    cfg = DemoConfig(dataset="hotpotqa", train_questions=6, dev_questions=4, output_dir=str(tmp_path / "out"),
                     sl_epochs=1, rl_steps=1, rl_batch_size=2)
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
    from bgm_model.cli.common import make_reader
    from bgm_model.training.toy import ToyReader

    assert isinstance(make_reader("toy"), ToyReader)
    with pytest.raises(SystemExit, match="unknown --reader 'gpt-9'"):
        make_reader("gpt-9")
    args = build_parser().parse_args(["demo", "--reader", "toy", "--train-questions", "3"])
    assert args.reader == "toy" and args.train_questions == 3
