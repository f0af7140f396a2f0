"""scripts/notebooks/explore.ipynb, executed headlessly (nbclient) on a real small run: no cell may fail."""
import json
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ACTIVATIONS_BY_DEPTH, BIN, ROOT, SMALL_DEFAULT

NOTEBOOK = ROOT / "scripts" / "notebooks" / "explore.ipynb"


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"


@pytest.fixture
def debian_kernel(tmp_path, monkeypatch):
    """A private Jupyter data folder whose "python3" kernel runs this interpreter (Debian's
    /usr/bin/python3 under CTest), so the kernel sees the same packages as the tests."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 ({sys.executable})",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return sys.executable


def test_the_notebook_runs_on_a_real_result(results_of, debian_kernel, monkeypatch):
    path = results_of(SMALL_DEFAULT)
    monkeypatch.setenv("SELFNORM_RESULTS", str(path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError if any cell fails

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # The kernel is the interpreter of the kernelspec, and read the file it was given.
    assert f"interpreter:  {debian_kernel} " in text
    assert f"results file: {path}" in text
    assert "not a two-axis numeric sweep: no heatmaps" in text
    assert "grid dimensions: {'activation': 4, 'layer': 8}" in text
    # The three profile figures, inline.
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 3
    # The dataset and the Monte Carlo versus theory table, for every activation.
    tables = [o.data["text/plain"] for o in outputs if o.output_type in ("execute_result", "display_data")
              and "text/plain" in o.data]
    assert any("<xarray.Dataset>" in t for t in tables)
    comparison = next(t for t in tables if "relative_gap" in t and "middle" in t and "last" in t)
    for activation in ("selu", "relu", "tanh", "elu"):
        assert activation in comparison


def test_a_relative_results_path_is_found_from_where_jupyter_started(results_of, debian_kernel, monkeypatch):
    """The README's `SELFNORM_RESULTS=results/x.h5 jupyter notebook ...` runs from the repository's
    root, while Jupyter starts the kernel in the notebook's folder: the path is taken from where
    Jupyter started (PWD), or from the repository's root."""
    path = results_of(SMALL_DEFAULT)
    monkeypatch.setenv("PWD", str(path.parent.parent))
    monkeypatch.setenv("SELFNORM_RESULTS", f"{path.parent.name}/{path.name}")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:2]  # the set-up cell is the one that finds the file
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.output_type == "stream")
    assert f"results file: {path}" in text
    # A path found nowhere names where it looked.
    monkeypatch.setenv("SELFNORM_RESULTS", "nowhere/x.h5")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:2]
    with pytest.raises(Exception, match=r"SELFNORM_RESULTS=nowhere/x.h5: not found under"):
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()


def run_notebook(path, monkeypatch):
    """The notebook executed on `path`; the text its cells printed, and their tables."""
    monkeypatch.setenv("SELFNORM_RESULTS", str(path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    tables = [o.data["text/plain"] for o in outputs if o.output_type in ("execute_result", "display_data")
              and "text/plain" in o.data]
    return text, tables


def test_the_notebook_runs_on_a_shard_and_on_points_of_different_depths(results_of, debian_kernel, monkeypatch,
                                                                          tmp_path):
    """A shard file opens too (it used to fail at the grid, which needs every point), and the
    profile of a point shallower than the file's layer axis shows its own layers, not padding."""
    whole = results_of(ACTIVATIONS_BY_DEPTH)
    shard = tmp_path / "shard-1-of-2.h5"
    r = subprocess.run([str(BIN), "run", str(whole.parent / "config.json"), "--shard", "1/2", "-o", str(shard),
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text, _ = run_notebook(shard, monkeypatch)
    assert "this file is shard 1 of 2, 3 of the experiment's 6 points: no grid (merge the shards" in text
    # Point 0 is selu at depth 3, in a file of 5 layers: its profile ends at layer 3.
    text, tables = run_notebook(whole, monkeypatch)
    profile = tables[-1]
    assert "monte_carlo" in profile and "NaN" not in profile
    assert [line.split()[0] for line in profile.splitlines()[2:]] == ["1", "2", "3"]
