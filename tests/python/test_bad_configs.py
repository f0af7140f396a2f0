"""The corpus of bad configs in tests/data/bad_configs, through the real binary.

Each NN_name.json has a sidecar NN_name.expected: '#' lines describe the case, every other line is
a line that stderr must hold, in order and nothing else ('re: ' lines are regular expressions for
text that depends on the machine). `# validate: warning` marks a config that validate accepts with
a warning (exit 0) and run refuses. For every case, `validate`, `print-config` and `run` (with and
without -o) must exit with status 2 and print exactly those lines, and no file may appear.
"""
import re
import shutil
from pathlib import Path

import pytest

from conftest import files_under

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_configs"
CASES = sorted(CORPUS.glob("*.json"))


def expectation(config):
    lines = (config.with_suffix(".expected")).read_text().splitlines()
    directives = [line for line in lines if line.startswith("#")]
    expected = [line for line in lines if line and not line.startswith("#")]
    return expected, "# validate: warning" in directives


def assert_lines(stderr, expected, case):
    got = stderr.rstrip("\n").splitlines()
    assert len(got) == len(expected), f"{case}: stderr has {len(got)} lines, expected {len(expected)}:\n{stderr}"
    for g, e in zip(got, expected):
        if e.startswith("re: "):
            assert re.fullmatch(e[4:], g), f"{case}:\n  got      {g}\n  expected {e}"
        else:
            assert g == e, f"{case}:\n  got      {g}\n  expected {e}"


def test_the_corpus_is_large_and_every_case_has_its_expectation():
    assert len(CASES) >= 30
    for config in CASES:
        assert config.with_suffix(".expected").exists(), f"{config.name} has no .expected file"
        expected, _ = expectation(config)
        assert expected, f"{config.name}: the .expected file lists no message"


@pytest.mark.parametrize("config", CASES, ids=[c.stem for c in CASES])
def test_bad_config_is_refused_with_its_message_and_writes_nothing(run, tmp_path, config):
    shutil.copy(config, tmp_path / config.name)
    expected, validate_warns = expectation(config)

    r = run("run", config.name, "-o", "out.h5", cwd=tmp_path)
    assert r.returncode == 2, f"{config.name}: run exited {r.returncode}\n{r.stderr}"
    assert_lines(r.stderr, expected, config.name)
    assert r.stdout == ""

    # Without -o the result would go to results/<name>.h5: not even the folder may appear.
    r = run("run", config.name, cwd=tmp_path)
    assert r.returncode == 2
    assert_lines(r.stderr, expected, config.name)

    r = run("validate", config.name, cwd=tmp_path)
    if validate_warns:
        assert r.returncode == 0, r.stderr
        warned = [("re: warning: " + e[len("re: error: "):]) if e.startswith("re: error: ")
                  else "warning: " + e[len("error: "):] for e in expected]
        assert_lines(r.stderr, warned, config.name)
        assert f"{config.name}: valid" in r.stdout
    else:
        assert r.returncode == 2, f"{config.name}: validate exited {r.returncode}"
        assert_lines(r.stderr, expected, config.name)
        assert r.stdout == ""
        r = run("print-config", config.name, cwd=tmp_path)
        assert r.returncode == 2
        assert_lines(r.stderr, expected, config.name)

    assert files_under(tmp_path) == [config.name]


def test_the_memory_refusal_is_overridden_by_its_flag_and_then_fails_cleanly(run, tmp_path):
    """--allow-large-memory skips the check; the engine's buffers then cannot be had, and the run
    ends with a message naming the point (not std::bad_alloc, not a crash) and writes nothing."""
    config = CORPUS / "39_absurd_size.json"
    shutil.copy(config, tmp_path / config.name)
    r = run("run", config.name, "-o", "out.h5", "--allow-large-memory", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "the run needs" not in r.stderr  # the check was skipped
    assert re.search(r"error: 39_absurd_size\.json: point 0: (out of memory|the point needs more memory than the "
                     r"address space holds)", r.stderr), r.stderr
    assert files_under(tmp_path) == [config.name]


def test_a_config_that_fits_only_with_fewer_threads_says_so(run, write_config, tmp_path):
    """With more trials than threads, every thread has its own buffers (~140 MiB here): 4096 of
    them need ~550 GiB, one fits. The refusal says so, and names --threads 1."""
    available = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable:"))
    if available > 600 * 2**30:
        pytest.skip("this machine has more than 600 GiB available: 4096 threads' buffers would fit")
    cfg = write_config({"network": {"depth": 2, "width": 4096}, "monte_carlo": {"trials": 4096, "batch": 16}})
    r = run("validate", cfg, "--threads", "4096")
    assert r.returncode == 0
    assert re.search(r"^warning: .*config\.json: the run needs about [0-9.]+ GiB of memory \(engine buffers and "
                     r"statistics of its largest point, with 4096 threads\), .*; --threads 1 needs only "
                     r"[0-9.]+ MiB; reduce", r.stderr), r.stderr
    r = run("run", cfg, "--threads", "4096", "-o", tmp_path / "out.h5")
    assert r.returncode == 2
    assert "--threads 1 needs only" in r.stderr
    assert not (tmp_path / "out.h5").exists()
