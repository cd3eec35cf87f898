"""Pictures of peeling: one scan with item outlines, peeled regions and the tile grid; the
coverage histogram of kept tiles. PNG bytes (matplotlib, Agg, no pyplot)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from skimage import measure


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def overlay_png(attenuation: np.ndarray, item_masks: list[np.ndarray], peeled_masks: list[np.ndarray],
                tiles, tile_size: int) -> bytes:
    """The scan (normalised attenuation), each item's outline (blue), its peeled region
    (orange) and the kept tiles (green squares)."""
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ax.imshow(attenuation, cmap="gray_r", vmin=0, vmax=max(float(np.percentile(attenuation, 99.5)), 1e-3))
    for m in item_masks:
        for c in measure.find_contours(m.astype(float), 0.5):
            ax.plot(c[:, 1], c[:, 0], color="tab:blue", lw=1.5)
    for m in peeled_masks:
        for c in measure.find_contours(m.astype(float), 0.5):
            ax.plot(c[:, 1], c[:, 0], color="tab:orange", lw=1.5, ls="--")
    for r, c in zip(tiles.tile_row, tiles.tile_col):
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), tile_size, tile_size, fill=False, ec="tab:green", lw=0.6, alpha=0.7))
    ax.set_title(f"item outline (blue), peeled region (orange), {len(tiles.tile_row)} tiles (green)", fontsize=9)
    ax.set_axis_off()
    return _png(fig)


def coverage_histogram_png(coverage: np.ndarray) -> bytes:
    """Histogram of the kept tiles' coverage by the peeled mask."""
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.hist(np.asarray(coverage, float), bins=np.linspace(0, 1, 41), color="tab:green")
    ax.set_xlabel("coverage of tile by peeled mask")
    ax.set_ylabel("tiles")
    ax.set_xlim(0, 1)
    return _png(fig)
