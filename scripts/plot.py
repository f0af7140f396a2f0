#!/usr/bin/python3
"""Draws the figures of a selfnorm result file as PNG files and prints their paths.

    scripts/plot.py RESULTS.h5 [-o DIR] [--dpi N]

Writes DIR/<stem>_<figure>.png, where <stem> is the results file's name without .h5 and DIR
defaults to the results file's folder (results/default.h5 -> results/default_activation_var.png):

    <stem>_activation_mean.png           per-layer mean of the activations, Monte Carlo +-SE, theory dashed
    <stem>_activation_var.png            per-layer variance of the activations, likewise
    <stem>_grad_activation_msq.png       mean square of dL/dx_l against the layer, log scale
    <stem>_activation_mean_heatmap.png   two-axis numeric sweeps only (alpha x lambda): the last
    <stem>_activation_var_heatmap.png    layer over the grid, with the theory's variance = 1 contour

Run it with Debian's /usr/bin/python3 (python3-xarray, python3-h5netcdf, python3-matplotlib).
"""
import argparse
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from selfnorm import SchemaError, load, shard_description  # noqa: E402
from selfnorm.figures import write_figures  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("results", type=Path, help="a selfnorm result file (.h5)")
    parser.add_argument("-o", "--output", type=Path, help="folder for the PNG files (default: the results file's)")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNG files (default 110)")
    args = parser.parse_args(argv)
    if args.dpi < 1:
        parser.error(f"--dpi {args.dpi}: give a positive number of dots per inch, e.g. 110")
    folder = args.output if args.output is not None else args.results.resolve().parent
    if folder.exists() and not folder.is_dir():
        parser.error(f"-o {folder} is a file; give a folder for the PNG files (it is created if missing)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a shard: said below
            ds = load(args.results)
    except (SchemaError, FileNotFoundError) as e:
        print(f"plot.py: {e}", file=sys.stderr)
        return 2
    shard = shard_description(ds)
    if shard:
        print(f"plot.py: note: {args.results} is {shard}: the figures show those points only, and no heatmap; "
              f"merge the shards (selfnorm merge) for the whole sweep", file=sys.stderr)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"plot.py: cannot create the output folder {folder} ({e.strerror}); choose another with -o",
              file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # Layers where every trial blew up are NaN; they are left out of the plots on purpose.
            warnings.filterwarnings("ignore", message="All-NaN slice encountered")
            paths = write_figures(ds, folder, args.results.stem, dpi=args.dpi)
    except OSError as e:
        print(f"plot.py: cannot write figures in {folder} ({e.strerror or e}); choose a folder with -o",
              file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
