"""Two runs on the same output, as two real processes: the second is refused with exit status 3,
naming the first (pid, host, start time, command), and the first finishes a correct result. A run
killed by SIGKILL leaves its lock file behind, but not its lock: the next run takes it over."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN, files_under, same_statistics

CONFIG = {
    "name": "locked",
    "seed": 3,
    "network": {"depth": 16, "width": 256},
    "monte_carlo": {"trials": 8, "batch": 256},
    "sweep": {"grid": {"activation.alpha": {"linspace": [1.4, 2.0, 10]}}},
}


def env():
    return dict(os.environ, OMP_NUM_THREADS="2")


def selfnorm(*args, cwd=None):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env(), cwd=cwd,
                          timeout=300)


def start(*args, cwd=None):
    return subprocess.Popen([str(BIN), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=cwd)


def wait_until(predicate, proc, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the first run ended before {what}:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def lock_names_pid(out, pid):
    lock = out.with_name(out.name + ".lock")
    try:
        return f"pid: {pid}\n" in lock.read_text()
    except FileNotFoundError:
        return False


def checkpoints(out):
    folder = out.with_name(out.name + ".partial")
    return sorted(p.name for p in folder.glob("point-*.h5")) if folder.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    cfg = folder / "locked.json"
    cfg.write_text(json.dumps(CONFIG))
    out = folder / "reference.h5"
    r = selfnorm("run", cfg, "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return cfg, out


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(reference, tmp_path):
    cfg, ref = reference
    out = tmp_path / "run.h5"
    first = start("run", cfg, "-o", out)
    wait_until(lambda: lock_names_pid(out, first.pid), first, "its lock file was written")
    # The same command, another experiment with --overwrite, and a merge into the same file.
    for args in (("run", cfg, "-o", out), ("run", cfg, "-o", out, "--seed", "9", "--overwrite"),
                 ("merge", "-o", out, cfg)):
        second = selfnorm(*args)
        assert second.returncode == 3, second.stderr
        assert re.fullmatch(
            rf"error: {re.escape(str(out))} is being written by another selfnorm run \(pid {first.pid}, host "
            rf"{re.escape(socket.gethostname())}, started \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ, command "
            rf"{re.escape(str(BIN))} run {re.escape(str(cfg))} -o {re.escape(str(out))}\); wait for it to finish, or "
            rf"write elsewhere with -o\n", second.stderr), second.stderr
        assert second.stdout == ""
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert same_statistics(out, ref)
    assert files_under(tmp_path) == ["run.h5"]  # the lock file is gone with its holder


def test_status_names_the_run_that_holds_a_shard(reference, tmp_path):
    cfg, _ = reference
    first = start("run", cfg, "--shard", "1/2", cwd=tmp_path)
    shard = tmp_path / "results" / "locked" / "shard-1-of-2.h5"
    wait_until(lambda: lock_names_pid(shard, first.pid), first, "its lock file was written")
    r = selfnorm("status", cfg, "--shards", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"shard 1  5 points  running \(pid {first.pid}, host ", r.stdout), r.stdout
    assert "shard 0  5 points  missing" in r.stdout
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert "shard 1  5 points  complete" in selfnorm("status", cfg, "--shards", "2", cwd=tmp_path).stdout


def test_a_lock_left_by_a_killed_run_is_taken_over(reference, tmp_path):
    cfg, ref = reference
    out = tmp_path / "run.h5"
    first = start("run", cfg, "-o", out)
    wait_until(lambda: len(checkpoints(out)) >= 2, first, "two points were saved")
    first.send_signal(signal.SIGKILL)
    first.wait()
    lock = out.with_name(out.name + ".lock")
    assert f"pid: {first.pid}\n" in lock.read_text()  # left behind, with the dead holder's details
    r = selfnorm("run", cfg, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "already done in" in r.stderr and "resuming" in r.stderr
    assert same_statistics(out, ref)
    assert files_under(tmp_path) == ["run.h5"]


def test_runs_started_together_never_both_write(reference, tmp_path):
    """Started in the same instant: one writes, the other is refused (or, if it came late, finds
    the result complete). Either way one correct file, and no other outcome."""
    cfg, ref = reference
    refused = 0
    for round_ in range(3):
        out = tmp_path / f"race-{round_}.h5"
        procs = [start("run", cfg, "-o", out) for _ in range(2)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        assert codes in ([0, 0], [0, 3]), results
        if codes == [0, 0]:
            assert any("is already complete for this config; nothing to do" in e for _, e in results), results
        refused += codes == [0, 3]
        assert same_statistics(out, ref)
    assert refused > 0  # the runs did overlap (each takes about a second)
    assert files_under(tmp_path) == [f"race-{k}.h5" for k in range(3)]
