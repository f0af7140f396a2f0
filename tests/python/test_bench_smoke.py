"""The benchmark script's smoke mode: every table at a tiny size, PyTorch included when importable.

It checks that the script runs and prints what it promises, not how fast anything is."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import BIN, ROOT, files_under
from mounts import mounted_tmpfs

BENCH = ROOT / "scripts" / "bench" / "bench.py"


def test_smoke_prints_every_table_and_writes_json(selfnorm_bin, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(BENCH), "--smoke", "--selfnorm", str(BIN), "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout
    # The header lets a reader reproduce the table.
    for field in ("command", "machine", "OPENBLAS_CORETYPE=", "OMP_NUM_THREADS=", "peak"):
        assert field in text
    assert "Reference job" in text and "selfnorm, " in text
    assert "How selfnorm's cost grows" in text
    for case in ("n=32", "L=4", "B=64", "1 thread", "--parallel trials", "--parallel samples", "float64",
                 "weight gradients on"):
        assert case in text, case

    report = json.loads(out.read_text())
    ref = report["reference"]
    assert ref["gflop"] > 0
    assert ref["figures"]["selfnorm"]["median_s"] > 0
    assert ref["figures"]["selfnorm"]["maxrss_mib"] > 0
    assert ref["figures"]["selfnorm"]["background_cpus"] >= 0
    rows = report["scaling"]
    assert rows[0]["case"] == "reference"
    assert all(row["median_s"] > 0 and row["gflops"] > 0 for row in rows)
    # Each row's cost per unit of T L B n^2, recomputed from the row's own shape and time.
    def per_unit(row):
        return row["median_s"] / (row["trials"] * row["depth"] * row["batch"] * row["width"] ** 2)
    for row in rows:
        assert row["unit_cost_vs_reference"] == pytest.approx(per_unit(row) / per_unit(rows[0]), rel=1e-12), row

    if importlib.util.find_spec("torch") is None:
        assert "PyTorch skipped" in text
    else:
        assert "torch best" in ref["figures"]
        assert ref["statistics"]["_verdict"] == "agree", text
        assert report["check"]["relu"]["_verdict"] == "agree", text
        assert "PyTorch configurations" in text
        assert report["torch_configs"][0]["mode"] == "autograd" and report["torch_configs"][0]["median_s"] > 0


def test_bad_binary_is_reported(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH), "--smoke", "--selfnorm", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "selfnorm binary not found" in r.stderr


def test_an_output_that_cannot_be_written_is_refused_before_anything_is_measured(tmp_path):
    """The report is written at the end of a run of up to 20 minutes: a --json that cannot be written
    is refused at the start, not found out then."""
    notes = tmp_path / "notes.txt"
    notes.write_text("a researcher's notes\n")
    for args, message in [
        (["--json", tmp_path / "missing" / "bench.json"],
         f"--json {tmp_path}/missing/bench.json: cannot write in {tmp_path}/missing (No such file or directory); give "
         "a file in a folder that exists and can be written"),
        (["--json", tmp_path],
         f"--json {tmp_path} is a folder; give a file for the report, e.g. {tmp_path}/bench.json"),
        (["--workdir", notes], f"--workdir {notes} is a file; give a folder for the configs and outputs (it is created "
                               "if missing)"),
    ]:
        r = subprocess.run([sys.executable, str(BENCH), "--smoke", "--no-torch", "--selfnorm", str(BIN),
                            *map(str, args)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.strip().splitlines()[-1] == "bench.py: error: " + message
        assert r.stdout == ""  # nothing measured
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert notes.read_text() == "a researcher's notes\n"


def test_a_report_that_does_not_fit_on_the_disk_leaves_the_earlier_one_whole(selfnorm_bin, tmp_path):
    """A tmpfs of one page, taken by an earlier report: the new one is written whole or not at all."""
    with mounted_tmpfs(tmp_path / "disk", "size=4k") as disk:
        out = disk / "bench.json"
        out.write_bytes(b"an earlier report")
        r = subprocess.run([sys.executable, str(BENCH), "--smoke", "--no-torch", "--no-scaling", "--selfnorm",
                            str(BIN), "--json", str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.strip().splitlines()[-1] == (f"bench.py: error: cannot write the report {out} (No space left "
                                                     "on device); the tables above hold its figures")
        assert "Reference job" in r.stdout
        assert files_under(disk) == ["bench.json"]
        assert out.read_bytes() == b"an earlier report"


def test_gpu_smoke_runs_on_a_gpu_and_skips_cleanly_without_one(selfnorm_bin, tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(BENCH), "--smoke", "--device", "cuda", "--selfnorm", str(BIN),
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())["gpu"]
    if "skipped" in report:
        assert "GPU benchmark skipped: " in r.stdout
        assert "--device cuda" in report["skipped"]
        pytest.skip("no GPU here; bench.py said so cleanly: " + report["skipped"])
    assert "selfnorm on the GPU" in r.stdout
    assert [(row["job"], row["gemm"]) for row in report["rows"]] == [
        ("reference", "FP32"), ("reference", "TF32"), ("large", "FP32"), ("large", "TF32")]
    for row in report["rows"]:
        assert row["median_wall_s"] > 0 and 0 < row["gemm_s"] < row["gpu_s"] and 0 <= row["outside_gemm"] < 1


def test_torch_best_configuration_gets_openblas_avx512_kernels_on_an_avx512_cpu():
    """PyTorch's best configuration must not run OpenBLAS's fallback kernels on a CPU with AVX-512
    that OpenBLAS does not recognise: the core type bench.py picks gives AVX-512 kernels."""
    import pytest
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.pop(0)
    blas = bench.torch_blas()
    if not blas or "openblas" not in blas:
        pytest.skip("libblas.so.3 is not OpenBLAS here (Debian's libopenblas0-pthread is not installed)")
    if not bench.cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512")
    detected, best = bench.openblas_cores()
    got = bench.openblas_corename(blas, best)
    assert got in bench.OPENBLAS_AVX512_CORES, (detected, best, got)


def test_twice_as_fast_note_gives_the_rate_and_says_when_it_is_above_the_peak():
    """Half of PyTorch's time for 2000 GFLOP: 200 GFLOP/s against 20 s, 250 against 16 s of compute."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.pop(0)
    note = bench.twice_as_fast_note("torch best", {"median_s": 20.0, "compute_s": 16.0}, 2000.0, 400.0, "float32")
    assert "needs 200.0 GFLOP/s, 50% of the float32 FMA peak" in note, note
    assert "(16.00 s), 250.0, 62%" in note, note
    assert "out of reach" not in note
    above = bench.twice_as_fast_note("torch best", {"median_s": 20.0, "compute_s": None}, 2000.0, 150.0, "float32")
    assert "needs 200.0 GFLOP/s, 133% of the float32 FMA peak" in above, above
    assert "own timing" not in above and "out of reach for FMA products" in above


def test_goals_are_judged_on_the_runs_own_figures():
    """Each goal against the report's figures: a figure just short of its threshold is not met, one at
    it is; a figure the run did not take (no PyTorch, no scaling rows) is 'not measured', never met."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.pop(0)

    def scaling_row(case, fraction, seconds):
        return {"case": case, "peak_fraction": fraction, "median_s": seconds}

    report = {
        "reference": {"figures": {
            "selfnorm": {"peak_fraction": 0.75, "median_s": 6.0, "maxrss_mib": 1000.0},
            "torch best": {"median_s": 11.9, "compute_s": 10.0}}},
        "scaling": [scaling_row("float64", 0.6999, 15.0), scaling_row("n=256", 0.5, 0.6),
                    scaling_row("--parallel trials", 0.7, 7.0), scaling_row("--parallel samples", 0.75, 6.0)],
    }
    judged = bench.goals(report)
    # In order: reference job, PyTorch, memory, float64, width 256, thread modes, random numbers.
    assert [ok for _, _, ok in judged] == [True, False, True, False, True, True, None]
    figures = [figure for _, figure, _ in judged]
    assert figures[0] == "75.0% (6.00 s)"
    assert figures[1] == "1.98x (11.90 s against 6.00 s; on PyTorch's own timing 1.66x, which the verdict uses)"
    assert figures[2] == "1000 MiB"
    assert figures[3] == "69.9% of the float64 peak (15.00 s)"  # 69.99%: short of 70, rounded down
    assert figures[4] == "50.0% of the float32 peak (0.60 s)"
    assert figures[5] == "7.00 s, 6.00 s"
    assert "profile.sh" in figures[6]

    report["reference"]["figures"]["selfnorm"].update(peak_fraction=0.7499, maxrss_mib=1024.0)
    report["reference"]["figures"]["torch best"] = {"median_s": 12.0, "compute_s": None}
    report["scaling"] = []
    judged = bench.goals(report)
    assert [ok for _, _, ok in judged] == [False, True, False, None, None, None, None]
    assert judged[1][1] == "2.00x (12.00 s against 6.00 s)"
    # Twice as fast on wall time but not on PyTorch's own timing (which leaves out starting Python
    # and importing torch): the less favourable ratio decides.
    report["reference"]["figures"]["torch best"] = {"median_s": 12.6, "compute_s": 11.4}
    assert bench.goals(report)[1][2] is False
    report["reference"]["figures"]["torch best"] = {"median_s": 13.0, "compute_s": 12.0}
    assert bench.goals(report)[1][2] is True
    # Medians of fewer than 3 runs give figures, no verdicts.
    judged = bench.goals(report, repeat=2)
    assert all(ok is None for _, _, ok in judged)
    assert judged[0][1] == "74.9% (6.00 s) (median of 2)"
    del report["reference"]["figures"]["torch best"]
    judged = bench.goals(report)
    assert judged[1][1:] == ("not measured", None)
    assert all(figure.startswith("not measured") for _, figure, ok in judged if ok is None)


def test_the_statistics_check_fails_on_a_nan_or_a_missing_statistic(tmp_path, capsys):
    """Two programs that agree everywhere but at layers where one gives NaN do not agree (max()
    used to skip a NaN z-score that was not the first), nor does a statistic one of them lacks."""
    import h5py
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.pop(0)
    layers = 6
    values = np.linspace(1.0, 1.5, layers)
    torch_json = tmp_path / "torch.json"

    def write(h5_values, torch_stats):
        with h5py.File(tmp_path / "selfnorm.h5", "w") as f:
            for stat in bench.CHECK_STATS:
                f[stat] = h5_values[None, :]
                f[stat + "_sem"] = np.full((1, layers), 0.01)
        torch_json.write_text(json.dumps({"statistics": {stat: {"mean": list(values), "sem": [0.01] * layers}
                                                         for stat in torch_stats}}))
        return bench.compare_statistics(tmp_path / "selfnorm.h5", torch_json, "test", trials=8)["_verdict"]

    assert write(values, bench.CHECK_STATS) == "agree"
    broken = values.copy()
    broken[3:] = np.nan
    assert write(broken, bench.CHECK_STATS) == "DISAGREE"
    assert write(values, bench.CHECK_STATS[1:]) == "DISAGREE"
    assert f"missing from one program's output: {bench.CHECK_STATS[0]}" in capsys.readouterr().out
    # A statistic neither program computed (grad_weight_msq without weight gradients) is no failure.
    with h5py.File(tmp_path / "selfnorm.h5", "a") as f:
        del f[bench.CHECK_STATS[0]], f[bench.CHECK_STATS[0] + "_sem"]
    assert bench.compare_statistics(tmp_path / "selfnorm.h5", torch_json, "test", trials=8)["_verdict"] == "agree"


PEER = ROOT / "scripts" / "bench" / "blas_peer.py"


def test_blas_peer_smoke_prints_both_sides_and_writes_json(selfnorm_bin, tmp_path):
    gemm_bench = BIN.parent / "gemm_bench"
    if not gemm_bench.exists():
        pytest.skip(f"gemm_bench is not built beside {BIN}")
    out = tmp_path / "peer.json"
    r = subprocess.run([sys.executable, str(PEER), "--smoke", "--threads", "2", "--gemm-bench", str(gemm_bench),
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for precision in ("float32", "float64"):
        for direction in ("forward", "backward"):
            assert f"| {precision} | {direction} |" in r.stdout
    report = json.loads(out.read_text())
    assert [(x["precision"], x["direction"]) for x in report["results"]] == [
        ("float32", "forward"), ("float32", "backward"), ("float64", "forward"), ("float64", "backward")]
    assert all(len(x["selfnorm_gflops"]) == 1 and x["selfnorm_gflops"][0] > 0 for x in report["results"])
    if importlib.util.find_spec("torch") is None:
        assert report["peer_skipped"] and "peer      skipped" in r.stdout
        assert all(x["blas_gflops"] == [] for x in report["results"])
    else:
        assert report["peer_skipped"] is None
        assert all(len(x["blas_gflops"]) == 1 and x["blas_gflops"][0] > 0 for x in report["results"])


def test_blas_peer_names_a_missing_gemm_bench(tmp_path):
    r = subprocess.run([sys.executable, str(PEER), "--smoke", "--gemm-bench", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "gemm_bench not found at" in r.stderr and "--gemm-bench PATH" in r.stderr
