"""The selfnorm command line as a user meets it: exit codes, messages, files."""
import json
import os
import re
import subprocess

import h5py
import numpy as np
import pytest

from conftest import ROOT, TINY, files_under


def test_version_and_help(run):
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("selfnorm 0.")
    r = run("--help")
    assert r.returncode == 0
    for command in ("run", "validate", "print-config", "activations"):
        assert command in r.stdout


def test_version_names_the_commit_the_binary_was_built_from(run):
    """The commit is read at build time, so an incremental build after a commit stamps the new one
    (into --version and every result file), not the one that was checked out at configure time."""
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout: the binary says 'unknown' and there is no commit to compare")
    commit = re.search(r"\(git ([0-9a-f]{12}|unknown)(-dirty)?,", run("--version").stdout)
    assert commit, run("--version").stdout
    assert commit[1] == head.stdout.strip(), "the binary is older than the checkout: rebuild (scripts/test.sh does)"


def test_activations_lists_every_activation_with_defaults(run):
    r = run("activations", "--json")
    assert r.returncode == 0
    listed = {a["name"]: a for a in json.loads(r.stdout)}
    assert set(listed) == {"relu", "relu6", "leaky_relu", "softplus", "elu", "selu", "celu", "tanh", "sigmoid",
                           "gelu", "silu", "identity"}
    assert listed["selu"]["parameters"] == {"alpha": 1.6732632423543772, "lambda": 1.0507009873554805}
    assert listed["softplus"]["parameters"] == {"beta": 1.0, "threshold": 20.0}
    assert listed["silu"]["aliases"] == ["swish"]
    text = run("activations").stdout
    assert "1.6732632423543772848170429916717" in text  # the paper's 32 digits


def test_run_writes_a_result_file_and_prints_a_summary(run, write_config, tmp_path):
    out = tmp_path / "tiny.h5"
    r = run("run", write_config(TINY), "-o", out)
    assert r.returncode == 0, r.stderr
    assert "activation_var by layer" in r.stdout
    assert "wrote " + str(out) in r.stdout
    with h5py.File(out, "r") as f:
        assert f.attrs["schema"] == "selfnorm.results"
        assert f["activation_var"].shape == (2, 4)
        assert [s.decode() for s in f["activation"][:]] == ["selu", "relu"]
        assert np.all(np.isfinite(f["activation_var"][:]))
    # Only the result is left behind: no temporary files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "tiny.h5"]


def test_run_never_replaces_other_results_without_the_flag(run, write_config, tmp_path):
    out = tmp_path / "tiny.h5"
    assert run("run", write_config(TINY), "-o", out, "--quiet").returncode == 0
    before = out.read_bytes()
    # The same command again: the file is already complete for this config.
    r = run("run", write_config(TINY), "-o", out)
    assert r.returncode == 0
    assert "is already complete for this config; nothing to do" in r.stderr
    # Another experiment aimed at the same file is refused.
    r = run("run", write_config(TINY), "-o", out, "--seed", "99")
    assert r.returncode == 2
    assert "already exists and holds other results (seed 7 in the file, 99 here); pass --overwrite" in r.stderr
    # What differs is named: the config's keys, or the split.
    r = run("run", write_config(dict(TINY, network={"depth": 5, "width": 16})), "-o", out)
    assert r.returncode == 2
    assert "holds other results (network.depth 4 in the file, 5 here); pass --overwrite" in r.stderr
    r = run("run", write_config(TINY), "-o", out, "--shard", "1/2")
    assert r.returncode == 2
    assert "holds other results (the whole experiment in the file, shard 1 of 2 here); pass --overwrite" in r.stderr
    assert out.read_bytes() == before
    # The same experiment from a later file layout: the layout is what differs.
    newer = tmp_path / "newer.h5"
    newer.write_bytes(before)
    with h5py.File(newer, "r+") as f:
        version = int(f.attrs["schema_version"])
        f.attrs["schema_version"] = version + 1
    r = run("run", write_config(TINY), "-o", newer)
    assert r.returncode == 2
    assert f"holds other results (schema version {version + 1} in the file, {version} here)" in r.stderr, r.stderr
    assert run("run", write_config(TINY), "-o", out, "--seed", "99", "--overwrite", "--quiet").returncode == 0
    assert out.read_bytes() != before


def test_an_invalid_config_fails_before_any_file_exists(run, write_config, tmp_path):
    bad = dict(TINY, network={"depth": 0, "width": 16}, monte_carlo={"trials": 3, "batchsize": 20})
    out = tmp_path / "bad.h5"
    r = run("run", write_config(bad), "-o", out)
    assert r.returncode == 2
    assert "network.depth: must be an integer >= 1, got 0" in r.stderr
    assert "monte_carlo.batchsize: unknown key; did you mean 'batch'?" in r.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_bad_command_line_values(run, write_config, tmp_path):
    cfg = write_config(TINY)
    r = run("run", tmp_path / "missing.json")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run("run", cfg, "--threads", "-2", "-o", tmp_path / "x.h5")
    assert r.returncode == 2 and "--threads -2 is not valid" in r.stderr
    r = run("run", cfg, "-o", tmp_path / "nowhere" / "x.h5")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run("run", cfg, "--parallel", "fast", "-o", tmp_path / "x.h5")
    assert r.returncode == 2 and "use auto, trials or samples" in r.stderr
    r = run("run", cfg, "--matmul", "tf32", "-o", tmp_path / "x.h5")
    assert r.returncode == 2 and "--matmul tf32 is not valid; use auto, fma or bf16x6" in r.stderr
    r = run("run", cfg, "-o", tmp_path / "x.h5", env={"OMP_NUM_THREADS": "two"})
    assert r.returncode == 2 and "OMP_NUM_THREADS='two' is not a thread count" in r.stderr


def test_threads_come_from_slurm_when_omp_num_threads_is_unset(run, write_config, tmp_path):
    env = {"OMP_NUM_THREADS": "", "SLURM_CPUS_PER_TASK": "1"}
    r = run("run", write_config(TINY), "-o", tmp_path / "x.h5", env=env)
    assert r.returncode == 0
    assert "1 thread (SLURM_CPUS_PER_TASK)" in r.stderr


def test_validate_prints_the_work_estimate(run, write_config):
    r = run("validate", write_config(TINY))
    assert r.returncode == 0
    assert "points       2" in r.stdout
    # 2 points x 3 trials x (4 forward + 3 backward) GEMMs x 2 x 20 x 16 x 16 FLOP
    assert f"{2 * 3 * 7 * 2 * 20 * 16 * 16 * 1e-9:g} GFLOP" in r.stdout
    assert "memory" in r.stdout
    report = json.loads(run("validate", write_config(TINY), "--json").stdout)
    assert report["gemm_gflop"] == pytest.approx(2 * 3 * 7 * 2 * 20 * 16 * 16 * 1e-9, rel=1e-12)
    for key in ("buffer_bytes", "memory_bytes", "memory_available_bytes"):
        assert isinstance(report[key], int) and report[key] > 0, key  # whole bytes, not 1.2e6
    assert report["memory_bytes"] >= report["buffer_bytes"]
    assert report["valid"] is True
    # A config that does not load is JSON too, for tools that read it, as well as the message.
    r = run("validate", write_config(dict(TINY, network={"depth": 0, "width": 16})), "--json")
    assert r.returncode == 2
    report = json.loads(r.stdout)
    assert report["valid"] is False and report["config"].endswith("config.json")
    assert [p["path"] for p in report["problems"]] == ["network.depth"]
    assert report["problems"][0]["message"] in r.stderr


def test_text_that_is_not_utf8_is_a_config_error_reported_as_json_too(run, write_config, tmp_path):
    """A Latin-1 config, a UTF-16 one and a result file given as the config: exit status 2 with the
    problem named (not an internal error), and validate --json prints {"valid": false, ...}."""
    result = tmp_path / "tiny.h5"
    assert run("run", write_config(TINY), "-o", result, "--quiet").returncode == 0
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"name": "caf\xe9"}')
    utf16 = tmp_path / "utf16.json"
    utf16.write_bytes('{"name": "x"}'.encode("utf-16"))
    for config, message in [
        (latin1, "byte 0xE9 at line 1, column 14 is not UTF-8 (the file may be Latin-1 or Windows-1252 text); "
                 "re-save the file as UTF-8"),
        (utf16, "the file is UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8"),
        (result, "this is an HDF5 file (a selfnorm result file?), not a JSON config; give the JSON config instead (a "
                 "result file keeps the config it was run from in its attribute \"config\")"),
    ]:
        r = run("validate", config, "--json")
        assert r.returncode == 2, r.stderr
        assert json.loads(r.stdout) == {"valid": False, "config": str(config),
                                        "problems": [{"path": "", "message": message}]}
        assert r.stderr.splitlines()[1] == "  " + message


def test_a_file_name_that_is_not_utf8_is_named_printably_and_never_run(selfnorm_bin, tmp_path):
    """A config without "name" is named after its file; a Latin-1 file name makes no name (it used to
    pass validate, then end run with an internal error and an empty checkpoint folder)."""
    config = tmp_path / os.fsdecode(b"r\xe9s.json")
    config.write_text(json.dumps({"network": {"depth": 2, "width": 4}, "monte_carlo": {"trials": 1, "batch": 4}}))
    message = ['error: r\\xE9s.json: 1 problem in the config',
               '  name: missing; the name taken from the file name instead, "r\\xE9s", is not a file-name-safe '
               "string (1 to 200 characters of UTF-8 text, no '/', '\\' or control characters, not starting with "
               "'.'), since it names results/<name>.h5; add \"name\": \"...\" to the config"]
    for command in (["run"], ["validate"], ["print-config"], ["validate", "--json"]):
        r = subprocess.run([selfnorm_bin, command[0], config.name, *command[1:]], cwd=tmp_path, capture_output=True)
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr.decode("utf-8").splitlines() == message  # printable: decodes as UTF-8
    report = json.loads(r.stdout)
    assert report["valid"] is False and report["config"] == "r\ufffds.json"
    assert files_under(tmp_path) == [config.name]


def test_print_config_fills_in_every_default(run, write_config):
    r = run("print-config", write_config({"network": {"depth": 2, "width": 8}}))
    assert r.returncode == 0
    resolved = json.loads(r.stdout)
    assert resolved["activation"]["name"] == "selu"
    assert resolved["init"] == {"name": "lecun_normal", "weight_mean": 0.0, "weight_variance": 1.0,
                                "bias_mean": 0.0, "bias_variance": 0.0}
    assert resolved["monte_carlo"]["trials"] == 8


def test_results_depend_only_on_config_and_seed(run, write_config, tmp_path):
    cfg = write_config(TINY)
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    assert run("run", cfg, "-o", a, "--quiet", "--threads", "1").returncode == 0
    assert run("run", cfg, "-o", b, "--quiet", "--threads", "2", "--parallel", "trials").returncode == 0
    assert run("run", cfg, "-o", c, "--quiet", "--seed", "8").returncode == 0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb, h5py.File(c, "r") as fc:
        for name in ("activation_mean", "activation_var", "grad_activation_msq", "unit_mean_spread"):
            assert np.array_equal(fa[name][:], fb[name][:])  # bit for bit
            assert not np.array_equal(fa[name][:], fc[name][:])
        assert fc.attrs["seed"] == 8


def test_fewer_threads_than_asked_for_give_the_same_bits(run, write_config, tmp_path):
    """OMP_THREAD_LIMIT (or OMP_DYNAMIC) can give fewer threads than --threads asks for. Parallel
    over trials, each thread must then still have a workspace of its own: with 4 asked for and 3
    given, trials 3 and 4 used to share one with trials 0 and 1, and the statistics came out
    corrupted at random."""
    cfg = write_config(dict(TINY, network={"depth": 6, "width": 64}, activation="selu",
                            monte_carlo={"trials": 12, "batch": 512}, output={"per_trial": True}))  # 4 row blocks
    one = tmp_path / "one.h5"
    assert run("run", cfg, "-o", one, "--quiet", "--threads", "1").returncode == 0
    names = ("activation_var_per_trial", "grad_activation_msq_per_trial")
    with h5py.File(one, "r") as f:
        expected = {name: f[name][:] for name in names}
    for k, parallel in enumerate(["trials"] * 3 + ["samples"]):
        out = tmp_path / f"limited{k}.h5"
        r = run("run", cfg, "-o", out, "--quiet", "--threads", "4", "--parallel", parallel,
                env={"OMP_THREAD_LIMIT": "3"})
        assert r.returncode == 0, r.stderr
        with h5py.File(out, "r") as f:
            for name, values in expected.items():
                assert np.array_equal(f[name][:], values), (k, parallel, name)  # bit for bit


def test_each_point_records_how_its_products_were_computed(run, write_config, tmp_path):
    """--matmul auto takes the AMX tile units (bf16x6) for float32 points with a batch of 256 or more
    where the CPU has them, fma otherwise (float64 always); the file says which, per point, and
    what the run could use. --matmul fma and bf16x6 force one."""
    config = {"name": "mm", "seed": 3, "network": {"depth": 2, "width": 40}, "monte_carlo": {"trials": 2},
              "sweep": {"grid": {"monte_carlo.batch": [16, 512], "precision": ["float32", "float64"]}}}
    cfg = write_config(config)
    auto, fma = tmp_path / "auto.h5", tmp_path / "fma.h5"
    r = run("run", cfg, "-o", auto)
    assert r.returncode == 0, r.stderr
    assert run("run", cfg, "-o", fma, "--quiet", "--matmul", "fma").returncode == 0
    with h5py.File(auto, "r") as f:
        backend = f.attrs["gemm_backend"]
        backend = backend.decode() if isinstance(backend, bytes) else backend
        batch = list(f["monte_carlo_batch"][:])
        precision = [p.decode() if isinstance(p, bytes) else p for p in f["precision"][:]]
        got = [m.decode() if isinstance(m, bytes) else m for m in f["point_matmul"][:]]
        assert f["point_matmul"].attrs["long_name"]
    amx = "amx-bf16x6" in backend
    want = ["bf16x6" if amx and b >= 256 and p == "float32" else "fma" for b, p in zip(batch, precision)]
    assert got == want
    assert ("float32 products on AMX (bf16x6) at batch >= 256" in r.stderr) == amx
    with h5py.File(fma, "r") as f:
        assert [m.decode() if isinstance(m, bytes) else m for m in f["point_matmul"][:]] == ["fma"] * 4
        assert "amx" not in (f.attrs["gemm_backend"].decode() if isinstance(f.attrs["gemm_backend"], bytes)
                             else f.attrs["gemm_backend"])
    if amx:
        forced = tmp_path / "bf16x6.h5"
        assert run("run", cfg, "-o", forced, "--quiet", "--matmul", "bf16x6").returncode == 0
        with h5py.File(forced, "r") as f:
            got = [m.decode() if isinstance(m, bytes) else m for m in f["point_matmul"][:]]
        assert got == ["bf16x6" if p == "float32" else "fma" for p in precision]
    else:
        # Without the tile units, forcing them is refused before anything is written.
        r = run("run", cfg, "-o", tmp_path / "bf16x6.h5", "--matmul", "bf16x6")
        assert r.returncode == 2
        assert "--matmul bf16x6: bf16x6 products need a CPU with AMX-BF16" in r.stderr
        assert not (tmp_path / "bf16x6.h5").exists()


def test_summary_names_the_trials_of_a_sweep_over_trials(run, write_config, tmp_path):
    """Each point's standard errors are over its own trials: a sweep of monte_carlo.trials is not
    summarised as the first point's count."""
    cfg = write_config(dict(TINY, activation="selu", sweep={"grid": {"monte_carlo.trials": [2, 5]}}))
    r = run("run", cfg, "-o", tmp_path / "x.h5")
    assert r.returncode == 0, r.stderr
    assert "mean ± standard error over each point's trials (2-5)" in r.stdout
    r = run("run", write_config(TINY), "-o", tmp_path / "y.h5")
    assert "mean ± standard error over 3 trials" in r.stdout


def test_summary_prints_a_mean_that_rounds_to_zero_without_a_sign(run, write_config, tmp_path):
    """Seed 157 gives tanh's activation mean at layer 8 as -2.6e-5 with standard error 0.0061: at the
    4 decimals the error warrants that is 0.0000, and a "-0.0000" would suggest a sign it lacks."""
    config = {"name": "z", "seed": 157, "network": {"depth": 8, "width": 16}, "activation": "tanh",
              "monte_carlo": {"trials": 4, "batch": 16}}
    out = tmp_path / "z.h5"
    r = run("run", write_config(config), "-o", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        mean, sem = f["activation_mean"][0, 7], f["activation_mean_sem"][0, 7]
    assert -1e-4 < mean < 0 and 0.001 < sem < 0.01  # the case this test is about
    assert f"0.0000±{sem:.4f}" in r.stdout
    assert not re.search(r"-0\.0+±", r.stdout), r.stdout


def test_a_point_gives_the_same_bits_after_other_points_in_the_same_process(run, write_config, tmp_path):
    """The engine takes the previous point's buffers back when the shapes repeat (they are not
    cleared): a point's results must not depend on what the points before it left there. Point 1
    of a run of two is compared with the same point run alone (shard 1/2, a fresh process), with
    ragged strips and panels (301 units, 200 samples), biases and weight gradients."""
    config = {"name": "reuse", "seed": 3, "network": {"depth": 6, "width": 301},
              "activation": ["tanh", "selu"], "init": {"name": "lecun_normal", "bias_variance": 0.1},
              "monte_carlo": {"trials": 3, "batch": 200, "weight_gradients": True}}
    cfg = write_config(config)
    both, alone = tmp_path / "both.h5", tmp_path / "alone.h5"
    assert run("run", cfg, "-o", both, "--quiet").returncode == 0
    assert run("run", cfg, "-o", alone, "--quiet", "--shard", "1/2").returncode == 0
    with h5py.File(both, "r") as fb, h5py.File(alone, "r") as fa:
        assert list(fa["point"][:]) == [1]
        for name in ("preactivation_mean", "activation_var", "unit_mean_spread", "grad_activation_msq",
                     "grad_preactivation_msq", "grad_weight_msq", "nonfinite_count"):
            assert np.array_equal(fb[name][1], fa[name][0]), name  # bit for bit
