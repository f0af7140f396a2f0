"""scripts/plot.py on real result files: the documented PNG files, valid and non-empty."""
import os
import shutil
import struct
import subprocess
import sys

import h5py
import numpy as np

from conftest import ALPHA_LAMBDA, ROOT, SMALL_DEFAULT

PLOT = ROOT / "scripts" / "plot.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def plot(*args):
    env = dict(os.environ, MPLCONFIGDIR=os.environ.get("MPLCONFIGDIR", "/tmp/selfnorm-test-mplconfig"))
    return subprocess.run([sys.executable, str(PLOT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def png_size(path):
    """(width, height) of a PNG file, checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data[-8:-4] == b"IEND"
    return width, height


def assert_figures(folder, stem, names, stdout):
    expected = [folder / f"{stem}_{n}.png" for n in names]
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(p.name for p in expected)
    assert stdout.split() == [str(p) for p in expected]  # plot.py prints each path it wrote
    for path in expected:
        width, height = png_size(path)
        assert width >= 400 and height >= 300, path
        assert 5_000 < path.stat().st_size < 1_000_000, path
        # Not a blank canvas: many distinct colours.
        import matplotlib.image

        pixels = matplotlib.image.imread(path)
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50, path


def test_a_sweep_over_alpha_and_lambda_gets_profiles_and_heatmaps(results_of, tmp_path):
    out = tmp_path / "figures"
    r = plot(results_of(ALPHA_LAMBDA), "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no warnings
    assert_figures(out, "alpha_lambda", ["activation_mean", "activation_var", "grad_activation_msq",
                                         "activation_mean_heatmap", "activation_var_heatmap"], r.stdout)


def test_a_list_of_activations_gets_profiles_beside_the_results_by_default(results_of, tmp_path):
    source = results_of(SMALL_DEFAULT)
    folder = tmp_path / "results"
    folder.mkdir()
    shutil.copy(source, folder / "small_default.h5")
    r = plot(folder / "small_default.h5")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    # No heatmap: the points are a list of activations, not a two-axis numeric grid.
    assert_figures(folder, "small_default", ["activation_mean", "activation_var", "grad_activation_msq"], r.stdout)


def test_a_file_that_is_not_a_result_is_refused_clearly(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    r = plot(other, "-o", tmp_path / "figures")
    assert r.returncode == 2
    assert f"plot.py: {other} is not a selfnorm result file" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "figures").exists()
