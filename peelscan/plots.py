"""Pictures of a lot, as PNG bytes: score distributions, ROC curves, anomaly heat maps, training
loss, reconstructions, preprocessing.

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg renderer (no
pyplot, no global state: safe in Dagster worker processes and threads) and returns the PNG
``bytes``. One style for all: white background, light grid, 10 pt text, the same two colours
for good (blue) and anomalous (orange) everywhere, titles that say what is plotted and in which
unit. Images are shown with row 0 at the top (docs/architecture.md).
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg renderer, without pyplot
from matplotlib.figure import Figure

from peelscan.metrics import MEASURE_NAMES

__all__ = [
    "ANOMALY_SCORE_UNITS",
    "heatmap_png",
    "loss_curves_png",
    "recon_grid_png",
    "roc_curves_png",
    "scan_before_after_png",
    "score_distributions_png",
]

GOOD = "#1f77b4"
ANOMALOUS = "#ff7f0e"
UNLABELLED = "#7f7f7f"
_LABEL_COLOURS = {"good": GOOD, "anomalous": ANOMALOUS, "unlabelled": UNLABELLED}

#: What the anomaly score of each measure is, with its unit (peelscan.metrics.anomaly_score):
#: distances as they are, bounded similarities as 1 - value, unbounded ones negated.
ANOMALY_SCORE_UNITS: dict[str, str] = {
    "se": "SE, Σ(Δ attenuation)²",
    "imed": "IMED, norm. attenuation",
    "ssim": "1 − SSIM",
    "zncc": "1 − ZNCC",
    "gmsd": "GMSD",
    "rmse": "RMSE, norm. attenuation",
    "psnr": "−PSNR, dB",
    "fsim": "1 − FSIM",
    "issm": "−ISSM",
    "sre": "−SRE, dB",
    "sam": "SAM, rad",
    "uiq": "1 − UIQ",
    "sh": "1 − SH",
}

_RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
}


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _styled(fn):
    """Run a drawing function under the module's rc style."""
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


def _image(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"plots: {what} must be a 2-D image (H, W), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"plots: {what} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _order(metrics: Sequence[str]) -> list[str]:
    """The measures in the registry's order, unknown names after them."""
    known = [m for m in MEASURE_NAMES if m in set(metrics)]
    return known + sorted(set(metrics) - set(known))


@_styled
def score_distributions_png(df: pd.DataFrame, bins: int = 24) -> bytes:
    """Histograms of scan anomaly scores, good vs anomalous, one small panel per measure.

    Args:
        df: one row per scan and measure with columns ``metric``, ``anomaly_score`` (float,
            higher = more anomalous) and ``label`` (``good`` / ``anomalous``; None is drawn
            as ``unlabelled``). Other columns are ignored.
        bins: histogram bins per panel (shared by the classes of a panel).

    Returns:
        PNG bytes: a grid of up to 4 panels per row (13 measures: 4 x 4 with 3 empty),
        densities so that classes of different sizes compare.
    """
    need = {"metric", "anomaly_score", "label"}
    if not need <= set(df.columns):
        raise ValueError(f"score_distributions_png: needs columns {sorted(need)}, got {list(df.columns)}")
    d = df[["metric", "anomaly_score", "label"]].copy()
    d["label"] = d["label"].astype(object).where(d["label"].notna(), "unlabelled")
    d = d[np.isfinite(d["anomaly_score"].to_numpy(dtype=np.float64))]
    if d.empty:
        raise ValueError("score_distributions_png: no finite anomaly score to plot")
    metrics = _order(d["metric"].unique().tolist())
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = _figure(max(3.0 * ncols, 7.5), 2.3 * nrows + 0.7)  # wide enough for the title and legend
    axes = fig.subplots(nrows, ncols, squeeze=False)
    counts = d[d["metric"] == metrics[0]]["label"].value_counts()
    for ax, m in zip(axes.flat, metrics):
        g = d[d["metric"] == m]
        v = g["anomaly_score"].to_numpy(dtype=np.float64)
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            lo, hi = lo - 0.5 * (abs(lo) or 1.0) * 1e-3, hi + 0.5 * (abs(hi) or 1.0) * 1e-3
        edges = np.linspace(lo, hi, bins + 1)
        for lab in ("good", "anomalous", "unlabelled"):
            vals = g.loc[g["label"] == lab, "anomaly_score"].to_numpy(dtype=np.float64)
            if vals.size:
                ax.hist(vals, bins=edges, density=True, histtype="stepfilled", alpha=0.45,
                        color=_LABEL_COLOURS[lab], edgecolor=_LABEL_COLOURS[lab], linewidth=1.0,
                        label=f"{lab} ({vals.size})")
        ax.set_title(m.upper())
        ax.set_xlabel(ANOMALY_SCORE_UNITS.get(m, m))
        ax.set_yticks([])
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel("density")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    n_txt = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in ("good", "anomalous", "unlabelled")
                      if counts.get(k, 0))
    fig.suptitle(f"Scan anomaly scores per measure\n(higher = more anomalous; {n_txt} scans)")
    return _png(fig)


@_styled
def roc_curves_png(curves: Mapping[str, tuple[Any, Any]], aurocs: Mapping[str, float | None] | None = None,
                   highlight: str = "fsim") -> bytes:
    """The ROC curves of all measures on one plot.

    Args:
        curves: ``{metric: (fpr, tpr)}`` from :func:`peelscan.roc.roc_curve` (fractions in [0, 1]).
        aurocs: ``{metric: AUROC}`` for the legend (None/NaN shown as "n/a"); the legend is
            sorted best first.
        highlight: the measure drawn thicker (the research's best, FSIM).

    Returns:
        PNG bytes (square plot, chance diagonal dashed).
    """
    if not curves:
        raise ValueError("roc_curves_png: no curve to plot")
    aurocs = dict(aurocs or {})

    def auc_of(m: str) -> float:
        a = aurocs.get(m)
        return float(a) if a is not None and np.isfinite(a) else -1.0

    ordered = sorted(_order(list(curves)), key=lambda m: -auc_of(m))
    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance (0.500)")
    cmap = colormaps["tab20"]
    styles = ["-", "--", "-.", ":"]
    for i, m in enumerate(ordered):
        fpr, tpr = (np.asarray(c, dtype=np.float64) for c in curves[m])
        if fpr.shape != tpr.shape or fpr.ndim != 1:
            raise ValueError(f"roc_curves_png: {m}: fpr and tpr must be 1-D of the same length")
        a = auc_of(m)
        k = MEASURE_NAMES.index(m) if m in MEASURE_NAMES else i
        ax.plot(fpr, tpr, drawstyle="default", color=cmap(k % 20), ls=styles[(k // 10) % 4] if m != highlight else "-",
                lw=2.6 if m == highlight else 1.3, zorder=3 if m == highlight else 2,
                label=f"{m.upper()} ({a:.3f})" if a >= 0 else f"{m.upper()} (n/a)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (good scans called anomalous, fraction)")
    ax.set_ylabel("true-positive rate (anomalous scans found, fraction)")
    ax.set_title("ROC curves of the measures (legend: AUROC)")
    ax.legend(loc="lower right", ncols=2, frameon=True, framealpha=0.9)
    return _png(fig)


def _splat(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, size: int, scores: np.ndarray) -> np.ndarray:
    """Per-pixel maximum of the scores of the tiles covering it; NaN where no tile lies."""
    h, w = shape
    heat = np.full((h, w), -np.inf)
    for r, c, s in zip(rows, cols, scores):
        r0, c0 = max(int(r), 0), max(int(c), 0)
        r1, c1 = min(int(r) + size, h), min(int(c) + size, w)
        if r1 > r0 and c1 > c0:
            np.maximum(heat[r0:r1, c0:c1], s, out=heat[r0:r1, c0:c1])
    heat[np.isneginf(heat)] = np.nan
    return heat


@_styled
def heatmap_png(scans: Sequence[tuple[Any, Any, Any, int, Any, str]], cmap: str = "inferno",
                alpha: float = 0.6, ncols: int = 3) -> bytes:
    """Anomaly heat maps over scans: each tile's anomaly score painted over the scan.

    Args:
        scans: one tuple per panel: ``(attenuation (H, W) float normalised attenuation,
            tile_rows (n,), tile_cols (n,), tile_size (pixels), tile_anomaly_scores (n,),
            title)``; ``tile_rows/cols`` are the top-left corners of the tiles in pixels. A
            pixel covered by several tiles shows the highest score; pixels under no tile
            (background, the peeled rim) show the scan only.
        cmap: colour map of the scores (one shared scale for all panels, so they compare).
        alpha: opacity of the heat layer at mid-scale (it grows with the score, from 0.15 for
            the lowest to ``alpha + 0.3`` for the highest).
        ncols: panels per row.

    Returns:
        PNG bytes with one colour bar.
    """
    if not scans:
        raise ValueError("heatmap_png: no scan to plot")
    panels = []
    for i, p in enumerate(scans):
        if len(p) != 6:
            raise ValueError(f"heatmap_png: panel {i} must be (attenuation, tile_rows, tile_cols, tile_size, "
                             "scores, title)")
        att, rows, cols, size, scores, title = p
        att = _image(att, f"heatmap panel {i} attenuation")
        rows, cols, scores = (np.asarray(v).ravel() for v in (rows, cols, scores))
        if not (rows.size == cols.size == scores.size):
            raise ValueError(f"heatmap_png: panel {i}: {rows.size} rows, {cols.size} cols, {scores.size} scores")
        if int(size) < 1:
            raise ValueError(f"heatmap_png: panel {i}: tile_size must be >= 1, got {size}")
        panels.append((att, _splat(att.shape, rows, cols, int(size), scores.astype(np.float64)), str(title)))
    finite = np.concatenate([h[np.isfinite(h)] for _, h, _ in panels] + [np.zeros(0)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1e-9
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    aspect = max(p[0].shape[0] / p[0].shape[1] for p in panels)
    fig = _figure(3.4 * ncols + 0.8, 3.4 * aspect * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    norm = Normalize(vmin=vmin, vmax=vmax)
    for ax, (att, heat, title) in zip(axes.flat, panels):
        ax.imshow(att, cmap="gray_r", vmin=0.0, vmax=max(1.0, float(att.max())), interpolation="nearest")
        # opacity grows with the score: quiet tiles leave the scan visible, hot ones stand out
        level = np.clip(np.nan_to_num((heat - vmin) / (vmax - vmin), nan=0.0), 0.0, 1.0)
        opacity = np.where(np.isfinite(heat), 0.15 + (alpha + 0.15) * level, 0.0)
        ax.imshow(np.nan_to_num(heat, nan=vmin), cmap=cmap, norm=norm, alpha=np.clip(opacity, 0, 1),
                  interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.8)
    cb.set_label("tile anomaly score (higher = more anomalous)")
    fig.suptitle("Anomaly heat map: tile scores over the scan (dark = more attenuation)")
    return _png(fig)


@_styled
def loss_curves_png(history: Mapping[str, Sequence[float]]) -> bytes:
    """Training curves of an autoencoder.

    Args:
        history: ``{name: per-epoch values}``, e.g. ``train_loss`` and ``val_loss`` (the loss
            of :class:`peelscan.model.TrainConfig`, on normalised attenuation). Every entry
            whose name contains ``loss`` is drawn; others (learning rate, ...) are ignored.

    Returns:
        PNG bytes, log scale when the values span more than a factor 20; the best validation
        epoch is marked.
    """
    series = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in history.items()
              if "loss" in str(k) and v is not None and len(v)}
    if not series:
        raise ValueError(f"loss_curves_png: history has no non-empty loss series (keys: {sorted(history)})")
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot()
    colours = {"train_loss": GOOD, "val_loss": ANOMALOUS}
    allv = np.concatenate(list(series.values()))
    allv = allv[np.isfinite(allv)]
    for k, v in sorted(series.items()):
        ax.plot(np.arange(1, v.size + 1), v, marker="o" if v.size <= 30 else None, ms=3, lw=1.6,
                color=colours.get(k), label=k.replace("_", " "))
    if "val_loss" in series and np.isfinite(series["val_loss"]).any():
        best = int(np.nanargmin(series["val_loss"]))
        ax.axvline(best + 1, color="0.5", ls=":", lw=1)
        right = best + 1 > 0.6 * series["val_loss"].size
        ax.annotate(f"best val epoch {best + 1}", (best + 1, series["val_loss"][best]),
                    textcoords="offset points", xytext=(-6 if right else 6, 8), fontsize=8, color="0.3",
                    ha="right" if right else "left")
    if allv.size and allv.min() > 0 and allv.max() / allv.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (per pixel, norm. attenuation units)")
    ax.set_title("Autoencoder training: loss per epoch")
    ax.legend()
    return _png(fig)


@_styled
def recon_grid_png(inputs: Any, recons: Any, titles: Sequence[str] | None = None) -> bytes:
    """Example tiles: input, reconstruction and |input − reconstruction|, one column per tile.

    Args:
        inputs: (N, T, T) normalised attenuation tiles (N <= 16 is sensible).
        recons: (N, T, T) their reconstructions.
        titles: N column titles (e.g. "good", "stone").

    Returns:
        PNG bytes: rows input / reconstruction on the fixed scale [0, 1], |difference| on a
        shared scale with its own colour bar.
    """
    x = np.asarray(inputs, dtype=np.float64)
    r = np.asarray(recons, dtype=np.float64)
    if x.ndim != 3 or x.shape != r.shape or x.shape[0] == 0:
        raise ValueError(f"recon_grid_png: inputs and recons must be (N, T, T) of the same shape, N > 0; "
                         f"got {x.shape} and {r.shape}")
    n = x.shape[0]
    titles = list(titles) if titles is not None else [f"tile {i}" for i in range(n)]
    if len(titles) != n:
        raise ValueError(f"recon_grid_png: {n} tiles but {len(titles)} titles")
    diff = np.abs(x - r)
    dmax = max(float(diff.max()), 1e-6)
    fig = _figure(1.45 * n + 1.6, 4.8)
    axes = fig.subplots(3, n, squeeze=False)
    row_names = ["input", "reconstruction", "|difference|"]
    im_img = im_diff = None
    for j in range(n):
        for i, (img, kw) in enumerate(((x[j], {"cmap": "gray_r", "vmin": 0, "vmax": 1}),
                                       (r[j], {"cmap": "gray_r", "vmin": 0, "vmax": 1}),
                                       (diff[j], {"cmap": "magma", "vmin": 0, "vmax": dmax}))):
            ax = axes[i, j]
            im = ax.imshow(img, interpolation="nearest", **kw)
            if i < 2:
                im_img = im
            else:
                im_diff = im
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for sp in ax.spines.values():
                sp.set_visible(False)
            if j == 0:
                ax.set_ylabel(row_names[i])
        axes[0, j].set_title(str(titles[j]), fontsize=8)
    fig.colorbar(im_img, ax=axes[:2, :].ravel().tolist(), shrink=0.8, label="norm. attenuation")
    fig.colorbar(im_diff, ax=axes[2, :].ravel().tolist(), shrink=0.8, label="|Δ| norm. att.")
    fig.suptitle("Reconstructions: input, reconstruction, absolute difference")
    return _png(fig)


@_styled
def scan_before_after_png(raw: Any, attenuation: Any, item_masks: Sequence[Any] = ()) -> bytes:
    """One scan through preprocessing: raw counts, normalised attenuation, and the items found.

    Args:
        raw: (H, W) raw detector counts (any real dtype).
        attenuation: (H, W) normalised attenuation (float, 0 = open beam).
        item_masks: full-size (H, W) boolean masks, one per item, drawn as outlines with the
            item index.

    Returns:
        PNG bytes: three panels with colour bars in counts and normalised attenuation.
    """
    c = _image(raw, "raw")
    a = _image(attenuation, "attenuation")
    if c.shape != a.shape:
        raise ValueError(f"scan_before_after_png: raw {c.shape} and attenuation {a.shape} differ in shape")
    masks = [np.asarray(m, dtype=bool) for m in item_masks]
    for i, m in enumerate(masks):
        if m.shape != a.shape:
            raise ValueError(f"scan_before_after_png: item mask {i} has shape {m.shape}, the scan {a.shape}")
    aspect = a.shape[0] / a.shape[1]
    fig = _figure(11.0, 3.7 * aspect + 0.9)
    axes = fig.subplots(1, 3, squeeze=False)[0]
    im0 = axes[0].imshow(c, cmap="gray", interpolation="nearest")
    fig.colorbar(im0, ax=axes[0], shrink=0.8, label="counts")
    axes[0].set_title("raw detector counts")
    im1 = axes[1].imshow(a, cmap="gray_r", vmin=0, vmax=max(1.0, float(a.max())), interpolation="nearest")
    fig.colorbar(im1, ax=axes[1], shrink=0.8, label="norm. attenuation")
    axes[1].set_title("normalised attenuation (−log, corrected)")
    axes[2].imshow(a, cmap="gray_r", vmin=0, vmax=max(1.0, float(a.max())), interpolation="nearest")
    cmap = colormaps["tab10"]
    for i, m in enumerate(masks):
        if m.any():
            axes[2].contour(m.astype(np.float32), levels=[0.5], colors=[cmap(i % 10)], linewidths=1.4)
            rr, cc = np.nonzero(m)
            axes[2].text(cc.mean(), rr.mean(), str(i), color=cmap(i % 10), fontsize=11, fontweight="bold",
                         ha="center", va="center")
    axes[2].set_title(f"items found: {len(masks)}")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"Preprocessing of one scan ({a.shape[1]}×{a.shape[0]} px)")
    return _png(fig)
