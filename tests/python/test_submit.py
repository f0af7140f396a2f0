"""scripts/slurm/submit.py's checks of its own options, which run before anything reaches Slurm
(--dry-run writes the job scripts and prints the sbatch commands; no cluster is needed)."""
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, files_under

SUBMIT = ROOT / "scripts" / "slurm" / "submit.py"
SWEEP = dict(TINY, name="sw", activation="selu", sweep={"grid": {"network.depth": [2, 3, 4]}})


def submit(selfnorm_bin, cfg, *args, cwd):
    return subprocess.run([sys.executable, str(SUBMIT), str(cfg), "--selfnorm", str(selfnorm_bin), "--dry-run",
                           *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--shards", "0"], "--shards must be >= 1"),
    (["--shards", "4"], "--shards 4 is more than the 3 points of the experiment; use at most 3"),
    (["--only", "abc"], "--only abc: 'abc' is not a shard index or a range K-L; give indices as sbatch --array takes "
                        "them, e.g. 0,3-5 (the output of selfnorm status CONFIG --shards 3 --missing)"),
    (["--only", "5"], "--only 5: '5' is not within the shards 0-2 of a split into 3"),
    (["--only", "0,2-1"], "--only 0,2-1: the range '2-1' ends before it starts; write it lowest first"),
    (["--only", "0-2%x"], "--only 0-2%x: the throttle after % must be a number of tasks, got 'x'"),
    (["--mem", "lots"], "--mem lots is not a memory size sbatch takes; give a number with K, M, G or T, e.g. 4G"),
    (["--time", "forever"], "--time forever is not a time limit sbatch takes; give minutes, HH:MM:SS or D-HH:MM:SS, "
                            "e.g. 04:00:00"),
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
    for line in ("#SBATCH --array=0,2%1", "#SBATCH --mem=4G", "#SBATCH --time=1-00:30:00"):
        assert line in script.splitlines()


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
