"""Where the graphs run: a local distributed cluster, a batch system, or no cluster.

One :class:`ClusterSpec` describes the choice for every command and for the
Python API:

- ``cluster="local"`` (default): a ``distributed.LocalCluster`` on this
  machine (workers, threads per worker, memory limit per worker);
- ``cluster="slurm" | "pbs" | "lsf" | "sge"``: workers started as batch jobs
  by dask-jobqueue. Everything left unset comes from dask's configuration
  (``jobqueue.<system>.*``, e.g. ``~/.config/dask/jobqueue.yaml``); a value
  set in the spec overrides that one key, and extra directives, skipped
  directives and prologue lines are *added* to the configured ones;
- ``scheduler="tcp://host:port"``: connect to a cluster started elsewhere;
- ``cluster="none"``: no cluster, dask's threaded scheduler in this process.

:func:`start_client` starts (or connects to) the cluster, prints the
dashboard link and returns a ``distributed.Client``; :func:`client_context`
does the same as a context manager that also closes what it started, sets
the task retry count and optionally writes a performance report (the
dashboard's task stream, profile and worker plots as one HTML file).
:func:`compute` runs dask collections with a progress bar on the active
client (dask's local progress bar otherwise).

Fault tolerance comes from ``distributed``: when a worker dies (its process
killed, its batch job ended) the scheduler runs the tasks it was running
elsewhere and recomputes results that were held only in its memory; a task
that raises is retried ``retries`` times (default 2, dask config key
``isoview-dask.retries``). Every output is written under a temporary name
and renamed once complete (:mod:`isoview_dask.io.atomic`), so a repeated
shard write is harmless and a run killed as a whole leaves nothing that
looks finished; the stages skip complete outputs on a rerun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import dask
from dask.diagnostics import ProgressBar

from .errors import IsoviewError

log = logging.getLogger(__name__)

#: dask-jobqueue cluster class per batch system.
JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster", "sge": "SGECluster"}
#: Every value ``ClusterSpec.cluster`` accepts.
CLUSTER_KINDS = ("local", "none", *JOBQUEUE_CLUSTERS)
#: Task retries when neither the spec nor dask's config (``isoview-dask.retries``) sets them.
DEFAULT_RETRIES = 2
#: Client-side threshold of distributed's "Sending large graph" warning inside :func:`client_context`
#: and :func:`compute`. Fusion graphs carry 2-D maps on purpose (a 2048 x 2048 float64 transition
#: map is 32 MiB, split into one tile per block): embedded, any task can be recomputed after a worker
#: dies, which scattered futures would not allow. Above this size the warning still fires.
GRAPH_WARNING_THRESHOLD = "256MiB"
_GRAPH_WARNING_KEY = "distributed.admin.large-graph-warning-threshold"
RETRIES_CONFIG_KEY = "isoview-dask.retries"
#: Module every local worker imports as it starts (distributed's ``preload``): the pipeline and matplotlib.
WORKER_PRELOAD = "isoview_dask.preload"
#: Seconds a local cluster's workers may take to start before :func:`start_client` gives up.
LOCAL_START_TIMEOUT_S = 300


class ClusterError(IsoviewError, ValueError):
    """Cluster options that do not fit together, or a batch cluster lacking a required setting."""


#: glibc allocator settings for worker processes (see ``ClusterSpec.malloc_trim``):
#: distributed's default ``MALLOC_TRIM_THRESHOLD_=65536`` also freezes glibc's
#: mmap threshold at 128 KiB, so every large buffer is a fresh mmap whose pages
#: fault in one by one; these keep buffers below 32 MiB on the heap and trim
#: only beyond 256 MiB of free memory.
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": 268435456, "MALLOC_MMAP_THRESHOLD_": 33554432}

#: Smallest worker memory limit (bytes) given :data:`WORKER_MALLOC_ENV`. The
#: free heap glibc then keeps (up to 256 MiB, plus fragmentation) must be a
#: small part of the budget: 2 workers at 512 MiB, importing this package
#: (~140 MiB) and holding that much free heap, were restarted by their nannies
#: over and over on a 1024 x 1024-frame recording that completes in 93 s with
#: distributed's default trimming. Smaller workers keep distributed's default.
MALLOC_ENV_MIN_LIMIT = 2 * 2**30


def worker_memory_limit(spec: "ClusterSpec") -> int | None:
    """Memory limit of one worker process that ``spec`` would start, in bytes.

    Parameters
    ----------
    spec : ClusterSpec
        Local cluster: ``memory_limit`` resolved as distributed does
        (``"auto"`` is the machine's memory shared by thread count). Batch
        jobs: memory per job (``spec.memory`` or the ``jobqueue`` config)
        divided by the worker processes per job (when neither sets them,
        dask-jobqueue's default for the cores per job: 4 processes for 8 cores).

    Returns
    -------
    int or None
        None when unknown or unlimited (a running scheduler, no limit set).
    """
    from dask.utils import parse_bytes

    if spec.scheduler or spec.cluster == "none":
        return None
    if spec.batch:
        memory = spec.memory or _configured(spec.cluster, "memory")
        if not memory:
            return None
        processes = spec.job_processes or _configured(spec.cluster, "processes")
        if not processes:  # dask-jobqueue's own default, from the cores per job
            from distributed.deploy.local import nprocesses_nthreads
            processes = nprocesses_nthreads(int(spec.cores or _configured(spec.cluster, "cores") or 1))[0]
        return int(parse_bytes(memory) // int(processes))
    from distributed.worker_memory import parse_memory_limit

    cores = os.cpu_count() or 1
    n_workers = spec.n_workers or (cores if spec.processes else 1)
    threads = spec.threads_per_worker or max(1, cores // n_workers)
    return parse_memory_limit(spec.memory_limit, threads, total_cores=cores, logger=log)


def worker_environ_config(spec: "ClusterSpec") -> dict:
    """dask config giving nanny-spawned workers :data:`WORKER_MALLOC_ENV`, or ``{}``.

    Empty (distributed's default trimming stays) with ``spec.malloc_trim`` or
    when one worker's memory limit (:func:`worker_memory_limit`) is below
    :data:`MALLOC_ENV_MIN_LIMIT`.
    """
    if spec.malloc_trim:
        return {}
    limit = worker_memory_limit(spec)
    if limit is not None and limit < MALLOC_ENV_MIN_LIMIT:
        log.info("workers limited to %.0f MiB: distributed's default malloc trimming kept (large-buffer "
                 "allocator settings need %d GiB per worker)", limit / 2**20, MALLOC_ENV_MIN_LIMIT // 2**30)
        return {}
    import distributed  # noqa: F401  (its defaults, the nanny's environment among them, join the config)
    current = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    return {"distributed.nanny.pre-spawn-environ": {**current, **WORKER_MALLOC_ENV}}


#: How often a local worker samples its task thread for the dashboard's profile page, unless
#: configured (distributed samples every 10 ms: with its event-loop wake-ups, 4 % of a run's CPU on
#: 2 cores, 6 x 4 x 64 x 512 x 768; every 100 ms the profile still fills over a run of seconds).
WORKER_PROFILE_INTERVAL = "100ms"
_PROFILE_INTERVAL_KEY = "distributed.worker.profile.interval"
_DISTRIBUTED_PROFILE_INTERVAL = "10ms"


def worker_profile_config() -> dict:
    """dask config for local workers: :data:`WORKER_PROFILE_INTERVAL` where the sampling interval of
    the workers' profiler is distributed's own default; ``{}`` where a user configured another."""
    import distributed  # noqa: F401  (its defaults join the config)
    if str(dask.config.get(_PROFILE_INTERVAL_KEY, _DISTRIBUTED_PROFILE_INTERVAL)) != _DISTRIBUTED_PROFILE_INTERVAL:
        return {}
    return {_PROFILE_INTERVAL_KEY: WORKER_PROFILE_INTERVAL}


@dataclass
class ClusterSpec:
    """How and where to run: see the module docstring.

    Fields that are ``None`` are not set: the default of the local cluster,
    or for a batch system the value in dask's ``jobqueue.<system>`` config.

    Attributes
    ----------
    cluster : {'local', 'slurm', 'pbs', 'lsf', 'sge', 'none'}
        Kind of cluster to start; ignored (must stay ``'local'``) with ``scheduler``.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:port``): nothing is started.
    n_workers, threads_per_worker, memory_limit, processes
        Local cluster: worker count (default one per core when
        ``processes``), threads per worker (default cores / workers), memory
        limit per worker (``"4GiB"``, bytes or ``"auto"``), workers as
        processes (default) or as threads of this process.
    queue, account, cores, memory, job_processes, walltime
        Batch jobs: queue/partition, account (project on LSF and SGE), cores
        and memory per job, worker processes per job, wall time (``HH:MM:SS``).
    job_extra_directives, job_directives_skip, job_script_prologue : list of str
        Extra header directives (e.g. ``"--qos=short"``), directives to drop
        from the generated header (lines containing the text, e.g. ``"--mem"``),
        shell lines run before the worker starts. Added to the configured ones.
    interface : str, optional
        Network interface of workers and scheduler (``ib0``, ``eth0``).
    scheduler_host : str, optional
        Address the scheduler binds to (e.g. the login node's IP); takes
        precedence over ``interface`` for the scheduler.
    log_directory : str, optional
        Where the batch system writes the jobs' output.
    job_name : str, optional
        Name of the worker jobs in the queue (dask-jobqueue's default ``dask-worker``).
    jobs : int, optional
        Number of jobs to submit (default 1 unless adaptive).
    minimum_jobs, maximum_jobs : int, optional
        Adaptive scaling between these job counts (either one enables it).
    job_options : dict
        Any other keyword argument of the dask-jobqueue cluster class.
    dashboard_address : str, optional
        Where the scheduler serves the dashboard (local default: a free port
        on the loopback address ``127.0.0.1``, see :func:`local_dashboard`;
        batch default from the config, dask-jobqueue's ``":8787"``).
    retries : int, optional
        Retries of a failing task (default :data:`DEFAULT_RETRIES`).
    malloc_trim : bool
        Keep distributed's default ``MALLOC_TRIM_THRESHOLD_=65536`` in the
        workers' environment (freed memory goes back to the OS at once).
        Default False: workers of at least :data:`MALLOC_ENV_MIN_LIMIT`
        memory get :data:`WORKER_MALLOC_ENV` instead, which
        lets glibc reuse the large buffers compression and zarr shard
        writes allocate; on this project's 2-core test machine a 64 MiB
        blosc-zstd shard write took 0.30 s instead of 0.72 s, for about
        150 MB more resident memory per worker.
    performance_report : str, optional
        HTML file for ``distributed.performance_report`` over the whole run
        (:func:`client_context` only).
    """

    cluster: str = "local"
    scheduler: str | None = None
    # local cluster
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | int | None = "auto"
    processes: bool = True
    # batch jobs
    queue: str | None = None
    account: str | None = None
    cores: int | None = None
    memory: str | None = None
    job_processes: int | None = None
    walltime: str | None = None
    job_extra_directives: list[str] = field(default_factory=list)
    job_directives_skip: list[str] = field(default_factory=list)
    job_script_prologue: list[str] = field(default_factory=list)
    interface: str | None = None
    scheduler_host: str | None = None
    log_directory: str | None = None
    job_name: str | None = None
    jobs: int | None = None
    minimum_jobs: int | None = None
    maximum_jobs: int | None = None
    job_options: dict[str, Any] = field(default_factory=dict)
    # any cluster
    dashboard_address: str | None = None
    retries: int | None = None
    malloc_trim: bool = False
    performance_report: str | None = None

    def __post_init__(self) -> None:
        self.cluster = (self.cluster or "local").lower()
        if self.cluster not in CLUSTER_KINDS:
            raise ClusterError(f"unknown cluster {self.cluster!r}; choose one of {', '.join(CLUSTER_KINDS)}")
        if self.scheduler and self.cluster != "local":
            raise ClusterError(f"--scheduler connects to a running cluster; it cannot be combined with "
                               f"--cluster {self.cluster}")
        for name in ("n_workers", "threads_per_worker", "cores", "job_processes", "jobs", "minimum_jobs",
                     "maximum_jobs", "retries"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < (0 if name in ("minimum_jobs", "retries")
                                                                       else 1)):
                raise ClusterError(f"{name}: {value!r} is not a valid count")
        if self.adaptive:
            if self.jobs is not None:
                raise ClusterError("give either a fixed number of jobs or adaptive minimum/maximum jobs, not both")
            if (self.minimum_jobs is not None and self.maximum_jobs is not None
                    and self.minimum_jobs > self.maximum_jobs):
                raise ClusterError(f"adaptive minimum {self.minimum_jobs} jobs is above the maximum "
                                   f"{self.maximum_jobs}")
        if self.performance_report and self.cluster == "none":
            raise ClusterError("a performance report needs a distributed cluster, not --no-cluster / 'none'")
        for name in ("job_extra_directives", "job_directives_skip", "job_script_prologue"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value or []))

    @property
    def adaptive(self) -> bool:
        return self.minimum_jobs is not None or self.maximum_jobs is not None

    @property
    def batch(self) -> bool:
        """Workers are batch jobs (dask-jobqueue)."""
        return self.cluster in JOBQUEUE_CLUSTERS and not self.scheduler

    def replace(self, **changes) -> "ClusterSpec":
        return dataclasses.replace(self, **changes)


#: dask config key of the hosts whose pages may open the dashboard's websockets (distributed's default "*").
_WEBSOCKET_ORIGINS_KEY = "distributed.scheduler.dashboard.bokeh-application.allow_websocket_origin"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def local_dashboard(address: str | None) -> tuple[str, dict]:
    """Where a local cluster serves its dashboard, and the dask config that goes with it.

    By default (``address`` None) the dashboard listens on the loopback
    address only, on a free port chosen here, and only pages served from that
    address and port may open its websockets: nothing outside this machine
    reaches it, and bokeh has no wildcard origin to warn about ("Host
    wildcard '*' will allow connections..."). An address on a loopback host
    (``127.0.0.1:8787``, ``localhost:8787``) is treated the same way; any
    other (``:8787``, ``0.0.0.0:8787``, a host name) is used as given, with
    distributed's own origin setting.

    Parameters
    ----------
    address : str or None
        ``--dashboard-address``.

    Returns
    -------
    address : str
        The address to give ``LocalCluster``.
    config : dict
        dask config to set while the cluster starts (empty for an address
        used as given).
    """
    if address is None:
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{probe.getsockname()[1]}"
    host, _, port = address.rpartition(":")
    if host not in _LOOPBACK_HOSTS or not port.isdigit() or int(port) == 0:
        return address, {}
    origins = [f"{name}:{port}" for name in _LOOPBACK_HOSTS]
    return address, {_WEBSOCKET_ORIGINS_KEY: origins}


def _spec(spec: ClusterSpec | None, kwargs: dict) -> ClusterSpec:
    if spec is None:
        return ClusterSpec(**kwargs)
    if not isinstance(spec, ClusterSpec):
        raise TypeError(f"expected a ClusterSpec, got {type(spec).__name__}")
    return spec.replace(**kwargs) if kwargs else spec


# --------------------------------------------------------------------------
# Batch systems (dask-jobqueue)
# --------------------------------------------------------------------------


def _configured(kind: str, key: str, default: Any = None) -> Any:
    return dask.config.get(f"jobqueue.{kind}.{key}", default)


def jobqueue_options(spec: ClusterSpec) -> dict[str, Any]:
    """Keyword arguments for the dask-jobqueue cluster class: only what ``spec`` sets.

    Everything else is left to dask-jobqueue, which reads dask's
    ``jobqueue.<system>`` configuration. List options are appended to the
    configured lists; scheduler options are merged into the configured ones.

    Raises
    ------
    ClusterError
        Cores or memory per job are set neither in ``spec`` nor in the config.
    """
    kind = spec.cluster
    if kind not in JOBQUEUE_CLUSTERS:
        raise ClusterError(f"{kind!r} is not a batch system ({', '.join(JOBQUEUE_CLUSTERS)})")
    for name, flag in (("cores", "--cores"), ("memory", "--memory")):
        if getattr(spec, name) is None and _configured(kind, name) is None:
            raise ClusterError(f"{kind}: set the {name} per job ({flag}, or jobqueue.{kind}.{name} in "
                               f"~/.config/dask/jobqueue.yaml)")
    options: dict[str, Any] = {}
    simple = {"queue": "queue", "cores": "cores", "memory": "memory", "job_processes": "processes",
              "walltime": "walltime", "interface": "interface", "log_directory": "log_directory",
              "job_name": "job_name",
              "account": "account" if kind in ("slurm", "pbs") else "project"}
    for attr, keyword in simple.items():
        value = getattr(spec, attr)
        if value is not None:
            options[keyword] = value
    # The workers' nannies read their own dask config: pass the allocator settings as environment.
    # (one variable holding the whole mapping: dask lower-cases keys spelled out in variable names)
    environ = worker_environ_config(spec).get("distributed.nanny.pre-spawn-environ")
    malloc_exports = [f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{environ!r}\""] if environ else []
    for attr, key, fallback in (("job_extra_directives", "job-extra-directives", "job-extra"),
                                ("job_directives_skip", "job-directives-skip", "header-skip"),
                                ("job_script_prologue", "job-script-prologue", "env-extra")):
        extra = list(getattr(spec, attr)) + (malloc_exports if attr == "job_script_prologue" else [])
        if extra:
            base = _configured(kind, key) or _configured(kind, fallback) or []
            base = list(base) if isinstance(base, (list, tuple)) else []
            options[attr] = base + [v for v in extra if v not in base]
    scheduler_options = dict(_configured(kind, "scheduler-options") or {})
    changed = False
    if spec.scheduler_host:
        scheduler_options["host"] = spec.scheduler_host
        scheduler_options.pop("interface", None)
        changed = True
    if spec.dashboard_address is not None:
        scheduler_options["dashboard_address"] = spec.dashboard_address
        changed = True
    if changed:
        options["scheduler_options"] = scheduler_options
    options.update(spec.job_options)
    return options


def make_jobqueue_cluster(spec: ClusterSpec):
    """The dask-jobqueue cluster for ``spec`` (scheduler started, no job submitted yet)."""
    import dask_jobqueue

    cls = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[spec.cluster])
    options = jobqueue_options(spec)
    log.debug("%s(%s)", cls.__name__, options)
    try:
        return cls(**options)
    except ValueError as exc:  # dask-jobqueue's own checks of the options
        raise ClusterError(f"{spec.cluster}: {exc}") from exc


def _scale(cluster, spec: ClusterSpec) -> str:
    """Submit the jobs (fixed or adaptive); return a one-line description."""
    kind = spec.cluster

    def setting(attr, key):
        value = getattr(spec, attr)
        return value if value is not None else _configured(kind, key)

    processes = setting("job_processes", "processes")
    size = (f"{setting('cores', 'cores')} cores, {setting('memory', 'memory')}"
            + (f", {processes} worker processes" if processes else ""))
    if spec.adaptive:
        low = spec.minimum_jobs or 0
        high = spec.maximum_jobs if spec.maximum_jobs is not None else max(1, low)
        cluster.adapt(minimum_jobs=low, maximum_jobs=high)
        return f"{kind}: adaptive, {low} to {high} jobs of {size}"
    jobs = spec.jobs or 1
    cluster.scale(jobs=jobs)
    return f"{kind}: {jobs} job(s) of {size} submitted"


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------


def start_client(spec: ClusterSpec | None = None, *, quiet: bool = False, **kwargs):
    """Start the cluster ``spec`` describes (or connect to its scheduler); return a client.

    Parameters
    ----------
    spec : ClusterSpec, optional
        What to start; ``kwargs`` are its fields and override it, so the
        keyword form ``start_client(n_workers=2, threads_per_worker=1)`` works
        as well.
    quiet : bool
        Log the dashboard link instead of printing it.

    Notes
    -----
    A local cluster starts its scheduler first and then its workers in the
    background; each worker imports the pipeline and matplotlib as it starts
    (:data:`WORKER_PRELOAD`) while this process imports the pipeline, and the
    client is returned once every worker is up (at most
    :data:`LOCAL_START_TIMEOUT_S`; a worker that fails to start fails the
    call at once, with :class:`ClusterError`). The first jobs then find warm
    workers.

    Returns
    -------
    distributed.Client or None
        None for ``cluster="none"`` (dask's threaded scheduler is used).
        The client owns a cluster it started (``client.cluster``); close it
        with :func:`close_client` (or use :func:`client_context`).
    """
    spec = _spec(spec, kwargs)
    if spec.cluster == "none":
        return None
    from distributed import Client, LocalCluster

    detail = ""
    link = None
    if spec.scheduler:
        client = Client(spec.scheduler)  # client.cluster is None: nothing of ours to close
    elif spec.batch:
        cluster = make_jobqueue_cluster(spec)
        try:
            detail = _scale(cluster, spec)
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
        log.debug("job script:\n%s", cluster.job_script())
    else:
        cores = os.cpu_count() or 1
        n_workers = spec.n_workers
        if n_workers is None:
            n_workers = cores if spec.processes else 1
        threads = spec.threads_per_worker or max(1, cores // n_workers)
        dashboard, dashboard_config = local_dashboard(spec.dashboard_address)
        with dask.config.set({**worker_environ_config(spec), **worker_profile_config(), **dashboard_config}), \
                _workers_ignore_sigint(), \
                dask.config.set(_start_method_config(spec)):
            # The scheduler first, then the workers in the cluster's own event loop: they start and
            # import what jobs need (isoview_dask.preload) while this process imports the same.
            cluster = LocalCluster(n_workers=0, threads_per_worker=threads, memory_limit=spec.memory_limit,
                                   processes=spec.processes, preload=[WORKER_PRELOAD],
                                   dashboard_address=dashboard)
            client = None
            try:
                cluster.scale(n_workers)
                from .preload import import_modules
                import_modules(optional=False)
                client = Client(cluster)
                _await_local_workers(client, cluster, n_workers)
            except BaseException:
                # the client first: left open, it would stay distributed's default client, and every
                # later dask.compute of this process would wait on this closed cluster forever
                if client is not None:
                    client.close()
                cluster.close()
                raise
        detail = f"local: {n_workers} worker(s) x {threads} thread(s)"
        if dashboard_config:  # the link names the host it listens on (in-process workers: not this IP)
            from urllib.parse import urlsplit, urlunsplit
            parts = urlsplit(client.dashboard_link)
            link = urlunsplit(parts._replace(netloc=f"{dashboard.rpartition(':')[0]}:{parts.port}"))
    lines = [f"Dask dashboard: {link or client.dashboard_link}"] + ([f"Dask cluster: {detail}"] if detail else [])
    for line in lines:
        log.info(line)
        if not quiet:
            print(line, file=sys.stderr, flush=True)
    return client


#: dask config key choosing how local worker processes start: "forkserver" (default where the platform
#: has it: forked from one server that imported the pipeline once) or distributed's own setting
#: ("spawn": each worker a new interpreter importing everything).
WORKER_START_CONFIG_KEY = "isoview-dask.worker-start"
#: The pre-spawn environment this process's fork server started with (None: not started here).
_forkserver_environ: dict | None = None


def _beyond_malloc(environ: dict) -> dict:
    """``environ`` less the allocator variables a worker sets for itself (``MALLOC_*``)."""
    return {name: value for name, value in environ.items() if not name.startswith("MALLOC_")}


def _start_method_config(spec: "ClusterSpec") -> dict:
    """dask config starting a local cluster's worker processes from a fork server, which is started here.

    The server imports :data:`isoview_dask.preload.FORKSERVER_MODULES` once; each worker is then a
    fork of it, with the pipeline already imported (about 0.8 CPU-s less per worker on the 2-core
    test machine, and workers up sooner). Called with SIGINT ignored, so the server and its forks keep
    ignoring a terminal's Ctrl-C as spawned workers do. Empty (distributed's own start method) for
    thread workers, where the platform has no fork server, or when :data:`WORKER_START_CONFIG_KEY`
    is not ``"forkserver"``.
    """
    import multiprocessing

    method = dask.config.get(WORKER_START_CONFIG_KEY, "forkserver")
    if not spec.processes or method != "forkserver" or "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    from distributed.utils import get_mp_context
    from multiprocessing import forkserver

    from .preload import FORKSERVER_MODULES

    global _forkserver_environ
    # The server starts with the environment a spawned worker would get before its interpreter starts
    # (distributed.nanny.pre-spawn-environ: one BLAS/OpenMP thread, the allocator settings): the
    # libraries it imports size their thread pools and allocator then, and its forks inherit them.
    environ = {str(k): str(v) for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}).items()}
    if _forkserver_environ is not None and _beyond_malloc(environ) != _beyond_malloc(_forkserver_environ):
        # this process's server started with other thread settings: its forks would inherit those;
        # new interpreters get these. (Allocator settings differ harmlessly: each worker sets its own,
        # isoview_dask.preload.settle_malloc_environment.)
        log.info("worker settings differ from those the fork server started with: spawning workers")
        return {}
    key = "distributed.worker.multiprocessing-method"
    with dask.config.set({key: "forkserver"}):
        context = get_mp_context()  # distributed sets its own preload list on first use: ours replaces it
    context.set_forkserver_preload(list(FORKSERVER_MODULES))
    with environment(environ):
        forkserver.ensure_running()  # a server already running (an earlier cluster) is reused as it is
        _forkserver_environ = environ
    return {key: "forkserver"}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Inside, this process's environment has ``values`` set (for the processes started there);
    afterwards every variable is as before (unset again where it was unset)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update({name: str(value) for name, value in values.items()})
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _await_local_workers(client, cluster, n_workers: int) -> None:
    """Wait until ``n_workers`` workers of a local cluster started in the background are up.

    Fails at once, not after :data:`LOCAL_START_TIMEOUT_S`, when one of them failed to start
    (e.g. its preload raised): LocalCluster's own start would have raised there.
    """
    from distributed.core import Status

    deadline = time.monotonic() + LOCAL_START_TIMEOUT_S
    while True:
        failed = [name for name, worker in list(cluster.workers.items())
                  if getattr(worker, "status", None) == Status.failed]
        if failed:
            raise ClusterError(f"local worker(s) {', '.join(map(str, failed))} failed to start (see the errors "
                               "logged above)")
        try:
            client.wait_for_workers(n_workers, timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise ClusterError(f"only {len(client.scheduler_info()['workers'])} of {n_workers} local workers "
                                   f"started within {LOCAL_START_TIMEOUT_S} s") from None


def close_client(client) -> None:
    """Close a client from :func:`start_client` and the cluster it started (cancelling batch jobs)."""
    if client is None:
        return
    cluster = getattr(client, "cluster", None)  # None for a client of an existing scheduler
    client.close()
    if cluster is not None:
        cluster.close()


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (inherited through spawn; Python then keeps it ignored).

    A terminal's Ctrl-C reaches the whole process group: the workers would die with tracebacks while
    this process stops the run and closes the cluster cleanly. Only in the main thread (signals).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import signal
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def client_context(spec: ClusterSpec | None = None, *, quiet: bool = False, **kwargs) -> Iterator:
    """:func:`start_client` as a context manager.

    Inside, :func:`compute` uses the client, with ``spec.retries`` retries
    per task; ``spec.performance_report`` (a path) receives the HTML
    performance report of everything computed inside. On exit the client is
    closed, and the cluster too when this call started it (batch jobs are
    cancelled). Yields None for ``cluster="none"``.
    """
    spec = _spec(spec, kwargs)
    client = start_client(spec, quiet=quiet)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(dask.config.set({_GRAPH_WARNING_KEY: GRAPH_WARNING_THRESHOLD}))
            if spec.retries is not None:
                stack.enter_context(dask.config.set({RETRIES_CONFIG_KEY: spec.retries}))
            if spec.performance_report:
                from distributed import performance_report
                os.makedirs(os.path.dirname(os.path.abspath(spec.performance_report)), exist_ok=True)
                stack.enter_context(performance_report(filename=str(spec.performance_report)))
            yield client
        if spec.performance_report:
            message = f"performance report: {spec.performance_report}"
            log.info(message)
            if not quiet:
                print(message, file=sys.stderr, flush=True)
    finally:
        close_client(client)


def current_client():
    """The active distributed client, or None (also inside :func:`run_as_task`'s task)."""
    if getattr(_job, "local", False):
        return None
    try:
        from distributed import get_client
        return get_client()
    except (ImportError, ValueError):
        return None


#: Added to the priority of estimation graphs (statistics, depth maps, intensity samples) over
#: writes: a later view's small reductions run before an earlier view's shard writes, so
#: workers never wait for estimates and the writes fill every gap.
ESTIMATE_PRIORITY = 10**9

_job = threading.local()
#: Futures that :func:`compute` is waiting for, in any thread, and whether the run is stopping.
_in_flight: set = set()
_in_flight_lock = threading.Lock()
_stopping = threading.Event()


class Interrupted(KeyboardInterrupt):
    """Raised by :func:`compute` once :func:`stop_computations` was called: the run is stopping."""


def stop_computations(client) -> int:
    """Cancel every computation :func:`compute` waits for and refuse new ones; returns how many were cancelled.

    For an interrupted run: the threads blocked in ``compute`` return at once (with
    :class:`Interrupted`) even when workers died with the interruption. Outputs are
    written under temporary names, so a cancelled write leaves nothing that looks complete.
    :func:`resume_computations` lifts the refusal (a new run).
    """
    _stopping.set()
    with _in_flight_lock:
        futures = [f for batch in _in_flight for f in batch]
    if futures and client is not None:
        try:
            client.cancel(futures)
        except Exception:  # noqa: BLE001 - a client already closing: its futures are gone anyway
            pass
    return len(futures)


def resume_computations() -> None:
    """Accept computations again after :func:`stop_computations`."""
    _stopping.clear()


@contextlib.contextmanager
def job_priority(priority: int) -> Iterator[None]:
    """Inside, :func:`compute` (in this thread) submits its graphs with this base priority.

    Higher runs first (distributed's convention). The job executor
    (:mod:`isoview_dask.pipeline.executor`) gives earlier jobs higher priorities,
    so the oldest jobs finish first while later ones keep the workers busy.
    """
    previous = getattr(_job, "priority", 0)
    _job.priority = priority
    try:
        yield
    finally:
        _job.priority = previous


#: Jobs reading at most this many raw bytes may run whole as one task (:func:`run_as_task`) when
#: their memory fits (:func:`whole_job_limits`; dask config ``isoview-dask.whole-job-bytes``; 0 never).
#: A 2048 x 2048 x 256 camera view (2 GiB) runs whole: four views' corrections, one task on each of
#: two 4 GiB workers at a time, took 72-84 CPU-s and 40-47 s instead of 88-92 CPU-s and 47-49 s as
#: graphs of chunk tasks spread over both (no chunk travels between workers).
WHOLE_JOB_BYTES = 4 * 2**30
WHOLE_JOB_CONFIG_KEY = "isoview-dask.whole-job-bytes"
#: A whole-job task whose memory is not otherwise known needs a worker thread's share of the
#: memory limit this many times its raw input (measured: a 134 MB view's correction peaked at
#: 3.4 times its input above the worker's baseline; float32 intermediates, the written copy, masks).
WHOLE_JOB_MEMORY_FACTOR = 8
#: A job whose graph streams plane slabs (correction, fusion) holds, run whole with the synchronous
#: scheduler, about as much as this many planes of its inputs, however deep the volume (measured
#: above the process's baseline, 2048 x 2048 frames: correction 0.91 GB for 64 planes and 0.93 GB
#: for 256; fusion of a pair 1.72 GB for 64 planes and 1.14 GB for 256).
WHOLE_JOB_STREAM_PLANES = 64
#: Bytes per streamed input byte, and fixed bytes, of such a job's estimate
#: (:func:`whole_job_memory`): about twice the peaks measured (64 x 512 x 768 views: correction
#: 0.25 GB, fusion of a pair 0.34 GB; 1024 x 256 x 256 views: 0.30 and 0.48 GB; full frames above).
WHOLE_JOB_STREAM_FACTOR = 3
WHOLE_JOB_BASE_BYTES = 256 * 2**20


def whole_job_memory(nbytes: int, plane_bytes: int | None = None) -> int:
    """Estimated peak memory (bytes above a worker's baseline) of a job run whole as one task.

    Parameters
    ----------
    nbytes : int
        Raw input bytes the job reads.
    plane_bytes : int, optional
        Bytes of one plane (Y x X) of all its input volumes together, for a
        job whose graphs stream plane slabs (a correction or a fusion): it
        holds about :data:`WHOLE_JOB_STREAM_PLANES` planes at a time, so the
        estimate stops growing with the volume's depth.

    Returns
    -------
    int
        :data:`WHOLE_JOB_MEMORY_FACTOR` times ``nbytes``; for a streaming job,
        at most :data:`WHOLE_JOB_BASE_BYTES` plus
        :data:`WHOLE_JOB_STREAM_FACTOR` times the bytes of the planes it holds.
    """
    proportional = WHOLE_JOB_MEMORY_FACTOR * int(nbytes)
    if plane_bytes is None or plane_bytes <= 0:
        return proportional
    streamed = min(int(nbytes), WHOLE_JOB_STREAM_PLANES * int(plane_bytes))
    return min(proportional, WHOLE_JOB_BASE_BYTES + WHOLE_JOB_STREAM_FACTOR * streamed)


def whole_job_limits(client) -> tuple[int, float]:
    """Largest raw input (bytes) and estimated memory (bytes) of a job that runs whole on ``client``.

    Returns ``(raw_bytes, memory_bytes)``: :data:`WHOLE_JOB_BYTES` (or dask
    config ``isoview-dask.whole-job-bytes``; ``(0, 0)`` without a client or
    with 0), and one worker thread's share of the smallest worker memory
    limit (inf when unlimited), which :func:`whole_job_memory` must not
    exceed: each thread of a worker may run such a task at once.
    """
    if client is None:
        return 0, 0.0
    limit = int(dask.config.get(WHOLE_JOB_CONFIG_KEY, WHOLE_JOB_BYTES) or 0)
    if limit <= 0:
        return 0, 0.0
    workers = client.scheduler_info()["workers"].values()
    shares = [int(w.get("memory_limit") or 0) / max(1, int(w.get("nthreads") or 1)) for w in workers]
    memory = min(shares) if shares and all(shares) else float("inf")
    return limit, memory


def _log_like_the_client(level: int) -> None:
    """On a worker: the package's log records at the client's level, on stderr (the worker's log)."""
    package = logging.getLogger(__name__.split(".")[0])
    package.setLevel(level)
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s [worker]: %(message)s"))
        package.addHandler(handler)


#: Whole-job tasks running in this (worker) process, and the config they set while any runs.
_local_lock = threading.Lock()
_local_tasks = 0
_local_config = None


def _run_locally(function, args, kwargs, config, level: int = logging.WARNING):
    """Body of :func:`run_as_task` on a worker: ``function`` with every graph computed in this thread.

    dask's config is process-wide: the synchronous scheduler (and the client's
    package keys) are set when the first whole-job task of a worker starts
    and restored when the last one ends, so tasks in a worker's other
    threads never see it taken away in the middle.
    """
    global _local_tasks, _local_config
    _log_like_the_client(level)
    previous = getattr(_job, "local", False)
    _job.local = True
    with _local_lock:
        if _local_tasks == 0:
            _local_config = dask.config.set({**config, "scheduler": "synchronous"})
        _local_tasks += 1
    try:
        return function(*args, **kwargs)
    finally:
        with _local_lock:
            _local_tasks -= 1
            if _local_tasks == 0:
                _local_config.__exit__(None, None, None)
                _local_config = None
        _job.local = previous


def run_as_task(function, *args, label: str | None = None, retries: int | None = None, **kwargs):
    """``function(*args, **kwargs)`` run as one task on the active client, its dask graphs computed inside it.

    For a small job (a camera view of a few MiB): one task instead of a
    graph of dozens costs the scheduler, the client and the network almost
    nothing, and the job's graphs (the same ones, with the same chunks, so
    the outputs are bit-identical) run in the worker's thread with dask's
    synchronous scheduler, unoptimised (for one thread, fusing tasks costs
    more than it saves: 7 % of a small view's correction; the arithmetic is
    the same). Outputs are written from the worker, under
    temporary names as always. Without a client, calls ``function`` here.
    The task takes the thread's job priority (:func:`job_priority`); a dead
    worker's task runs again elsewhere, a raising one is retried like any
    task (``retries``, default dask config ``isoview-dask.retries``), and
    :func:`stop_computations` cancels it. The package's dask config keys and log level travel with the
    task; its log records go to the worker's stderr (a local cluster's
    terminal, a batch job's log file).
    """
    client = current_client()
    if client is None:
        return function(*args, **kwargs)
    if _stopping.is_set():
        raise Interrupted(f"not running {label or 'more'}: the run is stopping")
    if label:
        log.info("running %s as one task", label)
    import uuid
    name = getattr(function, "__name__", None) or getattr(getattr(function, "func", None), "__name__", "job")
    config = {"isoview-dask": dask.config.get("isoview-dask", {})}
    level = logging.getLogger(__name__.split(".")[0]).getEffectiveLevel()
    if retries is None:
        retries = int(dask.config.get(RETRIES_CONFIG_KEY, DEFAULT_RETRIES))
    future = client.submit(_run_locally, function, args, kwargs, config, level, key=f"{name}-{uuid.uuid4().hex}",
                           priority=getattr(_job, "priority", 0), pure=False, retries=retries)
    try:
        return _cancellable(client, [future], label or "task")[0]
    finally:
        future.release()


def _cancellable(client, futures: list, what: str) -> list:
    """Gather ``futures``, which :func:`stop_computations` (from any thread) may cancel meanwhile:
    then :class:`Interrupted` is raised instead of their error."""
    batch = tuple(futures)
    with _in_flight_lock:
        _in_flight.add(batch)
    try:
        return client.gather(futures)
    except Exception:
        if _stopping.is_set():
            raise Interrupted(f"{what} cancelled: the run is stopping") from None
        raise
    finally:
        with _in_flight_lock:
            _in_flight.discard(batch)


def compute(*collections, progress: bool = True, label: str | None = None,
            retries: int | None = None, estimate: bool = False) -> Sequence:
    """Compute dask collections, with a progress bar, on the active client if any.

    Parameters
    ----------
    estimate : bool
        These are small estimation reductions: submitted with
        :data:`ESTIMATE_PRIORITY` above the writes (see :func:`job_priority`).
    retries : int, optional
        Retries of a task that raises, on a distributed client (default: dask
        config ``isoview-dask.retries``, else :data:`DEFAULT_RETRIES`). Tasks
        lost with a dead worker are rerun by the scheduler regardless.

    Returns the computed results in the order given.
    """
    if label:
        log.info("computing %s", label)
    if _stopping.is_set():
        raise Interrupted(f"not computing {label or 'more'}: the run is stopping")
    # dask (2026.8) returns the results of mixed collection types grouped by type: an array, a
    # Delayed, an array come back as array, array, Delayed. Computing them grouped and putting the
    # results back in place gives the order asked for whatever dask does.
    first_seen: dict[type, int] = {}
    for item in collections:
        first_seen.setdefault(type(item), len(first_seen))
    order = sorted(range(len(collections)), key=lambda i: first_seen[type(collections[i])])
    grouped = _compute_grouped([collections[i] for i in order], progress, label, retries, estimate)
    results: list = [None] * len(order)
    for position, value in zip(order, grouped):
        results[position] = value
    return results


def _compute_grouped(collections: list, progress: bool, label: str | None, retries: int | None,
                     estimate: bool) -> Sequence:
    """:func:`compute` of collections already grouped by type."""
    client = current_client()
    if client is not None:
        if retries is None:
            retries = int(dask.config.get(RETRIES_CONFIG_KEY, DEFAULT_RETRIES))
        start = time.perf_counter()
        with dask.config.set({_GRAPH_WARNING_KEY: GRAPH_WARNING_THRESHOLD}):
            priority = getattr(_job, "priority", 0) + (ESTIMATE_PRIORITY if estimate else 0)
            futures = client.compute(collections, retries=retries, priority=priority)
        if progress:
            from distributed import progress as distributed_progress
            if label:
                print(label, file=sys.stderr, flush=True)
            distributed_progress(futures)
            print(file=sys.stderr, flush=True)
        results = _cancellable(client, futures, label or "computation")
        if progress:
            print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        return results
    context = ProgressBar(out=sys.stderr) if progress else contextlib.nullcontext()
    with context:
        return dask.compute(*collections, optimize_graph=not getattr(_job, "local", False))
