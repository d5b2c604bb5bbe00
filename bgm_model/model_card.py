"""The model card (README.md) saved next to a bridge, rendered from data rather than a fixed template.

What the card says is collected while the bridge is built and trained, as sentence-transformers' model card
callback does: the architecture and settings from the bridge itself, and one :class:`TrainingRecord` per
training stage (its settings, data sizes and metrics, e.g. the validation table against the fixed
arrangements). The records travel with the checkpoint (``config.json``, key ``bgm_bridge_training``), so the
RL bridge's card still tells how its SL start was trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .version import __version__

__all__ = ["ModelCardData", "TrainingRecord", "render_model_card", "TRAINING_KEY"]

#: Key of the training records in the saved config.json.
TRAINING_KEY = "bgm_bridge_training"


@dataclass
class TrainingRecord:
    """One training stage of a bridge (or a whole recipe run): what it was given and what it measured."""

    stage: str
    """``"sl"``, ``"rl"``, ``"recipe"`` ..."""
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    """Data sizes and sources, e.g. ``{"train_examples": 800, "dev_examples": 200, "silver_file": "..."}``."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Measured results, e.g. ``{"dev_reward": 0.43}``; a ``"table"`` entry (list of row dicts) is rendered."""
    date: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able, with a table stored as columns + rows (config.json is written with sorted keys, which
        would reorder a table's columns)."""
        data = json.loads(json.dumps(asdict(self), default=str))
        table = data["metrics"].get("table")
        if isinstance(table, list) and all(isinstance(r, dict) for r in table):
            columns = list(dict.fromkeys(k for row in table for k in row))
            data["metrics"]["table"] = {"columns": columns, "rows": [[r.get(c) for c in columns] for r in table]}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingRecord:
        known = {"stage", "settings", "data", "metrics", "date"}
        record = cls(**{k: v for k, v in data.items() if k in known})
        table = record.metrics.get("table")
        if isinstance(table, dict) and isinstance(table.get("columns"), list):
            columns = table["columns"]
            record.metrics = {**record.metrics, "table": [dict(zip(columns, row)) for row in table.get("rows", [])]}
        return record


@dataclass
class ModelCardData:
    """Everything the card shows. ``BridgeModel`` fills the architecture part; trainers append ``training``."""

    architecture: str = ""
    n_params: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    training: list[TrainingRecord] = field(default_factory=list)
    version: str = __version__

    def add_training(self, record: TrainingRecord) -> None:
        # A stage run again (e.g. resumed, or the recipe re-run) replaces its earlier record.
        self.training = [r for r in self.training if r.stage != record.stage] + [record]

    def training_to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.training]


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_value(row.get(c, "")) for c in columns) + " |" for row in rows]
    return lines


def render_model_card(data: ModelCardData) -> str:
    from huggingface_hub import ModelCardData as HubCardData

    s = data.settings
    header = HubCardData(
        library_name="bgm-bridge", pipeline_tag="text-ranking",
        tags=["bgm-bridge", "retrieval-augmented-generation", "reranking"],
    )
    lines = [
        "---",
        header.to_yaml(),
        "---",
        "",
        "# BGM bridge model",
        "",
        'A bridge model in the style of BGM ("Bridging the Preference Gap between Retrievers and LLMs", Ke et al.,',
        "ACL 2024): given a query and retrieved passages it outputs a sequence of passage IDs to show a frozen LLM —",
        "a subset, in a new order, possibly with repeats.",
        "",
        f"- Architecture: `{data.architecture}` (Fusion-in-Decoder input: one encoder row per passage)",
        f"- Parameters: {data.n_params:,}",
        f"- Passage capacity: {s.get('max_passages')}; at most {s.get('max_repeats')} repeats of a passage; "
        f"at most {s.get('max_output_length')} IDs out",
        f"- Per-row budget: {s.get('max_query_tokens')} query tokens + {s.get('max_passage_tokens')} passage tokens",
        f"- Saved by bgm-bridge {data.version}",
        "",
        "## Training",
        "",
    ]
    if not data.training:
        lines += ["Not trained with bgm-bridge's trainers (no training record).", ""]
    for record in data.training:
        lines += [f"### {record.stage}" + (f" ({record.date})" if record.date else ""), ""]
        for title, values in (("Data", record.data), ("Settings", record.settings)):
            if values:
                lines.append(f"- {title}: " + ", ".join(f"{k}={_value(v)}" for k, v in values.items()))
        scalars = {k: v for k, v in record.metrics.items() if k != "table"}
        if scalars:
            lines.append("- Metrics: " + ", ".join(f"{k}={_value(v)}" for k, v in scalars.items()))
        table = record.metrics.get("table")
        if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
            lines += ["", *_table(table)]
        lines.append("")
    lines += [
        "## Usage",
        "",
        "```python",
        "from bgm_model import BridgeModel",
        "",
        'bridge = BridgeModel.from_pretrained("path/to/this/folder")',
        'result = bridge.bridge("who wrote hamlet?", ["passage a", "passage b", "passage c"])',
        "print(result.ids, result.scores)",
        "```",
        "",
        "With LangChain (`BGMDocumentCompressor`) or LlamaIndex (`BGMNodePostprocessor`), see the bgm-bridge README.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(data: ModelCardData, path: Any) -> None:
    """Write ``README.md`` into the folder ``path`` (a ``huggingface_hub.ModelCard``: pushable to a hub as is)."""
    from pathlib import Path

    from huggingface_hub import ModelCard

    ModelCard(render_model_card(data)).save(Path(path) / "README.md")
