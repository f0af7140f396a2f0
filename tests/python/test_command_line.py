"""Bad command-line values and bad output paths: exit status 2, a message that names the value and
what would work, and nothing written anywhere."""
import pytest

from conftest import TINY, files_under
from mounts import mounted_tmpfs


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "error: --shard 3/2: shard index 3 is out of range; shards of 2 are numbered 0 to 1"),
    (["--shard", "2/2"], "error: --shard 2/2: shard index 2 is out of range; shards of 2 are numbered 0 to 1"),
    (["--shard", "0/0"], "error: --shard 0/0: the number of shards must be >= 1"),
    (["--shard", "-1/2"], "error: --shard index '-1' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--shard", "1/x"], "error: --shard count 'x' is not valid; give an integer from 0 to 100000"),
    (["--shard", "0/200000"], "error: --shard count '200000' is not valid; give an integer from 0 to 100000"),
    (["--shard", "3"], "error: --shard 3 is not valid; use K/N (shard K of N, 0-based) or slurm/N"),
    (["--shard", "slurm/4"], "error: --shard slurm/4 needs SLURM_ARRAY_TASK_ID, which is set only inside a Slurm "
                             "array task; outside Slurm give the shard as K/4"),
    (["--threads", "-2"], "error: --threads -2 is not valid; give a thread count from 1 to 4096"),
    (["--threads", "0"], "error: --threads 0 is not valid; give a thread count from 1 to 4096"),
    (["--threads", "99999"], "error: --threads 99999 is not valid; give a thread count from 1 to 4096"),
    (["--threads", "two"], "error: Could not convert: --threads = two"),
    (["--seed", "-1"], "error: --seed '-1' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--seed", "1.5"], "error: --seed '1.5' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--seed", "99999999999999999999"],
     "error: --seed '99999999999999999999' is not valid; give an integer from 0 to 9223372036854775807"),
    (["--parallel", "fast"], "error: --parallel fast is not valid; use auto, trials or samples"),
    (["--frobnicate"], "error: The following argument was not expected: --frobnicate"),
])
def test_bad_run_options_exit_2_and_write_nothing(run, write_config, tmp_path, args, message):
    cfg = write_config(TINY)
    env = {"SLURM_ARRAY_TASK_ID": ""}
    r = run("run", cfg, "-o", tmp_path / "out.h5", *args, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[0] == message
    assert files_under(tmp_path) == ["config.json"]


def test_a_missing_command_or_argument_exits_2(run, tmp_path):
    for args, message in [((), "error: A subcommand is required"),
                          (("run",), "error: config is required"),
                          (("merge", "-o", "x.h5"), "error: shards is required"),
                          (("status", "x.json"), "error: --shards is required")]:
        r = run(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.splitlines()[0] == message
        assert r.stderr.splitlines()[1] == "Run `selfnorm --help` or `selfnorm COMMAND --help` for the options."
    assert run("--help").returncode == 0 and run("run", "--help").returncode == 0
    assert files_under(tmp_path) == []


def test_bad_status_options_exit_2(run, write_config, tmp_path):
    cfg = write_config(TINY)
    for shards, message in [("0", "error: --shards '0' is not valid; give an integer from 1 to 100000"),
                            # 2^66 once became INT64_MAX shards, listed one by one: a hang.
                            ("73786976294838206464", "error: --shards '73786976294838206464' is not valid; give an "
                                                     "integer from 1 to 100000")]:
        r = run("status", cfg, "--shards", shards, timeout=30)
        assert r.returncode == 2
        assert r.stderr.strip() == message


def test_config_paths_that_are_not_configs(run, tmp_path):
    cases = [
        (tmp_path / "missing.json", f"error: {tmp_path}/missing.json: cannot read the config (no such file); check "
                                    "the path"),
        (tmp_path, f"error: {tmp_path}: is a folder, not a config file; give the path of a JSON config such as "
                   "configs/default.json"),
        ("/dev/zero", "error: /dev/zero: is larger than 16 MiB, far more than any config (a few KiB); is it the "
                      "right file?"),
    ]
    for path, message in cases:
        for command in ("run", "validate", "print-config"):
            r = run(command, path, cwd=tmp_path)
            assert r.returncode == 2, (command, path, r.stderr)
            assert r.stderr.strip() == message
    assert files_under(tmp_path) == []


def test_output_paths_that_cannot_hold_a_result(run, write_config, tmp_path):
    cfg = write_config(TINY)
    (tmp_path / "folder").mkdir()
    cases = [
        (tmp_path / "nowhere" / "x.h5", f"error: output folder {tmp_path}/nowhere does not exist; create it or "
                                        "choose another path with -o"),
        (tmp_path / "config.json" / "x.h5", f"error: output folder {tmp_path}/config.json is a file, not a folder; "
                                            "choose another path with -o"),
        (tmp_path / "folder", f"error: {tmp_path}/folder is a folder; -o needs a file name ending in .h5"),
        # Root passes every permission check, and /proc is writable by its mode: only creating a
        # file there fails. The lock file, created before any work, is what finds out.
        ("/proc/selfnorm-test.h5", "error: cannot create files in the output folder /proc (No such file or "
                                   "directory, although the folder exists: it does not hold ordinary files, as /proc "
                                   "does; selfnorm creates its lock file /proc/selfnorm-test.h5.lock before any "
                                   "work); choose another path with -o"),
    ]
    for out, message in cases:
        r = run("run", cfg, "-o", out, cwd=tmp_path)
        assert r.returncode == 2, (out, r.stderr)
        assert r.stderr.strip() == message
        r = run("merge", "-o", out, cfg, cwd=tmp_path)
        assert r.returncode == 2, (out, r.stderr)
        assert r.stderr.strip() == message
    assert files_under(tmp_path) == ["config.json", "folder"]


def test_a_read_only_folder_is_refused_before_any_work(run, write_config, tmp_path):
    """chmod 0555 does not stop root (it bypasses permission bits), so the folder is a read-only
    tmpfs mount: that refuses every writer, root included, with EROFS."""
    cfg = write_config(TINY)
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = run("run", cfg, "-o", ro / "x.h5")
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (f"error: output folder {ro} is not writable (Read-only file system); choose "
                                    "another path with -o")
        assert r.stdout == ""
        assert files_under(ro) == []
