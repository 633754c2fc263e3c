"""Every notebook in notebooks/ runs clean from a fresh kernel, and is stored without outputs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT = 300  # seconds per cell: generous for a loaded machine; each notebook takes well under a minute


@pytest.fixture(autouse=True)
def _this_environments_kernel(monkeypatch):
    """Look up kernelspecs in this environment first (ipykernel installs ``python3`` there), ahead of a
    user-level ``python3`` kernelspec that may point at another interpreter."""
    share = Path(sys.prefix) / "share" / "jupyter"
    if (share / "kernels" / KERNEL / "kernel.json").is_file():
        monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(share), os.environ.get("JUPYTER_PATH")])))


def _execute(nb, workdir: Path):
    """Run ``nb`` in a fresh ``python3`` kernel whose working directory is ``workdir``; return it."""
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT, allow_errors=False,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "fusion_tuning.ipynb", "compression_study.ipynb"} <= names


def test_kernel_is_this_python(tmp_path):
    """The ``python3`` kernel must run the interpreter (and so the packages) the tests run with."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, sys\nprint(sys.prefix)\nprint(os.getcwd())")]
    _execute(nb, tmp_path)
    prefix, cwd = nb.cells[0].outputs[0]["text"].split("\n")[:2]
    assert os.path.realpath(prefix) == os.path.realpath(sys.prefix), (
        f"the {KERNEL} kernel runs {prefix}, not this environment ({sys.prefix}); install ipykernel here")
    assert os.path.realpath(cwd) == os.path.realpath(tmp_path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_clean(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    try:
        _execute(nb, tmp_path)
    except nbclient.exceptions.CellExecutionError as exc:  # the message holds the cell and its traceback
        pytest.fail(f"{path.name} failed:\n{exc}")
    seconds = time.perf_counter() - start
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    stderr = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
                     if out.get("output_type") == "stream" and out.get("name") == "stderr")
    assert "Traceback" not in stderr, stderr[-2000:]
    # the notebooks clean up after themselves: nothing is left in the working directory
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())
    print(f"{path.name}: {seconds:.1f} s")
