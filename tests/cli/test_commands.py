"""The search settings of ``bgm synthesize`` come from SilverConfig's fields, with the old flag spellings kept."""

from __future__ import annotations

import pytest

from bgm_cli.main import build_parser
from bgm_cli.synthesize import silver_config
from bgm_model.training.silver import SilverConfig


def _config(*flags: str) -> SilverConfig:
    return silver_config(build_parser().parse_args(["synthesize", "in.jsonl", "-o", "out.jsonl", *flags]))


def test_synthesize_defaults_are_silver_config_defaults() -> None:
    assert _config() == SilverConfig()
    assert _config("--naive") == SilverConfig.naive()


def test_synthesize_flags_set_the_search_settings() -> None:
    config = _config("--max-length", "3", "--max-repeats", "1", "--top-m", "0", "--no-stop-at-max",
                     "--no-secondary-extends", "--lockstep", "4", "--secondary", "None", "--min-gain", "0.01")
    assert config == SilverConfig(max_length=3, max_repeats=1, top_m=None, stop_at_max=False,
                                  secondary_extends=False, lockstep=4, secondary=None, min_gain=0.01)
    assert _config("--top-m", "none").top_m is None and _config("--top-m", "2").top_m == 2
    # plain greedy, then what the flags say
    assert _config("--naive", "--max-length", "3") == SilverConfig.naive(max_length=3)
    with pytest.raises(ValueError, match="max_repeats"):
        _config("--max-repeats", "0")
