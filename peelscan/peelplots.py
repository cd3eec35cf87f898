"""Pictures of peeling (PNG bytes; matplotlib's object API with the Agg canvas, no pyplot, so
safe in worker threads): one scan with its item outlines, peeled regions and kept tiles, and
the coverage histogram of the kept tiles."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from skimage import measure


def _png(fig: Figure, path: str | Path | None = None) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def overlay_png(attenuation: np.ndarray, item_masks: Sequence[np.ndarray], peeled_masks: Sequence[np.ndarray],
                tiles: Any, tile_size: int | None = None, path: str | Path | None = None, *,
                defect_mask: np.ndarray | None = None, title: str | None = None) -> bytes:
    """One scan: normalised attenuation (grey, dark = more attenuation), each item's outline
    (blue), its peeled region's outline (orange, dashed), the kept tiles (green squares; the
    grid is anchored at the scan's pixel (0, 0)) and, if given, the ground-truth defect mask
    (red outline).

    ``attenuation`` float ``(H, W)``; masks bool ``(H, W)``; ``tiles`` a
    :class:`peelscan.peel.Tiles` (its ``tile_row``, ``tile_col`` and, when ``tile_size`` is
    None, its pixels' edge). Returns PNG bytes, also written to ``path`` when given.
    """
    att = np.asarray(attenuation, dtype=np.float32)
    if att.ndim != 2:
        raise ValueError(f"overlay_png: attenuation must be 2-D, got shape {att.shape}")
    t = int(tile_size) if tile_size is not None else int(np.asarray(tiles.pixels).shape[1])
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    vmax = max(float(np.percentile(att, 99.5)), 1e-3)
    ax.imshow(att, cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
    for masks, color, ls in ((item_masks, "tab:blue", "-"), (peeled_masks, "tab:orange", "--")):
        for m in masks:
            for c in measure.find_contours(np.pad(np.asarray(m, float), 1), 0.5):
                ax.plot(c[:, 1] - 1, c[:, 0] - 1, color=color, lw=1.4, ls=ls)
    if defect_mask is not None and np.any(defect_mask):
        for c in measure.find_contours(np.pad(np.asarray(defect_mask, float), 1), 0.5):
            ax.plot(c[:, 1] - 1, c[:, 0] - 1, color="tab:red", lw=1.2)
    rects = [Rectangle((c - 0.5, r - 0.5), t, t) for r, c in zip(np.asarray(tiles.tile_row), np.asarray(tiles.tile_col))]
    ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor="tab:green", lw=0.7, alpha=0.8))
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}item outline (blue), peeled region (orange), {len(rects)} tiles {t}×{t} (green)"
                 + (", defect (red)" if defect_mask is not None and np.any(defect_mask) else ""), fontsize=8)
    ax.set_xlim(-0.5, att.shape[1] - 0.5)
    ax.set_ylim(att.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    return _png(fig, path)


def coverage_histogram_png(coverage: np.ndarray, min_coverage: float | None = None,
                           path: str | Path | None = None) -> bytes:
    """Histogram of the kept tiles' coverage by the peeled mask (share 0..1), with the
    configured ``min_coverage`` as a line when given. Returns PNG bytes (also to ``path``)."""
    cov = np.asarray(coverage, dtype=float).reshape(-1)
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.hist(cov, bins=np.linspace(0, 1, 41), color="tab:green")
    if min_coverage is not None:
        ax.axvline(min_coverage, color="k", ls="--", lw=1, label=f"min_coverage {min_coverage:g}")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("coverage of tile by peeled mask")
    ax.set_ylabel("tiles")
    ax.set_title(f"{cov.size} kept tiles, {np.mean(cov >= 1.0) if cov.size else 0:.0%} fully inside", fontsize=9)
    ax.set_xlim(0, 1)
    return _png(fig, path)
