"""selfnorm theory: readable tables and JSON with the documented keys; predictions in result files."""
import json
import math

import h5py
import numpy as np

from conftest import TINY

ALPHA01 = 1.6732632423543772848170429916717
LAMBDA01 = 1.0507009873554804934193349852946


def Phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


def phi(x):
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def theory(run, *args):
    r = run("theory", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_solve_prints_alpha01_and_lambda01(run):
    out = theory(run, "solve", "--mean", "0", "--var", "1")
    assert abs(out["alpha"] - ALPHA01) < 1e-12 * ALPHA01
    assert abs(out["lambda"] - LAMBDA01) < 1e-12 * LAMBDA01
    other = theory(run, "solve", "--mean", "0", "--var", "2")
    assert other["alpha"] > ALPHA01


def test_map_jacobian_fixed_point_and_dropout_keys(run):
    m = theory(run, "map", "--mu", "0", "--nu", "1")
    assert abs(m["mu"]) < 1e-12 and abs(m["nu"] - 1) < 1e-12
    j = theory(run, "jacobian")
    assert abs(j["eigenvalues"][0] - 0.7826) < 5e-5 and j["eigenvalues"][1] == 0.0
    assert abs(j["spectral_norm"] - 0.7877) < 5e-5
    fp = theory(run, "fixed-point", "--mu", "0.2", "--nu", "1.4")
    assert fp["found"] and fp["stable"] and abs(fp["nu"] - 1) < 1e-10
    assert "eigenvalues" in fp and "spectral_norm" in fp
    d = theory(run, "dropout", "--keep", "0.95")
    q, ap = 0.95, -ALPHA01 * LAMBDA01
    a = (q + ap * ap * q * (1 - q)) ** -0.5
    assert abs(d["a"] - a) < 1e-12 and abs(d["b"] + a * (1 - q) * ap) < 1e-12
    none = theory(run, "fixed-point", "--activation", "tanh")
    assert not none["found"] and "variance" in none["note"]


def test_readable_tables_and_bad_values(run):
    r = run("theory", "jacobian")
    assert r.returncode == 0
    assert "spectral_norm  0.7876" in r.stdout
    # Numbers read back exactly in their shortest form: the tau typed is the tau shown.
    r = run("theory", "map", "--omega", "2", "--tau", "0.3")
    assert r.returncode == 0 and "omega = 2, nu = 1, tau = 0.3  (" in r.stdout, r.stdout
    r = run("theory", "dropout", "--keep", "1.5")
    assert r.returncode == 2 and "probability of KEEPING" in r.stderr
    r = run("theory", "map", "--activation", "relu", "--alpha", "2")
    assert r.returncode == 2 and "relu has no parameter 'alpha'" in r.stderr
    r = run("theory", "map", "--activation", "celu", "--alpha", "0")
    assert r.returncode == 2 and "alpha must be > 0" in r.stderr
    # A parameter given twice is refused, not settled silently by the order of the options.
    for args, message in [(("--param", "alpha=1", "--alpha", "2"), "alpha is given twice, by --alpha 2 and by "
                                                                   "--param alpha=1; give it once"),
                          (("--param", "alpha=1", "--param", "alpha=3"), "alpha is given twice, by --param alpha=1 "
                                                                         "and by --param alpha=3; give it once")]:
        r = run("theory", "map", "--activation", "elu", *args)
        assert r.returncode == 2 and r.stderr.strip() == "error: " + message, r.stderr
    # --param's value is a whole number: a trailing word and an overflow are named (they used to be
    # taken as 1.5, and end in "error: stod" with exit 1).
    for value, message in [("1.5abc", "'1.5abc' is not a number"),
                           ("1e400", "1e400 is out of the range of a double")]:
        r = run("theory", "map", "--activation", "elu", "--param", f"alpha={value}")
        assert r.returncode == 2 and f"--param alpha={value}: {message}" in r.stderr, r.stderr
    # Each verb's numbers are checked before any theory runs: no answer for an impossible input.
    for args, message in [
        (("depth-scales", "--activation", "tanh", "--weight-variance", "-1"),
         "--weight-variance -1: must be > 0 (a variance)"),
        (("depth-scales", "--weight-variance", "nan"), "--weight-variance nan is not a finite number; give a real value"),
        (("depth-scales", "--bias-variance", "-1"), "--bias-variance -1: must be >= 0 (a variance)"),
        (("solve", "--var", "-1"), "--var -1: must be > 0 (a variance)"),
        (("solve", "--mean", "nan"), "--mean nan is not a finite number; give a real value"),
        (("map", "--mu", "inf"), "--mu inf is not a finite number; give a real value"),
        (("jacobian", "--nu", "-1", "--tau", "-1"), "--nu -1: must be > 0 (a variance)"),
        (("fixed-point", "--tau", "0"), "--tau 0: must be > 0 (the sum of the squared weights)"),
        (("dropout", "--keep", "0.9", "--mean", "nan"), "--mean nan is not a finite number; give a real value"),
    ]:
        r = run("theory", *args)
        assert r.returncode == 2, (args, r.stdout)
        assert r.stderr.strip() == "error: " + message
        assert r.stdout == ""


def test_an_empty_number_is_refused_not_taken_as_zero_or_the_default(run):
    """CLI11 reads "" as 0 (--bias-variance "" ran with 0) or as "not given" (--alpha "" ran with
    the default); every numeric option refuses it, naming the option."""
    for args in [("map", "--alpha", ""), ("map", "--nu", ""), ("depth-scales", "--bias-variance", ""),
                 ("solve", "--mean", ""), ("dropout", "--keep", ""), ("fixed-point", "--lambda", "")]:
        r = run("theory", *args)
        assert r.returncode == 2, (args, r.stdout)
        assert r.stderr.splitlines()[0] == f"error: {args[1]}: empty value; give a number"
        assert r.stdout == ""


def test_runs_write_theory_beside_the_statistics(run, write_config, tmp_path):
    out = tmp_path / "t.h5"
    assert run("run", write_config(TINY), "-o", out, "--quiet").returncode == 0
    with h5py.File(out, "r") as f:
        for name in ("activation_mean", "activation_var", "activation_msq", "grad_activation_msq",
                     "grad_preactivation_msq", "preactivation_var"):
            assert f["theory_" + name].shape == f[name].shape
        assert f["theory_chi"].shape == (2, 4)
        # selu at its fixed point, relu halving.
        assert np.allclose(f["theory_activation_var"][0], 1.0, rtol=1e-12)
        assert np.allclose(f["theory_activation_msq"][1], 0.5 ** np.arange(1, 5), rtol=1e-12)
        # xi_q = -1 / log(slope of q -> E selu(z)^2 at q* = 1), z ~ N(0, q). With r = sqrt(q),
        # E selu^2 = lambda^2 (q/2 + alpha^2 (e^{2q} Phi(-2r) - 2 e^{q/2} Phi(-r) + 1/2)), so
        # d/dq = lambda^2 (1/2 + alpha^2 (2 e^{2q} Phi(-2r) - e^{2q} phi(2r) / r - e^{q/2} Phi(-r)
        #                                + e^{q/2} phi(r) / r)).
        e2, eh = math.exp(2.0), math.exp(0.5)
        slope = LAMBDA01 ** 2 * (0.5 + ALPHA01 ** 2 * (2 * e2 * Phi(-2) - e2 * phi(2) - eh * Phi(-1) + eh * phi(1)))
        assert abs(f["theory_xi_q"][0] + 1 / np.log(slope)) < 1e-10 * f["theory_xi_q"][0]
        assert np.isnan(f["theory_xi_q"][1])  # relu: q -> 0, no fixed point
        assert f["theory_activation_var"].attrs["long_name"] == "mean-field prediction of activation_var"


def test_depth_scales_are_nan_where_the_pre_activations_are_not_centred(run, write_config, tmp_path):
    """q*, chi* and the depth scales assume pre-activations N(0, q). A bias mean moves them: the
    per-point values are then NaN, while the per-layer recursion (which carries the mean) stays."""
    config = dict(TINY, activation="tanh", init={"weight_variance": 1.5, "bias_variance": 0.05})
    centred, shifted = tmp_path / "centred.h5", tmp_path / "shifted.h5"
    assert run("run", write_config(config), "-o", centred, "--quiet").returncode == 0
    config["init"] = dict(config["init"], bias_mean=0.5)
    assert run("run", write_config(config), "-o", shifted, "--quiet").returncode == 0
    with h5py.File(centred, "r") as c, h5py.File(shifted, "r") as s:
        for name in ("theory_q_star", "theory_chi_star", "theory_xi_q", "theory_xi_c"):
            assert np.isfinite(c[name][0]), name
            assert np.isnan(s[name][0]), name
        assert np.isfinite(s["theory_preactivation_var"][0]).all()
        assert abs(s["theory_preactivation_mean"][0, 0] - 0.5) < 1e-12
