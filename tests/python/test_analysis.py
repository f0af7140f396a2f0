"""scripts/selfnorm, the Python reader: schema checks, to_grid and the theory comparison, on real files."""
import shutil

import h5py
import numpy as np
import pytest

from conftest import ACTIVATIONS_BY_DEPTH, ALPHA_LAMBDA


@pytest.fixture(scope="module")
def sn(scripts_on_path):
    import selfnorm

    return selfnorm


def test_load_returns_the_checked_dataset(sn, results_of):
    path = results_of(ALPHA_LAMBDA)
    assert sn.check_version(path) == 2
    ds = sn.load(path)
    assert sn.check_version(ds) == 2
    assert ds.sizes["point"] == 6
    assert "alpha" in ds.coords and "lambda" in ds.coords
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(ds.activation_var.values, f["activation_var"][:])


def copy_with(tmp_path, source, name, **attrs):
    path = tmp_path / name
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        for key, value in attrs.items():
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value
    return path


def test_a_wrong_version_names_the_file_the_version_and_the_supported_ones(sn, results_of, tmp_path):
    old = copy_with(tmp_path, results_of(ALPHA_LAMBDA), "old.h5", schema_version=np.int64(1))
    with pytest.raises(sn.SchemaError) as e:
        sn.load(old)
    message = str(e.value)
    assert str(old) in message
    assert "schema version 1" in message
    assert "supports version(s) 2" in message
    assert "--overwrite" in message  # how to get a current file
    new = copy_with(tmp_path, results_of(ALPHA_LAMBDA), "new.h5", schema_version=np.int64(9))
    with pytest.raises(sn.SchemaError, match=r"new\.h5 has schema version 9; this reader supports version\(s\) 2"):
        sn.check_version(new)


def test_a_file_that_is_not_a_selfnorm_result_says_so(sn, results_of, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(sn.SchemaError, match=r"other\.h5 is not a selfnorm result file \(it has no 'schema'"):
        sn.load(other)
    foreign = copy_with(tmp_path, results_of(ALPHA_LAMBDA), "foreign.h5", schema="somebody.else")
    with pytest.raises(sn.SchemaError, match=r"foreign\.h5 has schema 'somebody\.else', not 'selfnorm\.results'"):
        sn.load(foreign)
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5")
    with pytest.raises(sn.SchemaError, match=r"notes\.h5 is not a selfnorm result file \(not an HDF5 file"):
        sn.load(text)
    with pytest.raises(FileNotFoundError, match="missing.h5: no such file"):
        sn.load(tmp_path / "missing.h5")


def test_to_grid_puts_every_point_in_its_alpha_lambda_cell(sn, results_of):
    ds = sn.load(results_of(ALPHA_LAMBDA))
    grid = sn.to_grid(ds)
    assert grid.activation_var.dims == ("alpha", "lambda", "layer")
    assert dict(grid.sizes) == {"alpha": 3, "lambda": 2, "layer": 6}
    np.testing.assert_array_equal(grid.alpha.values, [1.4, 1.67, 1.9])
    np.testing.assert_array_equal(grid["lambda"].values, [0.98, 1.08])
    assert grid.alpha.attrs["config_key"] == "activation.alpha"
    # Every cell holds the point with those values: compare with direct indexing by point.
    for p in range(ds.sizes["point"]):
        alpha, lam = float(ds.alpha[p]), float(ds["lambda"][p])
        cell = grid.sel(alpha=alpha, **{"lambda": lam})
        assert int(cell.point) == p
        for name in ("activation_var", "activation_mean_sem", "theory_activation_var", "nonfinite_count"):
            np.testing.assert_array_equal(cell[name].values, ds[name].isel(point=p).values)
        np.testing.assert_array_equal(cell.theory_q_star.values, ds.theory_q_star.values[p])
    assert list(grid.attrs["grid_axes"]) == ["alpha", "lambda"]


def test_to_grid_keeps_activation_parameters_on_the_activation_axis(sn, results_of):
    ds = sn.load(results_of(ACTIVATIONS_BY_DEPTH))
    grid = sn.to_grid(ds)
    assert grid.activation_var.dims == ("activation", "depth", "layer")
    assert grid.activation_var_per_trial.dims == ("activation", "depth", "trial", "layer")
    assert list(grid.activation.values) == ["selu", "relu", "elu"]
    assert list(grid.depth.values) == [3, 5]
    assert grid.alpha.dims == ("activation",)
    np.testing.assert_array_equal(grid.alpha.values, [1.6732632423543772, np.nan, 0.5])
    np.testing.assert_array_equal(grid.point.values, [[0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(grid.activation_var.sel(activation="elu", depth=5).values,
                                  ds.activation_var.isel(point=5).values)
    # Padding beyond the shallower depth stays masked.
    assert np.isnan(grid.nonfinite_count.sel(activation="relu", depth=3).values[3:]).all()


def test_to_grid_refuses_a_shard(sn, selfnorm_bin, write_config, tmp_path, run):
    cfg = write_config(ALPHA_LAMBDA)
    out = tmp_path / "shard.h5"
    assert run("run", cfg, "--shard", "1/2", "-o", out, "--quiet").returncode == 0
    with pytest.warns(UserWarning, match=r"shard.h5 is shard 1 of 2: 3 of the experiment's 6 points; merge the "
                                         r"shards \(selfnorm merge\) for the whole experiment"):
        ds = sn.load(out)
    assert ds.sizes["point"] == 3
    with pytest.raises(ValueError, match=r"is shard 1 of 2, 3 of the experiment's 6 points; merge the shards"):
        sn.to_grid(ds)


def test_labels_and_the_theory_comparison(sn, results_of):
    ds = sn.load(results_of(ACTIVATIONS_BY_DEPTH))
    assert sn.point_labels(ds) == ["selu, depth=3", "selu, depth=5", "relu, depth=3", "relu, depth=5",
                                   "elu, depth=3", "elu, depth=5"]
    table = sn.compare_theory(ds, "activation_var", layers=("middle", "last"))
    assert len(table) == 12
    last = table[table.which == "last"]
    assert list(last.layer) == [3, 5, 3, 5, 3, 5]
    mc = ds.activation_var.values[np.arange(6), last.layer.values - 1]
    th = ds.theory_activation_var.values[np.arange(6), last.layer.values - 1]
    se = ds.activation_var_sem.values[np.arange(6), last.layer.values - 1]
    np.testing.assert_array_equal(last.monte_carlo.values, mc)
    np.testing.assert_allclose(last.z.values, (mc - th) / se)
    np.testing.assert_allclose(last.relative_gap.values, (mc - th) / np.abs(th))
    with pytest.raises(KeyError, match="no prediction theory_unit_mean_spread"):
        sn.compare_theory(ds, "unit_mean_spread")


def test_at_layer_works_point_by_point_on_the_loaded_file_and_on_its_grid(sn, results_of):
    """Each point is taken at its own layer: on the grid too, where a layer past a shallower
    network's depth would otherwise mix points (depth 5's layer 3 in the depth-3 cell)."""
    ds = sn.load(results_of(ACTIVATIONS_BY_DEPTH))
    grid = sn.to_grid(ds)
    for which in ("first", "middle", "last"):
        on_points = sn.at_layer(ds, "activation_var", which)
        on_grid = sn.at_layer(grid, "activation_var", which)
        assert on_points.dims == ("point",) and on_grid.dims == ("activation", "depth")
        np.testing.assert_array_equal(on_grid.values.ravel(), on_points.values)
    last = sn.at_layer(grid, "activation_var", "last")
    np.testing.assert_array_equal(last.sel(depth=3).values, ds.activation_var.values[[0, 2, 4], 2])
    np.testing.assert_array_equal(last.sel(depth=5).values, ds.activation_var.values[[1, 3, 5], 4])
    assert not np.isnan(last.values).any()


def test_the_helpers_name_what_they_take(sn, results_of, tmp_path):
    path = results_of(ACTIVATIONS_BY_DEPTH)
    ds = sn.load(path)
    grid = sn.to_grid(ds)
    for call in (lambda: sn.compare_theory(grid), lambda: sn.point_labels(grid)):
        with pytest.raises(ValueError, match=r"takes the \[point, layer\] Dataset of selfnorm.load, one row per "
                                             r"point; this one has dimensions \('activation', 'depth', 'layer', 'trial'\)"):
            call()
    with pytest.raises(ValueError, match=r"^layer 5 is outside the layers 1-3 of point 0$"):
        sn.at_layer(ds, "activation_var", 5)
    with pytest.raises(ValueError, match=r"^layer 4 is outside the layers 1-3 of the grid point activation=selu, "
                                         r"depth=3$"):
        sn.at_layer(grid, "activation_var", 4)
    with pytest.raises(ValueError, match=r"give one layer number, or one per point \(6 of them"):
        sn.at_layer(ds, "activation_var", [1, 2])
    with pytest.raises(KeyError, match=r"no per-layer variable 'point_depth'; per-layer variables: activation_mean"):
        sn.at_layer(ds, "point_depth")
    with pytest.raises(TypeError, match=r"to_grid takes the Dataset of selfnorm.load\(path\), got str"):
        sn.to_grid(str(path))
    with pytest.raises(ValueError, match=r"holds 2 of the experiment's 6 points \(a selection of them\?\); to_grid "
                                         r"needs every point: reshape first, then select on the grid's axes"):
        sn.to_grid(ds.isel(point=[0, 1]))
    with pytest.raises(ValueError, match=rf"^{path}: no 'point' dimension \(already reshaped by to_grid\?\)$"):
        sn.to_grid(grid)


def test_unreadable_files_are_told_apart(sn, results_of, tmp_path):
    path = results_of(ACTIVATIONS_BY_DEPTH)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(sn.SchemaError, match=r"cut.h5 is cut short \(\d+ bytes, less than its HDF5 header declares\): "
                                             r"an incomplete copy or download; copy the file again"):
        sn.load(cut)
    with pytest.raises(sn.SchemaError, match=rf"^{tmp_path} is a folder, not a result file; a sharded run's folder "
                                             r"holds shard-K-of-N.h5 files: merge them"):
        sn.load(tmp_path)
    odd = tmp_path / "odd.h5"
    shutil.copy(path, odd)
    with h5py.File(odd, "r+") as f:
        f.attrs["schema_version"] = "2.1"
    with pytest.raises(sn.SchemaError, match=r"odd.h5 has schema_version '2.1', not a whole number"):
        sn.load(odd)

