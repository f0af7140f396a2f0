"""Blow-ups are data: deep expanding networks run to the end, count their inf/NaN entries per layer,
record the first non-finite layer per point, say so in the printed summary, and leave the layers
before the blow-up exactly as the same network cut there. Narrow widths keep these fast."""
import json
import re

import h5py
import numpy as np
import pytest

FORWARD = ["preactivation_mean", "preactivation_var", "activation_mean", "activation_var", "activation_msq",
           "unit_mean_spread"]
GRADIENT = ["grad_activation_msq", "grad_preactivation_msq"]


def run_config(run, tmp_path, config, name):
    cfg = tmp_path / f"{name}.json"
    cfg.write_text(json.dumps(config))
    out = tmp_path / f"{name}.h5"
    r = run("run", cfg, "-o", out)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def relu_float32(depth):
    return {"name": "relu_blowup", "seed": 13, "network": {"depth": depth, "width": 16}, "activation": "relu",
            "init": {"weight_variance": 4}, "monte_carlo": {"trials": 4, "batch": 16},
            "output": {"per_trial": True}}


def test_relu_with_weight_variance_4_overflows_float32_and_the_rest_is_exact(run, tmp_path):
    """q doubles every layer, so float32 (max 3.4e38 = 2^128) overflows after ~250 layers of 1000."""
    out, stdout = run_config(run, tmp_path, relu_float32(1000), "deep")
    with h5py.File(out, "r") as f:
        first = int(f["first_nonfinite_layer"][0])
        counts = f["nonfinite_count"][0]
        assert 150 < first < 400
        assert np.all(counts[: first - 1] == 0) and counts[first - 1] > 0
        assert counts[-1] == 4 * 16 * 16  # every entry of the last layer, in every trial
        blown = counts > 0
        for name in FORWARD:
            assert np.all(np.isfinite(f[name][0, : first - 1])), name
            # NaN exactly at the layers holding inf/NaN entries: relu maps an overflowed -inf
            # preactivation to 0, so a layer after the first blown-up one can be finite again.
            assert np.array_equal(np.isnan(f[name][0]), blown), name
        for name in GRADIENT:
            assert np.all(np.isnan(f[name][0])), name  # the backward pass runs through the blow-up
            # The file itself says why, for a reader who sees NaN gradients beside zero counts.
            assert "or of h or x at any layer (first_nonfinite_layer)" in f[name].attrs["definition"], name
        assert "it can be 0 in a trial whose forward pass blew up" in f["grad_nonfinite_count"].attrs["definition"]
        deep = {name: f[name][:] for name in FORWARD + [n + "_sem" for n in FORWARD] +
                [n + "_per_trial" for n in FORWARD]}
    note = re.search(r"^note: point 0 blew up: the first inf/NaN activation is at layer (\d+) \((\d+) entries there, "
                     r"see nonfinite_count in the file\); its statistics are NaN at the (\d+) of layers (\d+) to 1000 "
                     r"that hold inf/NaN entries(?: \(the other (\d+) are finite: .*\))?, and its gradient "
                     r"statistics are NaN at every layer \(the backward pass runs through the blown-up layers\); "
                     r"the statistics of layers 1 to (\d+) are unaffected$", stdout, re.M)
    assert note, stdout
    assert int(note[1]) == first and int(note[2]) == counts[first - 1] and int(note[4]) == first
    assert int(note[3]) == blown.sum() and int(note[5] or 0) == 1000 - first + 1 - blown.sum()
    assert int(note[6]) == first - 1

    # The same seed with the network cut before the blow-up: those layers, bit for bit.
    cut, stdout = run_config(run, tmp_path, relu_float32(first - 1), "cut")
    assert "blew up: the first inf/NaN activation" not in stdout
    with h5py.File(cut, "r") as f:
        assert f["first_nonfinite_layer"][0] == 0
        assert np.all(f["nonfinite_count"][0] == 0)
        for name, values in deep.items():
            assert values.shape[-1] == 1000
            assert f[name][:].tobytes() == values[..., : first - 1].tobytes(), name
        # Going backwards the gradient doubles per layer (chi = 4 / 2): over ~250 layers it passes
        # float32's range too, near the input. That is its own blow-up, counted and reported.
        grad_counts = f["grad_nonfinite_count"][0]
        top = int(np.nonzero(grad_counts)[0].max()) + 1
        assert 1 <= top < first - 100
        for name in GRADIENT:
            assert np.all(np.isnan(f[name][0, :top])), name
            assert np.all(np.isfinite(f[name][0, top:])), name
    assert (f"note: point 0: the gradient blew up going backwards: dL/dh has inf/NaN entries from layer {top} down "
            "(see grad_nonfinite_count in the file); the gradient statistics there are NaN") in stdout


@pytest.mark.parametrize("activation, variance, precision, depth, blows_up", [
    ("tanh", 1e6, "float32", 300, False),     # saturates: huge variance, bounded activations
    ("selu", 4.0, "float32", 600, True),      # linear for x > 0: grows like relu
    ("relu", 1e100, "float64", 40, True),     # 1e50 per layer: float64 overflows within ~7 layers
    ("sigmoid", 1e30, "float64", 50, False),  # bounded
])
def test_other_blowups_complete_and_are_reported(run, tmp_path, activation, variance, precision, depth, blows_up):
    config = {"name": "b", "seed": 2, "precision": precision, "network": {"depth": depth, "width": 16},
              "activation": activation, "init": {"weight_variance": variance},
              "monte_carlo": {"trials": 3, "batch": 16}}
    out, stdout = run_config(run, tmp_path, config, "b")
    with h5py.File(out, "r") as f:
        first = int(f["first_nonfinite_layer"][0])
        counts = f["nonfinite_count"][0]
        if blows_up:
            assert 1 < first <= depth
            assert np.all(counts[: first - 1] == 0) and counts[first - 1] > 0 and counts[-1] > 0
            assert np.array_equal(np.isnan(f["activation_mean"][0]), counts > 0)
            assert f"note: point 0 blew up: the first inf/NaN activation is at layer {first} (" in stdout
        else:
            assert first == 0 and np.all(counts == 0)
            assert np.all(np.isfinite(f["activation_var"][0]))
            assert "blew up" not in stdout


def test_float64_statistics_beyond_the_double_range_are_flagged(run, tmp_path):
    """Entries of float64 can pass 1e154 while finite; their squares cannot be summed in double.
    The statistics read inf or nan there, nonfinite_count stays 0, and the summary says so."""
    config = {"name": "wide_range", "seed": 3, "precision": "float64", "network": {"depth": 30, "width": 16},
              "activation": "relu", "init": {"weight_variance": 1e20}, "monte_carlo": {"trials": 3, "batch": 16}}
    out, stdout = run_config(run, tmp_path, config, "w")
    with h5py.File(out, "r") as f:
        assert f["first_nonfinite_layer"][0] == 0
        assert np.all(f["nonfinite_count"][0] == 0)
        bad = ~np.isfinite(f["activation_msq"][0])
        assert bad.any() and not bad[0]
        first_bad = int(np.argmax(bad)) + 1
    assert re.search(rf"^note: point 0: at layers (\d+-)?\d+(,\d+(-\d+)?)* some statistics exceed the range of a "
                     rf"double although every entry is finite", stdout, re.M), stdout
    assert f"{first_bad}-30 some statistics" in stdout or f",{first_bad}-30 some" in stdout, stdout


def test_a_blow_up_on_the_tile_units_is_counted_as_on_the_vector_units(run, tmp_path):
    """With a batch of 256 the float32 products run on the AMX tile units (bf16x6) where the CPU has
    them. The blow-up is found at the same layer as with --matmul fma, and the layers before it
    agree to float32 rounding (relu is not chaotic: differences do not grow). Which entries of the
    blown-up layers overflow may differ: a single product beyond 3.4e38 overflows on the tile
    units, where a fused multiply-add can still bring the sum back below it."""
    config = relu_float32(200)
    config["init"] = {"weight_variance": 16}  # q grows 8x per layer: activations pass 2^128 near layer 85
    config["monte_carlo"] = {"trials": 2, "batch": 256}
    config["output"] = {"per_trial": False}
    cfg = tmp_path / "blow.json"
    cfg.write_text(json.dumps(config))
    outs = {}
    for matmul in ("auto", "fma"):
        outs[matmul] = tmp_path / f"{matmul}.h5"
        r = run("run", cfg, "-o", outs[matmul], "--matmul", matmul)
        assert r.returncode == 0, r.stderr
        if matmul == "auto":
            with h5py.File(outs["auto"], "r") as a:
                got = a["point_matmul"][0]
                backend = a.attrs["gemm_backend"]
            if (got.decode() if isinstance(got, bytes) else got) != "bf16x6":
                pytest.skip(f"no AMX tile units here (gemm_backend {backend!r}): auto and fma are the same products")
    with h5py.File(outs["auto"], "r") as a, h5py.File(outs["fma"], "r") as b:
        first = int(a["first_nonfinite_layer"][0])
        assert 60 < first < 120
        assert first == int(b["first_nonfinite_layer"][0])
        for f in (a, b):
            counts = f["nonfinite_count"][0]
            assert np.all(counts[: first - 1] == 0) and counts[first - 1] > 0 and counts[-1] == 2 * 256 * 16
        for name in FORWARD:
            x, y = a[name][0, : first - 1], b[name][0, : first - 1]
            # float32 rounding through up to 120 layers of 16-unit sums: far below 1e-4 relative.
            assert np.allclose(x, y, rtol=1e-4, atol=1e-4 * np.sqrt(a["activation_msq"][0, : first - 1])), name


def test_vanishing_float32_gradients_are_named_in_the_summary(run, tmp_path):
    """float32 flushes numbers below 1.2e-38 to zero: sigmoid's gradients at the first layers of a
    64-layer network (1e-80 in theory) read 0. The summary names those layers; float64 has room."""
    config = {"name": "vanish", "seed": 3, "network": {"depth": 64, "width": 64}, "activation": ["sigmoid", "selu"],
              "monte_carlo": {"trials": 2, "batch": 64}}
    notes = {}
    for precision in ("float32", "float64"):
        cfg = tmp_path / f"{precision}.json"
        cfg.write_text(json.dumps(dict(config, precision=precision)))
        r = run("run", cfg, "-o", tmp_path / f"{precision}.h5")
        assert r.returncode == 0, r.stderr
        notes[precision] = [line for line in r.stdout.splitlines() if line.startswith("note:")]
        with h5py.File(tmp_path / f"{precision}.h5", "r") as f:
            first = f["grad_activation_msq"][0, 0]
            theory = f["theory_grad_activation_msq"][0, 0]
        assert 1e-90 < theory < 1e-70
        if precision == "float32":
            assert first == 0.0  # what the note is about
        else:
            assert 1e-100 < first < 1e-60  # float64 holds it: far below float32's range, not flushed
    assert len(notes["float32"]) == 1
    assert re.fullmatch(r"note: sigmoid: at layers 1-\d+ the gradients are below 1e-30 in size \(their mean squares "
                        r"under 1e-60\): float32 flushes numbers below 1.2e-38 to zero, so these statistics may be "
                        r"biased low or 0; run the point in float64 \(\"precision\": \"float64\"\) to follow signals "
                        r"this small", notes["float32"][0]), notes["float32"][0]
    assert notes["float64"] == []
