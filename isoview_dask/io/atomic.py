"""Atomic outputs: write under a hidden temporary name, rename when complete.

A killed run must never leave a half-written volume that looks finished.
Every writer in :mod:`isoview_dask.io` therefore writes into a sibling path
``.<name>.partial-<token>-p<pid>-<host>`` and renames it to its final name
only after the last byte is on disk (every file and folder of it fsync'ed,
then the parent folder after the rename). The temporary name says which
process reserved it: a leftover of a killed run (its process gone from this
host, or an old-style name without an owner) is removed the next time the
same output is written, while another live run's partial output is left
alone, so two runs into one output folder never destroy each other's work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator

from ..errors import OutputExistsError

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"
#: A partial output reserved on another host is treated as abandoned after this many seconds
#: without a change (its owner cannot be asked whether it still runs).
FOREIGN_STALE_SECONDS = 24 * 3600
_OWNER = re.compile(r"^[0-9a-f]{12}-p(?P<pid>\d+)-(?P<host>.+)$")


def _host() -> str:
    return socket.gethostname() or "localhost"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def partial_is_live(partial: str | os.PathLike, final: str | os.PathLike) -> bool:
    """True when ``partial`` (a temporary path of ``final``) belongs to a run that may still be writing it.

    Its name records the reserving process and host. On this host the
    process is asked directly; on another host the partial counts as live
    until it has not changed for :data:`FOREIGN_STALE_SECONDS`. Names without
    an owner (written by older versions) are never live.
    """
    partial, final = Path(partial), Path(final)
    owner = _OWNER.match(partial.name[len(f".{final.name}{PARTIAL_MARK}"):])
    if owner is None:
        return False
    pid, host = int(owner["pid"]), owner["host"]
    if host == _host():
        return pid != os.getpid() and _pid_alive(pid)
    try:
        age = time.time() - partial.stat().st_mtime
    except FileNotFoundError:
        return False
    return age < FOREIGN_STALE_SECONDS


def fsync_path(path: str | os.PathLike, recursive: bool = True) -> None:
    """Flush a file, or a folder (with ``recursive``, every file and folder of its tree), to stable storage."""
    path = Path(path)
    entries = [path]
    if recursive and path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            entries += [Path(folder, name) for name in files] + [Path(folder, name) for name in dirs]
    for entry in entries:
        if entry.is_symlink():
            continue
        flags = os.O_RDONLY | (os.O_DIRECTORY if entry.is_dir() else 0)
        fd = os.open(entry, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file or a directory tree; a missing path is not an error."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def partial_paths(final: str | os.PathLike) -> list[Path]:
    """Leftover temporary paths of earlier, interrupted writes of ``final``."""
    final = Path(final)
    prefix = f".{final.name}{PARTIAL_MARK}"
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir() if p.name.startswith(prefix))


def check_output(final: str | os.PathLike, overwrite: bool) -> Path:
    """Raise :class:`OutputExistsError` if ``final`` exists and may not be replaced."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"{final}: output already exists; pass overwrite=True (--overwrite) to replace it"
        )
    return final


def reserve_temporary(final: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check ``final`` may be written and return a fresh temporary sibling path.

    Leftovers of earlier interrupted writes of ``final`` are removed, but not
    the partial output of a run still alive (:func:`partial_is_live`). The
    returned path does not exist yet; publish it with :func:`commit_temporary`.

    Raises
    ------
    OutputExistsError
        ``final`` exists and ``overwrite`` is false.
    """
    final = check_output(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in partial_paths(final):
        if partial_is_live(stale, final):
            log.warning("%s: another live run is writing this output too (%s); leaving its partial output",
                        final, stale.name)
            continue
        log.info("removing leftover of an interrupted write: %s", stale)
        remove_path(stale)
    owner = f"{uuid.uuid4().hex[:12]}-p{os.getpid()}-{_host()}"
    return final.with_name(f".{final.name}{PARTIAL_MARK}{owner}")


def commit_temporary(tmp: str | os.PathLike, final: str | os.PathLike, overwrite: bool = False) -> Path:
    """Rename a finished temporary output to its final name (atomic on one filesystem).

    The temporary output is fsync'ed (every file and folder) before the
    rename and the parent folder after it, so a completion record written
    next never describes an output that a power cut could still lose.
    """
    tmp, final = Path(tmp), check_output(final, overwrite)
    if not tmp.exists():
        raise RuntimeError(f"{final}: the writer produced nothing at {tmp}")
    fsync_path(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.replaced-{uuid.uuid4().hex[:12]}")
        os.replace(final, old)
        os.replace(tmp, final)
        remove_path(old)
    else:
        os.replace(tmp, final)
    fsync_path(final.parent, recursive=False)
    log.debug("wrote %s", final)
    return final


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Context manager yielding a temporary path that becomes ``final`` on success.

    Parameters
    ----------
    final : path
        The path the finished output should have (file or directory).
    overwrite : bool
        Replace an existing ``final``. Without it an existing output raises
        :class:`~isoview_dask.errors.OutputExistsError` before any work is done.

    Yields
    ------
    pathlib.Path
        A sibling path (same directory, so the rename is atomic) to write to.
        If the block raises, the temporary path is removed and ``final`` is
        left exactly as it was.
    """
    tmp = reserve_temporary(final, overwrite)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    commit_temporary(tmp, final, overwrite)
