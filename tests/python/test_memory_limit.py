"""The memory check honours the control group's memory limit (what Slurm's --mem sets): a run in a
real cgroup with a limit below its need is refused before it allocates anything, naming the
limit. Needs root and a writable cgroup file system (v2, or v1's memory hierarchy); skips
otherwise."""
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path("/sys/fs/cgroup")
CONFIG = {"name": "limited", "network": {"depth": 64, "width": 1024}, "monte_carlo": {"trials": 1, "batch": 1024}}


def make_cgroup(limit):
    """A fresh memory cgroup with `limit` bytes; (folder, limit file). Skips where none can be made."""
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    name = f"selfnorm-test-{uuid.uuid4().hex[:12]}"
    try:
        if (ROOT / "cgroup.controllers").exists():  # cgroup v2
            if "memory" not in (ROOT / "cgroup.controllers").read_text().split():
                pytest.skip("the cgroup v2 root has no memory controller")
            folder, limit_file = ROOT / name, "memory.max"
            folder.mkdir()
        elif (ROOT / "memory").is_dir():  # cgroup v1
            folder, limit_file = ROOT / "memory" / name, "memory.limit_in_bytes"
            folder.mkdir()
        else:
            pytest.skip("no cgroup memory controller mounted under /sys/fs/cgroup")
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup here ({e})")
    try:
        (folder / limit_file).write_text(str(int(limit)))
    except OSError as e:
        folder.rmdir()
        pytest.skip(f"cannot set a memory limit here ({e})")
    return folder, limit_file


def run_in(folder, *cmd):
    """Runs cmd as a member of cgroup `folder`."""
    return subprocess.run(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(folder), *map(str, cmd)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="2"))


@pytest.fixture
def config(write_config):
    return write_config(CONFIG)


def need_bytes(selfnorm_bin, config):
    r = subprocess.run([str(selfnorm_bin), "validate", str(config), "--json", "--threads", "2"], capture_output=True,
                       text=True, check=True)
    return int(json.loads(r.stdout)["memory_bytes"])


def test_a_run_beyond_its_cgroup_limit_is_refused_naming_the_limit(selfnorm_bin, config, tmp_path):
    need = need_bytes(selfnorm_bin, config)
    limit = need // 2
    folder, limit_file = make_cgroup(limit)
    try:
        out = tmp_path / "out.h5"
        r = run_in(folder, selfnorm_bin, "run", config, "-o", out, "--threads", "2")
        assert r.returncode == 2, r.stderr
        assert re.search(r"error: .*config\.json: the run needs about [0-9.]+ MiB of memory .*, but this process's "
                         r"control group may take only [0-9.]+ [KMG]iB more \(its memory limit is [0-9.]+ MiB, "
                         + re.escape(str(folder / limit_file)) + r", with [0-9.]+ [KMG]iB in use; under Slurm, --mem "
                         r"sets it\); .*--allow-large-memory", r.stderr), r.stderr
        assert not out.exists() and not list(tmp_path.glob("out.h5*"))

        r = run_in(folder, selfnorm_bin, "validate", config, "--json", "--threads", "2")
        report = json.loads(r.stdout)
        assert report["fits_in_memory"] is False
        assert report["memory_available_bytes"] <= limit
    finally:
        folder.rmdir()


def test_a_run_within_its_cgroup_limit_passes_the_check(selfnorm_bin, config):
    need = need_bytes(selfnorm_bin, config)
    folder, _ = make_cgroup(4 * need)
    try:
        r = run_in(folder, selfnorm_bin, "validate", config, "--json", "--threads", "2")
        report = json.loads(r.stdout)
        assert report["fits_in_memory"] is True
        assert need < report["memory_available_bytes"] <= 4 * need
    finally:
        folder.rmdir()
