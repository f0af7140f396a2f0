"""A real single-node Slurm cluster: an alpha x lambda sweep submitted through scripts/slurm/
as a job array plus a merge job gives exactly the result of one local process."""
import json
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import ROOT
from slurm_cluster import SlurmCluster, ensure_installed

CONFIG = {
    "name": "slurm_sweep",
    "seed": 11,
    "network": {"depth": 8, "width": 64},
    "monte_carlo": {"trials": 4, "batch": 64},
    "sweep": {"grid": {"activation.alpha": {"linspace": [1.5, 1.9, 3]},
                       "activation.lambda": {"linspace": [1.0, 1.1, 3]}}},
}


def numeric_datasets(f):
    return sorted(k for k in f.keys() if f[k].dtype.kind in "fiu")


@pytest.fixture(scope="module")
def slurm_available():
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)


def test_sweep_through_slurm_equals_a_local_run(slurm_available, tmp_path, write_config, run, selfnorm_bin):
    cfg = write_config(CONFIG)
    start = time.monotonic()
    with SlurmCluster(tmp_path / "slurm") as cluster:
        up = time.monotonic() - start
        r = cluster.run([sys.executable, str(ROOT / "scripts" / "slurm" / "submit.py"), str(cfg), "--shards", "3",
                         "--cpus-per-task", "1", "--mem", "512M", "--time", "00:10:00", "--selfnorm",
                         str(selfnorm_bin)], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        submitted = json.loads(r.stdout.splitlines()[0])
        assert submitted["shards"] == 3 and submitted["array"] == "0-2"
        waited = cluster.wait_until_empty(300)
        merged = tmp_path / "results" / "slurm_sweep.h5"
        logs = "\n".join(p.read_text() for p in sorted((tmp_path / "results" / "slurm_sweep" / "logs").glob("*")))
        assert merged.exists(), f"no merged result\n{logs}\n{cluster.logs()}"
    print(f"\nslurm cluster up in {up:.1f} s; array of 3 tasks and merge done {waited:.1f} s after submission")

    # Each task took its thread count from SLURM_CPUS_PER_TASK and its shard from the array index.
    for k in range(3):
        with h5py.File(tmp_path / "results" / "slurm_sweep" / f"shard-{k}-of-3.h5", "r") as f:
            assert f.attrs["threads"] == 1
            assert f.attrs["shard_index"] == k
            assert list(f["point"][:]) == list(range(k, 9, 3))
    status = run("status", cfg, "--shards", "3", "--dir", tmp_path / "results" / "slurm_sweep")
    assert "3 of 3 shards complete" in status.stdout

    local = tmp_path / "local.h5"
    assert run("run", cfg, "-o", local, "--quiet").returncode == 0
    with h5py.File(merged, "r") as m, h5py.File(local, "r") as l:
        assert numeric_datasets(m) == numeric_datasets(l)
        for name in numeric_datasets(l):
            assert m[name][:].tobytes() == l[name][:].tobytes(), name  # bit for bit
        assert m.attrs["config_hash"] == l.attrs["config_hash"]
        assert list(m.attrs["grid_shape"]) == [3, 3]
        assert np.allclose(m["alpha"][:], np.repeat([1.5, 1.7, 1.9], 3))
