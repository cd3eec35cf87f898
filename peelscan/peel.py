"""Virtual peeling: erode each item by the peel depth, tile the interior, whole-item images.

Method after the research this project follows: an autoencoder trained on whole potato
images must learn the outline (86 % accuracy); peeling the rim off and tiling the interior
lets it learn only the tissue.

Conventions: ``attenuation`` is ``(H, W)`` float32 normalised attenuation in [0, 1]; masks
are ``(H, W)`` bool; lengths in millimetres go through ``pixel_mm``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import ndimage

ROW_GROUP_TILES = 2048
"""Tiles per Parquet row group (2,048 tiles of 32×32 float32 = 8 MiB): one Dask task."""


@dataclass(frozen=True)
class PeelConfig:
    """Peeling and tiling parameters.

    pixel_mm: detector pixel size in mm (0.5 mm for the synthetic scans).
    peel_depth_mm: depth removed from the item's outline, in mm (default 3 mm: the rim where
        path length — and so attenuation — falls to zero spans the outer ~2-3 mm of a tuber
        at 0.5 mm/px; see docs/peeling.md).
    tile_size, stride: tile edge and grid step in pixels (32 px = 16 mm; stride 16 px gives
        50 % overlap so a small defect is whole inside at least one tile).
    min_coverage: keep a tile only if at least this share of its pixels is inside the
        peeled mask.
    whole_size: edge of the whole-item images of the baseline arm, in pixels.
    """

    pixel_mm: float = 0.5
    peel_depth_mm: float = 3.0
    tile_size: int = 32
    stride: int = 16
    min_coverage: float = 0.75
    whole_size: int = 128

    def __post_init__(self) -> None:
        if self.pixel_mm <= 0 or self.peel_depth_mm < 0:
            raise ValueError("pixel_mm must be > 0 and peel_depth_mm >= 0")
        if self.tile_size < 4 or self.stride < 1:
            raise ValueError("tile_size must be >= 4 and stride >= 1")
        if not 0.0 < self.min_coverage <= 1.0:
            raise ValueError("min_coverage must be in (0, 1]")

    @property
    def depth_px(self) -> float:
        """Peel depth in pixels (may be fractional: the erosion is Euclidean)."""
        return self.peel_depth_mm / self.pixel_mm

    def peeled(self, item_mask: np.ndarray) -> np.ndarray:
        return peel_mask(item_mask, self.depth_px)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PeelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def peel_mask(item_mask: np.ndarray, depth_px: float) -> np.ndarray:
    """Erode ``item_mask`` (bool ``(H, W)``) by a disk of radius ``depth_px`` pixels.

    A pixel stays if its Euclidean distance to the nearest pixel outside the item is greater
    than ``depth_px``. Pixels outside the image count as outside the item, so an item cut by
    the image border is peeled there too (tissue at the border is not known to be interior).
    """
    m = np.asarray(item_mask, dtype=bool)
    if depth_px <= 0:
        return m.copy()
    padded = np.pad(m, 1, constant_values=False)
    dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    return dist > depth_px


@dataclass
class Tiles:
    """Tiles cut from one scan. ``pixels`` ``(N, T, T)`` float32; positions are the top-left
    pixel of each tile in the scan."""

    pixels: np.ndarray
    item_index: np.ndarray
    tile_row: np.ndarray
    tile_col: np.ndarray
    coverage: np.ndarray
    defect_fraction: np.ndarray | None = None

    @classmethod
    def empty(cls, t: int) -> Tiles:
        z = np.zeros(0, dtype=np.int32)
        return cls(np.zeros((0, t, t), np.float32), z, z.copy(), z.copy(), np.zeros(0, np.float32), None)


def _window_sums(a: np.ndarray, t: int, stride: int) -> np.ndarray:
    """Sums of ``a`` over every ``t×t`` window on the grid of step ``stride`` (integral image)."""
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    ii[1:, 1:] = np.cumsum(np.cumsum(a, axis=0), axis=1)
    rows = np.arange(0, a.shape[0] - t + 1, stride)
    cols = np.arange(0, a.shape[1] - t + 1, stride)
    r0, c0 = np.meshgrid(rows, cols, indexing="ij")
    return ii[r0 + t, c0 + t] - ii[r0, c0 + t] - ii[r0 + t, c0] + ii[r0, c0], rows, cols


def cut_tiles(attenuation: np.ndarray, item_mask: np.ndarray, config: PeelConfig,
              defect_mask: np.ndarray | None = None, item_index: int = 0) -> Tiles:
    """Tiles of one item's peeled interior.

    Grid anchored at the scan's (0, 0) with step ``stride``; a tile is kept when at least
    ``min_coverage`` of it lies in the peeled mask. Fill rule: pixels of a kept tile outside
    the peeled mask are replaced by the mean of the tile's peeled pixels — a flat patch
    without an edge, so the autoencoder never learns the rim and never sees a step it would
    score as an anomaly. ``defect_fraction`` is the share of the tile inside ``defect_mask``
    (None when no mask is given).
    """
    att = np.asarray(attenuation, dtype=np.float32)
    t = config.tile_size
    peeled = config.peeled(item_mask)
    if att.shape[0] < t or att.shape[1] < t or not peeled.any():
        return Tiles.empty(t)
    sums, rows, cols = _window_sums(peeled.astype(np.float32), t, config.stride)
    cover = sums / float(t * t)
    keep_r, keep_c = np.nonzero(cover >= config.min_coverage - 1e-9)
    if len(keep_r) == 0:
        return Tiles.empty(t)
    tr = rows[keep_r].astype(np.int32)
    tc = cols[keep_c].astype(np.int32)
    idx_r = tr[:, None] + np.arange(t)[None, :]
    idx_c = tc[:, None] + np.arange(t)[None, :]
    px = att[idx_r[:, :, None], idx_c[:, None, :]].copy()
    pm = peeled[idx_r[:, :, None], idx_c[:, None, :]]
    n_in = pm.sum(axis=(1, 2))
    mean_in = (px * pm).sum(axis=(1, 2)) / np.maximum(n_in, 1)
    px = np.where(pm, px, mean_in[:, None, None]).astype(np.float32)
    df = None
    if defect_mask is not None:
        dm = np.asarray(defect_mask, dtype=bool)[idx_r[:, :, None], idx_c[:, None, :]]
        df = dm.mean(axis=(1, 2)).astype(np.float32)
    return Tiles(px, np.full(len(tr), item_index, np.int32), tr, tc,
                 cover[keep_r, keep_c].astype(np.float32), df)


def whole_item_image(attenuation: np.ndarray, item_mask: np.ndarray, size: int = 128) -> np.ndarray:
    """The item, unpeeled, centred in a ``size×size`` float32 image and scaled so its longer
    side fills it (aspect kept; outside the item = 0, the open beam). The earlier research's
    whole-image autoencoder is trained on these."""
    m = np.asarray(item_mask, dtype=bool)
    rr, cc = np.nonzero(m)
    out = np.zeros((size, size), dtype=np.float32)
    if len(rr) == 0:
        return out
    r0, r1, c0, c1 = rr.min(), rr.max() + 1, cc.min(), cc.max() + 1
    crop = np.where(m[r0:r1, c0:c1], attenuation[r0:r1, c0:c1], 0.0).astype(np.float32)
    scale = size / max(crop.shape)
    z = ndimage.zoom(crop, scale, order=1)
    z = z[:size, :size]
    oy, ox = (size - z.shape[0]) // 2, (size - z.shape[1]) // 2
    out[oy:oy + z.shape[0], ox:ox + z.shape[1]] = np.clip(z, 0.0, 1.0)
    return out


def peel_scan(attenuation: np.ndarray, item_masks: list[np.ndarray], config: PeelConfig,
              defect_mask: np.ndarray | None = None, whole: bool = True) -> tuple[Tiles, list[np.ndarray]]:
    """Tiles of every item of a scan (concatenated, with ``item_index``) and, if ``whole``,
    the whole-item images. One implementation for the assets and the line-side scorer."""
    parts = [cut_tiles(attenuation, m, config, defect_mask, i) for i, m in enumerate(item_masks)]
    t = config.tile_size
    if parts:
        df = None
        if defect_mask is not None:
            df = np.concatenate([p.defect_fraction if p.defect_fraction is not None else np.zeros(0, np.float32)
                                 for p in parts])
        tiles = Tiles(np.concatenate([p.pixels for p in parts]) if parts else np.zeros((0, t, t), np.float32),
                      np.concatenate([p.item_index for p in parts]), np.concatenate([p.tile_row for p in parts]),
                      np.concatenate([p.tile_col for p in parts]), np.concatenate([p.coverage for p in parts]), df)
    else:
        tiles = Tiles.empty(t)
    wholes = [whole_item_image(attenuation, m, config.whole_size) for m in item_masks] if whole else []
    return tiles, wholes


def tile_schema(tile_size: int) -> pa.Schema:
    """Arrow schema of a tile dataset with ``tile_size``×``tile_size`` pixels per row."""
    return pa.schema([
        ("lot_id", pa.string()), ("scan_id", pa.string()), ("item_index", pa.int32()),
        ("tile_row", pa.int32()), ("tile_col", pa.int32()), ("tile_size", pa.int32()),
        ("coverage", pa.float32()), ("split", pa.string()), ("label", pa.string()),
        ("defect_type", pa.string()), ("defect_fraction", pa.float32()),
        ("pixels", pa.list_(pa.float32(), tile_size * tile_size)),
    ])


TILE_SCHEMA = tile_schema(32)
"""The default tile dataset schema (32×32 tiles); :func:`tile_schema` for other sizes."""


def _table(lot_id: str, scan_id: str, split: str, label: str | None, defect_type: str | None,
           pixels: np.ndarray, item_index, rows, cols, coverage, defect_fraction, size: int) -> pa.Table:
    n = len(pixels)
    flat = pa.array(np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1), pa.float32())
    px = pa.FixedSizeListArray.from_arrays(flat, size * size)
    df = (pa.array(np.asarray(defect_fraction, np.float32), pa.float32()) if defect_fraction is not None
          else pa.nulls(n, pa.float32()))
    return pa.table({
        "lot_id": pa.array([lot_id] * n, pa.string()), "scan_id": pa.array([scan_id] * n, pa.string()),
        "item_index": pa.array(np.asarray(item_index, np.int32)), "tile_row": pa.array(np.asarray(rows, np.int32)),
        "tile_col": pa.array(np.asarray(cols, np.int32)), "tile_size": pa.array(np.full(n, size, np.int32)),
        "coverage": pa.array(np.asarray(coverage, np.float32)), "split": pa.array([split] * n, pa.string()),
        "label": pa.array([label] * n, pa.string()), "defect_type": pa.array([defect_type] * n, pa.string()),
        "defect_fraction": df, "pixels": px}, schema=tile_schema(size))


def tiles_to_table(lot_id: str, scan_id: str, split: str, label: str | None, defect_type: str | None,
                   tiles: Tiles, config: PeelConfig) -> pa.Table:
    """One scan's tiles as rows of the tile dataset."""
    return _table(lot_id, scan_id, split, label, defect_type, tiles.pixels, tiles.item_index, tiles.tile_row,
                  tiles.tile_col, tiles.coverage, tiles.defect_fraction, config.tile_size)


def whole_to_table(lot_id: str, scan_id: str, split: str, label: str | None, defect_type: str | None,
                   wholes: list[np.ndarray], config: PeelConfig, item_boxes: list[tuple[int, int]] | None = None,
                   defect_fractions: list[float] | None = None) -> pa.Table:
    """One scan's whole-item images as rows (same schema, ``tile_size`` = ``whole_size``,
    ``tile_row/tile_col`` = the item's bounding-box origin when given, coverage 1)."""
    n = len(wholes)
    s = config.whole_size
    px = np.stack(wholes) if n else np.zeros((0, s, s), np.float32)
    boxes = item_boxes or [(0, 0)] * n
    return _table(lot_id, scan_id, split, label, defect_type, px, np.arange(n), [b[0] for b in boxes],
                  [b[1] for b in boxes], np.ones(n, np.float32), defect_fractions, s)


def table_to_pixels(table: pa.Table) -> np.ndarray:
    """The ``pixels`` column as ``(N, T, T)`` float32 (a copy-free view where Arrow allows)."""
    col = table["pixels"].combine_chunks() if isinstance(table["pixels"], pa.ChunkedArray) else table["pixels"]
    n = len(col)
    if n == 0:
        t = int(np.sqrt(table.schema.field("pixels").type.list_size))
        return np.zeros((0, t, t), np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    t = int(round(np.sqrt(flat.size // n)))
    return flat.reshape(n, t, t)
