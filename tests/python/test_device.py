"""Choosing the device: the config's "device" and "cuda" keys, `run --device` and `--tf32`, and what
a machine without a GPU (or a build without the CUDA backend, or one whose backend module cannot
load) answers. These run everywhere; the GPU itself is tested in test_gpu.py."""
import json
import os
import re
import shutil
import subprocess

import h5py
import pytest

from conftest import BIN, TINY

PLUGIN = "libselfnorm_cuda.so"  # the CUDA backend's module, next to the executable in a CUDA build


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


def loaded_files(stderr):
    """The shared objects the dynamic loader opened, from its LD_DEBUG=files trace."""
    return re.findall(r"file=(\S+) \[\d+\];\s+(?:needed|dynamically loaded) by", stderr)


def test_cpu_runs_do_not_load_the_cuda_backend_or_cublas(run, write_config, tmp_path):
    cfg = write_config(TINY)
    r = run("run", cfg, "-o", tmp_path / "tiny.h5", "--quiet", env={"LD_DEBUG": "files"})
    assert r.returncode == 0, r.stderr
    loaded = loaded_files(r.stderr)
    assert any("libstdc++" in f for f in loaded), r.stderr[:2000]  # the trace is there
    assert not [f for f in loaded if "cublas" in f or "cudart" in f or PLUGIN in f], loaded
    r = run("validate", cfg, env={"LD_DEBUG": "files"})
    assert r.returncode == 0 and not [f for f in loaded_files(r.stderr) if PLUGIN in f or "cublas" in f]


def test_the_cuda_backend_module_is_loaded_when_the_gpu_is_asked_for(run, write_config, tmp_path):
    if not cuda_build(run):
        pytest.skip("this build has no CUDA backend")
    r = run("run", write_config(TINY), "-o", tmp_path / "tiny.h5", "--device", "cuda", "--quiet",
            env={"LD_DEBUG": "files"})
    assert r.returncode in (0, 4), r.stderr
    loaded = loaded_files(r.stderr)
    assert str(BIN.parent.resolve() / PLUGIN) in loaded and any("libcublas" in f for f in loaded), loaded


@pytest.fixture
def lone_binary(tmp_path):
    """A copy of the executable in a folder of its own, without the CUDA backend's module."""
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy2(BIN, folder / "selfnorm")
    return folder


def run_copy(folder, *args):
    """Runs the copy of the executable in `folder`."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([str(folder / "selfnorm"), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_missing_cuda_backend_module_fails_gpu_runs_only(run, write_config, tmp_path, lone_binary):
    if not cuda_build(run):
        pytest.skip("this build has no CUDA backend")
    cfg = write_config(TINY)
    # CPU runs never need the module...
    r = run_copy(lone_binary, "run", cfg, "-o", tmp_path / "cpu.h5", "--quiet")
    assert r.returncode == 0, r.stderr
    # ...a GPU run stops before writing anything, saying which file is missing and what would work.
    r = run_copy(lone_binary, "run", cfg, "-o", tmp_path / "gpu.h5", "--device", "cuda")
    assert r.returncode == 4, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    module = lone_binary / PLUGIN
    assert line.startswith(f"error: --device cuda: the CUDA backend's module {module} is missing (dlopen: "), line
    assert "No such file or directory" in line
    assert "copy it along with the executable" in line and "-DSELFNORM_CUDA=OFF" in line
    assert line.endswith("or use --device cpu"), line
    assert not (tmp_path / "gpu.h5").exists()
    # Validation still passes (the config may be meant for another machine) and says why the GPU
    # memory is unknown.
    r = run_copy(lone_binary, "validate", write_config(dict(TINY, device="cuda"), "cuda.json"))
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stderr and "is missing (dlopen: " in r.stderr
    assert "GPU memory unknown: the CUDA backend did not load" in r.stdout
    r = run_copy(lone_binary, "validate", tmp_path / "cuda.json", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["gpu_memory_bytes"] is None


def test_a_cuda_backend_module_without_cublas_names_the_library(run, write_config, tmp_path, lone_binary):
    if not cuda_build(run):
        pytest.skip("this build has no CUDA backend")
    # The real module, with its dependency on libcublas.so.N renamed to a version that does not
    # exist: what a machine without the CUDA toolkit's cuBLAS answers.
    module = (BIN.parent / PLUGIN).read_bytes()
    patched, count = re.subn(rb"libcublas\.so\.\d+\x00", lambda m: b"libcublas.so." + b"9" * (len(m[0]) - 14) + b"\x00",
                             module)
    assert count >= 1
    (lone_binary / PLUGIN).write_bytes(patched)
    r = run_copy(lone_binary, "run", write_config(dict(TINY, device="cuda")), "-o", tmp_path / "gpu.h5")
    assert r.returncode == 4, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f'error: "device": "cuda" in {tmp_path / "config.json"}: the CUDA backend could not be '
                           f"loaded from {lone_binary / PLUGIN} (dlopen: libcublas.so.9"), line
    assert "cannot open shared object file" in line
    assert "it needs the CUDA toolkit's cuBLAS (libcublas.so." in line and "LD_LIBRARY_PATH" in line
    assert "-DSELFNORM_CUDA=OFF" in line and line.endswith("or use --device cpu"), line
    # Not a module at all: the loader's words say so.
    (lone_binary / PLUGIN).write_text("not a shared object, but long enough to hold an ELF header" * 4)
    r = run_copy(lone_binary, "run", tmp_path / "config.json", "-o", tmp_path / "gpu.h5")
    assert r.returncode == 4 and f"(dlopen: {lone_binary / PLUGIN}: invalid ELF header)" in r.stderr, r.stderr
    assert not (tmp_path / "gpu.h5").exists()
