"""A persistent, process-safe cache of reader calls, so re-running synthesis or evaluation costs nothing.

One SQLite file per cache directory. Keys are the sha256 of (reader name, call kind, full prompt[, answer]);
values are JSON. SQLite's own locking (WAL journal + busy timeout) makes the file safe to share between
processes; each process (and each fork) opens its own connection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Environment variable that overrides the default cache directory.
CACHE_DIR_ENV = "BGM_CACHE_DIR"
_DB_NAME = "reader_calls.sqlite"
# SQLite limits the number of host parameters per statement (999 on old builds).
_CHUNK = 500


def default_cache_dir() -> Path:
    """``$BGM_CACHE_DIR`` if set, else ``~/.cache/bgm-bridge/reader``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bgm-bridge" / "reader"


def call_key(reader_name: str, kind: str, prompt: str, answer: str | None = None) -> str:
    """The cache key of one call: sha256 over the reader name, call kind, prompt and (for scoring) answer."""
    payload = json.dumps([reader_name, kind, prompt, answer], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    writes: int = 0


class CallCache:
    """Persistent key -> JSON value store for reader calls.

    Args:
        directory: where the SQLite file lives; ``None`` means :func:`default_cache_dir`.
        timeout: seconds a writer waits for another process's lock before failing.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, timeout: float = 60.0) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.path = self.directory / _DB_NAME
        self.timeout = timeout
        self.counters = CacheCounters()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._connect()  # fail early (unwritable directory) rather than at the first call

    def __repr__(self) -> str:
        return f"CallCache({str(self.directory)!r})"

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross a fork: reopen in the child.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.commit()
        except (OSError, sqlite3.Error) as e:
            raise OSError(
                f"cannot open the reader call cache at {self.path}: {e}. "
                f"Choose another directory with ${CACHE_DIR_ENV} or the reader's `cache=` argument."
            ) from e
        self._conn, self._pid = conn, os.getpid()
        return conn

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of those ``keys`` that are present; counts hits and misses."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        with self._lock:
            conn = self._connect()
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT key, value FROM calls WHERE key IN ({marks})", chunk).fetchall()
                found.update((k, json.loads(v)) for k, v in rows)
            self.counters.hits += len(found)
            self.counters.misses += len(wanted) - len(found)
        return found

    def put_many(self, items: Mapping[str, Any]) -> None:
        """Store JSON-serialisable values; an existing key is overwritten (same call, same result)."""
        if not items:
            return
        rows = [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()]
        with self._lock:
            conn = self._connect()
            with conn:  # one transaction: other processes never see half a batch
                conn.executemany("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", rows)
            self.counters.writes += len(rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def clear(self) -> None:
        with self._lock:
            conn = self._connect()
            with conn:
                conn.execute("DELETE FROM calls")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for worker processes: they reconnect to the same file.
        state = self.__dict__.copy()
        state.update(_conn=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def resolve_cache(cache: CallCache | str | os.PathLike[str] | bool | None) -> CallCache | None:
    """``True`` -> the default directory, ``False``/``None`` -> no cache, a path -> a cache there."""
    if cache is True:
        return CallCache()
    if cache is False or cache is None:
        return None
    if isinstance(cache, CallCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return CallCache(cache)
    raise TypeError(
        f"cache must be a CallCache, a directory path, True or False/None; got {type(cache).__name__}"
    )
