"""Atomic outputs: write under a hidden temporary name, rename when complete.

A killed run must never leave a half-written volume that looks finished.
Every writer in :mod:`isoview_dask.io` therefore writes into a sibling path
``.<name>.partial-<token>`` and renames it to its final name only after the
last byte is on disk. Leftover partial paths from killed runs are removed the
next time the same output is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ..errors import OutputExistsError

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"


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

    Leftovers of earlier interrupted writes of ``final`` are removed. The
    returned path does not exist yet; publish it with :func:`commit_temporary`.

    Raises
    ------
    OutputExistsError
        ``final`` exists and ``overwrite`` is false.
    """
    final = check_output(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in partial_paths(final):
        log.info("removing leftover of an interrupted write: %s", stale)
        remove_path(stale)
    return final.with_name(f".{final.name}{PARTIAL_MARK}{uuid.uuid4().hex[:12]}")


def commit_temporary(tmp: str | os.PathLike, final: str | os.PathLike, overwrite: bool = False) -> Path:
    """Rename a finished temporary output to its final name (atomic on one filesystem)."""
    tmp, final = Path(tmp), check_output(final, overwrite)
    if not tmp.exists():
        raise RuntimeError(f"{final}: the writer produced nothing at {tmp}")
    if final.exists():
        old = final.with_name(f".{final.name}.replaced-{uuid.uuid4().hex[:12]}")
        os.replace(final, old)
        os.replace(tmp, final)
        remove_path(old)
    else:
        os.replace(tmp, final)
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
