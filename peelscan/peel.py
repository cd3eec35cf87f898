"""Virtual peeling: erode each item by the peel depth, tile the interior, whole-item images.

Method after the research this project follows (autoencoder anomaly detection on X-ray
images of potatoes, scored by image-similarity measures with FSIM best): an autoencoder
trained on whole potato images must learn the outline and reached 86 % accuracy; "peeling"
the rim off and tiling the interior lets it learn only the tissue.

Peeling is a binary erosion by a disk (Serra, *Image Analysis and Mathematical Morphology*,
1982): a pixel survives when its Euclidean distance to the background exceeds the depth,
decided exactly as the Euclidean distance transform decides it (Maurer, Qi & Raghavan,
IEEE TPAMI 25(2), 2003; :func:`scipy.ndimage.distance_transform_edt`). Tile coverage is a
pixel count per window (as from a summed-area table; Crow, SIGGRAPH 1984). Fill rules and
defaults, with the measurements that chose them, are in ``docs/peeling.md``.

**Implementation** (per-scan cost: a 256x256 scan with one potato and ~36 tiles takes about
0.3 ms on one core for the line scorer's call, ``whole=False``, ~8-10x less than the
scipy/numpy formulation; with the defect mask and the whole-item image, about 1.1 ms, of
which ~0.65 ms is :func:`skimage.transform.resize`): the peel, the coverage and defect
counts, the nearest fill and the tile copies are numba kernels (compiled on first use, a few
seconds, then cached on disk) that work on the item's bounding box only. They give what
``scipy.ndimage.distance_transform_edt`` (the erosion test and, with ``return_indices``, the
nearest fill, ties included) and the integral image give, bit for bit, not merely close:
``tests/test_peel.py`` compares them with the scipy/numpy formulation.

Conventions: ``attenuation`` is ``(H, W)`` float32 normalised attenuation in [0, 1]
(0 = open beam); masks are ``(H, W)`` bool; lengths in millimetres go through ``pixel_mm``
(mm per pixel); tile positions are the row/column of the tile's top-left pixel in the scan.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Sequence

import numba
import numpy as np
import pyarrow as pa

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


_NJIT = dict(nogil=True, cache=True, error_model="numpy")

# ---------------------------------------------------------------------------------------------
# numba kernels (compiled on first use, cached on disk). The peel is a set operation and the
# coverages and defect fractions are integer counts, so any exact algorithm gives the same
# masks and numbers; the nearest fill replays scipy's feature transform step for step (the
# same candidate lists, the same tie rules, integer arithmetic where scipy's doubles are
# exact), so every filled pixel takes the value of the very pixel scipy's indices name.
# ``tests/test_peel.py`` compares each kernel with the scipy/numpy formulation.
# ---------------------------------------------------------------------------------------------


@numba.njit(**_NJIT)
def _nb_bbox(mask, box):  # pragma: no cover - compiled
    """``box[:] = (r0, r1, c0, c1)`` (end exclusive) of the nonzero pixels of ``mask`` (uint8
    (H, W)), or ``(0, 0, 0, 0)`` when there are none; returns whether there are any. An OR
    over each row, and over the rows that have a pixel, an OR into the columns (vectorised)."""
    h, w = mask.shape
    cols = np.zeros(w, np.uint8)
    r0 = -1
    r1 = 0
    for i in range(h):
        row = mask[i]
        s = np.uint8(0)
        for j in range(w):
            s |= row[j]
        if s:
            if r0 < 0:
                r0 = i
            r1 = i + 1
            for j in range(w):
                cols[j] |= row[j]
    box[0] = box[1] = box[2] = box[3] = 0
    if r0 < 0:
        return False
    c0 = 0
    while cols[c0] == 0:
        c0 += 1
    c1 = w
    while cols[c1 - 1] == 0:
        c1 -= 1
    box[0] = r0
    box[1] = r1
    box[2] = c0
    box[3] = c1
    return True


@numba.njit(**_NJIT)
def _nb_peel(mask, r0, r1, c0, c1, hw, out, box):  # pragma: no cover - compiled
    """Erosion of ``mask`` (uint8 (H, W), nonzero only inside rows ``r0:r1`` and columns
    ``c0:c1``) by the pixel set ``{(dy, dx) : |dx| <= len(hw) - 1, |dy| <= hw[|dx|]}`` (the
    disk ``dy^2 + dx^2 < k0``, ``hw[dx] = isqrt(k0 - 1 - dx^2)``), everything outside the
    mask (and the image) counting as background, written into ``out`` (uint8 (H, W), zeros
    outside the box); ``box`` gets the bounding box of the result as in :func:`_nb_bbox`.

    A pixel survives when, for every column offset ``dx``, the nearest background pixel of
    column ``j + dx`` above or below row ``i`` lies more than ``hw[|dx|]`` rows away: the
    column distances come from one downward and one upward pass over the box, and the test
    is one comparison per offset, row by row (vectorised)."""
    h = r1 - r0
    w = c1 - c0
    rad = hw.shape[0] - 1
    box[0] = box[1] = box[2] = box[3] = 0
    if h <= 2 * rad or w <= 2 * rad or h <= 0:
        return False
    v = np.empty((h, w), np.int32)  # rows to the nearest background pixel in the column
    run = np.zeros(w, np.int32)
    for i in range(h):
        src = mask[r0 + i, c0:c1]
        vi = v[i]
        for j in range(w):
            d = run[j] + 1 if src[j] != 0 else 0
            run[j] = d
            vi[j] = d
    run[:] = 0
    for i in range(h - 1, -1, -1):
        src = mask[r0 + i, c0:c1]
        vi = v[i]
        for j in range(w):
            d = run[j] + 1 if src[j] != 0 else 0
            run[j] = d
            vi[j] = min(vi[j], d)
    lim = np.empty(rad + 1, np.int32)
    for k in range(rad + 1):
        lim[k] = hw[k]
    acc = np.empty(w, np.uint8)
    a0 = -1
    a1 = 0
    b0 = w
    b1 = 0
    n = w - 2 * rad  # columns rad .. w - rad - 1 can survive
    for i in range(rad, h - rad):
        vi = v[i]
        l0 = lim[0]
        for j in range(n):
            acc[j] = vi[rad + j] > l0
        for k in range(1, rad + 1):
            lk = lim[k]
            left = vi[rad - k:rad - k + n]
            right = vi[rad + k:rad + k + n]
            for j in range(n):
                acc[j] &= (left[j] > lk) & (right[j] > lk)
        o = out[r0 + i, c0 + rad:c0 + rad + n]
        s = np.uint8(0)
        for j in range(n):
            o[j] = acc[j]
            s |= acc[j]
        if s:
            if a0 < 0:
                a0 = i
            a1 = i + 1
            j = 0
            while acc[j] == 0:
                j += 1
            b0 = min(b0, j)
            j = n - 1
            while acc[j] == 0:
                j -= 1
            b1 = max(b1, j + 1)
    if a0 < 0:
        return False
    box[0] = r0 + a0
    box[1] = r0 + a1
    box[2] = c0 + rad + b0
    box[3] = c0 + rad + b1
    return True


@numba.njit(**_NJIT)
def _nb_window_counts(a, t, step, out):  # pragma: no cover - compiled
    """``out[k, l]`` (int64 (nr, nc)) = number of nonzero pixels of ``a`` (uint8 2-D) in the
    ``t×t`` window with top-left corner ``(k*step, l*step)``: each column's counts above the
    window's first and last row from two running sums down the rows (vectorised), then a
    running sum along the window row."""
    h, w = a.shape
    nr, nc = out.shape
    top = np.zeros(w, np.int32)  # counts of rows [0, k*step)
    bot = np.zeros(w, np.int32)  # counts of rows [0, k*step + t)
    pre = np.zeros(w + 1, np.int64)
    i_top = 0
    i_bot = 0
    for k in range(nr):
        y0 = k * step
        while i_top < y0:
            src = a[i_top]
            for j in range(w):
                top[j] += src[j]
            i_top += 1
        while i_bot < y0 + t:
            src = a[i_bot]
            for j in range(w):
                bot[j] += src[j]
            i_bot += 1
        for j in range(w):
            pre[j + 1] = pre[j] + (bot[j] - top[j])
        for l in range(nc):
            x0 = l * step
            out[k, l] = pre[x0 + t] - pre[x0]
    return out


@numba.njit(**_NJIT)
def _nb_tile_counts(a, rows, cols, t, out):  # pragma: no cover - compiled
    """``out[n]`` = number of nonzero pixels of ``a`` (uint8 2-D) in the ``t×t`` tile at
    ``(rows[n], cols[n])``."""
    for n in range(rows.shape[0]):
        s = 0
        for i in range(rows[n], rows[n] + t):
            src = a[i, cols[n]:cols[n] + t]
            c = 0
            for j in range(t):
                c += src[j]
            s += c
        out[n] = s


@numba.njit(**_NJIT)
def _nb_cut(src, rows, cols, t, out):  # pragma: no cover - compiled
    """``out[n] = src[rows[n]:rows[n]+t, cols[n]:cols[n]+t]`` (float32)."""
    for n in range(rows.shape[0]):
        r = rows[n]
        c = cols[n]
        for i in range(t):
            s = src[r + i, c:c + t]
            o = out[n, i]
            for j in range(t):
                o[j] = s[j]


@numba.njit(**_NJIT)
def _nb_fill_nearest(att, inside, rects, out):  # pragma: no cover - compiled
    """``out`` = ``att`` (float32 (h, w)) with every pixel where ``inside`` (uint8 (h, w),
    with a nonzero pixel) is zero, within the rectangles ``rects`` ((K, 4) int64 rows
    ``(r0, r1, c0, c1)``, end exclusive), replaced by ``att`` at the pixel that
    ``scipy.ndimage.distance_transform_edt(inside == 0, return_indices=True)`` names; the
    other pixels are ``att``'s.

    That is Maurer, Qi & Raghavan's feature transform as scipy's ``_ComputeFT`` /
    ``_VoronoiFT`` run it on a 2-D array: first along each column (the nearest inside pixel
    of the column, the upper one of two at equal distance), then along each row over the
    columns' results: the lower envelope of the parabolas ``(q - col)^2 + (row - i)^2``,
    built with scipy's test (the last candidate is dropped when ``c*vR - b*uR - a*wR - a*b*c
    > 0``, i.e. when the intersections of consecutive parabolas would decrease), and queried
    as scipy queries it (move on while the next candidate is strictly nearer). On that
    envelope "the next candidate is strictly nearer at q" holds exactly for a prefix of the
    candidates (q beyond their nondecreasing intersections), so a query started from the
    answer of any earlier position ends where scipy's, started from the previous position,
    ends: only the pixels to fill are queried, and rows without one are skipped. (The pixel
    taken is the nearest inside pixel, among equally near ones the one of smallest column,
    then smallest row: a nearest candidate is never dropped from the envelope, and the query
    stops at the first minimum.) Coordinates are small integers, so scipy's doubles are exact and int64 arithmetic
    decides every comparison the same way."""
    h, w = inside.shape
    need = np.zeros((h, w), np.uint8)
    for k in range(rects.shape[0]):
        for i in range(rects[k, 0], rects[k, 1]):
            nr = need[i]
            for j in range(rects[k, 2], rects[k, 3]):
                nr[j] = 1
    near = np.empty((h, w), np.int32)  # pass 1: row of the chosen inside pixel of the column
    last = np.full(w, -1, np.int32)
    for i in range(h):
        src = inside[i]
        ni = near[i]
        for j in range(w):
            x = i if src[j] != 0 else last[j]
            last[j] = x
            ni[j] = x
    last[:] = -1
    for i in range(h - 1, -1, -1):
        src = inside[i]
        ni = near[i]
        for j in range(w):
            x = i if src[j] != 0 else last[j]
            last[j] = x
            u = ni[j]
            take = (x >= 0) & ((u < 0) | (x - i < i - u))
            ni[j] = x if take else u
    g = np.empty(w, np.int64)  # the envelope's columns
    gr = np.empty(w, np.int64)  # and their squared row offsets
    for i in range(h):
        ni = near[i]
        o = out[i]
        a_i = att[i]
        src = inside[i]
        nd = need[i]
        todo = np.uint8(0)
        for q in range(w):
            o[q] = a_i[q]
            todo |= nd[q] & (src[q] == 0)
        if todo == 0:
            continue
        l = -1
        for q in range(w):
            if ni[q] < 0:
                continue
            wr = np.int64(ni[q] - i) ** 2
            while l >= 1:
                a = g[l] - g[l - 1]
                b = q - g[l]
                c = a + b
                if c * gr[l] - b * gr[l - 1] - a * wr - a * b * c <= 0:
                    break
                l -= 1
            l += 1
            g[l] = q
            gr[l] = wr
        maxl = l  # >= 0: some column holds an inside pixel
        l = 0
        for q in range(w):
            if src[q] != 0 or nd[q] == 0:
                continue
            d1 = gr[l] + (g[l] - q) * (g[l] - q)
            while l < maxl:
                d2 = gr[l + 1] + (g[l + 1] - q) * (g[l + 1] - q)
                if d1 <= d2:
                    break
                d1 = d2
                l += 1
            p = g[l]
            o[q] = att[ni[p], p]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(r0, r1, c0, c1)`` (end exclusive) of the True pixels, or None when there are none."""
    m = mask if mask.dtype == np.bool_ else mask.astype(bool)
    box = np.zeros(4, np.int64)
    if not _nb_bbox(m.view(np.uint8), box):
        return None
    r0, r1, c0, c1 = box.tolist()
    return r0, r1, c0, c1


@functools.lru_cache(maxsize=64)
def _disk_rows(depth_px: float) -> np.ndarray:
    """The peel's structuring element for :func:`_nb_peel`: ``hw[dx]`` (int64, read-only,
    ``dx = 0..R``) = the largest ``dy`` with ``dx^2 + dy^2 < k0``, where ``k0`` is the least
    integer whose float64 square root exceeds ``depth_px`` (finite, >= 0). A background pixel
    at squared distance ``n`` stops a pixel from surviving exactly when ``sqrt(float64(n))
    <= depth_px`` — what the EDT test ``dist > depth_px`` decides — i.e. when ``n < k0``."""
    d = float(depth_px)
    n = max(0, int(d * d) - 2)
    while not math.sqrt(n) > d:
        n += 1
    rad = math.isqrt(n - 1)  # n >= 1: sqrt(0) > d is false for d >= 0
    hw = np.array([math.isqrt(n - 1 - dx * dx) for dx in range(rad + 1)], np.int64)
    hw.setflags(write=False)
    return hw


def _peel(m: np.ndarray, depth_px: float) -> tuple[np.ndarray, tuple[int, int, int, int] | None,
                                                  tuple[int, int, int, int] | None]:
    """``(peeled, item_box, peeled_box)``: :func:`peel_mask` of the bool ``(H, W)`` mask ``m``
    (``depth_px >= 0``) and the bounding boxes (as :func:`_bbox`) of ``m`` and of the result."""
    u8 = m.view(np.uint8)
    out = np.zeros(m.shape, dtype=bool)
    box = np.zeros(4, np.int64)
    if not _nb_bbox(u8, box):
        return out, None, None
    r0, r1, c0, c1 = box.tolist()
    d = float(depth_px)
    # no pixel of the box is as far as its height + width from the background (also keeps
    # the structuring element small for any depth)
    if d >= (r1 - r0) + (c1 - c0) or not _nb_peel(u8, r0, r1, c0, c1, _disk_rows(d), out.view(np.uint8), box):
        return out, (r0, r1, c0, c1), None
    a0, a1, b0, b1 = box.tolist()
    return out, (r0, r1, c0, c1), (a0, a1, b0, b1)


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
    Depth 0 returns a copy of the mask. Only the item's bounding box is worked on: the disk
    test runs on column distances to the background (:func:`_nb_peel`), with the
    comparison ``sqrt(float64(d^2)) > depth_px`` of ``scipy.ndimage.distance_transform_edt``'s
    distances moved onto the integer ``d^2``, so the mask is the same pixel for pixel
    (``tests/test_peel.py`` compares the two). About 0.06 ms for a 150×170 px item.
    """
    m = _as_mask(item_mask, None, "peel_mask")
    if not depth_px >= 0:
        raise ValueError(f"peel_mask: depth_px must be >= 0, got {depth_px}")
    if depth_px == 0:
        return m.copy()
    return _peel(m, depth_px)[0]


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
    starting at (0, 0); float64 ``(nr, nc)``. For a bool ``a`` (every caller here) these are
    pixel counts, exact, from :func:`_nb_window_counts`; other arrays go through an integral
    image (Crow 1984)."""
    nr = (a.shape[0] - t) // step + 1
    nc = (a.shape[1] - t) // step + 1
    if a.dtype == np.bool_:
        out = np.zeros((max(nr, 0), max(nc, 0)), np.int64)
        if out.size:
            _nb_window_counts(a.view(np.uint8), int(t), int(step), out)
        return out.astype(np.float64)
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(a, axis=0, dtype=np.float64), axis=1, out=ii[1:, 1:])
    r = np.arange(nr) * step
    c = np.arange(nc) * step
    return ii[np.ix_(r + t, c + t)] - ii[np.ix_(r, c + t)] - ii[np.ix_(r + t, c)] + ii[np.ix_(r, c)]


def _fill_nearest(att: np.ndarray, peeled: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``att`` over ``box`` with every pixel outside ``peeled`` replaced by the value of the
    nearest pixel inside it (Euclidean; among equally near ones the one of smallest column,
    then smallest row, which is what the EDT's scan order picks): exactly
    ``att[box][scipy.ndimage.distance_transform_edt(~peeled[box], return_distances=False,
    return_indices=True)]``, computed by :func:`_nb_fill_nearest`. ``peeled[box]`` must hold
    a True pixel."""
    r0, r1, c0, c1 = box
    sub = peeled[r0:r1, c0:c1]
    sub = sub if sub.dtype == np.bool_ else sub.astype(bool)
    src = att[r0:r1, c0:c1]
    out = np.empty(src.shape, src.dtype)
    _nb_fill_nearest(src, sub.view(np.uint8), np.array([[0, r1 - r0, 0, c1 - c0]], np.int64), out)
    return out


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

    Cost: about 0.25 ms on one core for a potato of ~150×170 px with ~36 tiles (numba
    kernels on the item's bounding box: the peel ~0.06 ms, the nearest fill ~0.13 ms, the
    coverage counts and tile copies).
    """
    cfg = config or PeelConfig()
    att = np.asarray(attenuation)
    if att.ndim != 2:
        raise ValueError(f"cut_tiles: attenuation must be 2-D (H, W), got shape {att.shape}")
    att = att.astype(np.float32, copy=False)
    mask = _as_mask(item_mask, att.shape, "cut_tiles item_mask")
    dmask = None if defect_mask is None else _as_mask(defect_mask, att.shape, "cut_tiles defect_mask")
    return _cut_tiles(att, mask, cfg, dmask, item_index, _peel(mask, cfg.depth_px))


def _cut_tiles(att: np.ndarray, mask: np.ndarray, cfg: PeelConfig, dmask: np.ndarray | None, item_index: int,
               peel: tuple[np.ndarray, Any, tuple[int, int, int, int] | None]) -> Tiles:
    """:func:`cut_tiles` of float32 ``att`` and bool ``mask``/``dmask`` (checked), given
    ``peel = _peel(mask, cfg.depth_px)``."""
    t, s = int(cfg.tile_size), int(cfg.stride)
    h, w = att.shape
    empty = Tiles.empty(t, dmask is not None)
    peeled, _, box = peel
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

    rows = rows.astype(np.int64, copy=False)
    cols = cols.astype(np.int64, copy=False)
    n = rows.size
    pixels = np.empty((n, t, t), np.float32)
    if cover.min() < 1.0 and cfg.fill == "nearest":
        # the kept tiles and every peeled pixel of the item: the nearest one may lie beyond the tiles
        fbox = (min(a0, int(rows.min())), max(a1, int(rows.max()) + t),
                min(b0, int(cols.min())), max(b1, int(cols.max()) + t))
        r, c = rows - fbox[0], cols - fbox[2]
        part = cover < 1.0  # only these tiles hold pixels to fill
        rects = np.stack([r[part], r[part] + t, c[part], c[part] + t], axis=1)
        filled = np.empty((fbox[1] - fbox[0], fbox[3] - fbox[2]), np.float32)
        _nb_fill_nearest(att[fbox[0]:fbox[1], fbox[2]:fbox[3]],
                         peeled[fbox[0]:fbox[1], fbox[2]:fbox[3]].view(np.uint8), rects, filled)
        _nb_cut(filled, r, c, t, pixels)
    else:
        _nb_cut(att, rows, cols, t, pixels)
        if cover.min() < 1.0:  # "mean"
            inside = np.lib.stride_tricks.sliding_window_view(peeled, (t, t))[rows, cols]
            n_in = inside.sum(axis=(1, 2))
            mean_in = np.where(inside, pixels, 0.0).sum(axis=(1, 2), dtype=np.float64) / n_in
            pixels = np.where(inside, pixels, mean_in[:, None, None].astype(np.float32))
    df = None
    if dmask is not None:
        counts = np.empty(n, np.int64)
        _nb_tile_counts(dmask.view(np.uint8), rows, cols, t, counts)
        df = (counts / float(t * t)).astype(np.float32)
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
    att = np.asarray(attenuation)
    if att.ndim != 2:
        raise ValueError(f"whole_item_image: attenuation must be 2-D (H, W), got shape {att.shape}")
    m = _as_mask(item_mask, att.shape, "whole_item_image item_mask")
    size = int(size)
    if size < 1:
        raise ValueError(f"whole_item_image: size must be >= 1, got {size}")
    return _whole_item_image(att, m, size, _bbox(m))


def _whole_item_image(att: np.ndarray, m: np.ndarray, size: int, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """:func:`whole_item_image` of checked inputs, given ``box = _bbox(m)``."""
    from skimage.transform import resize

    out = np.zeros((size, size), dtype=np.float32)
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
        peel = _peel(m, cfg.depth_px)  # (peeled mask, item box, peeled box)
        parts.append(_cut_tiles(att, m, cfg, dmask, idx, peel))
        if whole:
            box = peel[1]
            images.append(_whole_item_image(att, m, int(cfg.whole_size), box))
            origins.append((box[0], box[2]) if box else (0, 0))
            if dmask is not None:
                if box is None:
                    fractions.append(0.0)
                else:  # the item's pixels all lie in its box
                    r0, r1, c0, c1 = box
                    mb = m[r0:r1, c0:c1]
                    area = int(np.count_nonzero(mb))
                    fractions.append(float(np.count_nonzero(dmask[r0:r1, c0:c1] & mb)) / area)
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
