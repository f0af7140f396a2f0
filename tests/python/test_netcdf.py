"""A result file written by the real binary opens in xarray as a netCDF-4 dataset, without project code."""
import json

import h5py
import numpy as np
import xarray as xr

from conftest import ACTIVATIONS_BY_DEPTH


def open_plain(path, **kwargs):
    return xr.open_dataset(path, engine="h5netcdf", **kwargs).load()


def test_swept_parameters_are_coordinates_on_point(results_of):
    ds = open_plain(results_of(ACTIVATIONS_BY_DEPTH))
    assert dict(ds.sizes) == {"point": 6, "layer": 5, "trial": 3}
    # Dimension coordinates.
    assert set(ds.indexes) == {"point", "layer", "trial"}
    assert list(ds.point.values) == list(range(6))
    assert list(ds.layer.values) == [1, 2, 3, 4, 5]
    assert list(ds.trial.values) == [0, 1, 2]
    # The varied keys: coordinates on point, not data variables. The activation list is the slow axis.
    for name in ("activation", "alpha", "lambda", "depth"):
        assert name in ds.coords and name not in ds.data_vars, name
        assert ds[name].dims == ("point",)
    assert list(ds.activation.values) == ["selu", "selu", "relu", "relu", "elu", "elu"]
    assert list(ds.depth.values) == [3, 5, 3, 5, 3, 5]
    np.testing.assert_array_equal(ds.alpha.values, [1.6732632423543772, 1.6732632423543772, np.nan, np.nan, 0.5, 0.5])
    assert np.isnan(ds["lambda"].values[2:]).all()
    # Statistics carry them as coordinates: selection by value works.
    var = ds.activation_var
    assert var.dims == ("point", "layer")
    assert set(var.coords) == {"point", "layer", "activation", "alpha", "lambda", "depth"}
    assert ds.activation_var_per_trial.dims == ("point", "trial", "layer")
    relu5 = var.where((var.activation == "relu") & (var.depth == 5), drop=True)
    assert relu5.sizes["point"] == 1 and int(relu5.point) == 3
    np.testing.assert_array_equal(relu5.values[0], var.values[3])


def test_every_dataset_has_long_name_and_units(results_of):
    ds = open_plain(results_of(ACTIVATIONS_BY_DEPTH))
    for name, var in ds.variables.items():
        assert var.attrs.get("long_name"), name
        if var.dtype.kind in "iuf":
            assert var.attrs.get("units") == "1", name
        else:  # strings: activation, point_config
            assert var.dtype.kind == "O" and "units" not in var.attrs, name
    for name in ("theory_activation_var", "theory_chi", "theory_q_star", "theory_xi_q", "theory_xi_c"):
        assert ds[name].attrs["units"] == "1"
        assert ds[name].attrs["definition"]
    assert ds.theory_xi_q.attrs["long_name"] == "mean-field depth scale xi_q of the approach to q*, in layers"
    assert ds.alpha.attrs["config_key"] == "activation.alpha"
    assert ds.depth.attrs["config_key"] == "network.depth"


def test_root_attributes_describe_schema_grid_and_provenance(results_of):
    path = results_of(ACTIVATIONS_BY_DEPTH)
    ds = open_plain(path)
    a = ds.attrs
    assert a["schema"] == "selfnorm.results"
    assert a["schema_version"] == 2
    assert a["Conventions"] == "CF-1.8"
    assert list(a["grid_shape"]) == [3, 2]
    assert list(a["grid_axes"]) == ["activation", "depth"]
    assert list(a["varied_keys"]) == ["activation.name", "network.depth", "activation.alpha", "activation.lambda"]
    assert a["point_total"] == 6
    assert json.loads(a["config"])["sweep"]["grid"]["network.depth"] == [3, 5]
    for key in ("config_hash", "program_version", "git_commit", "compiler", "created_utc", "command_line"):
        assert a[key], key
    # Each varied key names its sweep axis: the activation's parameters lie on the activation list's.
    assert {n: int(ds[n].attrs["grid_axis"]) for n in ("activation", "alpha", "lambda", "depth")} == \
        {"activation": 0, "alpha": 0, "lambda": 0, "depth": 1}


def test_padding_beyond_a_points_depth_is_masked(results_of):
    path = results_of(ACTIVATIONS_BY_DEPTH)
    ds = open_plain(path)
    shallow, deep = ds.sel(point=0), ds.sel(point=1)  # selu at depth 3 and 5
    assert int(shallow.point_depth) == 3 and int(deep.point_depth) == 5
    for name in ("activation_var", "activation_var_sem", "theory_activation_var", "grad_activation_msq"):
        assert np.isfinite(shallow[name].values[:3]).all(), name
        assert np.isnan(shallow[name].values[3:]).all(), name
        assert np.isfinite(deep[name].values).all(), name
    assert np.isnan(shallow.activation_var_per_trial.values[:, 3:]).all()
    # The counts' -1 padding is their _FillValue: xarray masks it, the stored value stays -1.
    counts = ds.nonfinite_count
    assert counts.dtype == np.float64
    assert counts.encoding["_FillValue"] == -1
    np.testing.assert_array_equal(counts.sel(point=0).values, [0, 0, 0, np.nan, np.nan])
    np.testing.assert_array_equal(ds.grad_nonfinite_count.sel(point=1).values, [0, 0, 0, 0, 0])
    raw = xr.open_dataset(path, engine="h5netcdf", mask_and_scale=False).load()
    assert raw.nonfinite_count.dtype == np.int64
    assert list(raw.nonfinite_count.sel(point=0).values) == [0, 0, 0, -1, -1]
    # netCDF-4 keeps the attribute and the HDF5 fill value the same.
    with h5py.File(path, "r") as f:
        assert f["nonfinite_count"].fillvalue == -1
        assert f["nonfinite_count"].attrs["_FillValue"] == -1
        assert np.isnan(f["activation_var"].fillvalue)
        assert np.isnan(f["activation_var"].attrs["_FillValue"])
        # xarray returns the stored values unchanged.
        np.testing.assert_array_equal(f["activation_var"][:], ds.activation_var.values)
        np.testing.assert_array_equal(f["alpha"][:], ds.alpha.values)
