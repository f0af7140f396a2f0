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
