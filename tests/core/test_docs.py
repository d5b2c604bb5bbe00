"""Every ```python block of the README and docs/usage.md runs as written (in order, sharing a namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._helpers import make_tiny_bridge

ROOT = Path(__file__).resolve().parents[2]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("name", ["docs/usage.md"])
def test_doc_snippets_run(name: str) -> None:
    from bgm_model import BridgeModel

    blocks = _blocks(ROOT / name)
    assert blocks, f"{name} has no python snippets"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, name, "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["bridge"], BridgeModel)


def test_readme_snippets_run() -> None:
    # The README loads a trained bridge from disk; a tiny random one stands in for it here.
    blocks = _blocks(ROOT / "README.md")
    assert len(blocks) >= 2
    namespace: dict = {"bridge": make_tiny_bridge()}
    for block in blocks:
        exec(compile(block.replace('BridgeModel.from_pretrained("path/to/bridge")', "bridge"), "README.md", "exec"), namespace)  # noqa: S102


def test_results_are_labelled_by_date_and_commit_not_by_work_period() -> None:
    texts = {p.relative_to(ROOT): p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}
    labelled = [f"{path}: {m.group(0)!r}" for path, text in texts.items()
                for m in re.finditer(r"\bsessions? ?-?\d+|\bthis session\b|\(session", text, flags=re.I)]  # fmt: skip
    assert labelled == []
    headings = re.findall(r"^#+ .*\((\d{4}-\d\d-\d\d), commit ([0-9a-f]{7})\)$", texts[Path("docs/benchmarks.md")], flags=re.M)
    assert len(headings) >= 6, "dated result sections name their commit"
