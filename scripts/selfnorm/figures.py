"""Figures of a selfnorm result: per-layer profiles and, for two-parameter sweeps, heatmaps.

Every function takes a Dataset from ``selfnorm.load`` and returns a matplotlib Figure built
without pyplot (no global state, no backend needed), so a notebook shows it inline and a script
saves it. ``FIGURES`` lists what ``figures(ds)`` draws, under stable names:

- ``activation_mean``, ``activation_var``: per-layer mean and variance of the activations.
- ``grad_activation_msq``: mean square of dL/dx_l against the layer, on a log scale.
- ``activation_mean_heatmap``, ``activation_var_heatmap``: for a sweep over two numeric axes
  (SELU's alpha x lambda), the value at the last layer over the grid, with the contour where the
  mean-field variance at the last layer crosses 1.

Profiles show the Monte Carlo mean over trials as a solid line with a band of +-1 standard error,
and the mean-field prediction (``theory_<statistic>``) dashed. Layout: one small panel per point
(shared axes) when the points are a list of activations or at most one axis; when the last sweep
axis is numeric (alpha, lambda, width, ...), one panel per value of the other axes, with the last
axis as the line colour and a colour bar. At most ``MAX_PANELS`` panels; beyond that an evenly
spaced selection is shown and the title says so.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
import xarray as xr
from matplotlib import colors, ticker
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .results import at_layer, config, grid_axes, grid_shape, point_labels, to_grid, varied_coordinates

MAX_PANELS = 24
PROFILES = ("activation_mean", "activation_var", "grad_activation_msq")
HEATMAPS = ("activation_mean", "activation_var")
FIGURES = PROFILES + tuple(f"{name}_heatmap" for name in HEATMAPS)

# SELU's constants (Klambauer et al. 2017): marked on alpha x lambda heatmaps.
SELU_ALPHA01 = 1.6732632423543772848170429916717
SELU_LAMBDA01 = 1.0507009873554804934193349852946

# A horizontal reference per statistic: the fixed point (0, 1) that SELU keeps.
REFERENCE = {"activation_mean": (0.0, "mean 0"), "activation_var": (1.0, "variance 1")}

MC_COLOUR = "#1f5fa8"
THEORY_COLOUR = "#e66100"
THEORY_DASHES = (0, (3, 2))


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.where(np.isfinite(v), v, np.nan)


def _is_numeric(values) -> bool:
    return np.asarray(values).dtype.kind in "iuf"


def _wants_log(values) -> bool:
    """Log scale for positive values that span more than three decades."""
    v = _finite(values)
    v = v[np.isfinite(v)]
    return v.size > 0 and bool(np.all(v > 0)) and v.max() / v.min() > 1e3


def _spread_on_log(values) -> bool:
    v = np.asarray(values, dtype=float)
    return bool(np.all(v > 0)) and v.max() / v.min() >= 8


class _FiniteLogLocator(ticker.LogLocator):
    """matplotlib's LogLocator without the ticks that overflow to inf: it reaches a few decades beyond
    the limits, past double's largest value (1.8e308) for a run that blew up."""

    def tick_values(self, vmin, vmax):
        with np.errstate(over="ignore"):
            ticks = super().tick_values(vmin, vmax)
        return ticks[np.isfinite(ticks)]


def _set_limits(ax, arrays: list, log: bool) -> None:
    """y limits from the panel's own lines and bands, never narrower than a decade (log) or 0.2 (linear),
    so that Monte Carlo noise around a constant does not look like a trend. (matplotlib's own
    log autoscaling also misbehaves when gradients underflowed to 0.)"""
    v = np.concatenate([np.ravel(a) for a in arrays])
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    if not v.size:
        return
    lo, hi = v.min(), v.max()
    if log:
        lo, hi = np.log10(lo), np.log10(hi)
        centre, half = (lo + hi) / 2, max((hi - lo) / 2, 0.5)
        pad = 0.08 * 2 * half
        # A blown-up run's values reach the ends of double's range (1e-308, 1e308): the limits stop there,
        # and so do the ticks. (Its margins around such values overflow in matplotlib's pending autoscale,
        # which these limits replace.)
        with np.errstate(over="ignore", under="ignore"):
            bottom, top = np.power(10.0, [centre - half - pad, centre + half + pad])
            ax.set_ylim(bottom if bottom > 0 else v.min(), top if np.isfinite(top) else np.finfo(float).max)
        ax.yaxis.set_major_locator(_FiniteLogLocator())
        if half < 1.0:  # under two decades: label 0.5, 1, 2, ... plainly, not just the powers of 10
            plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_minor_locator(_FiniteLogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(plain)
            ax.yaxis.set_major_formatter(plain)
    else:
        centre, half = (lo + hi) / 2, max((hi - lo) / 2, 0.1)
        pad = 0.08 * 2 * half
        ax.set_ylim(centre - half - pad, centre + half + pad)


def _complete(ds: xr.Dataset) -> bool:
    total = int(ds.attrs.get("point_total", ds.sizes["point"]))
    return ds.sizes["point"] == total and np.array_equal(ds["point"].values, np.arange(total))


def _trials_text(ds: xr.Dataset) -> str:
    trials = np.unique(ds["point_trials"].values)
    if trials.size > 1:
        return f"{trials.min()}-{trials.max()} trials"
    return "1 trial (no standard error)" if trials[0] == 1 else f"{trials[0]} trials"


def _layout(ds: xr.Dataset):
    """Panels of point indices and the colour axis: (panels, titles, colour_name or None)."""
    points = np.arange(ds.sizes["point"])
    shape = grid_shape(ds) if _complete(ds) else ()
    if shape and shape[-1] > 1:
        axes = grid_axes(ds)
        colour = axes[-1]
        if _is_numeric(ds[colour].values):
            on_colour_axis = [n for n in varied_coordinates(ds)
                              if int(ds[n].attrs.get("grid_axis", -1)) == len(shape) - 1]
            labels = point_labels(ds, exclude=on_colour_axis)
            panels = [list(row) for row in points.reshape(-1, shape[-1])]
            return panels, [labels[row[0]] for row in panels], colour
    labels = point_labels(ds)
    return [[p] for p in points], labels, None


def _select(panels: list, titles: list):
    if len(panels) <= MAX_PANELS:
        return panels, titles, ""
    keep = np.unique(np.linspace(0, len(panels) - 1, MAX_PANELS).round().astype(int))
    return [panels[k] for k in keep], [titles[k] for k in keep], f" ({len(keep)} of {len(panels)} panels shown)"


def profile_figure(ds: xr.Dataset, name: str, log: Optional[bool] = None) -> Figure:
    """Statistic `name` [point, layer] against the layer: Monte Carlo +-SE and theory (dashed)."""
    if name not in ds:
        raise KeyError(f"no statistic {name} in the results (have: {', '.join(sorted(map(str, ds.data_vars)))})")
    panels, titles, colour_name = _layout(ds)
    panels, titles, note = _select(panels, titles)
    mc = _finite(ds[name].values)
    sem = _finite(ds[name + "_sem"].values) if name + "_sem" in ds else np.full_like(mc, np.nan)
    theory_name = "theory_" + name
    theory = _finite(ds[theory_name].values) if theory_name in ds else None
    layer = ds["layer"].values
    if log is None:
        log = name.startswith("grad_") or _wants_log(mc)

    n = len(panels)
    ncols = 1 if n == 1 else 2 if n <= 4 else 3 if n <= 9 else 4
    nrows = math.ceil(n / ncols)
    width = 3.1 * ncols + (1.0 if colour_name else 0.0)
    width = max(width, 5.5)
    height = 2.35 * nrows + 0.5
    legend_columns = 4 if width >= 10 else 2
    legend_height = 0.2 + 0.25 * math.ceil(4 / legend_columns)
    fig = Figure(figsize=(width, height + legend_height), layout="constrained")
    # The legend gets a strip of its own below the panels (matplotlib 3.6 has no "outside" legends).
    panels_fig, legend_fig = fig.subfigures(2, 1, height_ratios=[height, legend_height])
    axs = np.atleast_1d(panels_fig.subplots(nrows, ncols, sharex=True, sharey=False, squeeze=False)).ravel()

    cmap, norm = None, None
    if colour_name:
        values = ds[colour_name].values
        cmap = matplotlib.colormaps["viridis"]
        norm = (colors.LogNorm if _spread_on_log(values) else colors.Normalize)(vmin=np.nanmin(values),
                                                                                  vmax=np.nanmax(values))
    for ax, points, title in zip(axs, panels, titles):
        if log:
            ax.set_yscale("log", nonpositive="clip")
        for p in points:
            c = cmap(norm(ds[colour_name].values[p])) if colour_name else MC_COLOUR
            lower = mc[p] - sem[p]
            if log:
                lower = np.where(lower > 0, lower, np.nan)  # a band reaching 0 is cut, not drawn to -inf
            ax.fill_between(layer, lower, mc[p] + sem[p], color=c, alpha=0.3, linewidth=0)
            ax.plot(layer, mc[p], color=c, linewidth=2.0 if not colour_name else 1.5)
            if theory is not None and np.isfinite(theory[p]).any():
                ax.plot(layer, theory[p], color=THEORY_COLOUR if not colour_name else c, linestyle=THEORY_DASHES,
                        linewidth=1.2, alpha=1.0 if not colour_name else 0.9)
        shown = [mc[points], mc[points] + sem[points], mc[points] - sem[points]]
        _set_limits(ax, shown + ([theory[points]] if theory is not None else []), log)
        if name in REFERENCE:
            ax.axhline(REFERENCE[name][0], color="0.55", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(True, which="major", color="0.92", linewidth=0.6)
        ax.tick_params(which="both", labelsize=8)
    for ax in axs[n:]:
        ax.set_visible(False)
    for i, ax in enumerate(axs[:n]):
        if i + ncols >= n:  # the lowest panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("layer l", fontsize=9)
    for ax in axs[:n:ncols]:
        ax.set_ylabel(name, fontsize=9)

    long_name = ds[name].attrs.get("long_name", name)
    fig.suptitle(f"{ds.attrs.get('experiment', '')}: {long_name}{note}", fontsize=11)
    handles = [Line2D([], [], color=MC_COLOUR if not colour_name else "0.3", linewidth=2.0,
                      label=f"Monte Carlo, mean over {_trials_text(ds)}"),
               Patch(color=MC_COLOUR if not colour_name else "0.3", alpha=0.3, label="± 1 standard error")]
    if theory is not None:
        handles.append(Line2D([], [], color=THEORY_COLOUR if not colour_name else "0.3", linestyle=THEORY_DASHES,
                              linewidth=1.2, label="mean-field theory (infinite width)"))
    if name in REFERENCE:
        handles.append(Line2D([], [], color="0.55", linestyle=":", label=REFERENCE[name][1]))
    legend_fig.legend(handles=handles, loc="center", ncols=min(legend_columns, len(handles)), fontsize=8,
                      frameon=False)
    if colour_name:
        bar = panels_fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axs[:n]), shrink=0.8, pad=0.01)
        bar.set_label(f"{colour_name} ({ds[colour_name].attrs.get('config_key', colour_name)})", fontsize=9)
        swept = np.unique(ds[colour_name].values)
        if swept.size <= 12:  # tick the swept values themselves
            bar.ax.yaxis.set_minor_locator(ticker.NullLocator())
            bar.set_ticks(swept)
            bar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.4g}"))
        bar.ax.tick_params(labelsize=8)
    return fig


def _edges(centres: np.ndarray, log: bool) -> np.ndarray:
    c = np.log(centres) if log else np.asarray(centres, dtype=float)
    if c.size == 1:
        e = np.array([c[0] - 0.5, c[0] + 0.5])
    else:
        mid = (c[1:] + c[:-1]) / 2
        e = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    return np.exp(e) if log else e


def heatmap_axes(ds: xr.Dataset) -> Optional[tuple]:
    """The two numeric sweep axes a heatmap is drawn over, or None if the sweep is not such a grid
    (axes of size 1 are ignored)."""
    if not _complete(ds):
        return None
    shape, axes = grid_shape(ds), grid_axes(ds) if grid_shape(ds) else []
    big = [a for a, n in zip(axes, shape) if n > 1]
    if len(big) != 2 or len(shape) != len(big) or not all(_is_numeric(ds[a].values) for a in big):
        return None
    return tuple(big)


def heatmap_figure(ds: xr.Dataset, name: str) -> Optional[Figure]:
    """Statistic `name` at each point's last layer over a two-axis numeric sweep, with the contour
    where theory_activation_var at the last layer crosses 1 (and the Monte Carlo's own, dotted).
    None when the sweep is not a two-axis numeric grid."""
    pair = heatmap_axes(ds)
    if pair is None:
        return None
    xname, yname = pair
    grid = to_grid(ds)
    shape = grid_shape(ds)
    x, y = grid[xname].values.astype(float), grid[yname].values.astype(float)
    value = _finite(at_layer(ds, name, "last").values).reshape(shape)
    var_mc = _finite(at_layer(ds, "activation_var", "last").values).reshape(shape)
    var_th = (_finite(at_layer(ds, "theory_activation_var", "last").values).reshape(shape)
              if "theory_activation_var" in ds else None)
    xlog, ylog = _spread_on_log(x), _spread_on_log(y)

    fig = Figure(figsize=(6.4, 4.9), layout="constrained")
    ax = fig.subplots()
    centre = REFERENCE.get(name, (None, ""))[0]
    finite = value[np.isfinite(value)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    # Variances spanning more than a decade are coloured by their logarithm, diverging at 1, with
    # the colour bar labelled in the variance itself.
    log_colour = centre == 1.0 and vmin > 0 and vmax / vmin > 10
    shown, ref = (np.log10(np.where(value > 0, value, np.nan)), 0.0) if log_colour else (value, centre)
    lo, hi = (np.log10(vmin), np.log10(vmax)) if log_colour else (vmin, vmax)
    if ref is not None and lo < ref < hi:
        norm = colors.TwoSlopeNorm(vcenter=ref, vmin=lo, vmax=hi)
        cmap = matplotlib.colormaps["RdBu_r"].copy()
    else:
        norm = colors.Normalize(vmin=lo, vmax=hi)
        cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_bad("0.75")
    mesh = ax.pcolormesh(_edges(x, xlog), _edges(y, ylog), np.ma.masked_invalid(shown).T, cmap=cmap, norm=norm,
                         shading="flat")
    depth = np.unique(ds["point_depth"].values)
    where = f"layer {depth[0]}" if depth.size == 1 else "each point's last layer"
    bar = fig.colorbar(mesh, ax=ax, pad=0.02)
    bar.set_label(f"{name} at {where} (Monte Carlo{', log scale' if log_colour else ''})", fontsize=9)
    if log_colour:
        nice = np.array([m * 10.0 ** k for k in range(-12, 13) for m in (1, 2, 5)])
        nice = nice[(nice >= vmin) & (nice <= vmax)]
        if nice.size > 9:
            nice = nice[np.isclose(np.log10(nice) % 1, 0) | np.isclose(nice, 2) | np.isclose(nice, 5)]
        bar.set_ticks(np.log10(nice))
        bar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{10 ** v:.3g}"))

    handles = []
    X, Y = np.meshgrid(x, y, indexing="ij")
    for field, style, label in ((var_th, dict(colors="black", linewidths=2.2), "mean-field theory: variance 1"),
                                (var_mc, dict(colors="#f4d03f", linewidths=1.6, linestyles="--"),
                                 "Monte Carlo: variance 1")):
        if field is None or min(shape) < 2:
            continue
        f = field[np.isfinite(field)]
        if f.size and f.min() < 1.0 < f.max():
            ax.contour(X, Y, np.ma.masked_invalid(field), levels=[1.0], **style)
            handles.append(Line2D([], [], color=style["colors"], linewidth=style["linewidths"],
                                  linestyle=style.get("linestyles", "-"), label=label))
    activation = config(ds).get("activation", {})
    if (xname, yname) == ("alpha", "lambda") and isinstance(activation, dict) and activation.get("name") == "selu":
        if x.min() <= SELU_ALPHA01 <= x.max() and y.min() <= SELU_LAMBDA01 <= y.max():
            ax.plot([SELU_ALPHA01], [SELU_LAMBDA01], marker="*", markersize=13, color="gold",
                    markeredgecolor="black", linestyle="none")
            handles.append(Line2D([], [], marker="*", markersize=11, color="gold", markeredgecolor="black",
                                  linestyle="none", label="(alpha01, lambda01) of the SNN paper"))
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(f"{xname} ({ds[xname].attrs.get('config_key', xname)})")
    ax.set_ylabel(f"{yname} ({ds[yname].attrs.get('config_key', yname)})")
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2, fontsize=8,
                  frameon=False)
    long_name = ds[name].attrs.get("long_name", name)
    fig.suptitle(f"{ds.attrs.get('experiment', '')}: {long_name} at {where}", fontsize=11)
    return fig


def figures(ds: xr.Dataset) -> dict:
    """Every figure that applies to `ds`, by its name in FIGURES."""
    out = {}
    for name in PROFILES:
        if name in ds:
            out[name] = profile_figure(ds, name)
    for name in HEATMAPS:
        if name in ds:
            fig = heatmap_figure(ds, name)
            if fig is not None:
                out[f"{name}_heatmap"] = fig
    return out


def write_figures(ds: xr.Dataset, folder, stem: str, dpi: int = 110) -> list:
    """Saves figures(ds) as <folder>/<stem>_<figure>.png; returns the paths written. Each is written
    under a temporary name in the same folder and renamed, so a figure cut short (a full disk, an
    interrupt) never stands under its final name; OSError says what could not be written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(ds).items():
        path = folder / f"{stem}_{name}.png"
        part = folder / f".{path.name}.{os.getpid()}.part"
        try:
            fig.savefig(part, dpi=dpi, format="png")
            os.replace(part, path)
        except BaseException:
            with contextlib.suppress(OSError):  # a read-only folder refuses even removing what is not there
                part.unlink()
            raise
        paths.append(path)
    return paths
