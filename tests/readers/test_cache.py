"""The persistent call cache: keys, persistence across instances, several processes, counters."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from bgm_model.readers.call_cache import CallCache, call_key, default_cache_dir, resolve_cache


def _writer(directory: str, start: int) -> None:
    cache = CallCache(directory)
    for i in range(start, start + 50):
        cache.put_many({f"k{i}": i, f"shared{i % 10}": "same"})


def test_keys_depend_on_every_part():
    base = call_key("r", "score", "prompt", "a")
    assert (
        len(
            {
                base,
                call_key("r2", "score", "prompt", "a"),
                call_key("r", "answer", "prompt", "a"),
                call_key("r", "score", "prompt!", "a"),
                call_key("r", "score", "prompt", "b"),
            }
        )
        == 5
    )
    assert base == call_key("r", "score", "prompt", "a")


def test_values_persist_and_counters_count(tmp_path):
    cache = CallCache(tmp_path)
    cache.put_many({"a": "x", "b": -1.5, "c": None})
    reopened = CallCache(tmp_path)
    assert reopened.get_many(["a", "b", "c", "missing", "a"]) == {"a": "x", "b": -1.5, "c": None}
    assert (reopened.counters.hits, reopened.counters.misses) == (3, 1)
    assert len(reopened) == 3
    reopened.clear()
    assert len(cache) == 0


def test_several_processes_write_one_cache(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (0, 50, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = CallCache(tmp_path)
    assert len(cache) == 150 + 10
    assert cache.get_many([f"k{i}" for i in range(150)]) == {f"k{i}": i for i in range(150)}


def test_default_dir_and_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("BGM_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert resolve_cache(True).directory == tmp_path / "env"
    assert resolve_cache(False) is None and resolve_cache(None) is None
    assert resolve_cache(tmp_path / "x").path.parent == tmp_path / "x"
    with pytest.raises(TypeError, match="cache must be"):
        resolve_cache(3)


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="BGM_CACHE_DIR"):
        CallCache(blocker / "sub")
