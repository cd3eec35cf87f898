"""Virtual peeling: erode each item by the peel depth, tile the interior, whole-item images.

Method after the research this project follows (autoencoder anomaly detection on X-ray
images of potatoes, scored by image-similarity measures with FSIM best): an autoencoder
trained on whole potato images must learn the outline and reached 86 % accuracy; "peeling"
the rim off and tiling the interior lets it learn only the tissue.

Peeling is a binary erosion by a disk (Serra, *Image Analysis and Mathematical Morphology*,
1982) computed exactly through the Euclidean distance transform (Maurer, Qi & Raghavan,
IEEE TPAMI 25(2), 2003; :func:`scipy.ndimage.distance_transform_edt`). Tile coverage is read
from an integral image (summed-area table; Crow, SIGGRAPH 1984). Fill rules and defaults,
with the measurements that chose them, are in ``docs/peeling.md``.

Conventions: ``attenuation`` is ``(H, W)`` float32 normalised attenuation in [0, 1]
(0 = open beam); masks are ``(H, W)`` bool; lengths in millimetres go through ``pixel_mm``
(mm per pixel); tile positions are the row/column of the tile's top-left pixel in the scan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
from scipy import ndimage

ROW_GROUP_TILES = 512
"""Tiles per Parquet row group: 512 tiles of 32×32 float32 = 2 MiB of pixels (about 15 scans),
the unit one Dask scoring task streams (``Store.iter_row_groups`` / ``read_row_group``). Small
enough that a lot of a few hundred scans gives several tasks per worker (a lot of 300 scans:
~18 tasks), so two or more workers share the work evenly (``benchmarks/scoring.py``); large
enough that per-task overhead (a row-group read, a model-cache lookup) stays under 1 %."""

ROW_GROUP_WHOLE = 64
"""Whole-item images (128×128 float32, 64 KiB each) per Parquet row group: 4 MiB."""

FILL_RULES = ("nearest", "mean")
"""Rules for the pixels of a kept tile that lie outside the peeled mask (see :class:`PeelConfig`)."""


@dataclass(frozen=True)
class PeelConfig:
    """Peeling and tiling parameters (defaults measured on synthetic scans: docs/peeling.md).

    pixel_mm: detector pixel pitch in mm (0.5 mm for the synthetic scans).
    peel_depth_mm: depth removed from the item's outline in mm. A pixel survives when every
        pixel within ``depth_px`` of it (Euclidean) belongs to the item.
    tile_size, stride: tile edge and grid step in pixels; the grid is anchored at the scan's
        pixel (0, 0), so tile positions are reproducible and overlapping tiles of the same
        scan line up.
    min_coverage: keep a tile only if at least this share of its pixels is in the peeled mask.
    fill: what the pixels of a kept tile outside the peeled mask become: ``"nearest"`` (the
        value of the nearest peeled pixel of the item: no step at the peel line) or
        ``"mean"`` (the mean of the tile's peeled pixels).
    small_item_tile: when an item's grid gives no tile, cut one tile off the grid at the
        position of highest coverage (nearest the peeled centroid among ties), if that
        coverage reaches ``min_coverage``: small potatoes are still inspected.
    whole_size: edge in pixels of the whole-item images of the baseline arm.
    """

    pixel_mm: float = 0.5
    peel_depth_mm: float = 3.0
    tile_size: int = 32
    stride: int = 16
    min_coverage: float = 0.75
    fill: str = "nearest"
    small_item_tile: bool = True
    whole_size: int = 128

    def __post_init__(self) -> None:
        if not self.pixel_mm > 0:
            raise ValueError(f"PeelConfig: pixel_mm must be > 0, got {self.pixel_mm}")
        if not self.peel_depth_mm >= 0:
            raise ValueError(f"PeelConfig: peel_depth_mm must be >= 0, got {self.peel_depth_mm}")
        if int(self.tile_size) != self.tile_size or self.tile_size < 4:
            raise ValueError(f"PeelConfig: tile_size must be an integer >= 4, got {self.tile_size}")
        if int(self.stride) != self.stride or self.stride < 1:
            raise ValueError(f"PeelConfig: stride must be an integer >= 1, got {self.stride}")
        if not 0.0 < self.min_coverage <= 1.0:
            raise ValueError(f"PeelConfig: min_coverage must be in (0, 1], got {self.min_coverage}")
        if self.fill not in FILL_RULES:
            raise ValueError(f"PeelConfig: fill must be one of {FILL_RULES}, got {self.fill!r}")
        if int(self.whole_size) != self.whole_size or self.whole_size < 8:
            raise ValueError(f"PeelConfig: whole_size must be an integer >= 8, got {self.whole_size}")

    @property
    def depth_px(self) -> float:
        """Peel depth in pixels, ``peel_depth_mm / pixel_mm`` (may be fractional: the erosion
        is Euclidean, not a square of whole pixels)."""
        return float(self.peel_depth_mm) / float(self.pixel_mm)

    def peeled(self, item_mask: np.ndarray) -> np.ndarray:
        """:func:`peel_mask` of ``item_mask`` at this configuration's depth."""
        return peel_mask(item_mask, self.depth_px)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PeelConfig:
        """From :meth:`as_dict` output (unknown keys ignored, missing ones default)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


def _as_mask(mask: Any, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (H, W) mask, got shape {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"{what}: mask shape {m.shape} differs from the scan's {tuple(shape)}")
    return m.astype(bool, copy=False)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(r0, r1, c0, c1)`` (end exclusive) of the True pixels, or None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def peel_mask(item_mask: np.ndarray, depth_px: float) -> np.ndarray:
    """Erode ``item_mask`` by a closed disk of radius ``depth_px`` pixels ("virtual peeling").

    Parameters
    ----------
    item_mask:
        bool ``(H, W)``, one item.
    depth_px:
        Peel depth in pixels (``peel_depth_mm / pixel_mm``), >= 0, may be fractional.

    Returns
    -------
    bool ``(H, W)``: the pixels whose Euclidean distance to the nearest pixel outside the item
    is greater than ``depth_px`` — exactly the binary erosion by the disk
    ``{q : |q| <= depth_px}`` (not a square: the rim is peeled to the same depth all round).
    Pixels outside the image count as outside the item, so an item cut by the image border
    is peeled along the border as well (tissue there is not known to be interior).
    Depth 0 returns a copy of the mask. Only the item's bounding box is transformed.
    """
    m = _as_mask(item_mask, None, "peel_mask")
    if not depth_px >= 0:
        raise ValueError(f"peel_mask: depth_px must be >= 0, got {depth_px}")
    if depth_px == 0:
        return m.copy()
    out = np.zeros(m.shape, dtype=bool)
    box = _bbox(m)
    if box is None:
        return out
    r0, r1, c0, c1 = box
    padded = np.pad(m[r0:r1, c0:c1], 1, constant_values=False)
    dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    out[r0:r1, c0:c1] = dist > depth_px
    return out


@dataclass
class Tiles:
    """Tiles cut from one scan.

    pixels: ``(N, T, T)`` float32 normalised attenuation (outside-the-peel pixels filled).
    item_index, tile_row, tile_col: ``(N,)`` int32; the tile covers scan rows
        ``tile_row:tile_row+T`` and columns ``tile_col:tile_col+T``.
    coverage: ``(N,)`` float32, share of the tile in the item's peeled mask.
    defect_fraction: ``(N,)`` float32 share of the tile inside the ground-truth defect mask,
        or None when the scan has no mask (stored as null).
    """

    pixels: np.ndarray
    item_index: np.ndarray
    tile_row: np.ndarray
    tile_col: np.ndarray
    coverage: np.ndarray
    defect_fraction: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def tile_size(self) -> int:
        return int(self.pixels.shape[1])

    @classmethod
    def empty(cls, t: int, with_defects: bool = False) -> Tiles:
        z = np.zeros(0, dtype=np.int32)
        return cls(np.zeros((0, t, t), np.float32), z, z.copy(), z.copy(), np.zeros(0, np.float32),
                   np.zeros(0, np.float32) if with_defects else None)

    @classmethod
    def concatenate(cls, parts: Sequence[Tiles], t: int, with_defects: bool = False) -> Tiles:
        """One :class:`Tiles` of ``parts`` in order (``defect_fraction`` kept if ``with_defects``)."""
        if not parts:
            return cls.empty(t, with_defects)
        df = None
        if with_defects:
            df = np.concatenate([p.defect_fraction if p.defect_fraction is not None
                                 else np.full(len(p), np.nan, np.float32) for p in parts]).astype(np.float32)
        return cls(np.concatenate([p.pixels for p in parts]).astype(np.float32, copy=False),
                   np.concatenate([p.item_index for p in parts]).astype(np.int32),
                   np.concatenate([p.tile_row for p in parts]).astype(np.int32),
                   np.concatenate([p.tile_col for p in parts]).astype(np.int32),
                   np.concatenate([p.coverage for p in parts]).astype(np.float32), df)


def _grid_range(a0: int, a1: int, n: int, t: int, stride: int) -> tuple[int, int]:
    """Grid indices ``k_min..k_max`` (inclusive) of windows ``[k*stride, k*stride+t)`` that
    lie inside ``[0, n)`` and meet ``[a0, a1)``; ``k_max < k_min`` when there are none."""
    k_min = max(0, -((t - 1 - a0) // stride))  # ceil((a0 - t + 1) / stride)
    k_max = min((n - t) // stride, (a1 - 1) // stride)
    return k_min, k_max


def _window_sums(a: np.ndarray, t: int, step: int) -> np.ndarray:
    """Sums of ``a`` (2-D) over the ``t×t`` windows whose top-left corners are ``step`` apart
    starting at (0, 0), from an integral image (Crow 1984); float64 ``(nr, nc)``."""
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(a, axis=0, dtype=np.float64), axis=1, out=ii[1:, 1:])
    nr = (a.shape[0] - t) // step + 1
    nc = (a.shape[1] - t) // step + 1
    r = np.arange(nr) * step
    c = np.arange(nc) * step
    return ii[np.ix_(r + t, c + t)] - ii[np.ix_(r, c + t)] - ii[np.ix_(r + t, c)] + ii[np.ix_(r, c)]


def _fill_nearest(att: np.ndarray, peeled: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``att`` over ``box`` with every pixel outside ``peeled`` replaced by the value of the
    nearest pixel inside it (Euclidean; ties broken by the EDT's scan order)."""
    r0, r1, c0, c1 = box
    sub = peeled[r0:r1, c0:c1]
    idx = ndimage.distance_transform_edt(~sub, return_distances=False, return_indices=True)
    return att[r0:r1, c0:c1][idx[0], idx[1]]


def cut_tiles(attenuation: np.ndarray, item_mask: np.ndarray, config: PeelConfig | None = None,
              defect_mask: np.ndarray | None = None, item_index: int = 0) -> Tiles:
    """Tiles of one item's peeled interior.

    Parameters
    ----------
    attenuation:
        float ``(H, W)`` normalised attenuation of the scan (converted to float32).
    item_mask:
        bool ``(H, W)``, the item (unpeeled; it is peeled here by ``config.depth_px``).
    config:
        :class:`PeelConfig` (default: the documented defaults).
    defect_mask:
        Optional bool ``(H, W)`` ground-truth defect mask of the scan.
    item_index:
        Written into every tile's ``item_index``.

    Returns
    -------
    :class:`Tiles`, ordered by (row, column). Grid positions ``(k*stride, l*stride)`` with the
    whole tile inside the image; a tile is kept when its coverage by the peeled mask is
    ``>= min_coverage``. Pixels of a kept tile inside the peeled mask are the scan's pixels
    exactly; the others follow ``config.fill``. An item whose grid keeps nothing gets, with
    ``small_item_tile``, the single off-grid tile of highest coverage if it reaches
    ``min_coverage`` (so a deeper peel never yields more tiles either way); otherwise none.
    An empty or fully peeled item, or a scan smaller than one tile, gives zero tiles.
    """
    cfg = config or PeelConfig()
    att = np.asarray(attenuation)
    if att.ndim != 2:
        raise ValueError(f"cut_tiles: attenuation must be 2-D (H, W), got shape {att.shape}")
    att = att.astype(np.float32, copy=False)
    mask = _as_mask(item_mask, att.shape, "cut_tiles item_mask")
    dmask = None if defect_mask is None else _as_mask(defect_mask, att.shape, "cut_tiles defect_mask")
    t, s = int(cfg.tile_size), int(cfg.stride)
    h, w = att.shape
    empty = Tiles.empty(t, dmask is not None)
    peeled = cfg.peeled(mask)
    box = _bbox(peeled)
    if box is None or h < t or w < t:
        return empty
    a0, a1, b0, b1 = box
    kr0, kr1 = _grid_range(a0, a1, h, t, s)
    kc0, kc1 = _grid_range(b0, b1, w, t, s)
    rows = cols = np.zeros(0, np.int64)
    cover = np.zeros(0, np.float64)
    if kr1 >= kr0 and kc1 >= kc0:
        y0, x0 = kr0 * s, kc0 * s
        region = peeled[y0:kr1 * s + t, x0:kc1 * s + t]
        cov = _window_sums(region, t, s) / float(t * t)
        kr, kc = np.nonzero(cov >= cfg.min_coverage)
        rows, cols, cover = y0 + kr * s, x0 + kc * s, cov[kr, kc]
    if rows.size == 0 and cfg.small_item_tile:
        # off the grid: every position of the tile inside the image that meets the peeled box
        y0, y1 = max(0, a0 - t + 1), min(h - t, a1 - 1)
        x0, x1 = max(0, b0 - t + 1), min(w - t, b1 - 1)
        cov = _window_sums(peeled[y0:y1 + t, x0:x1 + t], t, 1) / float(t * t)
        best = cov.max()
        if best >= cfg.min_coverage:
            cr, cc = np.nonzero(cov == best)
            pr, pc = np.nonzero(peeled[a0:a1, b0:b1])
            centre = (pr.mean() + a0 - (t - 1) / 2.0 - y0, pc.mean() + b0 - (t - 1) / 2.0 - x0)
            j = int(np.argmin((cr - centre[0]) ** 2 + (cc - centre[1]) ** 2))
            rows, cols, cover = np.array([y0 + cr[j]]), np.array([x0 + cc[j]]), np.array([best])
    if rows.size == 0:
        return empty

    windows = np.lib.stride_tricks.sliding_window_view(att, (t, t))
    pixels = windows[rows, cols]  # (N, T, T) copy
    inside = np.lib.stride_tricks.sliding_window_view(peeled, (t, t))[rows, cols]
    if cover.min() < 1.0:
        if cfg.fill == "nearest":
            # the kept tiles and every peeled pixel of the item: the nearest one may lie beyond the tiles
            fbox = (min(a0, int(rows.min())), max(a1, int(rows.max()) + t),
                    min(b0, int(cols.min())), max(b1, int(cols.max()) + t))
            filled = _fill_nearest(att, peeled, fbox)
            fw = np.lib.stride_tricks.sliding_window_view(filled, (t, t))[rows - fbox[0], cols - fbox[2]]
            pixels = np.where(inside, pixels, fw)
        else:  # "mean"
            n_in = inside.sum(axis=(1, 2))
            mean_in = np.where(inside, pixels, 0.0).sum(axis=(1, 2), dtype=np.float64) / n_in
            pixels = np.where(inside, pixels, mean_in[:, None, None].astype(np.float32))
    df = None
    if dmask is not None:
        df = (np.lib.stride_tricks.sliding_window_view(dmask, (t, t))[rows, cols]
              .sum(axis=(1, 2)) / float(t * t)).astype(np.float32)
    n = rows.size
    return Tiles(np.ascontiguousarray(pixels, dtype=np.float32), np.full(n, item_index, np.int32),
                 rows.astype(np.int32), cols.astype(np.int32), cover.astype(np.float32), df)


def whole_item_image(attenuation: np.ndarray, item_mask: np.ndarray, size: int = 128) -> np.ndarray:
    """The item, unpeeled, centred in a ``size×size`` float32 image (the whole-image baseline).

    The item's bounding box (pixels outside the item set to 0, the open beam) is resized so
    that its longer side is ``size`` pixels, keeping the aspect ratio (bilinear, with a
    Gaussian anti-aliasing prefilter when shrinking; :func:`skimage.transform.resize`), and
    centred; the rest is 0. Values stay in [0, 1] when the input is. An empty mask gives an
    all-zero image. This is the input of the earlier research's whole-potato autoencoder.
    """
    from skimage.transform import resize

    att = np.asarray(attenuation)
    if att.ndim != 2:
        raise ValueError(f"whole_item_image: attenuation must be 2-D (H, W), got shape {att.shape}")
    m = _as_mask(item_mask, att.shape, "whole_item_image item_mask")
    size = int(size)
    if size < 1:
        raise ValueError(f"whole_item_image: size must be >= 1, got {size}")
    out = np.zeros((size, size), dtype=np.float32)
    box = _bbox(m)
    if box is None:
        return out
    r0, r1, c0, c1 = box
    crop = np.where(m[r0:r1, c0:c1], att[r0:r1, c0:c1], 0.0).astype(np.float32)
    scale = size / max(crop.shape)
    oh = min(size, max(1, int(round(crop.shape[0] * scale))))
    ow = min(size, max(1, int(round(crop.shape[1] * scale))))
    z = resize(crop, (oh, ow), order=1, mode="constant", cval=0.0, anti_aliasing=scale < 1,
               preserve_range=True).astype(np.float32)
    oy, ox = (size - oh) // 2, (size - ow) // 2
    lo, hi = float(min(crop.min(), 0.0)), float(crop.max())
    out[oy:oy + oh, ox:ox + ow] = np.clip(z, lo, hi)
    return out


class WholeItems(list):
    """The whole-item images of one scan (a list of float32 ``(S, S)`` arrays, item order)
    carrying what :func:`whole_to_table` stores beside them: ``origins`` ``[(r0, c0)]``, the
    items' bounding-box origins in the scan, and ``defect_fraction`` ``[float]`` (share of the
    item's pixels in the ground-truth defect mask) or None when the scan has no mask."""

    origins: list[tuple[int, int]]
    defect_fraction: list[float] | None

    def __init__(self, images: Iterable[np.ndarray] = (), origins: Iterable[tuple[int, int]] = (),
                 defect_fraction: Iterable[float] | None = None):
        super().__init__(images)
        self.origins = list(origins)
        self.defect_fraction = None if defect_fraction is None else list(defect_fraction)


def _item_mask_and_index(item: Any, shape: tuple[int, int], default_index: int) -> tuple[np.ndarray, int]:
    """A bool ``(H, W)`` mask and index from a mask array or an object with ``full_mask(shape)``
    and ``index`` (e.g. :class:`peelscan.segment.Item`)."""
    if hasattr(item, "full_mask"):
        return _as_mask(item.full_mask(shape), shape, "peel_scan item"), int(getattr(item, "index", default_index))
    return _as_mask(item, shape, f"peel_scan item {default_index}"), default_index


def peel_scan(attenuation: np.ndarray, items: Sequence[Any], config: PeelConfig | None = None,
              defect_mask: np.ndarray | None = None, whole: bool = True) -> tuple[Tiles, WholeItems]:
    """Peel and tile every item of one scan: the one implementation the ``peeled_tiles``
    asset and the line-side scorer both call.

    Parameters
    ----------
    attenuation:
        float ``(H, W)`` normalised attenuation.
    items:
        The scan's items, each a bool ``(H, W)`` mask (its index = its position in the list)
        or an object with ``full_mask(shape)`` and ``index`` (:class:`peelscan.segment.Item`).
    config:
        :class:`PeelConfig`.
    defect_mask:
        Optional bool ``(H, W)`` ground-truth defect mask.
    whole:
        Also make the whole-item images (``config.whole_size``).

    Returns
    -------
    ``(tiles, wholes)``: all items' :class:`Tiles` concatenated in item order (``item_index``
    set), and a :class:`WholeItems` list of float32 ``(whole_size, whole_size)`` images (empty
    when ``whole`` is False).
    """
    cfg = config or PeelConfig()
    att = np.asarray(attenuation)
    if att.ndim != 2:
        raise ValueError(f"peel_scan: attenuation must be 2-D (H, W), got shape {att.shape}")
    att = att.astype(np.float32, copy=False)
    dmask = None if defect_mask is None else _as_mask(defect_mask, att.shape, "peel_scan defect_mask")
    parts: list[Tiles] = []
    images, origins, fractions = [], [], []
    for i, item in enumerate(items):
        m, idx = _item_mask_and_index(item, att.shape, i)
        parts.append(cut_tiles(att, m, cfg, dmask, idx))
        if whole:
            images.append(whole_item_image(att, m, cfg.whole_size))
            box = _bbox(m)
            origins.append((box[0], box[2]) if box else (0, 0))
            if dmask is not None:
                area = int(m.sum())
                fractions.append(float((dmask & m).sum()) / area if area else 0.0)
    tiles = Tiles.concatenate(parts, cfg.tile_size, dmask is not None)
    wholes = WholeItems(images, origins, fractions if (whole and dmask is not None) else None)
    return tiles, wholes


def tile_schema(tile_size: int) -> pa.Schema:
    """Arrow schema of a tile dataset with ``tile_size``×``tile_size`` float32 pixels per row
    (row-major, C order). ``label``, ``defect_type`` and ``defect_fraction`` are nullable."""
    return pa.schema([
        ("lot_id", pa.string()), ("scan_id", pa.string()), ("item_index", pa.int32()),
        ("tile_row", pa.int32()), ("tile_col", pa.int32()), ("tile_size", pa.int32()),
        ("coverage", pa.float32()), ("split", pa.string()), ("label", pa.string()),
        ("defect_type", pa.string()), ("defect_fraction", pa.float32()),
        ("pixels", pa.list_(pa.float32(), int(tile_size) * int(tile_size))),
    ])


TILE_SCHEMA = tile_schema(PeelConfig.tile_size)
"""The tile dataset schema at the default tile size (32×32); :func:`tile_schema` for others
(the whole-item dataset uses ``tile_schema(whole_size)``)."""


def _size_of(size: PeelConfig | int, attr: str) -> int:
    return int(getattr(size, attr)) if isinstance(size, PeelConfig) else int(size)


def _rows_table(lot_id: str, scan_id: str, split: str, label: str | None, defect_type: str | None,
                pixels: np.ndarray, item_index: Any, rows: Any, cols: Any, coverage: Any,
                defect_fraction: Any, size: int) -> pa.Table:
    px = np.ascontiguousarray(pixels, dtype=np.float32)
    n = px.shape[0]
    if px.shape[1:] != (size, size):
        raise ValueError(f"scan {scan_id}: pixels of shape {px.shape[1:]} do not match tile size {size}")
    flat = pa.array(px.reshape(-1), pa.float32())
    if defect_fraction is None:
        df = pa.nulls(n, pa.float32())
    else:
        d = np.asarray(defect_fraction, np.float32)
        df = pa.array(d, pa.float32(), mask=np.isnan(d))
    cols_ = {
        "lot_id": pa.array([lot_id] * n, pa.string()),
        "scan_id": pa.array([scan_id] * n, pa.string()),
        "item_index": pa.array(np.asarray(item_index, np.int32).reshape(-1) if np.ndim(item_index)
                               else np.full(n, item_index, np.int32), pa.int32()),
        "tile_row": pa.array(np.asarray(rows, np.int32), pa.int32()),
        "tile_col": pa.array(np.asarray(cols, np.int32), pa.int32()),
        "tile_size": pa.array(np.full(n, size, np.int32), pa.int32()),
        "coverage": pa.array(np.asarray(coverage, np.float32), pa.float32()),
        "split": pa.array([split] * n, pa.string()),
        "label": pa.array([label] * n, pa.string()),
        "defect_type": pa.array([defect_type] * n, pa.string()),
        "defect_fraction": df,
        "pixels": pa.FixedSizeListArray.from_arrays(flat, size * size),
    }
    return pa.table(cols_, schema=tile_schema(size))


def tiles_to_table(lot_id: str, scan_id: str, split: str, label: str | None, defect_type: str | None,
                   tiles: Tiles, config: PeelConfig | int) -> pa.Table:
    """One scan's tiles as rows of the tile dataset (:func:`tile_schema`).

    ``config`` is the :class:`PeelConfig` (its ``tile_size``) or the tile size itself. Each
    row's ``item_index`` comes from ``tiles.item_index``; ``defect_fraction`` is null where
    the scan has no ground-truth mask (``tiles.defect_fraction`` None or NaN).
    """
    size = _size_of(config, "tile_size")
    return _rows_table(lot_id, scan_id, split, label, defect_type, tiles.pixels, tiles.item_index,
                       tiles.tile_row, tiles.tile_col, tiles.coverage, tiles.defect_fraction, size)


def whole_to_table(lot_id: str, scan_id: str, split: str, label: str | None, defect_type: str | None,
                   wholes: Sequence[np.ndarray], config: PeelConfig | int,
                   item_boxes: Sequence[tuple[int, int]] | None = None,
                   defect_fractions: Sequence[float] | None = None) -> pa.Table:
    """One scan's whole-item images as rows of the same schema at ``tile_size = whole_size``.

    ``tile_row/tile_col`` = the item's bounding-box origin (``item_boxes``, else
    ``wholes.origins`` when ``wholes`` is the :class:`WholeItems` from :func:`peel_scan`),
    ``coverage`` = 1, ``defect_fraction`` = share of the item in the defect mask
    (``defect_fractions``, else ``wholes.defect_fraction``; null without a mask).
    ``item_index`` is the list position.
    """
    size = _size_of(config, "whole_size")
    n = len(wholes)
    px = np.stack([np.asarray(w, np.float32) for w in wholes]) if n else np.zeros((0, size, size), np.float32)
    boxes = item_boxes if item_boxes is not None else getattr(wholes, "origins", None)
    if not boxes:
        boxes = [(0, 0)] * n
    fractions = defect_fractions if defect_fractions is not None else getattr(wholes, "defect_fraction", None)
    if len(boxes) != n or (fractions is not None and len(fractions) != n):
        raise ValueError(f"scan {scan_id}: {n} whole-item images but {len(boxes)} boxes"
                         + ("" if fractions is None else f" and {len(fractions)} defect fractions"))
    return _rows_table(lot_id, scan_id, split, label, defect_type, px, np.arange(n, dtype=np.int32),
                       [b[0] for b in boxes], [b[1] for b in boxes], np.ones(n, np.float32),
                       None if fractions is None else np.asarray(fractions, np.float32), size)


def table_to_pixels(table: pa.Table) -> np.ndarray:
    """The ``pixels`` column of a tile table as ``(N, T, T)`` float32.

    Zero-copy (a view of the Arrow buffer) when the column is one chunk without nulls;
    otherwise the chunks are combined first (one copy). Raises ValueError when the column is
    not a fixed-size list of float32 with a square size.
    """
    typ = table.schema.field("pixels").type
    if not pa.types.is_fixed_size_list(typ) or typ.value_type != pa.float32():
        raise ValueError(f"table_to_pixels: 'pixels' must be fixed_size_list<float32>, got {typ}")
    t = int(round(np.sqrt(typ.list_size)))
    if t * t != typ.list_size:
        raise ValueError(f"table_to_pixels: list size {typ.list_size} is not a square tile")
    col = table.column("pixels")
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if len(arr) == 0:
        return np.zeros((0, t, t), np.float32)
    if arr.null_count:
        raise ValueError(f"table_to_pixels: {arr.null_count} rows have null pixels")
    flat = arr.flatten()  # respects the array's offset (a sliced table)
    try:
        values = flat.to_numpy(zero_copy_only=True)
    except pa.ArrowInvalid:
        values = flat.to_numpy(zero_copy_only=False)
    return values.reshape(len(arr), t, t)
