"""The CUDA backend through the command line, on a GPU: agreement with the CPU in standard errors,
bit-for-bit determinism, float64, weight gradients, TF32, blow-ups, provenance, shards and resume.

Every test needs an NVIDIA GPU and a build with the CUDA backend; without them the whole file is
skipped at run time with the reason, and CTest reports it as skipped."""
import json
import math
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

from conftest import BIN, same_statistics

STATS = ["preactivation_mean", "preactivation_var", "activation_mean", "activation_var", "activation_msq",
         "unit_mean_spread", "grad_activation_msq", "grad_preactivation_msq", "grad_weight_msq"]
# Seeded comparisons of ~300 statistic-layer pairs with standard errors from 32 trials (Student t, 31
# degrees of freedom, and 2 x 32 in the combined error): 5 standard errors keeps a chance failure rare.
K = 5.0

AGREE = {
    "name": "agree",
    "seed": 17,
    "network": {"depth": 8, "width": 96},
    "activation": ["selu", "relu", "tanh", "gelu", {"name": "celu", "alpha": 0.5}],
    "init": {"bias_mean": 0.05, "bias_variance": 0.01},
    "monte_carlo": {"trials": 32, "batch": 200, "weight_gradients": True},
}


def selfnorm(*args, timeout=900):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "4")
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    """Skips the module unless `selfnorm run --device cuda` works here."""
    folder = tmp_path_factory.mktemp("gpu_probe")
    cfg = folder / "probe.json"
    cfg.write_text(json.dumps({"network": {"depth": 2, "width": 8}, "monte_carlo": {"trials": 2, "batch": 8}}))
    r = selfnorm("run", cfg, "-o", folder / "probe.h5", "--device", "cuda", "--quiet")
    if r.returncode == 4:
        pytest.skip("GPU tests skipped: " + r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stderr
    return folder


def write(folder, config, name):
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def run_ok(*args):
    r = selfnorm(*args)
    assert r.returncode == 0, r.stderr
    return r


def assert_agree(a_path, b_path, what):
    """Every statistic at every point and layer within K combined standard errors."""
    worst = 0.0
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        for name in STATS:
            if name not in b:
                continue
            x, sx, y, sy = a[name][:], a[name + "_sem"][:], b[name][:], b[name + "_sem"][:]
            assert np.all(np.isfinite(x)) and np.all(np.isfinite(y)), name
            se = np.hypot(sx, sy)
            z = np.where(se > 0, np.abs(x - y) / np.where(se > 0, se, 1), np.where(x == y, 0.0, np.inf))
            worst = max(worst, float(z.max()))
            bad = np.argwhere(z > K)
            assert bad.size == 0, (f"{what}: {name} differs by more than {K} standard errors at [point, layer] "
                                   f"{bad[:5].tolist()}: cuda {x[tuple(bad[0])]} +- {sx[tuple(bad[0])]}, "
                                   f"cpu {y[tuple(bad[0])]} +- {sy[tuple(bad[0])]}")
    return worst


def test_cuda_and_cpu_agree_within_standard_errors(gpu, tmp_path):
    cfg = write(tmp_path, AGREE, "agree")
    run_ok("run", cfg, "-o", tmp_path / "cuda.h5", "--device", "cuda", "--quiet")
    run_ok("run", cfg, "-o", tmp_path / "cpu.h5", "--device", "cpu", "--quiet")
    worst = assert_agree(tmp_path / "cuda.h5", tmp_path / "cpu.h5", "float32")
    print(f"largest |cuda - cpu| / combined standard error over every statistic, point and layer: {worst:.2f}")
    with h5py.File(tmp_path / "cuda.h5", "r") as f:
        assert f["grad_weight_msq"].shape == (5, 8)


def test_float64_agrees_and_differs_from_float32(gpu, tmp_path):
    config = dict(AGREE, precision="float64", activation=["selu", "tanh"])
    cfg = write(tmp_path, config, "f64")
    run_ok("run", cfg, "-o", tmp_path / "cuda.h5", "--device", "cuda", "--quiet")
    run_ok("run", cfg, "-o", tmp_path / "cpu.h5", "--device", "cpu", "--quiet")
    assert_agree(tmp_path / "cuda.h5", tmp_path / "cpu.h5", "float64")


def test_gpu_runs_are_bit_identical_and_tf32_is_a_different_deterministic_result(gpu, tmp_path):
    config = dict(AGREE, alpha_dropout={"keep_probability": 0.9}, activation=["selu", "elu"])
    cfg = write(tmp_path, config, "det")
    for name, extra in (("a", []), ("b", []), ("t1", ["--tf32"]), ("t2", ["--tf32"])):
        run_ok("run", cfg, "-o", tmp_path / f"{name}.h5", "--device", "cuda", "--quiet", *extra)
    assert same_statistics(tmp_path / "a.h5", tmp_path / "b.h5")
    assert same_statistics(tmp_path / "t1.h5", tmp_path / "t2.h5")
    assert not same_statistics(tmp_path / "a.h5", tmp_path / "t1.h5")
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "t1.h5", "r") as t:
        assert a.attrs["config_hash"] != t.attrs["config_hash"]  # TF32 changes the numbers, so the hash
        assert json.loads(t.attrs["config"])["cuda"] == {"tf32": True}
        assert "TF32" in t.attrs["gpu_name"]
        # TF32 rounds the GEMMs' inputs to 10-bit mantissas: statistics move at the 1e-3 level.
        x, y = a["activation_var"][:], t["activation_var"][:]
        assert np.max(np.abs(x - y) / np.abs(x)) < 2e-2


def test_provenance_names_the_gpu_and_the_time_outside_gemm(gpu, tmp_path):
    cfg = write(tmp_path, dict(AGREE, activation="selu"), "prov")
    r = run_ok("run", cfg, "-o", tmp_path / "cuda.h5", "--device", "cuda")
    assert "outside GEMM" in r.stdout and "GPU time" in r.stdout
    assert "GPU " in r.stderr and "TF32 off" in r.stderr
    run_ok("run", cfg, "-o", tmp_path / "cpu.h5", "--quiet")
    with h5py.File(tmp_path / "cuda.h5", "r") as g, h5py.File(tmp_path / "cpu.h5", "r") as c:
        assert g.attrs["device"] == "cuda" and c.attrs["device"] == "cpu"
        assert "NVIDIA" in g.attrs["gpu_name"] and "compute capability" in g.attrs["gpu_name"]
        assert 0 < g.attrs["gpu_gemm_seconds"] < g.attrs["gpu_seconds"]
        assert g.attrs["config_hash"] != c.attrs["config_hash"]
        assert json.loads(g.attrs["config"])["device"] == "cuda"
    # A CPU result is not taken for the GPU's, nor the reverse.
    r = selfnorm("run", cfg, "-o", tmp_path / "cpu.h5", "--device", "cuda")
    assert r.returncode == 2 and "already exists and holds other results" in r.stderr


def test_a_blow_up_is_recorded_as_on_the_cpu(gpu, tmp_path):
    config = {"name": "blowup", "seed": 2, "network": {"depth": 12, "width": 32}, "activation": "relu",
              "init": {"weight_variance": 2e8}, "monte_carlo": {"trials": 4, "batch": 32}}
    cfg = write(tmp_path, config, "blowup")
    r = run_ok("run", cfg, "-o", tmp_path / "cuda.h5", "--device", "cuda")
    assert "blew up" in r.stdout
    run_ok("run", cfg, "-o", tmp_path / "cpu.h5", "--quiet")
    with h5py.File(tmp_path / "cuda.h5", "r") as g, h5py.File(tmp_path / "cpu.h5", "r") as c:
        assert int(c["first_nonfinite_layer"][0]) == 10
        assert int(g["first_nonfinite_layer"][0]) == 10
        counts = g["nonfinite_count"][0]
        assert np.all(counts[:9] == 0) and counts[9] > 0
        assert np.all(np.isfinite(g["activation_var"][0, :9])) and math.isnan(g["activation_var"][0, 9])
        assert np.all(np.isnan(g["grad_activation_msq"][0]))


# Points heavy enough (about 17 TFLOP each, a few tenths of a second on an H100) for a kill to land
# between checkpoints.
RESUME = {
    "name": "gpu_resume",
    "seed": 23,
    "network": {"depth": 64, "width": 2048},
    "monte_carlo": {"trials": 8, "batch": 2048},
    "sweep": {"grid": {"activation.alpha": [1.5, 1.6, 1.7, 1.8], "activation.lambda": [1.0, 1.05]}},
}


def checkpoints(out):
    folder = out.with_name(out.name + ".partial")
    return sorted(p.name for p in folder.glob("point-*.h5")) if folder.exists() else []


def test_shards_and_resume_give_the_same_file_as_one_run(gpu, tmp_path):
    cfg = write(tmp_path, RESUME, "resume")
    whole = tmp_path / "whole.h5"
    run_ok("run", cfg, "-o", whole, "--device", "cuda", "--quiet")

    shards = []
    for k in range(3):
        shards.append(tmp_path / f"shard-{k}.h5")
        run_ok("run", cfg, "-o", shards[-1], "--device", "cuda", "--shard", f"{k}/3", "--quiet")
    merged = tmp_path / "merged.h5"
    run_ok("merge", "-o", merged, *shards)
    assert same_statistics(merged, whole)
    with h5py.File(merged, "r") as f:
        assert f.attrs["device"] == "cuda" and "NVIDIA" in f.attrs["gpu_name"]

    out = tmp_path / "killed.h5"
    env = dict(os.environ, OMP_NUM_THREADS="4")
    proc = subprocess.Popen([str(BIN), "run", str(cfg), "-o", str(out), "--device", "cuda"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while len(checkpoints(out)) < 2:
        assert proc.poll() is None, "the run ended before 2 points were saved: " + proc.stderr.read()
        assert time.monotonic() < deadline, "timed out waiting for checkpoints"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpoints(out)
    assert 2 <= len(saved) < 8 and not out.exists()
    r = run_ok("run", cfg, "-o", out, "--device", "cuda")
    assert f"({len(saved)} already done in {out}.partial, resuming)" in r.stderr
    assert same_statistics(out, whole)
    # A checkpoint of the GPU run is not resumed on the CPU: another experiment, by its hash.
    proc = subprocess.Popen([str(BIN), "run", str(cfg), "-o", str(tmp_path / "again.h5"), "--device", "cuda"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while len(checkpoints(tmp_path / "again.h5")) < 1:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = selfnorm("run", cfg, "-o", tmp_path / "again.h5", "--device", "cpu")
    assert r.returncode == 2 and "holds points of another experiment" in r.stderr
