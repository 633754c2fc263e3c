"""The command line as a user meets it: short help with defaults and choices, one name per option,
--version, guards that refuse bad paths before any work, and a clean Ctrl-C that a rerun resumes."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from isoview_dask import __version__
from isoview_dask.cli import STAGE_SECTIONS, build_parser, main
from isoview_dask.synthetic import generate_dataset


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------------------------------ help

def test_stage_help_is_short_and_shows_defaults_and_choices(capsys):
    text = _help(capsys, "correct", "--help")
    assert len(text.splitlines()) < 120, len(text.splitlines())
    assert "--correction-segment-threshold X" in text and "(default 0.4)" in text
    assert "{true,false}" in text and "{zarr,klb,tif}" in text
    assert "--fusion-" not in text  # correction takes no fusion options
    assert "--queue" not in text and "--help-all" in text
    fuse = _help(capsys, "fuse", "--help")
    assert "{adaptive,geometric,sharpness,average}" in fuse and "--correction-" not in fuse
    assert "--fusion-static" not in fuse  # a two-pass option: timelapse / run --two-pass only
    assert len(fuse.splitlines()) < 135
    full = _help(capsys, "correct", "--help-all")
    assert "--queue" in full and "--job-extra" in full and len(full.splitlines()) > len(text.splitlines())


def test_every_option_has_one_name():
    parser = build_parser(full=True)
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name in STAGE_SECTIONS:
        dests = {}
        for action in subparsers[name]._actions:
            if action.option_strings and action.dest not in ("help",):
                dests.setdefault(action.dest, []).extend(action.option_strings)
        assert all(len(flags) == 1 for flags in dests.values()), {d: f for d, f in dests.items() if len(f) > 1}
        assert len(set(dests)) == len(dests)
    with pytest.raises(SystemExit):
        main(["fuse", "somewhere", "--method", "geometric"])  # the old duplicate of --fusion-type
    with pytest.raises(SystemExit):
        main(["correct", "somewhere", "--out", "o", "--input-cameras", "0"])  # the old duplicate of --cameras


def test_version(capsys):
    assert _help(capsys, "--version").strip() == f"isoview-dask {__version__}"


# ------------------------------------------------------------------------------------------ guards

@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("cli") / "syn", preset="tiny", seed=1, timepoints=1)


@pytest.fixture
def no_cluster_start(monkeypatch):
    """Fail loudly if a command starts a cluster: the guards must refuse before that."""
    import isoview_dask.cluster as cluster

    def refuse(*args, **kwargs):
        raise AssertionError("a cluster was started before the input and output were validated")
    monkeypatch.setattr(cluster, "start_client", refuse)


@pytest.mark.parametrize("command", ["correct", "run", "timelapse", "convert"])
def test_output_inside_the_input_is_refused(recording, command, capsys, no_cluster_start):
    out = recording.raw_dir / "out"
    assert main([command, str(recording.raw_dir), "--out", str(out)]) == 2
    assert "lies inside the input" in capsys.readouterr().err and not out.exists()


def test_output_inside_the_input_when_asked(recording, tmp_path, capsys):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(recording.raw_dir, raw)
    assert main(["correct", str(raw), "--out", str(raw / "out"), "--allow-out-inside-input", "--no-cluster",
                 "--cameras", "0"]) == 0
    assert "1 written" in capsys.readouterr().out


def test_unwritable_output_is_refused_before_work(recording, tmp_path, capsys, no_cluster_start):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["correct", str(recording.raw_dir), "--out", str(blocker / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["fuse", str(recording.raw_dir), "--out", str(tmp_path / "f")]) == 2  # not a corrected root
    assert "no complete corrected volumes" in capsys.readouterr().err


def test_missing_input_is_refused_before_the_cluster(tmp_path, capsys, no_cluster_start):
    assert main(["run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere" in err and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ start-up

#: Imported only once the cluster starts, so that they load while its workers start (and a
#: command's --help stays quick): the pipeline, dask.array, zarr and scipy take about a second.
HEAVY_MODULES = ("isoview_dask.pipeline", "dask.array", "zarr", "scipy.ndimage")


@pytest.mark.parametrize("command", ["run", "correct", "timelapse"])
def test_a_command_checks_its_input_before_importing_the_heavy_modules(recording, tmp_path, command):
    script = f"""
import sys
import isoview_dask.cluster as cluster
def start(*args, **kwargs):
    print("loaded:", [m for m in {HEAVY_MODULES!r} if m in sys.modules])
    raise SystemExit(0)
cluster.start_client = start
from isoview_dask.cli import main
main([{command!r}, {str(recording.raw_dir)!r}, "--out", {str(tmp_path / "out")!r}])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout, done.stdout  # the input was read (a .stack's size checked) without them


# ------------------------------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_prints_one_line_and_a_rerun_resumes(tmp_path):
    """SIGINT during a run on a local cluster: exit status 130, one line on stderr that names what is kept
    and says a rerun resumes, no traceback, no worker left; the rerun skips what was complete."""
    truth = generate_dataset(tmp_path / "syn", preset="tiny", seed=3, timepoints=12)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "isoview_dask", "run", str(truth.raw_dir), "--out", str(out), "--workers", "1",
               "--memory-limit", "2GiB", "--fusion-diagnostics", "false"]
    # its own process group, signalled as a terminal's Ctrl-C signals it: the workers get SIGINT too
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("SPM*/TM*/*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    time.sleep(1.0)  # some jobs in flight
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"^\s*(correct|fuse|run)?.*\|", line)
             and "dashboard" not in line.lower()]
    assert "Traceback" not in err, err
    final = err.strip().splitlines()[-1]
    assert "interrupted" in final and "run the same command again to resume" in final, err
    assert re.search(r"\d+ complete output record\(s\)", final), final
    assert lines[-1] == final
    # the rerun resumes: complete outputs are skipped, the rest is written
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    leftover = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True)
    assert not leftover.stdout.strip(), f"processes of the interrupted run still alive: {leftover.stdout}"
    skipped = int(re.search(r"correct: \d+ written, (\d+) skipped", rerun.stdout).group(1))
    assert skipped >= 1, rerun.stdout


def test_readme_python_snippet_runs_as_a_script(tmp_path):
    """The README's first Python example, saved as a script and run as users run it (local cluster included)."""
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert 'if __name__ == "__main__":' in snippet
    generate_dataset(tmp_path / "data", preset="tiny", seed=0, cameras=(0, 1))
    (tmp_path / "example.py").write_text(snippet)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cm1.zarr" / "zarr.json").is_file() and "dashboard" in done.stderr.lower()


# ------------------------------------------------------------------------------------------ reruns

def _outputs(root):
    """Every file under an output root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def complete_run(recording, tmp_path_factory):
    """A complete ``run`` of the one-timepoint recording (no cluster, no figures)."""
    out = tmp_path_factory.mktemp("complete") / "out"
    assert main(["run", str(recording.raw_dir), "--out", str(out), "--no-cluster",
                 "--fusion-diagnostics", "false"]) == 0
    return out


def test_a_rerun_of_complete_outputs_starts_no_cluster(recording, complete_run, capsys, no_cluster_start):
    import isoview_dask.pipeline  # noqa: F401  (imports are start-up, not the rerun's time)
    capsys.readouterr()
    before = _outputs(complete_run)
    start = time.perf_counter()
    assert main(["run", str(recording.raw_dir), "--out", str(complete_run), "--fusion-diagnostics", "false"]) == 0
    seconds = time.perf_counter() - start
    assert _outputs(complete_run) == before
    assert seconds < 1.0, seconds
    out = capsys.readouterr().out
    assert "correct: 0 written, 4 skipped (complete), 0 failed" in out
    assert "fuse: 0 written, 2 skipped (complete), 0 failed" in out


def test_a_rerun_with_work_left_starts_the_cluster(recording, complete_run, tmp_path, monkeypatch, capsys):
    import shutil

    import isoview_dask.cluster as cluster
    out = tmp_path / "out"
    shutil.copytree(complete_run, out)
    next(out.glob("SPM*/TM*/*.fusedStack.json")).unlink()  # one fusion left to do

    class Started(Exception):
        pass

    def start(*args, **kwargs):
        raise Started
    monkeypatch.setattr(cluster, "start_client", start)
    with pytest.raises(Started):
        main(["run", str(recording.raw_dir), "--out", str(out), "--fusion-diagnostics", "false"])


def test_skipped_outputs_are_one_line_per_stage_and_listed_with_v(recording, complete_run, capsys):
    argv = ["run", str(recording.raw_dir), "--out", str(complete_run), "--no-cluster", "--fusion-diagnostics",
            "false"]
    capsys.readouterr()
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("correct: ") and lines[1].startswith("fuse: "), lines
    assert main(["-v"] + argv) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  skipped ")]
    assert len(listed) == 6 and all(line.endswith("(complete)") for line in listed), listed


def test_a_stage_whose_every_job_fails_ends_with_the_reason_and_the_count(recording, tmp_path, capsys):
    """Every stack shorter than its XML says: the run exits non-zero and its last lines name the stack
    problem and how many failed (not a missing folder of the stage that had nothing to work on)."""
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(recording.raw_dir, raw)
    stacks = sorted(raw.rglob("*.stack"))
    for stack in stacks:
        with open(stack, "r+b") as f:
            f.truncate(stack.stat().st_size - 1000)
    code = main(["run", str(raw), "--out", str(tmp_path / "out"), "--no-cluster"])
    err = capsys.readouterr().err
    assert code != 0
    assert f"every correct job failed ({len(stacks)} failure(s))" in err, err
    assert "not a whole number of" in err and "does not exist" not in err, err
