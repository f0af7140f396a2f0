"""Reading selfnorm result files: the schema check, the Dataset, the sweep's grid.

A result file (schema "selfnorm.results", see results/README.md) is a netCDF-4 file, so
``xarray.open_dataset(path, engine="h5netcdf")`` reads it as it is. This module adds the checks
and reshapes that every analysis needs, and is the only Python code that knows the layout:

- ``check_version(path_or_dataset)``: is it a selfnorm result of a version this reader supports?
- ``load(path)``: the checked Dataset, read into memory (the file is closed again).
- ``to_grid(ds)``: a sweep's [point] axis reshaped into its parameter axes.
- ``point_labels(ds)``, ``at_layer(ds, name, layers)``, ``compare_theory(ds, name)``, ``config(ds)``:
  small helpers for labels, per-point layers, Monte Carlo against mean-field theory, the config.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
import xarray as xr

SCHEMA = "selfnorm.results"
# Versions of the layout this reader understands (results/README.md, "Versions").
SUPPORTED_VERSIONS = (2,)

PathLike = Union[str, os.PathLike]


class SchemaError(ValueError):
    """The file is not a selfnorm result, or one of a version this reader does not support."""


def _source_of(ds: xr.Dataset) -> str:
    return str(ds.encoding.get("source", "<dataset>"))


def _check_attrs(attrs: Mapping, source: str) -> int:
    if "schema" not in attrs:
        raise SchemaError(f"{source} is not a selfnorm result file (it has no 'schema' attribute; "
                          f"selfnorm writes schema '{SCHEMA}')")
    schema = attrs["schema"]
    if isinstance(schema, bytes):
        schema = schema.decode()
    if schema != SCHEMA:
        raise SchemaError(f"{source} has schema '{schema}', not '{SCHEMA}': it is not a selfnorm result file")
    if "schema_version" not in attrs:
        raise SchemaError(f"{source} has schema '{SCHEMA}' but no 'schema_version' attribute")
    raw = np.asarray(attrs["schema_version"]).item()
    try:
        version = int(raw)
    except (TypeError, ValueError):
        version = None
    if version is None or version != raw:
        raise SchemaError(f"{source} has schema_version {raw!r}, not a whole number: the file was not written "
                          f"by selfnorm as it is")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        hint = ("re-run the experiment with the current selfnorm (selfnorm run CONFIG --overwrite) to rewrite it"
                if version < min(SUPPORTED_VERSIONS) else "update this reader (scripts/selfnorm)")
        raise SchemaError(f"{source} has schema version {version}; this reader supports version(s) {supported}: "
                          f"{hint}")
    return version


def check_version(source: Union[PathLike, xr.Dataset]) -> int:
    """Checks that `source` (a path or an opened Dataset) is a selfnorm result of a supported
    version; returns the version. Raises SchemaError naming the file, the version found and the
    versions supported, or FileNotFoundError."""
    if isinstance(source, xr.Dataset):
        return _check_attrs(source.attrs, _source_of(source))
    import h5py

    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise SchemaError(f"{path} is a folder, not a result file; a sharded run's folder holds "
                          f"shard-K-of-N.h5 files: merge them (selfnorm merge -o FILE.h5 {path}/shard-*-of-N.h5) "
                          f"and load the merged file")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in ("schema", "schema_version") if k in f.attrs}
    except OSError as e:
        if "truncated file" in str(e):
            raise SchemaError(f"{path} is cut short ({os.path.getsize(path)} bytes, less than its HDF5 header "
                              f"declares): an incomplete copy or download; copy the file again") from None
        raise SchemaError(f"{path} is not a selfnorm result file (not an HDF5 file: {e})") from None
    return _check_attrs(attrs, path)


def shard_description(ds: xr.Dataset, separator: str = ",") -> Union[str, None]:
    """"shard 1 of 2, 3 of the experiment's 6 points" for a shard file's Dataset; None for a whole
    experiment."""
    if "shard_index" not in ds.attrs:
        return None
    return (f"shard {int(ds.attrs['shard_index'])} of {int(ds.attrs['shard_count'])}{separator} "
            f"{ds.sizes['point']} of the experiment's {int(ds.attrs.get('point_total', ds.sizes['point']))} points")


def load(path: PathLike) -> xr.Dataset:
    """The result file at `path` as an xarray Dataset, read into memory, after check_version.

    The varied config keys (activation, alpha, lambda, ...) are coordinates on `point`; the two
    non-finite counts come back as float64 with NaN beyond a point's depth (their -1 padding is
    their declared _FillValue)."""
    check_version(path)
    with xr.open_dataset(os.fspath(path), engine="h5netcdf") as ds:
        ds = ds.load()
    shard = shard_description(ds, ":")
    if shard:
        import warnings

        warnings.warn(f"{os.fspath(path)} is {shard}; merge the shards (selfnorm merge) for the whole experiment",
                      stacklevel=2)
    return ds


def config(ds: xr.Dataset) -> dict:
    """The experiment's resolved config (root attribute `config`, JSON) as a dict."""
    import json

    return json.loads(ds.attrs["config"])


def grid_shape(ds: xr.Dataset) -> tuple:
    """The sweep's shape (one entry per axis, first axis slowest); () for a single point."""
    return tuple(int(n) for n in np.atleast_1d(ds.attrs.get("grid_shape", [])))


def varied_coordinates(ds: xr.Dataset) -> list:
    """Names of the varied config keys' coordinates (activation, alpha, ...), in the file's order."""
    return [name for name, c in ds.coords.items() if "config_key" in c.attrs and c.dims == ("point",)]


def grid_axes(ds: xr.Dataset) -> list:
    """The name of each sweep axis: the coordinate of its first key (root attribute grid_axes)."""
    shape = grid_shape(ds)
    names = [str(n) for n in np.atleast_1d(ds.attrs.get("grid_axes", []))]
    if len(names) != len(shape):
        raise SchemaError(f"{_source_of(ds)}: grid_axes {names} does not match grid_shape {list(shape)}")
    return names


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def to_grid(ds: xr.Dataset) -> xr.Dataset:
    """Reshapes a sweep's `point` dimension into its parameter axes.

    Rules (results/README.md, "Sweeps: the grid"):
    - The axes are those of the config's sweep, in C order (first axis slowest): a list of
      activations first, then each `grid` key in the order written, then the `zip` keys as one
      axis. Each becomes a dimension named after its first key's dataset (`activation`, `alpha`,
      `lambda`, `depth`, `init_weight_variance`, ...), with that key's values as its index.
    - The other keys on an axis are coordinates along it: a zip's other keys, and for a list of
      activations the parameters that differ between them (`alpha`, `lambda`, ...; NaN where an
      activation has no such parameter). An index may repeat values (two `elu` with different
      alpha): `.sel(activation="elu")` then returns both, told apart by their `alpha` coordinate.
    - Every variable over `point` is reshaped, [point, layer] -> [axis_0, ..., axis_k, layer];
      `point` itself stays, as a coordinate over the grid, to go back to point indices.
    - A single point (no sweep) gives the dataset at that point, without a point dimension.
    - A file that holds only some of the points (a shard) cannot be reshaped: merge it first.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"to_grid takes the Dataset of selfnorm.load(path), got {type(ds).__name__} {ds!r}")
    shape = grid_shape(ds)
    source = _source_of(ds)
    if "point" not in ds.dims:
        raise ValueError(f"{source}: no 'point' dimension (already reshaped by to_grid?)")
    total = int(ds.attrs.get("point_total", ds.sizes["point"]))
    if ds.sizes["point"] != total or not np.array_equal(ds["point"].values, np.arange(total)):
        shard = shard_description(ds)
        if shard:
            raise ValueError(f"{source} is {shard}; merge the shards (selfnorm merge) before reshaping into the grid")
        raise ValueError(f"{source}: this Dataset holds {ds.sizes['point']} of the experiment's {total} points "
                         f"(a selection of them?); to_grid needs every point: reshape first, then select on the "
                         f"grid's axes")
    if not shape:
        return ds.isel(point=0)
    if math.prod(shape) != total:
        raise SchemaError(f"{source}: grid_shape {list(shape)} does not hold its {total} points")
    axes = grid_axes(ds)

    def reshape(var: xr.Variable) -> xr.Variable:
        i = var.dims.index("point")
        data = np.asarray(var.values)
        data = data.reshape(data.shape[:i] + shape + data.shape[i + 1:])
        return xr.Variable(var.dims[:i] + tuple(axes) + var.dims[i + 1:], data, var.attrs)

    # The coordinate of each axis and the other keys along it, checked against the file's values.
    axis_coords = {}
    for name in varied_coordinates(ds):
        attrs = ds[name].attrs
        if "grid_axis" not in attrs:
            raise SchemaError(f"{source}: the varied key '{name}' has no grid_axis attribute")
        a = int(attrs["grid_axis"])
        full = reshape(ds[name].variable).values
        index = [0] * len(shape)
        index[a] = slice(None)
        along = full[tuple(index)]
        expanded = np.broadcast_to(along.reshape([-1 if k == a else 1 for k in range(len(shape))]), shape)
        if not _same(full, expanded):
            raise SchemaError(f"{source}: '{name}' varies along more than its grid axis {a} ({axes[a]})")
        axis_coords[name] = xr.Variable((axes[a],), along, attrs)
    missing = [a for a in axes if a not in axis_coords]
    if missing:
        raise SchemaError(f"{source}: no coordinate for the grid axes {missing}")

    data_vars, coords = {}, dict(axis_coords)
    for name, var in ds.variables.items():
        if name in axis_coords:
            continue
        target = coords if name in ds.coords else data_vars
        target[name] = reshape(var) if "point" in var.dims else var
    grid = xr.Dataset(data_vars, coords, ds.attrs)
    grid.encoding["source"] = source
    return grid


def _require_points(ds: xr.Dataset, what: str) -> None:
    """`what` works point by point: it needs the [point, layer] Dataset of load()."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{what} takes the Dataset of selfnorm.load(path), got {type(ds).__name__}")
    if "point" not in ds.dims:
        raise ValueError(f"{_source_of(ds)}: {what} takes the [point, layer] Dataset of selfnorm.load, one row "
                         f"per point; this one has dimensions {tuple(ds.dims)} (reshaped by to_grid?): call it "
                         f"on the loaded Dataset")


def point_labels(ds: xr.Dataset, exclude: Iterable[str] = ()) -> list:
    """A short label for each point from its varied keys, e.g. "selu" or "alpha=1.6, lambda=1.05".

    The activation's name stands alone, unless the same name occurs at points with different
    parameters: then the parameters that differ are added ("elu alpha=0.5"). Coordinates named in
    `exclude` are left out."""
    _require_points(ds, "point_labels")
    names = [n for n in varied_coordinates(ds) if n not in set(exclude)]
    if not names:
        return [str(ds.attrs.get("experiment", "point"))] * ds.sizes["point"]
    activation_axis = ds["activation"].attrs.get("grid_axis") if "activation" in names else None
    values = {n: ds[n].values for n in names}

    def fmt(v) -> str:
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.4g}"
        return str(v)

    def differs(name: str, mask: np.ndarray) -> bool:
        v = values[name][mask]
        return len(v) > 1 and not _same(v, np.broadcast_to(v[:1], v.shape))

    labels = []
    for p in range(ds.sizes["point"]):
        activation, parts = [], []
        for n in names:
            v = values[n][p]
            if n == "activation":
                activation.insert(0, str(v))
                continue
            if isinstance(v, (float, np.floating)) and np.isnan(v):
                continue
            if activation_axis is not None and ds[n].attrs.get("grid_axis") == activation_axis:
                # A parameter of the listed activations: only where the name does not tell them apart.
                if differs(n, values["activation"] == values["activation"][p]):
                    activation.append(f"{n}={fmt(v)}")
                continue
            parts.append(f"{n}={fmt(v)}")
        labels.append(", ".join(([" ".join(activation)] if activation else []) + parts))
    return labels


def at_layer(ds: xr.Dataset, name: str, layers: Union[str, Sequence[int], np.ndarray] = "last") -> xr.DataArray:
    """Variable `name` [point, layer] at one layer per point: "first" (layer 1), "middle"
    (depth // 2, at least 1), "last" (each point's own depth), or a layer number (one for all
    points, or one per point). On to_grid's Dataset the same, per grid point: [axis_0, ..., axis_k]."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"at_layer takes the Dataset of selfnorm.load(path) (or of to_grid), got "
                        f"{type(ds).__name__}")
    if name not in ds or "layer" not in ds[name].dims:
        per_layer = sorted(n for n, v in ds.data_vars.items() if "layer" in v.dims)
        raise KeyError(f"{_source_of(ds)}: no per-layer variable {name!r}; per-layer variables: "
                       f"{', '.join(per_layer)}")
    depth_var = ds["point_depth"]
    depth = depth_var.values.astype(int)
    if isinstance(layers, str):
        if layers == "last":
            chosen = depth
        elif layers == "middle":
            chosen = np.maximum(depth // 2, 1)
        elif layers == "first":
            chosen = np.ones_like(depth)
        else:
            raise ValueError(f"layers must be 'first', 'middle', 'last' or layer numbers, got {layers!r}")
    else:
        given = np.asarray(layers, dtype=int)
        if given.ndim > 0 and given.shape != depth.shape:
            raise ValueError(f"layers: give one layer number, or one per point ({depth.size} of them, shape "
                             f"{depth.shape}), got {given.shape[0] if given.ndim == 1 else given.shape}")
        chosen = np.broadcast_to(given, depth.shape)
        outside = (chosen < 1) | (chosen > depth)
        if outside.any():
            i = np.unravel_index(int(np.argmax(outside)), depth.shape) if depth.ndim else ()
            if depth_var.dims == ("point",):
                where = f"point {int(ds['point'].values[i[0]])}"
            elif depth.ndim == 0:
                where = "the point"
            else:
                where = "the grid point " + ", ".join(f"{d}={ds[d].values[k]}" for d, k in zip(depth_var.dims, i))
            raise ValueError(f"layer {int(chosen[i])} is outside the layers 1-{int(depth[i])} of {where}")
    # Pointwise over the dimensions of point_depth ([point], or the grid's axes).
    return ds[name].sel(layer=xr.DataArray(chosen, dims=depth_var.dims))


def compare_theory(ds: xr.Dataset, name: str = "activation_var",
                   layers: Iterable[str] = ("middle", "last")):
    """Monte Carlo against mean-field theory for statistic `name` at the given layers: a pandas
    DataFrame with one row per (point, layer): the Monte Carlo mean and its standard error, the
    prediction theory_<name>, z = (MC - theory) / SE and the relative gap (MC - theory) / |theory|.

    z measures the Monte Carlo noise; the relative gap includes finite-width effects, which are
    real and do not shrink with more trials (mean-field theory is the infinite-width limit)."""
    import pandas as pd

    _require_points(ds, "compare_theory")
    theory_name = "theory_" + name
    if theory_name not in ds:
        raise KeyError(f"{_source_of(ds)} has no prediction {theory_name} for {name}")
    labels = point_labels(ds)
    frames = []
    for which in layers:
        mc = at_layer(ds, name, which)
        se = at_layer(ds, name + "_sem", which)
        th = at_layer(ds, theory_name, which)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (mc.values - th.values) / se.values
            gap = (mc.values - th.values) / np.abs(th.values)
        frames.append(pd.DataFrame({
            "label": labels,
            "layer": mc["layer"].values,
            "which": which,
            "monte_carlo": mc.values,
            "sem": se.values,
            "theory": th.values,
            "z": z,
            "relative_gap": gap,
        }, index=pd.Index(ds["point"].values, name="point")))
    return pd.concat(frames)
