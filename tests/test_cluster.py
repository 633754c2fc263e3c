"""Cluster execution: options, fault tolerance, resume, --scheduler, performance report, SLURM.

Every run is compared with an undisturbed reference run on dask's threaded
scheduler: same files, byte-identical volumes, masks and projections, same
statistics records apart from timings and the output folder.

The SLURM test needs a running SLURM (``.ci/slurm.sh`` starts a one-node
cluster as root). Without one it skips, unless ``ISOVIEW_SLURM=1`` (set by
``.ci/run`` after a successful setup), where a missing SLURM fails the test.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from distributed.diagnostics.plugin import SchedulerPlugin

from isoview_dask import cluster as cluster_module
from isoview_dask.cli import _cluster, _config_from_args, build_parser, main
from isoview_dask.cluster import ClusterError, ClusterSpec, client_context, jobqueue_options, make_jobqueue_cluster
from isoview_dask.io import open_volume
from isoview_dask.pipeline import convert_dataset, correct_dataset, output_path
from isoview_dask.synthetic import generate_dataset

SHAPE = (32, 128, 128)
CAMERAS = [0, 1]
CORRECT_FLAGS = dict(input_cameras=CAMERAS, output_chunks=(8, 32, 32), output_shards=(16, 64, 64))
CORRECT_ARGS = ["--cameras", "0,1", "--output-chunks", "8,32,32", "--output-shards", "16,64,64"]
CONVERT_KW = dict(cameras=CAMERAS, chunks=(8, 32, 32), shards=(16, 64, 64))
CONVERT_ARGS = ["--cameras", "0,1", "--chunks", "8,32,32", "--shards", "16,64,64"]
VOLATILE = {"timings", "mb_per_s"}  # differ between runs by nature


# --------------------------------------------------------------------------
# Data, reference runs and comparison
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-synth") / "data"
    return generate_dataset(root, preset="tiny", shape=SHAPE, seed=11).raw_dir


@pytest.fixture(scope="module")
def reference_corrected(raw_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref-corrected")
    summary = correct_dataset(raw_dir, out, progress=False, **CORRECT_FLAGS)
    assert len(summary.written) == 2 and not summary.failed
    return out


@pytest.fixture(scope="module")
def reference_converted(raw_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref-converted")
    summary = convert_dataset(raw_dir, out, progress=False, **CONVERT_KW)
    assert len(summary.written) == 2 and not summary.failed
    return out


def _normalized(value, root: Path, ignore=()):
    """A record with run-dependent entries removed and the output folder replaced by a marker."""
    if isinstance(value, dict):
        return {k: _normalized(v, root, ignore) for k, v in value.items() if k not in VOLATILE | set(ignore)}
    if isinstance(value, list):
        return [_normalized(v, root, ignore) for v in value]
    if isinstance(value, str):
        return value.replace(str(root), "<out>")
    return value


def assert_same_outputs(got: Path, want: Path, ignore=()) -> None:
    """Same file tree; arrays decode equal; every non-JSON file byte-identical; JSON equal but timings.

    ``ignore``: further JSON keys to leave out (e.g. fusion fingerprints, which hash their
    input records' paths, so differ between output folders).
    """
    # run records (provenance) differ per run by design: compare the outputs only
    files = sorted(p.relative_to(got) for p in got.rglob("*") if p.is_file() and "isoview-runs" not in p.parts)
    assert files == sorted(p.relative_to(want) for p in want.rglob("*")
                           if p.is_file() and "isoview-runs" not in p.parts)
    assert not [p for p in got.rglob("*") if ".partial-" in p.name or ".replaced-" in p.name]
    for rel in files:
        a, b = got / rel, want / rel
        if rel.suffix == ".json":
            assert (_normalized(json.loads(a.read_text()), got, ignore)
                    == _normalized(json.loads(b.read_text()), want, ignore)), rel
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"
    volumes = sorted(p.relative_to(got) for p in got.rglob("*.zarr"))
    assert volumes
    for rel in volumes:
        np.testing.assert_array_equal(open_volume(got / rel).compute(), open_volume(want / rel).compute())


# --------------------------------------------------------------------------
# Options: ClusterSpec, dask-jobqueue keywords, command line
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(cluster="kubernetes"), "unknown cluster 'kubernetes'"),
    (dict(cluster="slurm", scheduler="tcp://127.0.0.1:8786"), "cannot be combined with --cluster slurm"),
    (dict(cluster="slurm", jobs=2, maximum_jobs=4), "not both"),
    (dict(cluster="pbs", minimum_jobs=5, maximum_jobs=2), "above the maximum"),
    (dict(cluster="none", performance_report="r.html"), "needs a distributed cluster"),
    (dict(n_workers=0), "not a valid count"),
])
def test_spec_rejects_contradictions(kwargs, message):
    with pytest.raises(ClusterError, match=message):
        ClusterSpec(**kwargs)


def test_jobqueue_options_override_only_what_is_given():
    config = {"jobqueue.slurm.cores": 8, "jobqueue.slurm.memory": "32GiB", "jobqueue.slurm.queue": "long",
              "jobqueue.slurm.job-extra-directives": ["--qos=normal"],
              "jobqueue.slurm.scheduler-options": {"port": 0, "interface": "ib0"}}
    import dask
    with dask.config.set(config):
        assert jobqueue_options(ClusterSpec(cluster="slurm", malloc_trim=True)) == {}  # all from the config
        options = jobqueue_options(ClusterSpec(cluster="slurm", walltime="00:10:00", account="lab",
                                               job_extra_directives=["--exclusive"], scheduler_host="10.0.0.1",
                                               malloc_trim=True))
        assert options == {"walltime": "00:10:00", "account": "lab",
                           "job_extra_directives": ["--qos=normal", "--exclusive"],
                           "scheduler_options": {"port": 0, "host": "10.0.0.1"}}
    assert jobqueue_options(ClusterSpec(cluster="lsf", cores=2, memory="4GiB", account="p1"))["project"] == "p1"
    with dask.config.set({"jobqueue.pbs.cores": None, "jobqueue.pbs.memory": None}):
        with pytest.raises(ClusterError, match=r"--memory, or jobqueue.pbs.memory"):
            jobqueue_options(ClusterSpec(cluster="pbs", cores=4))


def test_workers_get_the_allocator_settings(monkeypatch):
    """Local workers run with WORKER_MALLOC_ENV (not distributed's 64 KiB trim threshold) unless
    malloc_trim is asked for or a worker's memory limit is too small to hold the free heap it
    keeps; batch jobs export the same through the nanny's dask config."""
    import os

    from isoview_dask.cluster import MALLOC_ENV_MIN_LIMIT, WORKER_MALLOC_ENV, client_context, worker_environ_config

    def environ():
        return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    for name in WORKER_MALLOC_ENV:  # the nanny lets variables already exported win; start clean
        monkeypatch.delenv(name, raising=False)
    with client_context(n_workers=1, threads_per_worker=1, memory_limit="2GiB", quiet=True) as client:
        assert list(client.run(environ).values()) == [{k: str(v) for k, v in WORKER_MALLOC_ENV.items()}]
        # a worker forked from the fork server applies them with mallopt (its allocator started there)
        assert list(client.run(_applied_malloc).values()) == [WORKER_MALLOC_ENV]
    for name in WORKER_MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    with client_context(n_workers=1, threads_per_worker=1, memory_limit="512MiB", quiet=True) as client:
        assert list(client.run(environ).values()) == [{"MALLOC_TRIM_THRESHOLD_": "65536"}]  # distributed's
        applied = list(client.run(_applied_malloc).values())[0]
        # distributed's trim threshold; a worker forked from a server started for the 2 GiB cluster above
        # also puts the mmap threshold it inherited back to glibc's default
        assert applied["MALLOC_TRIM_THRESHOLD_"] == 65536
        assert applied.get("MALLOC_MMAP_THRESHOLD_", 131072) == 131072
    # (the in-process nanny exported them into this process too: monkeypatch puts the environment back)
    assert worker_environ_config(ClusterSpec(malloc_trim=True)) == {}
    assert worker_environ_config(ClusterSpec())["distributed.nanny.pre-spawn-environ"]["OMP_NUM_THREADS"] == 1
    assert worker_environ_config(ClusterSpec(memory_limit=MALLOC_ENV_MIN_LIMIT - 1)) == {}
    assert worker_environ_config(ClusterSpec(memory_limit=MALLOC_ENV_MIN_LIMIT)) != {}
    assert worker_environ_config(ClusterSpec(memory_limit=0)) != {}  # no limit
    prologue = jobqueue_options(ClusterSpec(cluster="slurm", cores=2, memory="4GiB"))["job_script_prologue"]
    line = [p for p in prologue if "PRE_SPAWN_ENVIRON" in p]
    assert len(line) == 1 and "'MALLOC_MMAP_THRESHOLD_': 33554432" in line[0]
    assert "OMP_NUM_THREADS" in line[0]  # the rest of the defaults are kept
    # 4 worker processes per 4 GiB job: 1 GiB each, too small
    small = jobqueue_options(ClusterSpec(cluster="slurm", cores=4, memory="4GiB", job_processes=4))
    assert not any("PRE_SPAWN_ENVIRON" in p for p in small.get("job_script_prologue", []))


def _applied_malloc():
    from isoview_dask import preload
    return dict(preload.applied_malloc)


def _parent_pid():
    import os
    return os.getppid()


_FORK_PROBE = """
import json, os, sys

def probe():
    import os
    server = f"/proc/{os.getppid()}/environ"
    environ = open(server, "rb").read() if os.path.exists(server) else b""
    return [os.getppid(), b"OMP_NUM_THREADS=1\\0" in environ, os.environ.get("MALLOC_MMAP_THRESHOLD_")]

if __name__ == "__main__":
    import dask
    from isoview_dask.cluster import WORKER_START_CONFIG_KEY, client_context
    runs = []
    for method, limit in [(sys.argv[1], "2GiB"), (sys.argv[1], "512MiB")]:
        with dask.config.set({WORKER_START_CONFIG_KEY: method}), \\
                client_context(n_workers=2, threads_per_worker=1, memory_limit=limit, quiet=True) as client:
            runs.append(list(client.run(probe).values()))
    print(json.dumps({"pid": os.getpid(), "runs": runs}))
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_local_workers_are_forked_from_one_server_that_imported_the_pipeline(method, tmp_path):
    """By default local workers are forks of one server process that imported the pipeline once
    (isoview_dask.preload.FORKSERVER_MODULES), started with the environment spawned workers get first
    (one BLAS/OpenMP thread: a fork's own environment comes after numpy sized its thread pool). A later
    cluster of the same process that wants other allocator settings (small workers) is forked from the
    same server, and its workers drop the allocator variables they inherited but were not given.
    isoview-dask.worker-start = spawn gives distributed's spawned workers back. Run in a fresh interpreter: the fork server lives as long as its process."""
    script = tmp_path / "probe.py"
    script.write_text(_FORK_PROBE)
    done = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (large, small), pid = result["runs"], result["pid"]
    large_parents = {parent for parent, _, _ in large}
    small_parents = {parent for parent, _, _ in small}
    assert [mmap for _, _, mmap in large] == ["33554432"] * 2
    if method == "forkserver":
        assert len(large_parents) == 1 and large_parents != {pid}
        if Path("/proc").exists():
            assert all(one_thread for _, one_thread, _ in large + small)
        # the same server serves the small workers: each puts its own allocator settings in place
        assert small_parents == large_parents
        assert [mmap for _, _, mmap in small] == [None, None]
    else:
        assert large_parents == small_parents == {pid}


def _imported(names):
    import sys
    return {name: name in sys.modules for name in names}


def test_local_workers_import_the_pipeline_as_they_start():
    """start_client returns once every worker is up (scaled in the background while this process
    imports), and each worker imported the pipeline and matplotlib while starting, through the
    isoview_dask.preload preload: the first job no longer pays for those imports."""
    from isoview_dask import preload
    from isoview_dask.cluster import WORKER_PRELOAD

    names = [*preload.MODULES, *preload.OPTIONAL_MODULES]
    with client_context(n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2  # all there when the client is handed out
        assert list(client.run(_imported, names).values()) == [dict.fromkeys(names, True)] * 2
        preloads = client.run(lambda dask_worker: [p.name for p in dask_worker.preloads])
        assert list(preloads.values()) == [[WORKER_PRELOAD]] * 2


def test_a_local_worker_that_cannot_start_fails_the_start_at_once(monkeypatch):
    """Workers start in the background, but a worker whose start fails (here its preload cannot be
    imported) still fails start_client within seconds, as LocalCluster's own start would, not after
    the start timeout; the cluster is closed."""
    import time

    import isoview_dask.cluster as cluster_module
    from isoview_dask.cluster import start_client

    monkeypatch.setattr(cluster_module, "WORKER_PRELOAD", "isoview_dask_no_such_module")
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="failed to start"):
        start_client(n_workers=1, threads_per_worker=1, memory_limit="1GiB", quiet=True)
    assert time.monotonic() - t0 < 60 < cluster_module.LOCAL_START_TIMEOUT_S
    # no client of the failed start is left as distributed's default: a later dask.compute in this
    # process would hang on it (the intermittent hang of test_executor's concurrent run, 2026-12-07)
    from distributed import default_client
    with pytest.raises(ValueError, match="No clients found"):
        default_client()


def test_worker_memory_limit():
    """One worker's limit in bytes, local and batch, as the worker will see it."""
    from isoview_dask.cluster import worker_memory_limit

    assert worker_memory_limit(ClusterSpec(memory_limit="512MiB")) == 512 * 2**20
    assert worker_memory_limit(ClusterSpec(memory_limit=None)) is None
    auto = worker_memory_limit(ClusterSpec(n_workers=1, threads_per_worker=os.cpu_count() or 1))
    assert auto is not None and auto > 0
    assert worker_memory_limit(ClusterSpec(cluster="pbs", cores=8, memory="16GB", job_processes=4)) == 4 * 10**9
    assert worker_memory_limit(ClusterSpec(scheduler="tcp://127.0.0.1:8786")) is None
    # processes per job unset: dask-jobqueue splits 8 cores into 4 processes
    assert worker_memory_limit(ClusterSpec(cluster="slurm", cores=8, memory="8GiB")) == 2 * 2**30


@pytest.mark.parametrize("kind, expected", [
    ("slurm", ["#SBATCH -p short", "#SBATCH -A lab", "#SBATCH -t 00:20:00", "#SBATCH --qos=fast",
               "--nthreads 2", "--memory-limit 3.00GiB"]),
    ("pbs", ["#PBS -q short", "#PBS -A lab", "#PBS -l walltime=00:20:00", "#PBS --qos=fast"]),
    ("lsf", ["#BSUB -q short", "#BSUB -P \"lab\"", "#BSUB -W 00:20", "#BSUB --qos=fast"]),
    ("sge", ["#$ -q short", "#$ -P lab", "#$ -l h_rt=00:20:00", "#$ --qos=fast"]),
])
def test_job_scripts_of_every_batch_system(kind, expected):
    spec = ClusterSpec(cluster=kind, queue="short", account="lab", cores=2, memory="3GiB", job_processes=1,
                       walltime="00:20:00",
                       job_extra_directives=["--qos=fast"], job_directives_skip=["--mem", "mem="],
                       scheduler_host="127.0.0.1", dashboard_address=":0")
    if kind == "lsf":
        spec.walltime = "00:20"
    cluster = make_jobqueue_cluster(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in expected:
        assert line in script, f"{line!r} not in\n{script}"
    assert "tcp://127.0.0.1:" in script


def test_cli_options_build_the_spec(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(cluster_module, "client_context", lambda spec: seen.append(spec) or _nothing())
    args = build_parser().parse_args([
        "convert", "in", "--out", "o", "--cluster", "slurm", "--queue", "q", "--account", "a", "--cores", "4",
        "--memory", "16GiB", "--processes", "2", "--walltime", "01:00:00", "--adapt-min", "0", "--adapt-max", "8",
        "--job-extra=--qos=short", "--job-extra=--exclusive", "--job-skip=--mem", "--interface", "ib0",
        "--scheduler-host", "10.1.2.3", "--job-log-dir", "logs", "--retries", "5",
        "--performance-report", "r.html"])
    with _cluster(args):
        pass
    assert seen == [ClusterSpec(cluster="slurm", queue="q", account="a", cores=4, memory="16GiB", job_processes=2,
                                walltime="01:00:00", minimum_jobs=0, maximum_jobs=8,
                                job_extra_directives=["--qos=short", "--exclusive"], job_directives_skip=["--mem"],
                                interface="ib0", scheduler_host="10.1.2.3", log_directory="logs", retries=5,
                                performance_report="r.html")]
    seen.clear()
    with _cluster(build_parser().parse_args(["convert", "in", "--out", "o", "--workers", "3", "--threads", "1"])):
        pass
    with _cluster(build_parser().parse_args(["convert", "in", "--out", "o", "--malloc-trim"])):
        pass
    assert seen == [ClusterSpec(n_workers=3, threads_per_worker=1), ClusterSpec(malloc_trim=True)]
    monkeypatch.undo()
    # contradictions are one-line errors with exit status 2, before any work
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "o"), "--cluster", "slurm", "--scheduler",
                 "tcp://127.0.0.1:1"]) == 2
    assert "cannot be combined with --cluster slurm" in capsys.readouterr().err
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "o"), "--no-cluster", "--performance-report",
                 "x.html"]) == 2
    assert "needs a distributed cluster" in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------
# Fault tolerance: a worker process killed in the middle of the run
# --------------------------------------------------------------------------


class KillWorkerOnce(SchedulerPlugin):
    """Kill (SIGKILL), once, the worker that just finished the first zarr shard write, or that was just
    given a whole view's correction (a small view runs as one task: killed in the middle of it)."""

    name = "kill-worker-once"

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.killed = None

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if self.killed is not None:
            return
        whole = finish == "processing" and str(key).startswith("correct_view")
        if not whole and (finish != "memory" or "store" not in str(key)):
            return
        worker = kwargs.get("worker")
        if whole:
            task = self.scheduler.tasks.get(key)
            worker = task.processing_on.address if task is not None and task.processing_on else None
        elif worker is None:
            task = self.scheduler.tasks.get(key)
            worker = next(iter(task.who_has)).address if task is not None and task.who_has else None
        if worker in self.pids:
            os.kill(self.pids[worker], signal.SIGKILL)
            self.killed = (worker, self.pids[worker], str(key))


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` no longer exists (its parent, the nanny, has reaped it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_killed_worker_does_not_fail_the_run(raw_dir, reference_corrected, tmp_path):
    out = tmp_path / "out"
    with client_context(n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True) as client:
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2
        client.register_plugin(KillWorkerOnce(pids))
        summary = correct_dataset(raw_dir, out, progress=False, **CORRECT_FLAGS)
        killed = client.cluster.scheduler.plugins[KillWorkerOnce.name].killed
        assert killed is not None, "the plugin never killed a worker"
        worker, pid, key = killed
        assert _gone(pid), f"worker process {pid} still exists"
        client.wait_for_workers(2, timeout=60)  # the nanny started a new worker process
        assert pid not in client.run(os.getpid).values()
    assert len(summary.written) == 2 and not summary.failed, summary.report()
    assert_same_outputs(out, reference_corrected)


def test_fusion_sized_maps_in_graphs_do_not_warn():
    """A full-frame transition map (2048 x 2048 float64, 32 MiB) travels inside fusion graphs on purpose;
    on our clients that is not a 'large graph' (distributed's default threshold is 10 MB), above 256 MiB it is."""
    import warnings

    import dask.array as da
    from isoview_dask.cluster import GRAPH_WARNING_THRESHOLD, compute
    transition = np.random.default_rng(0).random((2048, 2048))
    total = (da.ones((4, 2048, 2048), chunks=(4, 1024, 1024)) * da.from_array(transition, chunks=1024)).sum()
    with client_context(n_workers=1, threads_per_worker=1, processes=False, quiet=True) as client:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Sending large graph")
            assert compute(total, progress=False)[0] == pytest.approx(4 * transition.sum())
            assert client.compute(total).result() == pytest.approx(4 * transition.sum())   # inside the context too
        import dask
        assert dask.config.get("distributed.admin.large-graph-warning-threshold") == GRAPH_WARNING_THRESHOLD
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "10MB"}):
            with pytest.warns(UserWarning, match="Sending large graph"):
                client.compute(total).result()


def test_compute_keeps_the_order_of_mixed_collections():
    """An array, a Delayed and an array come back in that order, locally and on a client (dask 2026.8 groups
    the results of mixed collection types by type; the correction's statistics pass mixes them)."""
    import dask
    import dask.array as da
    from isoview_dask.cluster import compute
    volume = da.arange(60, chunks=7).reshape(3, 4, 5)
    wanted = (int(volume.max().compute()), ("delayed", (4, 5)), (3, 5))

    def check(results):
        assert (int(results[0]), results[1], results[2].shape) == wanted
        assert np.array_equal(results[3], np.arange(60).reshape(3, 4, 5).min(axis=0))

    def collections():
        return (volume.max(), dask.delayed(lambda m: ("delayed", m.shape))(volume.mean(axis=0)), volume.sum(axis=1),
                volume.min(axis=0))
    check(compute(*collections(), progress=False))
    with client_context(n_workers=1, threads_per_worker=1, processes=False, quiet=True):
        check(compute(*collections(), progress=False))


# --------------------------------------------------------------------------
# Resume after a killed run
# --------------------------------------------------------------------------


def test_rerun_cleans_torn_partial_outputs(raw_dir, reference_corrected, tmp_path):
    out = tmp_path / "out"
    assert len(correct_dataset(raw_dir, out, progress=False, **CORRECT_FLAGS).written) == 2
    # Simulate a run killed while writing camera 1: no record, no final volume,
    # half-written temporaries left behind.
    record = output_path(out, 0, 0, 1, 0, "correction", "json")
    volume = output_path(out, 0, 0, 1, 0)
    record.unlink()
    shutil.rmtree(volume)
    torn = volume.with_name(f".{volume.name}.partial-0123456789ab")
    (torn / "0" / "c").mkdir(parents=True)
    (torn / "0" / "c" / "0").write_bytes(b"torn shard")
    torn_tif = output_path(out, 0, 0, 1, 0, "xyProjection", "tif")
    torn_tif = torn_tif.with_name(f".{torn_tif.name}.partial-fedcba987654")
    torn_tif.write_bytes(b"II*\x00 torn")
    rerun = correct_dataset(raw_dir, out, progress=False, **CORRECT_FLAGS)
    assert len(rerun.skipped) == 1 and rerun.written == [str(record)]
    assert not torn.exists() and not torn_tif.exists()
    assert_same_outputs(out, reference_corrected)


# --------------------------------------------------------------------------
# An existing scheduler (--scheduler) and the performance report
# --------------------------------------------------------------------------


def test_cli_on_an_existing_scheduler(raw_dir, reference_corrected, reference_converted, tmp_path, capsys):
    from distributed import Client, LocalCluster

    report = tmp_path / "reports" / "correct.html"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as external:
        address = external.scheduler_address
        assert main(["convert", str(raw_dir), "--out", str(tmp_path / "converted"), *CONVERT_ARGS,
                     "--scheduler", address]) == 0
        assert main(["correct", str(raw_dir), "--out", str(tmp_path / "corrected"), *CORRECT_ARGS,
                     "--scheduler", address, "--performance-report", str(report)]) == 0
        captured = capsys.readouterr()
        with Client(address) as client:  # the CLI left the external cluster running
            assert len(client.scheduler_info()["workers"]) == 1
            # the CLI's tasks ran on it
            assert any("store" in k for k in client.run_on_scheduler(
                lambda dask_scheduler: [str(t) for t in dask_scheduler.task_prefixes]))
    assert "Dask dashboard: http" in captured.err and f"performance report: {report}" in captured.err
    assert "2 written, 0 skipped, 0 failed" in captured.out
    assert_same_outputs(tmp_path / "converted", reference_converted)
    assert_same_outputs(tmp_path / "corrected", reference_corrected)
    html = report.read_text()
    assert report.stat().st_size > 10_000 and "Task Stream" in html


# --------------------------------------------------------------------------
# A real SLURM cluster
# --------------------------------------------------------------------------


def _slurm_problem() -> str | None:
    """Why SLURM cannot run jobs here, or None when a node is idle."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "the SLURM client commands (sinfo, sbatch) are not installed"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if states.returncode != 0:
        return f"sinfo failed: {states.stderr.strip() or states.stdout.strip()}"
    if not any(s.startswith(("idle", "mix")) for s in states.stdout.split()):
        return f"no idle SLURM node (states: {states.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_problem()
    if problem:
        if os.environ.get("ISOVIEW_SLURM") == "1":
            pytest.fail(f"ISOVIEW_SLURM=1 but SLURM is unusable: {problem}")
        pytest.skip(f"SLURM not available: {problem}; start a one-node cluster with `sudo .ci/slurm.sh`")


class JobWatcher(threading.Thread):
    """Record the SLURM jobs squeue shows running while a block executes."""

    def __init__(self, name: str):
        super().__init__(daemon=True)
        self.name_filter, self.running, self._done = name, set(), threading.Event()

    def run(self):
        while not self._done.wait(0.2):
            listing = subprocess.run(["squeue", "-h", "-n", self.name_filter, "-o", "%i %T"], capture_output=True,
                                     text=True).stdout
            self.running |= {line.split()[0] for line in listing.splitlines() if line.endswith(" RUNNING")}

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self.join()


def _slurm_args(tmp_path, name, jobs):
    return ["--cluster", "slurm", "--cores", "1", "--memory", "1GiB", "--walltime", "00:05:00",
            "--jobs", str(jobs), "--scheduler-host", "127.0.0.1", "--job-skip=--mem", "--dashboard-address", ":0",
            "--job-name", name, "--job-log-dir", str(tmp_path / "slurm-logs")]


def test_pipeline_on_slurm(slurm, raw_dir, reference_corrected, reference_converted, tmp_path, capsys):
    name = f"isoview-test-{os.getpid()}"
    # 1. the command line as a user runs it: two jobs; squeue must show them running
    with JobWatcher(name) as watcher:
        assert main(["convert", str(raw_dir), "--out", str(tmp_path / "converted"), *CONVERT_ARGS,
                     *_slurm_args(tmp_path, name, jobs=2)]) == 0
    assert "Dask cluster: slurm: 2 job(s)" in capsys.readouterr().err
    assert watcher.running, "squeue never listed a running worker job"
    logs = {p.name for p in (tmp_path / "slurm-logs").iterdir()}
    assert {f"{name}-{job}.err" for job in watcher.running} <= logs
    assert_same_outputs(tmp_path / "converted", reference_converted)
    # 2. the same options through the CLI's cluster factory: workers really live in SLURM jobs
    args = build_parser().parse_args(["correct", str(raw_dir), "--out", str(tmp_path / "corrected"), *CORRECT_ARGS,
                                      *_slurm_args(tmp_path, name, jobs=1)])
    with _cluster(args) as client:
        client.wait_for_workers(1, timeout=120)
        job_ids = set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
        assert None not in job_ids and job_ids.isdisjoint(watcher.running)
        summary = correct_dataset(args.input, args.out, _config_from_args(args), progress=False)
    assert len(summary.written) == 2 and not summary.failed
    assert_same_outputs(tmp_path / "corrected", reference_corrected)
    # closing the cluster cancelled the jobs
    deadline = time.monotonic() + 30
    while subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "worker jobs still queued after the cluster closed"
        time.sleep(0.5)


class _Records(__import__("logging").Handler):
    def __init__(self):
        super().__init__(level=0)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("address, loud", [(None, False), (":0", True)])
def test_local_dashboard_listens_on_loopback_without_the_wildcard_warning(address, loud, monkeypatch, capsys):
    """Default: dashboard on 127.0.0.1 with explicit websocket origins, so bokeh has no wildcard to warn
    about; the all-interfaces address asked for explicitly keeps distributed's setting (and its warning,
    which shows that the capture works)."""
    import logging
    import warnings
    bokeh = logging.getLogger("bokeh")  # bokeh logs through its own handler, not the root's
    records = _Records()
    monkeypatch.setattr(bokeh, "level", logging.WARNING)
    bokeh.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with client_context(n_workers=1, threads_per_worker=1, processes=False, memory_limit="1GiB",
                                dashboard_address=address):
                links = [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines()
                         if line.startswith("Dask dashboard: ")]
                if address is None:  # the printed link is the loopback address, and it serves the page
                    import urllib.request
                    assert len(links) == 1 and links[0].startswith("http://127.0.0.1:"), links
                    assert urllib.request.urlopen(links[0], timeout=30).status == 200
    finally:
        bokeh.removeHandler(records)
    wildcard = [m for m in records.messages + [str(w.message) for w in caught] if "wildcard" in m.lower()]
    assert bool(wildcard) is loud, wildcard


def _profile_interval(dask_worker):
    return dask_worker.periodic_callbacks["profile"].callback_time


def test_local_workers_sample_their_profile_every_100_ms_unless_configured():
    """distributed's workers sample their task thread every 10 ms for the dashboard's profile page (4 % of
    a small run's CPU); ours every 100 ms, and a user's own setting wins."""
    import dask

    from isoview_dask.cluster import WORKER_PROFILE_INTERVAL, client_context, worker_profile_config

    assert WORKER_PROFILE_INTERVAL == "100ms"
    with client_context(n_workers=1, threads_per_worker=1, memory_limit="2GiB", quiet=True) as client:
        assert list(client.run(_profile_interval).values()) == [100]
    with dask.config.set({"distributed.worker.profile.interval": "20ms"}):
        assert worker_profile_config() == {}
        with client_context(n_workers=1, threads_per_worker=1, memory_limit="2GiB", quiet=True) as client:
            assert list(client.run(_profile_interval).values()) == [20]


def test_environment_sets_variables_inside_and_restores_them(monkeypatch):
    import os

    from isoview_dask.cluster import environment
    monkeypatch.setenv("ISOVIEW_TEST_SET", "before")
    monkeypatch.delenv("ISOVIEW_TEST_UNSET", raising=False)
    with environment({"ISOVIEW_TEST_SET": "inside", "ISOVIEW_TEST_UNSET": 3}):
        assert os.environ["ISOVIEW_TEST_SET"] == "inside" and os.environ["ISOVIEW_TEST_UNSET"] == "3"
    assert os.environ["ISOVIEW_TEST_SET"] == "before" and "ISOVIEW_TEST_UNSET" not in os.environ
    try:
        with environment({"ISOVIEW_TEST_UNSET": "x"}):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert "ISOVIEW_TEST_UNSET" not in os.environ
