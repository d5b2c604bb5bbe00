"""Deprecated: renamed :mod:`bgm_model.readers.call_cache` (a cache of reader *calls*, not a KV cache);
this alias keeps old imports working."""

from bgm_model.readers.call_cache import (  # noqa: F401
    CACHE_DIR_ENV,
    CacheCounters,
    CallCache,
    call_key,
    default_cache_dir,
    resolve_cache,
)
