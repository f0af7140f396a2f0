"""A full disk, made by the test as a tmpfs of a few pages: the run stops with "no space left on
device" naming the path it could not write, exits non-zero, leaves nothing under the final name
and no temporary file, never touches an earlier result, and resumes once there is space.

tmpfs counts whole 4 KiB pages per file; the sizes below are computed from the real file sizes of
the same run on an ordinary disk, so they do not depend on the HDF5 version.
"""
import json
import math
import subprocess

import pytest

from conftest import files_under, same_statistics
from mounts import mounted_tmpfs

PAGE = 4096

TWO_POINTS = {"name": "two", "seed": 5, "network": {"depth": 4, "width": 16}, "activation": ["selu", "tanh"],
              "monte_carlo": {"trials": 3, "batch": 20}}
ONE_POINT = {"name": "one", "seed": 6, "network": {"depth": 4, "width": 16}, "monte_carlo": {"trials": 3, "batch": 20}}
LARGE = {"name": "large", "seed": 7, "network": {"depth": 300, "width": 8}, "monte_carlo": {"trials": 64, "batch": 8},
         "output": {"per_trial": True}}


def pages(nbytes):
    return math.ceil(nbytes / PAGE)


@pytest.fixture
def sizes(run, tmp_path_factory):
    """The reference results on an ordinary disk, and the sizes of one point's checkpoint file."""
    folder = tmp_path_factory.mktemp("reference")
    out = {}
    for config in (TWO_POINTS, ONE_POINT, LARGE):
        cfg = folder / f"{config['name']}.json"
        cfg.write_text(json.dumps(config))
        result = folder / f"{config['name']}.h5"
        r = run("run", cfg, "-o", result, "--quiet")
        assert r.returncode == 0, r.stderr
        out[config["name"]] = (cfg, result, result.stat().st_size)
    return out


def test_a_checkpoint_on_a_full_disk_stops_the_run_and_it_resumes_with_space(run, tmp_path, sizes):
    cfg, reference, final_size = sizes["two"]
    point = final_size  # a one-point checkpoint is no bigger than the two-point result
    # The lock file (1 page) and the first checkpoint fit; the second checkpoint does not.
    with mounted_tmpfs(tmp_path / "disk", f"size={(1 + pages(point) + pages(point) // 2) * PAGE}") as disk:
        out = disk / "two.h5"
        r = run("run", cfg, "-o", out)
        assert r.returncode == 1, r.stderr
        assert r.stderr.splitlines()[-1] == (
            f"error: {out}.partial/point-1.h5: cannot write the result file: no space left on device; free some space "
            f"on that file system, or write elsewhere with -o. The run stopped: 1 of 2 points are saved in "
            f"{out}.partial, and the same command resumes from them")
        # Nothing under the final name, no temporary file, no lock: only the finished point.
        assert files_under(disk) == ["two.h5.partial", "two.h5.partial/point-0.h5"]
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        r = run("run", cfg, "-o", out)
        assert r.returncode == 0, r.stderr
        assert f"(1 already done in {out}.partial, resuming)" in r.stderr
        assert files_under(disk) == ["two.h5"]
        assert same_statistics(out, reference)


def test_the_final_write_on_a_full_disk_keeps_every_point_for_the_next_run(run, tmp_path, sizes):
    cfg, reference, final_size = sizes["one"]
    # The checkpoint fits, the final file (written while the checkpoint still exists) does not.
    with mounted_tmpfs(tmp_path / "disk", f"size={(1 + pages(final_size) + pages(final_size) // 2) * PAGE}") as disk:
        out = disk / "one.h5"
        r = run("run", cfg, "-o", out)
        assert r.returncode == 1, r.stderr
        assert r.stderr.splitlines()[-1] == (
            f"error: {out}: cannot write the result file: no space left on device; free some space on that file "
            f"system, or write elsewhere with -o. Every point is saved in {out}.partial, and the same command writes "
            f"the result from them without computing again")
        assert files_under(disk) == ["one.h5.partial", "one.h5.partial/point-0.h5"]
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        r = run("run", cfg, "-o", out)
        assert r.returncode == 0, r.stderr
        assert f"(1 already done in {out}.partial, resuming)" in r.stderr
        assert same_statistics(out, reference)


def test_an_earlier_result_survives_a_failed_overwrite(run, tmp_path, sizes):
    small_cfg, _, small_size = sizes["one"]
    large_cfg, _, large_size = sizes["large"]
    assert large_size > 4 * small_size
    with mounted_tmpfs(tmp_path / "disk", f"size={(2 + pages(small_size) + pages(large_size) // 2) * PAGE}") as disk:
        out = disk / "result.h5"
        assert run("run", small_cfg, "-o", out, "--quiet").returncode == 0
        before = out.read_bytes()
        r = run("run", large_cfg, "-o", out, "--overwrite")
        assert r.returncode == 1, r.stderr
        assert r.stderr.splitlines()[-1].startswith(
            f"error: {out}.partial/point-0.h5: cannot write the result file: no space left on device;")
        # Not "0 of 1 points are saved ... resumes from them": there is nothing to resume.
        assert r.stderr.splitlines()[-1].endswith(
            "The run stopped with no point saved; the same command starts again once the problem is fixed")
        assert out.read_bytes() == before
        assert files_under(disk) == ["result.h5"]


def test_a_disk_too_full_for_the_lock_file_refuses_the_run_before_any_work(run, tmp_path, sizes):
    cfg, _, _ = sizes["one"]
    with mounted_tmpfs(tmp_path / "disk", "size=64k") as disk:
        with open(disk / "filler", "wb") as f:
            try:
                f.write(b"\0" * (128 * 1024))
            except OSError:
                pass  # the disk is full now
        r = run("run", cfg, "-o", disk / "one.h5")
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (
            f"error: cannot create files in the output folder {disk} (No space left on device; selfnorm creates its "
            f"lock file {disk}/one.h5.lock before any work); choose another path with -o")
        assert files_under(disk) == ["filler"]
