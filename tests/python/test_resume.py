"""A killed or stopped run loses at most the point in progress, and re-running the same command
resumes it to a result identical, bit for bit, to an uninterrupted run."""
import os
import signal
import subprocess
import time

import h5py
import pytest

from conftest import BIN

CONFIG = {
    "name": "resume",
    "seed": 21,
    "network": {"depth": 16, "width": 512},
    "monte_carlo": {"trials": 8, "batch": 256},
    "sweep": {"grid": {"activation.alpha": {"linspace": [1.4, 2.0, 5]}, "activation.lambda": [1.0, 1.05]}},
}


def checkpoints(out):
    folder = out.with_name(out.name + ".partial")
    return sorted(p.name for p in folder.glob("point-*.h5")) if folder.exists() else []


def start(cfg, out):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.Popen([str(BIN), "run", str(cfg), "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoints(proc, out, count, timeout=120):
    deadline = time.monotonic() + timeout
    while len(checkpoints(out)) < count:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {count} points were saved:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for checkpoints")
        time.sleep(0.005)


def same_statistics(a, b):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names = sorted(k for k in fa.keys() if fa[k].dtype.kind in "fiu")
        assert names == sorted(k for k in fb.keys() if fb[k].dtype.kind in "fiu")
        return all(fa[n][:].tobytes() == fb[n][:].tobytes() for n in names)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    cfg = folder / "resume.json"
    import json
    cfg.write_text(json.dumps(CONFIG))
    out = folder / "reference.h5"
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return cfg, out


@pytest.mark.parametrize("kill_after", [1, 4, 8])
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path, kill_after):
    cfg, ref = reference
    out = tmp_path / "run.h5"
    proc = start(cfg, out)
    wait_for_checkpoints(proc, out, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpoints(out)
    assert len(saved) >= kill_after  # nothing finished was lost
    assert not out.exists()  # no half-written result under the final name
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"({len(saved)} already done in {out}.partial, resuming)" in r.stderr
    assert not out.with_name(out.name + ".partial").exists()
    assert same_statistics(out, ref)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_at_a_point_boundary(reference, tmp_path, sig):
    cfg, ref = reference
    out = tmp_path / "run.h5"
    proc = start(cfg, out)
    wait_for_checkpoints(proc, out, 2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    assert f"stopped by {name} after finishing a point" in stderr
    assert "run the same command again to resume" in stderr
    assert not out.exists()
    assert len(checkpoints(out)) >= 2
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert same_statistics(out, ref)


def test_a_checkpoint_of_another_config_is_refused(reference, tmp_path):
    cfg, _ = reference
    out = tmp_path / "run.h5"
    proc = start(cfg, out)
    wait_for_checkpoints(proc, out, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out), "--seed", "99"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "holds points of another experiment" in r.stderr
    assert "remove the folder or choose another output path with -o" in r.stderr
