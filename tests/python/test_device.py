"""Choosing the device: the config's "device" and "cuda" keys, `run --device` and `--tf32`, and what
a machine without a GPU (or a build without the CUDA backend) answers. These run everywhere; the
GPU itself is tested in test_gpu.py."""
import json

import h5py
import pytest

from conftest import TINY


def cuda_build(run):
    version = run("--version").stdout
    assert "CUDA backend" in version, version  # "CUDA backend for architectures ..." or "no CUDA backend"
    return "no CUDA backend" not in version


def test_print_config_fills_in_the_device(run, write_config):
    r = run("print-config", write_config({"network": {"depth": 2, "width": 8}}))
    assert r.returncode == 0, r.stderr
    resolved = json.loads(r.stdout)
    assert resolved["device"] == "cpu"
    assert resolved["cuda"] == {"tf32": False}


def test_device_values_are_checked_like_every_other_key(run, write_config, tmp_path):
    r = run("validate", write_config(dict(TINY, device="GPU")))
    assert r.returncode == 2
    assert "device: unknown value 'GPU'; did you mean 'cuda'? (valid: cpu, cuda)" in r.stderr
    r = run("validate", write_config(dict(TINY, device=1, cuda={"tf32": 1})))
    assert r.returncode == 2
    assert "device: must be one of cpu, cuda, got an integer 1" in r.stderr
    assert "cuda.tf32: must be true or false, got an integer 1" in r.stderr
    r = run("validate", write_config(dict(TINY, sweep={"grid": {"device": ["cpu", "cuda"]}})))
    assert r.returncode == 2
    assert "sweep.grid.device: cannot be swept: 'device' chooses where the whole experiment runs" in r.stderr


def test_bad_device_options_on_the_command_line(run, write_config, tmp_path):
    cfg = write_config(TINY)
    out = tmp_path / "x.h5"
    r = run("run", cfg, "-o", out, "--device", "gpu")
    assert r.returncode == 2 and "--device gpu is not valid; use cpu or cuda" in r.stderr
    r = run("run", cfg, "-o", out, "--tf32")
    assert r.returncode == 2 and "--tf32 chooses the GPU's GEMM arithmetic, but this run is on the CPU" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


@pytest.mark.parametrize("how", ["flag", "config"])
def test_cuda_without_a_gpu_fails_early_with_status_4_and_writes_nothing(run, write_config, tmp_path, how):
    config = dict(TINY, device="cuda") if how == "config" else TINY
    cfg = write_config(config)
    out = tmp_path / "tiny.h5"
    args = ["run", cfg, "-o", out] + (["--device", "cuda"] if how == "flag" else [])
    r = run(*args)
    if r.returncode == 0:
        pytest.skip("this machine has a GPU; test_gpu.py covers it")
    assert r.returncode == 4, r.stderr
    source = "--device cuda" if how == "flag" else f'"device": "cuda" in {cfg}'
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {source}: "), r.stderr
    if cuda_build(run):
        # The runtime's own words (cudaGetDeviceCount's error string), then what would work.
        assert "no CUDA device found" in line
        assert "run on a machine with an NVIDIA GPU and its driver (a GPU node), or use --device cpu" in line
    else:
        assert "this selfnorm was built without the CUDA backend" in line
        assert "-DSELFNORM_CUDA=ON" in line and "or use --device cpu" in line
    # Nothing on disk: no result, no lock file, no checkpoint folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_device_cpu_overrides_the_config_and_keeps_the_cpu_hash(run, write_config, tmp_path):
    plain = tmp_path / "plain.h5"
    assert run("run", write_config(TINY, "plain.json"), "-o", plain, "--quiet").returncode == 0
    cuda_cfg = write_config(dict(TINY, device="cuda", cuda={"tf32": True}), "cuda.json")
    out = tmp_path / "overridden.h5"
    r = run("run", cuda_cfg, "-o", out, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    with h5py.File(plain, "r") as a, h5py.File(out, "r") as b:
        assert a.attrs["device"] == "cpu" and b.attrs["device"] == "cpu"
        assert "gpu_name" not in a.attrs
        # On the CPU the device options change nothing, so the hash is the plain config's.
        assert a.attrs["config_hash"] == b.attrs["config_hash"]
        assert json.loads(b.attrs["config"])["device"] == "cpu"
        assert a["activation_var"][:].tobytes() == b["activation_var"][:].tobytes()
    # So the plain config finds the overridden run's file complete.
    r = run("run", write_config(TINY, "plain.json"), "-o", out)
    assert r.returncode == 0 and "is already complete for this config" in r.stderr


def test_status_judges_shards_by_the_device_they_ran_on(run, write_config, tmp_path):
    cfg = write_config(dict(TINY, device="cuda"))
    for k in range(2):
        r = run("run", cfg, "--shard", f"{k}/2", "--device", "cpu", "--quiet", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    # The config says cuda, whose hash differs: the CPU shards are another experiment's files...
    r = run("status", cfg, "--shards", "2", cwd=tmp_path)
    assert r.returncode == 0 and "0 of 2 shards complete" in r.stdout, r.stdout
    # ...unless status is told the device they ran on.
    r = run("status", cfg, "--shards", "2", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0 and "2 of 2 shards complete" in r.stdout, r.stdout
    r = run("status", cfg, "--shards", "2", "--device", "tpu", cwd=tmp_path)
    assert r.returncode == 2 and "--device tpu is not valid; use cpu or cuda" in r.stderr
