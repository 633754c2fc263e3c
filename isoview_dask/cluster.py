"""Where the graphs run: a local distributed cluster by default.

:func:`start_client` starts (or connects to) a cluster, prints its dashboard
link and returns a ``distributed.Client``; :func:`compute` runs dask
collections with a progress bar (the distributed one when a client is
active, dask's local one otherwise). Paths and algorithms stay elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, Sequence

import dask
from dask.diagnostics import ProgressBar

log = logging.getLogger(__name__)


def start_client(*, scheduler: str | None = None, n_workers: int | None = None, threads_per_worker: int | None = None,
                 memory_limit: str | int | None = "auto", processes: bool = True, dashboard_address: str = ":0",
                 quiet: bool = False):
    """Start a local ``distributed`` cluster (or connect to ``scheduler``) and return a client.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:port``); when given no
        cluster is started.
    n_workers, threads_per_worker : int, optional
        Local cluster size; default one worker per core with one thread each
        when ``processes`` (compression and decoding release the GIL, but
        numpy-heavy steps scale better across processes).
    memory_limit : str or int
        Per-worker memory limit (``"4GiB"``, bytes, or ``"auto"``).
    processes : bool
        Workers as processes (default) or threads in this process.
    dashboard_address : str
        Where to serve the dashboard; ``":0"`` picks a free port.
    quiet : bool
        Log the dashboard link instead of printing it.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
    else:
        cores = os.cpu_count() or 1
        if n_workers is None:
            n_workers = cores if processes else 1
        if threads_per_worker is None:
            threads_per_worker = max(1, cores // n_workers)
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                               memory_limit=memory_limit, processes=processes,
                               dashboard_address=dashboard_address)
        client = Client(cluster)
    message = f"Dask dashboard: {client.dashboard_link}"
    log.info(message)
    if not quiet:
        print(message, file=sys.stderr, flush=True)
    return client


@contextlib.contextmanager
def client_context(**kwargs) -> Iterator:
    """:func:`start_client` as a context manager that closes the client (and its cluster)."""
    client = start_client(**kwargs)
    try:
        yield client
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None and not kwargs.get("scheduler"):
            cluster.close()


def current_client():
    """The active distributed client, or None."""
    try:
        from distributed import get_client
        return get_client()
    except (ImportError, ValueError):
        return None


def compute(*collections, progress: bool = True, label: str | None = None) -> Sequence:
    """Compute dask collections, with a progress bar, on the active client if any.

    Returns the computed results in the order given.
    """
    if label:
        log.info("computing %s", label)
    client = current_client()
    if client is not None:
        futures = client.compute(list(collections))
        if progress:
            from distributed import progress as distributed_progress
            if label:
                print(label, file=sys.stderr, flush=True)
            distributed_progress(futures)
            print(file=sys.stderr, flush=True)
        return client.gather(futures)
    context = ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext()
    with context:
        return dask.compute(*collections)
