"""selfnorm's Python side: read result files (``results``) and draw their figures (``figures``).

    import sys; sys.path.insert(0, "scripts")    # from the repository's root
    from selfnorm import load, to_grid
    ds = load("results/default.h5")              # an xarray.Dataset, checked
    grid = to_grid(load("results/selu_alpha_lambda_sweep.h5"))   # activation_var[alpha, lambda, layer]

Uses Debian's python3-numpy, python3-h5py, python3-xarray, python3-h5netcdf (and
python3-matplotlib for the figures); run it with /usr/bin/python3.
"""
from .results import (SCHEMA, SUPPORTED_VERSIONS, SchemaError, at_layer, check_version, compare_theory, config,
                      grid_axes, grid_shape, load, point_labels, shard_description, to_grid, varied_coordinates)

__all__ = ["SCHEMA", "SUPPORTED_VERSIONS", "SchemaError", "at_layer", "check_version", "compare_theory", "config",
           "grid_axes", "grid_shape", "load", "point_labels", "shard_description", "to_grid", "varied_coordinates"]
