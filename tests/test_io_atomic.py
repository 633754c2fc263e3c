"""Atomic outputs: a live run's partial output survives another run; outputs are fsync'ed before use."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from isoview_dask.io import atomic
from isoview_dask.io.atomic import (FOREIGN_STALE_SECONDS, atomic_output, partial_is_live, partial_paths,
                                    reserve_temporary)


def _partial(final, owner: str):
    path = final.with_name(f".{final.name}{atomic.PARTIAL_MARK}{owner}")
    path.mkdir(parents=True)
    (path / "shard").write_bytes(b"x" * 10)
    return path


def test_temporary_name_records_this_process(tmp_path):
    final = tmp_path / "v.zarr"
    tmp = reserve_temporary(final)
    assert f"-p{os.getpid()}-" in tmp.name
    tmp.mkdir()
    # our own process's leftover is not "another live run"
    assert not partial_is_live(tmp, final)


def test_live_runs_partial_is_kept_dead_runs_removed(tmp_path):
    final = tmp_path / "v.zarr"
    host = atomic._host()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _partial(final, f"{'a' * 12}-p{sleeper.pid}-{host}")
        dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
        dead_proc.wait()
        dead = _partial(final, f"{'b' * 12}-p{dead_proc.pid}-{host}")
        legacy = _partial(final, "c" * 12)
        assert partial_is_live(live, final)
        assert not partial_is_live(dead, final) and not partial_is_live(legacy, final)
        with atomic_output(final) as tmp:
            tmp.write_text("done")
        assert final.read_text() == "done"
        assert live.exists() and (live / "shard").read_bytes() == b"x" * 10  # untouched
        assert not dead.exists() and not legacy.exists()
        assert partial_paths(final) == [live]
    finally:
        sleeper.kill()
        sleeper.wait()
    # once its owner is gone, the next write cleans it up
    with atomic_output(final, overwrite=True) as tmp:
        tmp.write_text("again")
    assert partial_paths(final) == []


def test_foreign_host_partial_live_until_stale(tmp_path):
    final = tmp_path / "v.tif"
    foreign = _partial(final, f"{'d' * 12}-p1-some-other-node.cluster")
    assert partial_is_live(foreign, final)
    old = time.time() - FOREIGN_STALE_SECONDS - 60
    os.utime(foreign, (old, old))
    assert not partial_is_live(foreign, final)


def test_commit_fsyncs_output_then_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name file descriptors")
    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    final = tmp_path / "out" / "v.zarr"
    with atomic_output(final) as tmp:
        (tmp / "c" / "0").mkdir(parents=True)
        (tmp / "c" / "0" / "0").write_bytes(b"shard")
        (tmp / "zarr.json").write_text("{}")
        tmp_name = tmp.name
    names = [os.path.basename(p) for p in synced]
    # every file and folder of the temporary tree, before the rename ...
    assert any(p.endswith(f"{tmp_name}/zarr.json") for p in synced)
    assert any(p.endswith(f"{tmp_name}/c/0/0") for p in synced)
    assert any(p.endswith(f"{tmp_name}/c/0") for p in synced)
    # ... then the folder holding the final name, after it
    assert synced[-1] == str(final.parent)
    assert names.index("zarr.json") < len(names) - 1
    assert final.is_dir() and (final / "c" / "0" / "0").read_bytes() == b"shard"
