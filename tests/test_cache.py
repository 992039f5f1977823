"""The cache verifies what it loads: digests written with each entry, checked on load; a changed or
truncated entry is rebuilt with a warning; temporary entries of killed writers are removed."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from otu.cache import (
    cached_dir,
    remove_stale_temps,
    verified_file,
    write_atomically,
    write_verified_file,
)


def builder(calls: list[str], text: str):
    def build(tmp):
        calls.append(text)
        (tmp / "model.pt").write_bytes(text.encode() * 100)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "info.json").write_text(json.dumps({"text": text}))

    return build


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_verified_entry_is_built_once(tmp_path):
    calls: list[str] = []
    entry = tmp_path / "vision-abc"
    cached_dir(entry, builder(calls, "a"))
    cached_dir(entry, builder(calls, "b"))
    assert calls == ["a"] and (entry / "model.pt").read_bytes() == b"a" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vision-abc"]


def test_a_changed_or_truncated_entry_is_rebuilt_with_a_warning(tmp_path, caplog):
    calls: list[str] = []
    entry = tmp_path / "vision-abc"
    cached_dir(entry, builder(calls, "a"))
    (entry / "model.pt").write_bytes(b"b" * 100)  # a retrained checkpoint copied over the original
    with caplog.at_level(logging.WARNING, logger="otu.cache"):
        cached_dir(entry, builder(calls, "a"))
    assert calls == ["a", "a"] and (entry / "model.pt").read_bytes() == b"a" * 100
    assert "failed its digest check" in caplog.text and str(entry) in caplog.text
    with open(entry / "sub" / "info.json", "r+b") as handle:  # truncated
        handle.truncate(3)
    cached_dir(entry, builder(calls, "a"))
    assert calls == ["a", "a", "a"] and json.loads((entry / "sub" / "info.json").read_text()) == {"text": "a"}


def test_an_entry_without_digests_is_not_trusted(tmp_path):
    entry = tmp_path / "llm-abc"
    entry.mkdir()
    (entry / "model.pt").write_text("from an older otu, or copied in by hand")
    calls: list[str] = []
    cached_dir(entry, builder(calls, "a"))
    assert calls == ["a"] and (entry / "model.pt").read_bytes() == b"a" * 100


def test_a_concurrent_writer_keeps_the_first_entry(tmp_path):
    final = tmp_path / "vision-abc"
    write_atomically(final, lambda tmp: (tmp / "original.pt").write_text("theirs"))
    write_atomically(final, lambda tmp: (tmp / "original.pt").write_text("ours"))
    assert (final / "original.pt").read_text() == "theirs"
    calls: list[str] = []
    cached_dir(final, builder(calls, "a"))
    assert calls == [] and (final / "original.pt").read_text() == "theirs"


def test_a_file_entry_with_an_edited_value_is_rebuilt(tmp_path):
    path = tmp_path / "reference-metrics-abc.json"
    assert not verified_file(path)
    write_verified_file(path, lambda tmp: tmp.write_text(json.dumps({"acc": 0.9})))
    assert verified_file(path)
    path.write_text(json.dumps({"acc": 1.0}))  # edited by hand
    assert not verified_file(path) and not path.exists()


def test_temporary_entries_of_dead_writers_are_removed(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".vision-abc~{dead_pid()}@{host}~x1"
    dead.mkdir()
    (dead / "half.pt").write_text("half")
    dead_file = tmp_path / f".trials.parquet~{dead_pid()}@{host}~y.tmp"
    dead_file.write_text("half")
    live = tmp_path / f".vision-abc~{os.getpid()}@{host}~x2"
    live.mkdir()
    other_host = tmp_path / f".vision-abc~{dead_pid()}@not-{host}~x3"
    other_host.mkdir()
    assert sorted(remove_stale_temps(tmp_path)) == sorted([dead, dead_file])
    assert live.is_dir() and other_host.is_dir()
    calls: list[str] = []
    cached_dir(tmp_path / "vision-def", builder(calls, "a"))  # a writer cleans up before it builds
    assert not dead.exists()


def test_reference_metrics_are_keyed_by_the_cache_entries_the_models_came_from():
    """A prepared task names its models' cache entries (``cache_id``): an otu that builds its models
    differently (a new entry for the same spec) does not get the old models' cached reference metrics."""
    from types import SimpleNamespace

    from otu.runtime.experiment import _reference_key
    from otu.spec import load_experiment

    exp = load_experiment(Path(__file__).resolve().parents[1] / "sweeps/experiments/dlfd_digits.yaml")
    old, new = SimpleNamespace(cache_id="vision-aaa"), SimpleNamespace(cache_id="vision-bbb")
    assert _reference_key(exp, old) == _reference_key(exp, SimpleNamespace(cache_id="vision-aaa"))
    assert _reference_key(exp, old) != _reference_key(exp, new)
    assert _reference_key(exp, object()) == _reference_key(exp, None)  # a family without cache entries
