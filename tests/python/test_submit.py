"""scripts/slurm/submit.py's checks of its own options, which run before anything reaches Slurm
(--dry-run writes the job scripts and prints the sbatch commands; no cluster is needed)."""
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, files_under
from mounts import mounted_tmpfs

SUBMIT = ROOT / "scripts" / "slurm" / "submit.py"
SWEEP = dict(TINY, name="sw", activation="selu", sweep={"grid": {"network.depth": [2, 3, 4]}})


def submit(selfnorm_bin, cfg, *args, cwd):
    return subprocess.run([sys.executable, str(SUBMIT), str(cfg), "--selfnorm", str(selfnorm_bin), "--dry-run",
                           *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--shards", "0"], "--shards must be >= 1"),
    (["--shards", "4"], "--shards 4 is more than the 3 points of the experiment; use at most 3"),
    (["--shards", "3", "--only", "abc"], "--only abc: 'abc' is not a shard index or a range K-L; give indices as sbatch --array takes "
                        "them, e.g. 0,3-5 (the output of selfnorm status CONFIG --shards 3 --missing)"),
    (["--shards", "3", "--only", "5"], "--only 5: '5' is not within the shards 0-2 of a split into 3"),
    (["--shards", "3", "--only", "0,2-1"], "--only 0,2-1: the range '2-1' ends before it starts; write it lowest first"),
    (["--shards", "3", "--only", "0-2%x"], "--only 0-2%x: the throttle after % must be a number of tasks, got 'x'"),
    (["--mem", "lots"], "--mem lots is not a memory size sbatch takes; give a number with K, M, G or T, e.g. 4G"),
    (["--time", "forever"], "--time forever is not a time limit sbatch takes; give minutes, HH:MM:SS or D-HH:MM:SS, "
                            "e.g. 04:00:00"),
    (["--time", "25:99:99"], "--time 25:99:99: a field is out of range (hours below 24 after a day count, minutes and "
                             "seconds below 60); e.g. 1-00:30:00"),
    (["--time", "1-24:00"], "--time 1-24:00: a field is out of range (hours below 24 after a day count, minutes and "
                            "seconds below 60); e.g. 1-00:30:00"),
    (["--partition", "test extra"], "--partition 'test extra' is not a Slurm name: it is empty or has spaces"),
    (["--shards", "3", "--only", "2,2"], "--only 2,2: shard 2 is given more than once; list each shard once"),
    (["--shards", "3", "--only", "0-2,1-2"], "--only 0-2,1-2: shards 1, 2 are given more than once; list each shard "
                                             "once"),
    (["--sbatch-arg", ""], "--sbatch-arg '' is empty; give an sbatch option, e.g. --sbatch-arg=--qos=normal"),
    # The array is made of the shards; passed on to sbatch, it would also make the merge job an array of merges.
    (["--sbatch-arg=--array=0-5"], "--sbatch-arg --array=0-5: submit.py makes the job array itself, one task per "
                                   "shard (and a merge job that is no array); choose the shards with --shards N and "
                                   "--only, e.g. --only 0-5 or 0-5%2"),
    (["--sbatch-arg=-a1"], "--sbatch-arg -a1: submit.py makes the job array itself, one task per shard (and a merge "
                           "job that is no array); choose the shards with --shards N and --only, e.g. --only 0-5 or "
                           "0-5%2"),
    # The default split is one shard per point: indices from another split would name other shards.
    (["--only", "1"], "--only needs --shards N, the split the shards were submitted with (the N of selfnorm status "
                      "CONFIG --shards N --missing)"),
])
def test_bad_options_are_refused_before_anything_is_written(selfnorm_bin, write_config, tmp_path, args, message):
    cfg = write_config(SWEEP)
    r = submit(selfnorm_bin, cfg, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "submit.py: error: " + message
    assert files_under(tmp_path) == ["config.json"]


def test_good_options_reach_the_job_scripts(selfnorm_bin, write_config, tmp_path):
    cfg = write_config(SWEEP)
    r = submit(selfnorm_bin, cfg, "--shards", "3", "--only", "0,2%1", "--mem", "4G", "--time", "1-00:30:00",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "results" / "sw" / "array.sbatch").read_text()
    for line in ("#SBATCH --array=0,2%1", "#SBATCH --mem=4G", "#SBATCH --time=1-00:30:00",
                 "#SBATCH --open-mode=append"):
        assert line in script.splitlines()
    # The threads are the task's CPUs even where the submitting shell exported OMP_NUM_THREADS
    # (sbatch passes the environment on, and OMP_NUM_THREADS would win over SLURM_CPUS_PER_TASK).
    assert '--threads "$SLURM_CPUS_PER_TASK"' in script
    assert "--overwrite" not in script
    # The tasks run a copy of the config taken now: editing it while they wait changes nothing.
    copies = sorted((tmp_path / "results" / "sw" / "submitted").glob("*/*"))
    assert len(copies) == 1 and copies[0].read_bytes() == cfg.read_bytes()
    assert copies[0].name == cfg.name  # the experiment's name, where the config gives none
    assert f"progress once submitted: {selfnorm_bin} status {copies[0]} --shards 3 --dir" in r.stderr
    assert f" run {copies[0]} --shard slurm/3 " in script
    merge = (tmp_path / "results" / "sw" / "merge.sbatch").read_text()
    assert "#SBATCH --time=30" in merge.splitlines()  # the merge takes minutes, not the tasks' day
    # sbatch's other spellings pass, and a task limit below 30 minutes bounds the merge's too.
    r = submit(selfnorm_bin, cfg, "--mem", "4gb", "--time", "00:05:00", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --time=5" in (tmp_path / "results" / "sw" / "merge.sbatch").read_text().splitlines()
    assert submit(selfnorm_bin, cfg, "--time", "unlimited", cwd=tmp_path).returncode == 0
    # An edited config is a new copy; the first stays for the tasks that were queued with it.
    cfg.write_text(cfg.read_text().replace('"seed": 7', '"seed": 8'))
    assert submit(selfnorm_bin, cfg, cwd=tmp_path).returncode == 0
    assert len(sorted((tmp_path / "results" / "sw" / "submitted").glob("*/*"))) == 2


def test_messages_without_slurm_and_for_a_bad_config(selfnorm_bin, write_config, tmp_path):
    cfg = write_config(SWEEP)
    r = subprocess.run([sys.executable, str(SUBMIT), str(cfg), "--selfnorm", str(selfnorm_bin)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={"PATH": "/nonexistent"})
    assert r.returncode == 2
    assert r.stderr.strip() == ("submit.py: error: sbatch is not on PATH: run submit.py where Slurm's commands are (a "
                                "login node), or use --dry-run to write the job scripts only")
    r = submit(selfnorm_bin, tmp_path / "missing.json", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith(f"submit.py: error: {tmp_path}/missing.json: cannot read the config"), r.stderr


def test_the_merge_job_replaces_an_earlier_result_only_when_asked(selfnorm_bin, write_config, tmp_path):
    cfg = write_config(SWEEP)
    merged = tmp_path / "results" / "sw.h5"
    merged.parent.mkdir()
    merged.write_bytes(b"an earlier result")
    r = submit(selfnorm_bin, cfg, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"submit.py: error: {merged} already exists; the merge job would replace it: pass "
                                "--overwrite to allow that, or --results for another results folder")
    assert files_under(tmp_path) == ["config.json", "results", "results/sw.h5"]
    r = submit(selfnorm_bin, cfg, "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert " merge --overwrite -o " in (tmp_path / "results" / "sw" / "merge.sbatch").read_text()
    # The tasks replace shard files of an earlier submission too (a config changed since, or a
    # program fixed since): without it they would stop at them, or find them done.
    assert " --overwrite --threads " in (tmp_path / "results" / "sw" / "array.sbatch").read_text()
    # Without an earlier result the merge job is not told to overwrite anything.
    merged.unlink()
    assert submit(selfnorm_bin, cfg, cwd=tmp_path).returncode == 0
    merge = (tmp_path / "results" / "sw" / "merge.sbatch").read_text()
    assert " merge -o " in merge and "--overwrite" not in merge
    assert not merged.exists()  # a dry run submits nothing


def test_an_empty_only_submits_nothing_and_says_so(selfnorm_bin, write_config, tmp_path):
    """`--only "$(selfnorm status CONFIG --shards N --missing)"` once every shard is complete."""
    cfg = write_config(SWEEP)
    r = submit(selfnorm_bin, cfg, "--shards", "3", "--only", "", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("submit.py: nothing to submit: --only is empty")
    assert r.stdout == ""
    assert files_under(tmp_path) == ["config.json"]


def test_the_merge_job_asks_for_the_memory_of_every_points_statistics(selfnorm_bin, write_config, tmp_path):
    """The merge holds all the points' statistics (twice, as records and as the file's image): a
    fixed 1 GiB ran out for large sweeps with per-trial values."""
    import json
    import math
    big = dict(SWEEP, name="big", network={"depth": 100, "width": 4}, monte_carlo={"trials": 100, "batch": 2},
               output={"per_trial": True}, sweep={"grid": {"init.weight_variance": {"linspace": [0.5, 1.5, 200]}}})
    cfg = write_config(big)
    r = submit(selfnorm_bin, cfg, "--shards", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(subprocess.run([str(selfnorm_bin), "validate", str(cfg), "--json", "--threads", "2"],
                                     capture_output=True, text=True).stdout)
    # 200 points x 100 trials x 100 layers x 9 statistics in float64: 144 MB of per-trial values alone.
    records = info["memory_bytes"] - info["buffer_bytes"]
    assert records > 2 * 144e6
    merge = (tmp_path / "results" / "big" / "merge.sbatch").read_text().splitlines()
    assert f"#SBATCH --mem={math.ceil(1.5 * records / 2**20) + 1024}M" in merge


def test_a_selfnorm_that_is_not_one_is_refused_clearly(selfnorm_bin, write_config, tmp_path):
    cfg = write_config(SWEEP)
    notes = tmp_path / "notes.txt"
    notes.write_text("a researcher's notes\n")
    fake = tmp_path / "fake.sh"
    fake.write_text("#!/bin/sh\necho hello\n")
    other = tmp_path / "other.sh"
    other.write_text("#!/bin/sh\necho '{\"points\": 3}'\n")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01\x02")
    for path in (fake, other, garbage):
        path.chmod(0o755)
    folder = tmp_path.resolve()
    for selfnorm, message in [
        (tmp_path, f"--selfnorm {folder} is a folder; pass the selfnorm binary (build/selfnorm)"),
        (notes, f"--selfnorm {folder}/notes.txt is not executable; pass the selfnorm binary (build/selfnorm)"),
        (fake, f"{folder}/fake.sh did not answer `validate --json` as selfnorm does: its output is not JSON: "
               "'hello'; pass the selfnorm binary with --selfnorm (build/selfnorm)"),
        (other, f"{folder}/other.sh did not answer `validate --json` as selfnorm does: its JSON has no name, "
                "buffer_bytes; pass the selfnorm binary with --selfnorm (build/selfnorm)"),
        (garbage, f"{folder}/garbage did not answer `validate --json` as selfnorm does: Exec format error; pass the "
                  "selfnorm binary with --selfnorm (build/selfnorm)"),
    ]:
        r = submit(selfnorm_bin, cfg, "--selfnorm", selfnorm, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == "submit.py: error: " + message
    assert files_under(tmp_path) == ["config.json", "fake.sh", "garbage", "notes.txt", "other.sh"]


def test_a_results_folder_that_cannot_be_written_is_refused_clearly(selfnorm_bin, write_config, tmp_path):
    """A file in the way, and a read-only tmpfs for a folder the user cannot write (chmod does not stop
    root)."""
    cfg = write_config(SWEEP)
    r = submit(selfnorm_bin, cfg, "--results", "config.json", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("submit.py: error: --results config.json is a file; give a folder for the shards, "
                                "logs and merged result (it is created if missing)")
    assert files_under(tmp_path) == ["config.json"]
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = submit(selfnorm_bin, cfg, "--results", ro / "results", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"submit.py: error: cannot write {ro}/results (Read-only file system); choose "
                                    "another --results")
        assert files_under(ro) == []


def test_a_copy_of_the_config_cut_short_by_a_full_disk_is_not_left_for_the_tasks(selfnorm_bin, write_config,
                                                                                   tmp_path):
    """The copy is named by the config's content and never rewritten: one cut short would be what the
    tasks of every later submission of the same config run."""
    cfg = write_config(SWEEP)
    with mounted_tmpfs(tmp_path / "disk", "size=4k") as disk:
        (disk / "filler").write_bytes(bytes(4096))  # the disk's one page
        r = submit(selfnorm_bin, cfg, "--results", disk / "results", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"submit.py: error: cannot write {disk}/results/sw/submitted/"), r.stderr
        assert r.stderr.strip().endswith("/config.json (No space left on device); choose another --results")
        assert not list((disk / "results").rglob("*.json*"))
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        r = submit(selfnorm_bin, cfg, "--results", disk / "results", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        copies = list((disk / "results" / "sw" / "submitted").glob("*/*"))
        assert len(copies) == 1 and copies[0].read_bytes() == cfg.read_bytes()
