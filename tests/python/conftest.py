"""Fixtures shared by the Python tests: the selfnorm binary and small configs."""
import json
import os
import subprocess
from pathlib import Path

import h5py
import pytest

ROOT = Path(os.environ.get("SELFNORM_ROOT", Path(__file__).resolve().parents[2]))
BIN = Path(os.environ.get("SELFNORM_BIN", ROOT / "build" / "selfnorm"))


@pytest.fixture(scope="session")
def selfnorm_bin():
    if not BIN.exists():
        pytest.fail(f"selfnorm binary not found at {BIN}; build first (scripts/test.sh)")
    return BIN


@pytest.fixture
def run(selfnorm_bin):
    """Runs selfnorm with arguments; returns the CompletedProcess (text mode)."""

    def _run(*args, cwd=None, env=None, timeout=600):
        full_env = dict(os.environ)
        full_env.setdefault("OMP_NUM_THREADS", "2")
        if env:
            full_env.update(env)
        return subprocess.run([str(selfnorm_bin), *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                              text=True, timeout=timeout)

    return _run


@pytest.fixture
def write_config(tmp_path):
    """Writes a config dict (or raw text) to a file in tmp_path; returns its path."""

    def _write(config, name="config.json"):
        path = tmp_path / name
        path.write_text(config if isinstance(config, str) else json.dumps(config))
        return path

    return _write


TINY = {
    "name": "tiny",
    "seed": 7,
    "network": {"depth": 4, "width": 16},
    "activation": ["selu", "relu"],
    "monte_carlo": {"trials": 3, "batch": 20},
}


# Small experiments for the analysis tests (xarray, scripts/selfnorm, plot.py, the notebook).
# An activation list with a depth axis: coordinates on two axes, padding beyond the shorter depth.
ACTIVATIONS_BY_DEPTH = {
    "name": "activations_by_depth",
    "seed": 11,
    "network": {"width": 16},
    "activation": ["selu", "relu", {"name": "elu", "alpha": 0.5}],
    "monte_carlo": {"trials": 3, "batch": 16},
    "output": {"per_trial": True},
    "sweep": {"grid": {"network.depth": [3, 5]}},
}
# SELU's alpha x lambda on a 3 x 2 grid, as configs/selu_alpha_lambda_sweep.json but tiny; the
# mean-field variance at the last layer crosses 1 inside it.
ALPHA_LAMBDA = {
    "name": "alpha_lambda",
    "seed": 5,
    "network": {"depth": 6, "width": 32},
    "activation": {"name": "selu"},
    "monte_carlo": {"trials": 3, "batch": 32},
    "sweep": {"grid": {"activation.alpha": [1.4, 1.67, 1.9], "activation.lambda": [0.98, 1.08]}},
}
# Every activation of configs/default.json, at a small size.
SMALL_DEFAULT = {
    "name": "small_default",
    "seed": 3,
    "network": {"depth": 8, "width": 32},
    "activation": ["selu", "relu", "tanh", "elu"],
    "monte_carlo": {"trials": 4, "batch": 32},
}


@pytest.fixture(scope="session")
def results_of(selfnorm_bin, tmp_path_factory):
    """Runs the real binary on a config dict once per session; returns the result file's path."""
    made = {}

    def _results_of(config):
        name = config["name"]
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            (folder / "config.json").write_text(json.dumps(config))
            env = dict(os.environ, OMP_NUM_THREADS="2")
            r = subprocess.run([str(selfnorm_bin), "run", str(folder / "config.json"), "-o", str(folder / f"{name}.h5"),
                                "--quiet"], env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            made[name] = folder / f"{name}.h5"
        return made[name]

    return _results_of


@pytest.fixture(scope="session")
def scripts_on_path():
    """Makes scripts/selfnorm importable, as plot.py and the notebook do."""
    import sys

    path = str(ROOT / "scripts")
    if path not in sys.path:
        sys.path.insert(0, path)
    return ROOT / "scripts"


def same_statistics(a, b):
    """True if two result files hold the same numeric datasets, bit for bit."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names = sorted(k for k in fa.keys() if fa[k].dtype.kind in "fiu")
        if names != sorted(k for k in fb.keys() if fb[k].dtype.kind in "fiu"):
            return False
        return all(fa[n][:].tobytes() == fb[n][:].tobytes() for n in names)


def files_under(folder):
    """Every path under `folder`, relative to it, sorted (hidden files included)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# CTest runs one file per entry (tests/CMakeLists.txt). pytest exits 0 when every test of a file
# skips, which CTest would report as passed although nothing was checked; exit 77 then, which CTest
# reports as skipped (SKIP_RETURN_CODE), and the reasons stay in the -rs summary.
SKIPPED_EXIT_STATUS = 77


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if exitstatus != 0 or reporter is None:
        return
    ran = [key for key in ("passed", "failed", "error", "xfailed", "xpassed") if reporter.stats.get(key)]
    if reporter.stats.get("skipped") and not ran:
        session.exitstatus = SKIPPED_EXIT_STATUS
