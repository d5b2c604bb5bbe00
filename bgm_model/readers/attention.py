"""Deprecated: moved to :mod:`bgm_model.readers.hf.attention`; this alias keeps old imports working."""

from bgm_model.readers.hf.attention import (  # noqa: F401
    READER_ATTENTION,
    reader_sdpa_forward,
    supports_reader_attention,
    use_reader_attention,
)
