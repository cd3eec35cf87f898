"""Items in a scan: one mask and bounding box per object (potato) in a preprocessed frame.

:func:`segment_items` works on normalised attenuation (:mod:`peelscan.preprocess`: 0 = open
beam, 1 = ``attenuation_scale``), where the machine's effects are already removed, so a
*fixed* threshold means the same thing on every machine and lot:

1. **Threshold**: ``attenuation > threshold`` (default 0.02 of the normalised range, i.e.
   0.08 nepers with the default scale of 4: ~4 mm of water-like tissue at 60 keV — the thin
   rim of a potato is inside, background noise after denoising is far below). A fixed
   threshold is preferred to Otsu's (Otsu, "A threshold selection method from gray-level
   histograms", IEEE Trans. SMC 9, 1979) because Otsu always finds two classes, even in an
   empty frame; ``method='otsu'`` is available and then never goes below ``threshold``.
2. **Morphology** (Serra, *Image Analysis and Mathematical Morphology*, 1982): opening with a
   disk of ``opening_radius_px`` removes noise specks and thin bridges; closing with a disk of
   ``closing_radius_px`` seals cracks open to the outline; hole filling keeps internal voids
   (hollow heart, a dark low-density defect) inside the item.
3. **Connected components** (8-connectivity).
4. **Split of touching objects** by the watershed of the negated Euclidean distance transform
   (Beucher & Lantuéjoul, "Use of watersheds in contour detection", 1979; Vincent & Soille,
   IEEE PAMI 13, 1991) with markers at the *h-maxima* of the distance transform (maxima at
   least ``split_depth_px`` above the saddle joining them), followed by a merge of parts whose
   common boundary (the neck) is wider than ``neck_ratio`` times the smaller part's width
   (both measured on the distance transform): two tubers touching meet along a narrow neck,
   while a lumpy or bilobed single tuber, which also has two distance maxima, has a neck
   almost as wide as its lobes. A split is kept only when every part is at least
   ``min_area_px``.
5. **Fragments** smaller than ``min_area_px`` pixels are dropped.
6. **Order**: items sorted by centroid column, then centroid row (rounded to a pixel), and
   numbered 0..n-1, so the same frame always gives the same indices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SegmentConfig:
    """Parameters of :func:`segment_items` (pixels unless said otherwise)."""

    threshold: float = 0.02
    """Normalised attenuation above which a pixel belongs to an object."""
    method: str = "fixed"
    """'fixed' (``threshold``) or 'otsu' (Otsu's threshold, never below ``threshold``)."""
    opening_radius_px: int = 2
    """Disk radius of the opening (noise specks, thin bridges)."""
    closing_radius_px: int = 2
    """Disk radius of the closing (cracks open to the outline)."""
    min_area_px: int = 200
    """Fragments (and watershed parts) smaller than this are dropped (not split off)."""
    split_touching: bool = True
    """Split touching objects by the distance-transform watershed."""
    split_depth_px: float = 2.0
    """Height of a distance-transform maximum above its saddle to be a watershed marker."""
    neck_ratio: float = 0.7
    """Parts joined by a neck wider than this share of the smaller part's width are one object
    (0.65-0.8 gave the right count on all of 180 synthetic frames of 1-4 tubers, touching or
    not, seeds 0-29 of :mod:`peelscan.synth`; 0.7 is the middle of that range)."""

    def __post_init__(self) -> None:
        if self.method not in ("fixed", "otsu"):
            raise ValueError(f"method must be 'fixed' or 'otsu', got {self.method!r}")
        if self.min_area_px < 1:
            raise ValueError(f"min_area_px must be >= 1, got {self.min_area_px}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass
class Item:
    """One object of a scan: bounding box rows ``r0:r1``, columns ``c0:c1`` (end exclusive),
    ``area_px`` pixels, ``mask`` bool ``(r1-r0, c1-c0)`` crop."""

    index: int
    r0: int
    c0: int
    r1: int
    c1: int
    area_px: int
    mask: np.ndarray

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The item's mask in a frame of ``shape`` (bool ``(H, W)``)."""
        out = np.zeros(shape, dtype=bool)
        out[self.r0:self.r1, self.c0:self.c1] = self.mask
        return out

    @property
    def centroid(self) -> tuple[float, float]:
        """(row, column) of the mask's centre of mass in frame coordinates."""
        rr, cc = np.nonzero(self.mask)
        return float(rr.mean() + self.r0), float(cc.mean() + self.c0)


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def object_mask(attenuation: np.ndarray, config: SegmentConfig | None = None) -> np.ndarray:
    """Steps 1–2: the bool ``(H, W)`` foreground after threshold, opening, closing, hole filling."""
    cfg = config or SegmentConfig()
    att = np.asarray(attenuation, dtype=np.float32)
    if att.ndim != 2:
        raise ValueError(f"attenuation must be a 2-D (H, W) array, got shape {att.shape}")
    if not np.all(np.isfinite(att)):
        raise ValueError("attenuation holds NaN or infinite values")
    thr = cfg.threshold
    if cfg.method == "otsu" and float(att.max()) > float(att.min()):
        from skimage.filters import threshold_otsu

        thr = max(thr, float(threshold_otsu(att)))
    fg = att > thr
    if cfg.opening_radius_px > 0:
        fg = ndimage.binary_opening(fg, structure=_disk(cfg.opening_radius_px))
    if cfg.closing_radius_px > 0:
        r = cfg.closing_radius_px
        padded = np.pad(fg, r)  # closing must not glue objects to the frame edge
        fg = ndimage.binary_closing(padded, structure=_disk(r))[r:-r, r:-r]
    return ndimage.binary_fill_holes(fg)


def _merge_wide_necks(labels: np.ndarray, dist: np.ndarray, n: int, neck_ratio: float) -> np.ndarray:
    """Merge watershed regions whose shared boundary is wide relative to the smaller region:
    ``neck > neck_ratio * min(peak_a, peak_b)`` with ``neck`` the largest distance-transform
    value on their common boundary (half the width of the neck) and ``peak`` each region's
    largest distance value (half its width). The widest relative neck is merged first."""
    parent = list(range(n + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    # necks between 4-adjacent regions: value = min of the two pixels' distances, max over the boundary
    necks: dict[tuple[int, int], float] = {}
    for a_lab, b_lab, a_d, b_d in ((labels[:, :-1], labels[:, 1:], dist[:, :-1], dist[:, 1:]),
                                   (labels[:-1, :], labels[1:, :], dist[:-1, :], dist[1:, :])):
        sel = (a_lab != b_lab) & (a_lab > 0) & (b_lab > 0)
        if not sel.any():
            continue
        la, lb = a_lab[sel], b_lab[sel]
        dv = np.minimum(a_d[sel], b_d[sel])
        for x, y, d in zip(np.minimum(la, lb).tolist(), np.maximum(la, lb).tolist(), dv.tolist()):
            if d > necks.get((x, y), -1.0):
                necks[(x, y)] = d
    peak = ndimage.maximum(dist, labels, index=np.arange(n + 1))
    peak = {k: float(v) for k, v in enumerate(np.atleast_1d(peak))}
    while True:
        best, best_pair = neck_ratio, None
        merged: dict[tuple[int, int], float] = {}
        for (x, y), d in necks.items():
            fx, fy = find(x), find(y)
            if fx == fy:
                continue
            key = (min(fx, fy), max(fx, fy))
            merged[key] = max(merged.get(key, -1.0), d)
        for (x, y), d in merged.items():
            r = d / max(min(peak[x], peak[y]), 1e-9)
            if r > best:
                best, best_pair = r, (x, y)
        if best_pair is None:
            break
        x, y = best_pair
        parent[y] = x
        peak[x] = max(peak[x], peak[y])
    lut = np.array([find(k) for k in range(n + 1)], dtype=np.int32)
    out = lut[labels]
    _, dense = np.unique(out, return_inverse=True)
    dense = dense.reshape(out.shape).astype(np.int32)
    return dense if out.min() == 0 else dense + 1


def split_touching(component: np.ndarray, depth_px: float, min_area_px: int, neck_ratio: float = 0.7) -> np.ndarray:
    """Step 4 for one connected component (bool crop): int32 labels 1..k of its parts
    (k = 1 when it is not split).

    Markers: h-maxima of the distance transform (``depth_px``); watershed of the negated
    distance; then regions joined by a wide neck (``neck_ratio``, :func:`_merge_wide_necks`)
    are merged again — a lumpy or bilobed single tuber has a neck almost as wide as its
    lobes, two touching tubers meet along a narrow one. The split is kept only if every part
    has ``min_area_px`` pixels."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    padded = np.pad(component, 1)
    dist = ndimage.distance_transform_edt(padded)
    peaks = h_maxima(dist, depth_px)
    markers, n = ndimage.label(peaks, structure=np.ones((3, 3)))
    if n <= 1:
        return component.astype(np.int32)
    labels = watershed(-dist, markers, mask=padded)
    labels = _merge_wide_necks(labels, dist, n, neck_ratio)[1:-1, 1:-1]
    k = int(labels.max())
    if k <= 1:
        return component.astype(np.int32)
    areas = np.bincount(labels.ravel(), minlength=k + 1)[1:]
    if (areas < min_area_px).any():
        return component.astype(np.int32)
    return labels.astype(np.int32)


def segment_items(attenuation: np.ndarray, config: SegmentConfig | None = None) -> list[Item]:
    """Segment every object of a preprocessed scan.

    Parameters
    ----------
    attenuation:
        ``(H, W)`` float32 normalised attenuation in ``[0, 1]`` (:func:`peelscan.preprocess.preprocess_scan`).
    config:
        :class:`SegmentConfig`.

    Returns
    -------
    Items ordered by centroid column then row, ``index`` 0..n-1; an empty list for a frame
    with no object.
    """
    cfg = config or SegmentConfig()
    fg = object_mask(attenuation, cfg)
    comp, n = ndimage.label(fg, structure=np.ones((3, 3)))
    parts: list[tuple[int, int, int, int, np.ndarray]] = []
    for i, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None:
            continue
        crop = comp[sl] == i
        area = int(crop.sum())
        if area < cfg.min_area_px:
            continue
        labels = split_touching(crop, cfg.split_depth_px, cfg.min_area_px, cfg.neck_ratio) if cfg.split_touching else crop.astype(np.int32)
        for j, sub in enumerate(ndimage.find_objects(labels), start=1):
            if sub is None:
                continue
            m = labels[sub] == j
            if int(m.sum()) < cfg.min_area_px:
                continue
            r0 = sl[0].start + sub[0].start
            c0 = sl[1].start + sub[1].start
            parts.append((r0, c0, r0 + m.shape[0], c0 + m.shape[1], m))
    keyed = []
    for r0, c0, r1, c1, m in parts:
        rr, cc = np.nonzero(m)
        keyed.append(((int(round(cc.mean() + c0)), int(round(rr.mean() + r0)), r0, c0), (r0, c0, r1, c1, m)))
    keyed.sort(key=lambda kv: kv[0])
    return [Item(index=k, r0=int(r0), c0=int(c0), r1=int(r1), c1=int(c1), area_px=int(m.sum()),
                 mask=np.ascontiguousarray(m))
            for k, (_, (r0, c0, r1, c1, m)) in enumerate(keyed)]
