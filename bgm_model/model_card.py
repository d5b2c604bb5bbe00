"""The README.md written next to a saved bridge (a hub-style model card)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from .modeling import BridgeModel

_TEMPLATE = """---
library_name: bgm-bridge
tags:
- bgm-bridge
- retrieval-augmented-generation
- reranking
pipeline_tag: text-ranking
---

# BGM bridge model

A bridge model in the style of BGM ("Bridging the Preference Gap between Retrievers and LLMs", Ke et al.,
ACL 2024): given a query and retrieved passages it outputs a sequence of passage IDs to show a frozen LLM —
a subset, in a new order, possibly with repeats.

- Architecture: `{architecture}` (Fusion-in-Decoder input: one encoder row per passage)
- Parameters: {n_params:,}
- Passage capacity: {max_passages}; at most {max_repeats} repeats of a passage; at most {max_output_length} IDs out
- Per-row budget: {max_query_tokens} query tokens + {max_passage_tokens} passage tokens
- Saved by bgm-bridge {version}

## Usage

```python
from bgm_model import BridgeModel

bridge = BridgeModel.from_pretrained("path/to/this/folder")
result = bridge.bridge("who wrote hamlet?", ["passage a", "passage b", "passage c"])
print(result.ids, result.scores)
```

With LangChain (`BGMDocumentCompressor`) or LlamaIndex (`BGMNodePostprocessor`), see the bgm-bridge README.
"""


def write_model_card(bridge: BridgeModel, path: Path) -> None:
    cfg = bridge.config
    text = _TEMPLATE.format(
        architecture=type(bridge.model).__name__,
        n_params=sum(p.numel() for p in bridge.model.parameters()),
        max_passages=cfg.max_passages,
        max_repeats=cfg.max_repeats,
        max_output_length=cfg.max_output_length,
        max_query_tokens=cfg.max_query_tokens,
        max_passage_tokens=cfg.max_passage_tokens,
        version=__version__,
    )
    (path / "README.md").write_text(text, encoding="utf-8")
