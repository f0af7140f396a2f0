"""scripts/plot.py on real result files: the documented PNG files, valid and non-empty."""
import importlib.util
import math
import os
import shutil
import struct
import subprocess
import sys

import h5py
import matplotlib.image
import numpy as np

from conftest import ALPHA_LAMBDA, ROOT, SMALL_DEFAULT, files_under
from mounts import mounted_tmpfs

PLOT = ROOT / "scripts" / "plot.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def plot_in_process(*args):
    """plot.py's main() in this process (saves starting an interpreter); returns its exit status."""
    spec = importlib.util.spec_from_file_location("plot_script", PLOT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


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
        rgb = (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint32)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        assert len(np.unique(packed)) > 50, path


def test_a_sweep_over_alpha_and_lambda_gets_profiles_and_heatmaps_beside_the_results(results_of, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    shutil.copy(results_of(ALPHA_LAMBDA), folder / "alpha_lambda.h5")
    r = plot(folder / "alpha_lambda.h5")  # the command line, as scripts/quickstart.sh runs it
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no warnings
    assert_figures(folder, "alpha_lambda", ["activation_mean", "activation_var", "grad_activation_msq",
                                            "activation_mean_heatmap", "activation_var_heatmap"], r.stdout)


def test_a_list_of_activations_gets_profiles_in_the_chosen_folder(results_of, tmp_path, capsys):
    out = tmp_path / "figures"
    assert plot_in_process(results_of(SMALL_DEFAULT), "-o", out) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    # No heatmap: the points are a list of activations, not a two-axis numeric grid.
    assert_figures(out, "small_default", ["activation_mean", "activation_var", "grad_activation_msq"],
                   captured.out)


def test_a_file_that_is_not_a_result_is_refused_clearly(tmp_path, capsys):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    assert plot_in_process(other, "-o", tmp_path / "figures") == 2
    assert capsys.readouterr().err == f"plot.py: {other} is not a selfnorm result file (it has no 'schema' " \
                                      f"attribute; selfnorm writes schema 'selfnorm.results')\n"
    assert not (tmp_path / "figures").exists()


def test_bad_options_are_refused_before_anything_is_written(results_of, tmp_path):
    result = results_of(SMALL_DEFAULT)
    (tmp_path / "notes.txt").write_text("a researcher's notes\n")
    for args, message in [
        (["--dpi", "0", "-o", tmp_path / "figs"], "plot.py: error: --dpi 0: give a positive number of dots per inch, "
                                                  "e.g. 110"),
        (["-o", tmp_path / "notes.txt"], f"plot.py: error: -o {tmp_path}/notes.txt is a file; give a folder for the "
                                         "PNG files (it is created if missing)"),
        (["-o", "/proc/selfnorm-figures"], "plot.py: cannot create the output folder /proc/selfnorm-figures (No such "
                                           "file or directory); choose another with -o"),
    ]:
        r = plot(result, *args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines()[-1] == message
        assert r.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "a researcher's notes\n"


def test_a_shard_is_drawn_with_a_note_that_it_is_part_of_the_sweep(write_config, run, tmp_path):
    cfg = write_config(ALPHA_LAMBDA)
    shard = tmp_path / "shard.h5"
    assert run("run", cfg, "--shard", "0/2", "-o", shard, "--quiet").returncode == 0
    r = plot(shard, "-o", tmp_path / "figs")
    assert r.returncode == 0, r.stderr
    assert r.stderr == (f"plot.py: note: {shard} is shard 0 of 2, 3 of the experiment's 6 points: the figures show "
                        "those points only, and no heatmap; merge the shards (selfnorm merge) for the whole sweep\n")
    assert not list((tmp_path / "figs").glob("*heatmap*"))


def test_a_results_folder_that_cannot_be_written_is_refused_clearly(results_of, tmp_path):
    """The figures go beside the results by default. A read-only tmpfs stands for a folder the user
    cannot write (chmod does not stop root)."""
    with mounted_tmpfs(tmp_path / "ro", "size=1m") as ro:
        shutil.copy(results_of(SMALL_DEFAULT), ro / "small_default.h5")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        r = plot(ro / "small_default.h5")
        assert r.returncode == 2, r.stderr
        assert r.stderr == (f"plot.py: cannot write figures in {ro.resolve()} (Read-only file system); choose a "
                            "folder with -o\n")
        assert r.stdout == ""
        assert files_under(ro) == ["small_default.h5"]


def test_a_figure_that_does_not_fit_on_the_disk_leaves_the_earlier_one_whole(results_of, tmp_path):
    """A tmpfs with room for half of the first figure: the figure cut short is not left under its
    final name, nor as a temporary file, and the figure drawn before stays as it was."""
    result = results_of(SMALL_DEFAULT)
    assert plot(result, "-o", tmp_path / "reference").returncode == 0
    first = (tmp_path / "reference" / "small_default_activation_mean.png").stat().st_size
    page = 4096
    with mounted_tmpfs(tmp_path / "disk", f"size={(1 + math.ceil(first / page) // 2) * page}") as disk:
        earlier = disk / "small_default_activation_mean.png"
        earlier.write_bytes(b"an earlier figure")
        r = plot(result, "-o", disk)
        assert r.returncode == 2, r.stderr
        assert r.stderr == f"plot.py: cannot write figures in {disk} (No space left on device); choose a folder " \
                           "with -o\n"
        assert r.stdout == ""
        assert files_under(disk) == ["small_default_activation_mean.png"]
        assert earlier.read_bytes() == b"an earlier figure"


def test_a_run_that_blew_up_near_the_top_of_doubles_range_is_drawn(write_config, run, tmp_path):
    """ReLU with weight variance 100: the Monte Carlo overflows float32 at layer 46, and the theory
    reaches 2.2e307 at layer 181 before it overflows double; the axis ends at double's largest value
    instead of overflowing to inf, and the log axis' ticks stop there too."""
    cfg = write_config({"name": "relu_wv100", "seed": 1, "activation": "relu", "init": {"weight_variance": 100},
                        "network": {"depth": 200, "width": 16}, "monte_carlo": {"trials": 2, "batch": 16}})
    result = tmp_path / "relu_wv100.h5"
    assert run("run", cfg, "-o", result, "--quiet").returncode == 0
    with h5py.File(result, "r") as f:
        assert 1e307 < np.nanmax(f["theory_activation_var"][:]) < np.finfo(float).max
    r = plot(result, "-o", tmp_path / "figs")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no overflow warnings either
    assert_figures(tmp_path / "figs", "relu_wv100", ["activation_mean", "activation_var", "grad_activation_msq"],
                   r.stdout)
