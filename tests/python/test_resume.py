"""A killed or stopped run loses at most the point in progress, and re-running the same command
resumes it to a result identical, bit for bit, to an uninterrupted run."""
import os
import signal
import subprocess
import time

import h5py
import pytest

from conftest import BIN, same_statistics

CONFIG = {
    "name": "resume",
    "seed": 21,
    "network": {"depth": 16, "width": 256},
    "monte_carlo": {"trials": 8, "batch": 256},
    "sweep": {"grid": {"activation.alpha": {"linspace": [1.4, 2.0, 5]}, "activation.lambda": [1.0, 1.05]}},
}


def run_quietly(cfg, out):
    """`selfnorm run cfg -o out --quiet`, which must succeed."""
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def checkpoints(out):
    folder = out.with_name(out.name + ".partial")
    return sorted(p.name for p in folder.glob("point-*.h5")) if folder.exists() else []


def start(cfg, out, *args):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.Popen([str(BIN), "run", str(cfg), "-o", str(out), *args], stdout=subprocess.PIPE,
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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    cfg = folder / "resume.json"
    import json
    cfg.write_text(json.dumps(CONFIG))
    out = folder / "reference.h5"
    run_quietly(cfg, out)
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
    # The signal is acknowledged when it comes, not only once the point in progress is done.
    again = "Ctrl-C again" if sig == signal.SIGINT else "a second SIGTERM or Ctrl-C"
    assert (f"{name}: stopping after the point in progress; {again} stops at once; finished points are kept in "
            f"{out}.partial\n") in stderr
    assert f"stopped by {name} after finishing a point" in stderr
    assert "run the same command again to resume" in stderr
    assert not out.exists()
    assert len(checkpoints(out)) >= 2
    run_quietly(cfg, out)
    assert same_statistics(out, ref)


def test_a_second_sigint_stops_at_once_and_says_so(tmp_path):
    """The first Ctrl-C is acknowledged at once; a second one ends the run without waiting for the
    point in progress (killed by SIGINT, as the shell expects), saying what is kept. Points of about
    a second each leave time to send it."""
    import json
    cfg = tmp_path / "slow.json"
    cfg.write_text(json.dumps({"name": "slow", "network": {"depth": 8, "width": 1024},
                               "monte_carlo": {"trials": 8, "batch": 1024},
                               "sweep": {"grid": {"init.weight_variance": [1.0, 1.01, 1.02]}}}))
    out = tmp_path / "slow.h5"
    proc = start(cfg, out)
    wait_for_checkpoints(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    ack = f"SIGINT: stopping after the point in progress; Ctrl-C again stops at once; finished points are kept in " \
          f"{out}.partial\n"
    seen = []
    while ack not in seen:
        line = proc.stderr.readline()
        assert line, f"no acknowledgement of the first SIGINT:\n{''.join(seen)}"
        seen.append(line)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGINT, "".join(seen) + stderr
    assert stderr.endswith(f"stopping at once: the point in progress is lost; finished points are kept in "
                           f"{out}.partial; run the same command again to resume\n"), stderr
    assert not out.exists()
    assert "point-0.h5" in checkpoints(out)
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.exists() and checkpoints(out) == []


def test_a_checkpoint_of_another_config_is_refused_unless_overwrite_is_given(reference, tmp_path):
    cfg, ref = reference
    out = tmp_path / "run.h5"
    proc = start(cfg, out, "--seed", "99")
    wait_for_checkpoints(proc, out, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "holds points of another experiment" in r.stderr
    assert "remove the folder (run --overwrite does) or choose another output path with -o" in r.stderr
    # --overwrite replaces earlier results at this output, unfinished ones too (a config changed
    # before a Slurm resubmission: each task would otherwise stop here).
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out), "--overwrite"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"removed the checkpoint folder {out}.partial (--overwrite): it held another run's points" in r.stderr
    assert same_statistics(out, ref)


# Kills in the middle of a write. Results and checkpoints are written under a temporary name
# (".<name>.tmp-<pid>-<n>"), flushed and renamed; a kill before the rename leaves the temporary
# file. It must never be read as a result, and the next run (holding the lock, so nobody else is
# writing) removes it. Large per-trial outputs keep each write open for tens of milliseconds.
LARGE = {
    "name": "large",
    "seed": 4,
    "network": {"depth": 200, "width": 8},
    "activation": ["selu", "tanh", "relu"],
    "monte_carlo": {"trials": 500, "batch": 8},
    "output": {"per_trial": True},
}


@pytest.fixture(scope="module")
def large_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    cfg = folder / "large.json"
    import json
    cfg.write_text(json.dumps(LARGE))
    out = folder / "reference.h5"
    run_quietly(cfg, out)
    return cfg, out


def temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name) if folder.exists() else []


def kill_while_writing(cfg, out, folder, attempts=5):
    """Runs until a temporary file appears in `folder`, then SIGKILLs the run at once; returns the
    temporary files left behind. Retries (with a fresh output) if the rename won the race."""
    for attempt in range(attempts):
        for p in [out, out.with_name(out.name + ".partial")]:
            subprocess.run(["rm", "-rf", str(p)])
        proc = subprocess.Popen([str(BIN), "run", str(cfg), "-o", str(out), "--quiet"],
                                env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not temporaries(folder):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the run ended before a write was caught:\n{proc.stderr.read()}")
            time.sleep(0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = temporaries(folder)
        if left:
            print(f"caught a write after {attempt + 1} attempt(s): {left}")
            return left
    pytest.fail(f"no kill landed inside a write in {attempts} attempts")


def test_a_kill_during_a_checkpoint_write_leaves_a_temporary_that_is_never_read(large_reference, tmp_path):
    cfg, ref = large_reference
    out = tmp_path / "run.h5"
    partial = out.with_name(out.name + ".partial")
    left = kill_while_writing(cfg, out, partial)
    assert all(name.startswith(".point-") for name in left)
    assert not out.exists()
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"removed {len(left)} temporary file" in r.stderr
    assert same_statistics(out, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_a_kill_during_the_final_write_keeps_every_point(large_reference, tmp_path):
    cfg, ref = large_reference
    out = tmp_path / "run.h5"
    left = kill_while_writing(cfg, out, tmp_path)
    assert left[0].startswith(".run.h5.tmp-")
    assert not out.exists()  # nothing under the final name
    assert checkpoints(out) == ["point-0.h5", "point-1.h5", "point-2.h5"]
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "(3 already done in" in r.stderr and "removed 1 temporary file" in r.stderr
    assert same_statistics(out, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_planted_temporaries_are_never_read_as_results(reference, tmp_path):
    """The same leftovers, made by hand: a truncated copy of a real checkpoint and random bytes,
    under both temporary patterns. The resumed run ignores them, removes them, and is exact."""
    cfg, ref = reference
    out = tmp_path / "run.h5"
    proc = start(cfg, out)
    wait_for_checkpoints(proc, out, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.with_name(out.name + ".partial")
    real = (partial / "point-0.h5").read_bytes()
    (partial / ".point-7.h5.tmp-1-2").write_bytes(real[: len(real) // 2])
    (partial / ".point-8.h5.tmp-3-4").write_bytes(os.urandom(5000))
    (tmp_path / ".run.h5.tmp-5-6").write_bytes(real)  # complete, but never renamed: still not a result
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "removed 3 temporary files of an interrupted write" in r.stderr
    assert same_statistics(out, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def killed_after(cfg, out, count, *args):
    """A run of `cfg` killed once `count` points are saved; its checkpoint folder."""
    proc = start(cfg, out, *args)
    wait_for_checkpoints(proc, out, count)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return out.with_name(out.name + ".partial")


def test_per_trial_output_is_part_of_what_a_file_or_checkpoint_is_complete_for(reference, tmp_path):
    """output.per_trial does not change the statistics, and so not the config hash, but a file or
    checkpoint written without the per-trial values is not a result of a config that asks for them
    (and the other way round). Each used to be taken as complete: the file lacked the per-trial
    datasets, or the resumed points' per-trial rows were NaN."""
    import json
    cfg, ref = reference
    per_trial = tmp_path / "per_trial.json"
    per_trial.write_text(json.dumps(dict(CONFIG, output={"per_trial": True})))
    # A complete file without them.
    done = tmp_path / "done.h5"
    done.write_bytes(ref.read_bytes())
    r = subprocess.run([str(BIN), "run", str(per_trial), "-o", str(done)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "written with output.per_trial false, and this config has output.per_trial true" in r.stderr
    assert done.read_bytes() == ref.read_bytes()
    # Checkpoints without them.
    out = tmp_path / "run.h5"
    killed_after(cfg, out, 1)
    r = subprocess.run([str(BIN), "run", str(per_trial), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "computed with output.per_trial false, and this config has output.per_trial true" in r.stderr
    assert not out.exists()
    # Finished as they were begun, they give the reference.
    run_quietly(cfg, out)
    assert same_statistics(out, ref)


def test_a_renamed_checkpoint_is_refused_not_counted_twice(reference, tmp_path):
    cfg, _ = reference
    out = tmp_path / "run.h5"
    partial = killed_after(cfg, out, 1)
    (partial / "point-0 (copy).h5").write_bytes((partial / "point-0.h5").read_bytes())
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "holds point-0 (copy).h5, which is not a checkpoint selfnorm writes (point-<index>.h5)" in r.stderr
    (partial / "point-0 (copy).h5").unlink()
    (partial / "point-0.h5").rename(partial / "point-9.h5")
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "does not hold point 9 alone, as its name says" in r.stderr


def test_checkpoints_left_beside_a_complete_file_are_removed_by_the_next_run(reference, tmp_path):
    """A run killed after it renamed its file into place, while it removed its checkpoints, leaves
    some behind. The next run of the same command finds the file complete and removes them, so that
    they no longer stand in the way of another experiment's run with --overwrite."""
    cfg, ref = reference
    out = tmp_path / "run.h5"
    partial = killed_after(cfg, out, 2)
    left = sorted(p.name for p in partial.iterdir())
    out.write_bytes(ref.read_bytes())  # the finished file, as the killed run had written it
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "already complete for this config; nothing to do (removed the checkpoints" in r.stderr
    assert left and not partial.exists()
    assert out.read_bytes() == ref.read_bytes()
    # Another experiment's checkpoints beside a complete file stay.
    import json
    seed99 = tmp_path / "seed99.json"
    seed99.write_text(json.dumps(dict(CONFIG, seed=99)))
    beside = tmp_path / "beside.h5"
    other = killed_after(seed99, beside, 1)
    kept = sorted(p.name for p in other.iterdir())
    beside.write_bytes(ref.read_bytes())
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(beside)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "removed the checkpoints" not in r.stderr
    assert sorted(p.name for p in other.iterdir()) == kept


def test_points_computed_with_other_products_are_named_on_resume(reference, tmp_path):
    """The kind of products is not part of the config (the same config runs on machines with and
    without the tile units), so a file or checkpoint can hold points of another kind. An explicit
    --matmul refuses them; auto takes them, says so, and point_matmul records each point's. Both
    used to be silent: a rerun with --matmul fma kept the bf16x6 file as "already complete"."""
    cfg, ref = reference
    with h5py.File(ref, "r") as f:
        kinds = {m.decode() if isinstance(m, bytes) else m for m in f["point_matmul"][:]}
    if kinds != {"bf16x6"}:
        pytest.skip("needs the AMX tile units, where auto computes this config's points as bf16x6")
    points = len(CONFIG["sweep"]["grid"]["activation.lambda"]) * CONFIG["sweep"]["grid"]["activation.alpha"]["linspace"][2]
    done = tmp_path / "done.h5"
    done.write_bytes(ref.read_bytes())
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(done), "--matmul", "fma"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert (f"is complete for this config, but {points} of its points were computed with bf16x6 products, where "
            "--matmul fma asks for fma; pass --overwrite") in r.stderr
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(done), "--matmul", "bf16x6"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "already complete" in r.stderr
    # Checkpoints of bf16x6 points, resumed with --matmul fma: refused.
    out = tmp_path / "run.h5"
    killed_after(cfg, out, 2)
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out), "--matmul", "fma"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "were computed with bf16x6 products, where --matmul fma asks for fma; finish the run with the --matmul " \
           "it was begun with" in r.stderr
    # Checkpoints of fma points, resumed with auto: taken, with a note.
    mixed = tmp_path / "mixed.h5"
    killed_after(cfg, mixed, 2, "--matmul", "fma")
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(mixed)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "were computed with fma products, and this run computes the rest as --matmul auto gives them" in r.stderr
    with h5py.File(mixed, "r") as f:
        got = [m.decode() if isinstance(m, bytes) else m for m in f["point_matmul"][:]]
    assert got.count("fma") >= 2 and "bf16x6" in got


def test_a_resumed_file_names_the_thread_counts_of_every_run_that_computed_it(reference, tmp_path):
    """Provenance after a resume describes every run whose points the file holds: threads that
    differ between the runs give -1, as in a merged file (it used to name the last run's alone)."""
    cfg, ref = reference
    out = tmp_path / "run.h5"
    killed_after(cfg, out, 2, "--threads", "1")
    r = subprocess.run([str(BIN), "run", str(cfg), "-o", str(out), "--threads", "2", "--quiet"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert same_statistics(out, ref)
    with h5py.File(out, "r") as f, h5py.File(ref, "r") as g:
        assert f.attrs["threads"] == -1
        assert f.attrs["git_commit"] == g.attrs["git_commit"]  # one program: named once


def test_status_leaves_shards_being_written_out_of_missing(reference, tmp_path):
    """`submit.py --only "$(selfnorm status ... --missing)"` while a shard still runs used to submit
    it a second time (the new task found it locked, exit 3, and its merge job was cancelled)."""
    cfg, _ = reference
    shard0 = tmp_path / "shard-0-of-2.h5"
    env = dict(os.environ, OMP_NUM_THREADS="2", SLURM_ARRAY_TASK_ID="0")
    proc = subprocess.Popen([str(BIN), "run", str(cfg), "--shard", "slurm/2", "-o", str(shard0)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_checkpoints(proc, shard0, 1)
    status = [str(BIN), "status", str(cfg), "--shards", "2", "--dir", str(tmp_path)]
    r = subprocess.run(status + ["--missing"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"
    assert "note: left out: 1 shard being written now (0); run status again once they end" in r.stderr
    r = subprocess.run(status, capture_output=True, text=True)
    assert "not complete: 0-1  (sbatch --array=0-1); being written now: 0" in r.stdout
    # Stopped by Slurm (scancel sends SIGTERM), the task says how to resubmit it.
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert ("(a Slurm array task: resubmit it with scripts/slurm/submit.py CONFIG --shards 2 --only 0 and the first "
            "submission's options)") in stderr
    r = subprocess.run(status + ["--missing"], capture_output=True, text=True)
    assert r.stdout.strip() == "0-1" and r.stderr == ""
