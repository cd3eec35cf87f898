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

**Implementation** (per-scan cost: about 1-2 ms for a 256x256 frame on one core, ~6x less
than calling scipy.ndimage / scikit-image): morphology, hole filling, labelling, the
distance transform, the h-maxima and the watershed are numba kernels (compiled on first use,
cached on disk) that compute exactly what ``scipy.ndimage.binary_opening`` /
``binary_closing`` / ``binary_fill_holes`` / ``label`` / ``distance_transform_edt`` and
``skimage.morphology.h_maxima`` / ``skimage.segmentation.watershed`` compute: the same masks
and labels, pixel for pixel (``tests/test_segment.py`` compares them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numba
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


_NJIT = dict(nogil=True, cache=True, error_model="numpy")

# ---------------------------------------------------------------------------------------------
# numba kernels (compiled on first use, cached on disk). Each computes exactly what the scipy /
# scikit-image call named in its docstring computes (binary morphology, hole filling, the
# exact Euclidean distance transform, the h-maxima by grey reconstruction): these are
# well-defined set or min/max operations, so any correct algorithm gives identical results.
# ---------------------------------------------------------------------------------------------


@numba.njit(**_NJIT)
def _nb_morph(src, offsets, radius, erode, out):  # pragma: no cover - compiled
    """``out`` = binary erosion (``erode``) or dilation of ``src`` (uint8 (H, W)) by the
    symmetric structuring element ``offsets`` ((K, 2) int, |offset| <= radius), outside the
    image False (``scipy.ndimage.binary_erosion`` / ``binary_dilation``, ``border_value=0``).
    Row-wise AND/OR of shifted rows of a zero-padded copy, so that the loops vectorise."""
    h, w = src.shape
    r = radius
    pad = np.zeros((h + 2 * r, w + 2 * r), np.uint8)
    for i in range(h):
        pad[r + i, r:r + w] = src[i]
    acc = np.empty(w, np.uint8)
    for i in range(h):
        di = offsets[0, 0]
        dj = offsets[0, 1]
        first = pad[r + i + di, r + dj:r + dj + w]
        for j in range(w):
            acc[j] = first[j]
        for k in range(1, offsets.shape[0]):
            di = offsets[k, 0]
            dj = offsets[k, 1]
            row = pad[r + i + di, r + dj:r + dj + w]
            if erode:
                for j in range(w):
                    acc[j] &= row[j]
            else:
                for j in range(w):
                    acc[j] |= row[j]
        o = out[i]
        for j in range(w):
            o[j] = acc[j]


@numba.njit(**_NJIT)
def _nb_fill_holes(fg, out):  # pragma: no cover - compiled
    """``out = scipy.ndimage.binary_fill_holes(fg)`` (uint8 (H, W)): background that is not
    4-connected to the image border becomes foreground. The background is handled as runs
    along rows; runs of consecutive rows that share a column are joined (union-find), and
    runs in the first or last row or touching the first or last column reach the border."""
    h, w = fg.shape
    cap = h * (w // 2 + 1) + 1
    rs = np.empty(cap, np.int32)  # run start column
    re = np.empty(cap, np.int32)  # run end column (exclusive)
    rr = np.empty(cap, np.int32)  # run row
    parent = np.empty(cap + 1, np.int32)
    row_first = np.empty(h + 1, np.int32)
    border = cap  # the node of the border
    parent[border] = border
    n = 0
    for i in range(h):
        row_first[i] = n
        f = fg[i]
        j = 0
        while j < w:
            if f[j]:
                j += 1
                continue
            s = j
            while j < w and not f[j]:
                j += 1
            rs[n] = s
            re[n] = j
            rr[n] = i
            parent[n] = n
            n += 1
    row_first[h] = n
    for k in range(n):
        i = rr[k]
        if i == 0 or i == h - 1 or rs[k] == 0 or re[k] == w:
            a = k
            while parent[a] != a:
                a = parent[a]
            b = border
            while parent[b] != b:
                b = parent[b]
            if a != b:
                parent[a] = b
    for i in range(1, h):
        a0 = row_first[i - 1]
        a1 = row_first[i]
        b0 = row_first[i]
        b1 = row_first[i + 1]
        p = a0
        q = b0
        while p < a1 and q < b1:
            if rs[p] < re[q] and rs[q] < re[p]:  # overlap: 4-connected
                x = p
                while parent[x] != x:
                    parent[x] = parent[parent[x]]
                    x = parent[x]
                y = q
                while parent[y] != y:
                    parent[y] = parent[parent[y]]
                    y = parent[y]
                if x != y:
                    if y == border:
                        parent[x] = y
                    else:
                        parent[y] = x
            if re[p] < re[q]:
                p += 1
            else:
                q += 1
    for i in range(h):
        out[i] = fg[i]
    for k in range(n):
        x = k
        while parent[x] != x:
            x = parent[x]
        if x != border:
            o = out[rr[k]]
            for j in range(rs[k], re[k]):
                o[j] = 1


@numba.njit(**_NJIT)
def _nb_edt(mask, out, sq):  # pragma: no cover - compiled
    """``out = scipy.ndimage.distance_transform_edt(mask)`` (float64): for each nonzero pixel
    the Euclidean distance to the nearest zero pixel, ``sqrt(dr^2 + dc^2)`` of the exact
    integer squared distance (Felzenszwalb & Huttenlocher's lower envelope of parabolas, the
    intersections compared exactly as fractions of integers), which goes to ``sq`` (int64).
    ``mask`` must hold a zero."""
    h, w = mask.shape
    inf = np.int64(4) * (h * h + w * w) + 1  # beyond any true squared distance
    f = np.empty((h, w), np.int64)  # distance to the nearest zero in the column (-> squared)
    big = np.int64(h + 1)  # "no zero seen yet" (more than any distance along a column)
    prev = f[0]
    m0 = mask[0]
    for j in range(w):
        prev[j] = 0 if m0[j] == 0 else big
    for i in range(1, h):  # downwards
        cur = f[i]
        mi = mask[i]
        prev = f[i - 1]
        for j in range(w):
            cur[j] = 0 if mi[j] == 0 else min(prev[j] + 1, big)
    for i in range(h - 2, -1, -1):  # upwards
        cur = f[i]
        nxt = f[i + 1]
        for j in range(w):
            cur[j] = min(cur[j], nxt[j] + 1)
    for i in range(h):
        cur = f[i]
        for j in range(w):
            d = cur[j]
            cur[j] = d * d if d < big else inf
    v = np.empty(w, np.int64)  # apexes of the parabolas of the lower envelope
    zn = np.empty(w, np.int64)  # its boundaries z[k] = zn[k] / zd[k] (z[0] = -inf)
    zd = np.empty(w, np.int64)
    for i in range(h):
        fi = f[i]
        k = 0
        v[0] = 0
        for q in range(1, w):
            while True:
                p = v[k]
                num = (fi[q] + q * q) - (fi[p] + p * p)
                den = 2 * (q - p)
                if k > 0 and num * zd[k] <= zn[k] * den:
                    k -= 1
                else:
                    break
            k += 1
            v[k] = q
            zn[k] = num
            zd[k] = den
        last = k
        k = 0
        o = out[i]
        si = sq[i]
        mi = mask[i]
        for q in range(w):
            while k < last and zn[k + 1] < q * zd[k + 1]:
                k += 1
            p = v[k]
            d2 = (q - p) * (q - p) + fi[p] if mi[q] else 0
            si[q] = d2
            o[q] = np.sqrt(np.float64(d2))


@numba.njit(**_NJIT)
def _nb_reconstruct(seed, mask):  # pragma: no cover - compiled
    """Grey reconstruction by dilation of ``seed`` under ``mask`` (float64 (H, W), seed <=
    mask), 8-connected (``skimage.morphology.reconstruction(seed, mask, 'dilation')``):
    Vincent's hybrid algorithm (a raster and an anti-raster scan, then a FIFO queue; L.
    Vincent, IEEE Trans. Image Process. 2, 1993), on copies with a border of -inf (never
    changed, never propagating). Only min and max of the input values: the result is exact."""
    h, w = seed.shape
    W = w + 2
    rec = np.full((h + 2) * W, -np.inf)
    msk = np.full((h + 2) * W, -np.inf)
    for i in range(h):
        rec[(i + 1) * W + 1:(i + 1) * W + 1 + w] = seed[i]
        msk[(i + 1) * W + 1:(i + 1) * W + 1 + w] = mask[i]
    for i in range(1, h + 1):  # raster scan: the neighbours above and to the left
        for p in range(i * W + 1, i * W + 1 + w):
            m = max(rec[p], rec[p - W - 1], rec[p - W], rec[p - W + 1], rec[p - 1])
            rec[p] = min(m, msk[p])
    cap = 2 * h * w + 1
    queue = np.empty(cap, np.int64)
    head = 0
    tail = 0
    for i in range(h, 0, -1):  # anti-raster scan: below and to the right
        for p in range(i * W + w, i * W, -1):
            m = max(rec[p], rec[p + W + 1], rec[p + W], rec[p + W - 1], rec[p + 1])
            m = min(m, msk[p])
            rec[p] = m
            if ((rec[p + 1] < m and rec[p + 1] < msk[p + 1])
                    or (rec[p + W - 1] < m and rec[p + W - 1] < msk[p + W - 1])
                    or (rec[p + W] < m and rec[p + W] < msk[p + W])
                    or (rec[p + W + 1] < m and rec[p + W + 1] < msk[p + W + 1])):
                queue[tail] = p
                tail += 1
    while head < tail:
        p = queue[head]
        head += 1
        m = rec[p]
        for q in (p - W - 1, p - W, p - W + 1, p - 1, p + 1, p + W - 1, p + W, p + W + 1):
            if rec[q] < m and msk[q] != rec[q]:
                rec[q] = min(m, msk[q])
                if tail == cap:  # reuse the consumed part of the queue
                    queue[:tail - head] = queue[head:tail].copy()
                    tail -= head
                    head = 0
                queue[tail] = q
                tail += 1
    out = np.empty((h, w))
    for i in range(h):
        out[i] = rec[(i + 1) * W + 1:(i + 1) * W + 1 + w]
    return out


@numba.njit(**_NJIT)
def _nb_label8(fg, labels, boxes):  # pragma: no cover - compiled
    """8-connected components of ``fg`` (uint8 (H, W)) as ``scipy.ndimage.label(fg,
    np.ones((3, 3)))`` numbers them (1, 2, ... in the raster order of each component's first
    pixel) into ``labels`` (int32 (H, W)); ``boxes`` (int64, >= (H * (W // 2 + 1), 5)) gets
    ``r0, c0, r1, c1, area`` per label (label k in row k - 1). Returns the number of labels.
    Runs along rows, joined (union-find) with the runs of the row above that touch them."""
    h, w = fg.shape
    cap = h * (w // 2 + 1) + 1
    rs = np.empty(cap, np.int32)
    re = np.empty(cap, np.int32)
    rr = np.empty(cap, np.int32)
    parent = np.empty(cap, np.int32)
    row_first = np.empty(h + 1, np.int32)
    n = 0
    for i in range(h):
        row_first[i] = n
        f = fg[i]
        j = 0
        while j < w:
            if not f[j]:
                j += 1
                continue
            s = j
            while j < w and f[j]:
                j += 1
            rs[n] = s
            re[n] = j
            rr[n] = i
            parent[n] = n
            n += 1
    row_first[h] = n
    for i in range(1, h):
        p = row_first[i - 1]
        a1 = row_first[i]
        q = row_first[i]
        b1 = row_first[i + 1]
        while p < a1 and q < b1:
            if rs[p] <= re[q] and rs[q] <= re[p]:  # touching, diagonals included
                x = p
                while parent[x] != x:
                    parent[x] = parent[parent[x]]
                    x = parent[x]
                y = q
                while parent[y] != y:
                    parent[y] = parent[parent[y]]
                    y = parent[y]
                if x < y:
                    parent[y] = x
                elif y < x:
                    parent[x] = y
            if re[p] < re[q]:
                p += 1
            else:
                q += 1
    # number the roots in the order of their first run (= first pixel in raster order)
    num = np.zeros(cap, np.int32)
    k = 0
    labels[:, :] = 0
    for t in range(n):
        x = t
        while parent[x] != x:
            x = parent[x]
        if num[x] == 0:
            k += 1
            num[x] = k
            b = boxes[k - 1]
            b[0] = rr[t]
            b[1] = rs[t]
            b[2] = rr[t] + 1
            b[3] = re[t]
            b[4] = 0
        lab = num[x]
        b = boxes[lab - 1]
        b[1] = min(b[1], rs[t])
        b[2] = rr[t] + 1
        b[3] = max(b[3], re[t])
        b[4] += re[t] - rs[t]
        labels[rr[t], rs[t]:re[t]] = lab
    return k


@numba.njit(**_NJIT)
def _nb_heap_push(val, age, idx, items, v, a, x):  # pragma: no cover - compiled
    """Push ``(v, a, x)`` on the binary heap ``val/age/idx[:items]`` ordered by (value, age),
    smallest first (sift-up: parents larger than the new item move down, which ends in the
    same arrangement as scikit-image's swaps). Returns the new size."""
    c = items
    while c > 0:
        par = (c + 1) // 2 - 1
        if v < val[par] or (v == val[par] and a < age[par]):
            val[c] = val[par]
            age[c] = age[par]
            idx[c] = idx[par]
            c = par
        else:
            break
    val[c] = v
    age[c] = a
    idx[c] = x
    return items + 1


@numba.njit(**_NJIT)
def _nb_heap_pop(val, age, idx, items):  # pragma: no cover - compiled
    """Remove the root of the heap of :func:`_nb_heap_push`: the last item sifts down from
    the root, at each level swapping with the smaller child (the left one on a tie) while that
    child is smaller than it. This is scikit-image's heappop (which compares the left child
    with the item, then the right child with the smaller of the two), written with the
    child chosen first so that the choice compiles to a conditional move. Returns the new
    size."""
    items -= 1
    if items == 0:
        return 0
    v = val[items]
    a = age[items]
    x = idx[items]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= items:
            break
        r = c + 1
        if r < items:
            rv = val[r]
            lv = val[c]
            c += (rv < lv) | ((rv == lv) & (age[r] < age[c]))
        cv = val[c]
        if cv < v or (cv == v and age[c] < a):
            val[i] = cv
            age[i] = age[c]
            idx[i] = idx[c]
            i = c
        else:
            break
    val[i] = v
    age[i] = a
    idx[i] = x
    return items


@numba.njit(**_NJIT)
def _nb_watershed_sq(sq, markers, mask):  # pragma: no cover - compiled
    """``skimage.segmentation.watershed(-sqrt(sq), markers, mask=mask)`` (connectivity 1, no
    compactness, no watershed line) for int64 squared distances ``sq``, int32 ``markers`` and
    bool ``mask`` (H, W): int32 labels, flooded in the same order.

    scikit-image pops ``(value, age)`` from a binary heap: markers pushed in raster order with
    age 0, then each unlabelled neighbour in the mask (up, left, right, down), labelled when
    pushed, with the next age and its value raised to the popped one when lower (as in
    scikit-image 0.26; tests/test_segment.py checks the two agree on random inputs). Here the
    value is the integer key ``max(sq) - sq`` (same order: ``sqrt`` is increasing and gives
    distinct floats for distinct integers). Apart from markers every item has its own age, so
    the pops are in (key, push order); and keys never decrease, since pushes are raised to
    the popped key: a bucket queue per key, FIFO, pops the same sequence. Only markers of equal
    value (equal keys, age 0) can leave the heap in an order that depends on the heap's
    shape. They leave it one after the other and the ages given meanwhile form a block no
    other item's age falls into, so when all of them have one label the order changes no
    label (each pixel pushed meanwhile gets that label, and keeps its order relative to every
    item of another label). So this runs scikit-image's heap (same sift-up/sift-down, so the
    same order for equal keys) while markers of equal value and different labels remain to
    be popped, then moves what is left to the bucket queue."""
    h, w = sq.shape
    W = w + 2
    size = (h + 2) * W
    dmax = 0
    for i in range(h):
        for j in range(w):
            if mask[i, j] and sq[i, j] > dmax:
                dmax = sq[i, j]
    key = np.zeros(size, np.int64)
    msk = np.zeros(size, np.uint8)
    out = np.zeros(size, np.int32)
    label_of = np.zeros(dmax + 1, np.int32)
    kmix = -1  # largest key of markers of equal value and different labels
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                p = (i + 1) * W + j + 1
                key[p] = dmax - sq[i, j]
                msk[p] = 1
                lab = markers[i, j]
                out[p] = lab
                if lab != 0:
                    d = sq[i, j]
                    if label_of[d] == 0:
                        label_of[d] = lab
                    elif label_of[d] != lab and dmax - d > kmix:
                        kmix = dmax - d
    hk = np.empty(size + 1, np.int64)
    ha = np.empty(size + 1, np.int64)
    hx = np.empty(size + 1, np.int64)
    items = 0
    for p in range(size):  # markers, raster order
        if out[p] != 0:
            items = _nb_heap_push(hk, ha, hx, items, key[p], 0, p)
    counter = 1
    while items > 0 and hk[0] <= kmix:
        e_key = hk[0]
        e_idx = hx[0]
        items = _nb_heap_pop(hk, ha, hx, items)
        lab = out[e_idx]
        for q in (e_idx - W, e_idx - 1, e_idx + 1, e_idx + W):
            if msk[q] == 0 or out[q] != 0:
                continue
            counter += 1
            out[q] = lab
            items = _nb_heap_push(hk, ha, hx, items, max(key[q], e_key), counter, q)
    # the rest: FIFO buckets per key, filled in (key, age) order
    head = np.full(dmax + 1, -1, np.int64)
    tail = np.full(dmax + 1, -1, np.int64)
    nxt = np.empty(size, np.int64)
    if items > 0:
        order = np.argsort(hk[:items] * (counter + 1) + ha[:items], kind="mergesort")
        for t in order:
            b = hk[t]
            p = hx[t]
            nxt[p] = -1
            if tail[b] < 0:
                head[b] = p
            else:
                nxt[tail[b]] = p
            tail[b] = p
    cur = 0
    while True:
        while cur <= dmax and head[cur] < 0:
            cur += 1
        if cur > dmax:
            break
        p = head[cur]
        head[cur] = nxt[p]
        if head[cur] < 0:
            tail[cur] = -1
        lab = out[p]
        for q in (p - W, p - 1, p + 1, p + W):
            if msk[q] == 0 or out[q] != 0:
                continue
            out[q] = lab
            b = key[q] if key[q] > cur else cur
            nxt[q] = -1
            if tail[b] < 0:
                head[b] = q
            else:
                nxt[tail[b]] = q
            tail[b] = q
    res = np.empty((h, w), np.int32)
    for i in range(h):
        res[i] = out[(i + 1) * W + 1:(i + 1) * W + 1 + w]
    return res


@numba.njit(**_NJIT)
def _nb_label_max(values, labels, n):  # pragma: no cover - compiled
    """``scipy.ndimage.maximum(values, labels, index=np.arange(n + 1))``: the largest value
    of each label 0..n (0 for a label without pixels)."""
    out = np.zeros(n + 1)
    seen = np.zeros(n + 1, np.bool_)
    h, w = values.shape
    for i in range(h):
        for j in range(w):
            k = labels[i, j]
            if 0 <= k <= n:
                v = values[i, j]
                if not seen[k] or v > out[k]:
                    out[k] = v
                    seen[k] = True
    return out


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _offsets(footprint: np.ndarray) -> tuple[np.ndarray, int]:
    """(K, 2) int64 offsets of a centred odd footprint's True cells, and its radius."""
    r = footprint.shape[0] // 2
    ii, jj = np.nonzero(footprint)
    return np.ascontiguousarray(np.stack([ii - r, jj - r], axis=1).astype(np.int64)), r


def _morph(img: np.ndarray, footprint: np.ndarray, erode: bool) -> np.ndarray:
    offs, r = _offsets(footprint)
    out = np.empty(img.shape, np.uint8)
    _nb_morph(img, offs, r, erode, out)
    return out


def _h_maxima(dist: np.ndarray, h: float) -> np.ndarray:
    """``skimage.morphology.h_maxima(dist, h)`` for a float64 image and float ``h`` (uint8):
    the same shift by ``h`` plus the relative resolution, the same reconstruction, the same
    ``residue >= h`` test."""
    if h > np.ptp(dist):
        return np.zeros(dist.shape, dtype=np.uint8)
    if h == 0:
        raise ValueError("h = 0 is ambiguous, use local_maxima() instead?")
    resolution = 2 * np.finfo(dist.dtype).resolution * np.abs(dist)
    shifted = dist - h - resolution
    rec = _nb_reconstruct(np.ascontiguousarray(shifted), np.ascontiguousarray(dist))
    return (dist - rec >= h).astype(np.uint8)


def object_mask(attenuation: np.ndarray, config: SegmentConfig | None = None) -> np.ndarray:
    """Steps 1–2: the bool ``(H, W)`` foreground of a float32 ``(H, W)`` normalised
    attenuation: ``attenuation > threshold`` (compared in float32), opening with a disk of
    ``opening_radius_px`` (border False), closing with a disk of ``closing_radius_px`` on the
    frame padded with background (so that objects are not glued to the edge), hole filling
    (background not 4-connected to the border)."""
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
    fg = (att > thr).view(np.uint8)
    if cfg.opening_radius_px > 0:
        disk = _disk(cfg.opening_radius_px)
        fg = _morph(_morph(fg, disk, erode=True), disk, erode=False)
    if cfg.closing_radius_px > 0:
        r = cfg.closing_radius_px
        disk = _disk(r)
        padded = np.pad(fg, r)  # closing must not glue objects to the frame edge
        fg = np.ascontiguousarray(_morph(_morph(padded, disk, erode=False), disk, erode=True)[r:-r, r:-r])
    out = np.empty(fg.shape, np.uint8)
    _nb_fill_holes(fg, out)
    return out.view(bool)


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
    peak = _nb_label_max(np.ascontiguousarray(dist, dtype=np.float64), np.ascontiguousarray(labels, dtype=np.int32), n)
    peak = {k: float(v) for k, v in enumerate(peak)}
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
    # dense labels: each value's rank among the values present (np.unique's inverse)
    present = np.zeros(n + 1, dtype=bool)
    present[out.ravel()] = True
    rank = (np.cumsum(present) - 1).astype(np.int32)
    dense = rank[out]
    return dense if out.min() == 0 else dense + 1


def _label8(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``scipy.ndimage.label(fg, np.ones((3, 3)))`` of a bool/uint8 ``(H, W)`` image, with
    the bounding box and area of each label: (int32 labels, int64 ``(n, 5)`` rows ``r0, c0,
    r1, c1, area``, n)."""
    u8 = np.ascontiguousarray(fg).view(np.uint8)
    h, w = u8.shape
    labels = np.empty((h, w), np.int32)
    boxes = np.empty((h * (w // 2 + 1) + 1, 5), np.int64)
    n = int(_nb_label8(u8, labels, boxes))
    return labels, boxes[:n], n


def _split(component: np.ndarray, depth_px: float, min_area_px: int, neck_ratio: float) -> np.ndarray | None:
    """:func:`split_touching`'s int32 labels, or None when the component stays whole."""
    padded = np.pad(component, 1)
    dist = np.empty(padded.shape)
    sq = np.empty(padded.shape, np.int64)
    _nb_edt(np.ascontiguousarray(padded != 0).view(np.uint8), dist, sq)
    peaks = _h_maxima(dist, depth_px)
    markers, _, n = _label8(peaks)
    if n <= 1:
        return None
    labels = _nb_watershed_sq(sq, markers, padded)  # = watershed(-dist, markers, mask=padded)
    labels = _merge_wide_necks(labels, dist, n, neck_ratio)[1:-1, 1:-1]
    k = int(labels.max())
    if k <= 1:
        return None
    areas = np.bincount(labels.ravel(), minlength=k + 1)[1:]
    if (areas < min_area_px).any():
        return None
    return labels.astype(np.int32)


def split_touching(component: np.ndarray, depth_px: float, min_area_px: int, neck_ratio: float = 0.7) -> np.ndarray:
    """Step 4 for one connected component (bool crop ``(h, w)``): int32 ``(h, w)`` labels
    1..k of its parts (k = 1 when it is not split).

    Markers: h-maxima of the Euclidean distance transform (``depth_px``, pixels) of the
    component padded by one background pixel, 8-connected; watershed of the negated distance
    (``skimage.segmentation.watershed``); then regions joined by a wide neck (``neck_ratio``,
    :func:`_merge_wide_necks`) are merged again — a lumpy or bilobed single tuber has a neck
    almost as wide as its lobes, two touching tubers meet along a narrow one. The split is
    kept only if every part has ``min_area_px`` pixels."""
    labels = _split(component, depth_px, min_area_px, neck_ratio)
    return component.astype(np.int32) if labels is None else labels


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
    with no object. Each item's ``mask`` is a bool crop ``(r1 - r0, c1 - c0)``.

    Cost: about 1.5-2 ms for a 256x256 frame on one core, up to ~3 ms with touching tubers
    (numba kernels, compiled on first use and cached on disk: the first call in a fresh
    environment compiles for several seconds).
    """
    cfg = config or SegmentConfig()
    fg = object_mask(attenuation, cfg)
    comp, boxes, n = _label8(fg)
    parts: list[tuple[int, int, int, int, np.ndarray]] = []
    for i in range(1, n + 1):
        r0, c0, r1, c1, area = (int(v) for v in boxes[i - 1])
        if area < cfg.min_area_px:
            continue
        crop = comp[r0:r1, c0:c1] == i
        labels = _split(crop, cfg.split_depth_px, cfg.min_area_px, cfg.neck_ratio) if cfg.split_touching else None
        if labels is None:  # one item: the component
            parts.append((r0, c0, r1, c1, crop))
            continue
        for j, sub in enumerate(ndimage.find_objects(labels), start=1):
            if sub is None:
                continue
            m = labels[sub] == j
            if int(m.sum()) < cfg.min_area_px:
                continue
            pr0 = r0 + sub[0].start
            pc0 = c0 + sub[1].start
            parts.append((pr0, pc0, pr0 + m.shape[0], pc0 + m.shape[1], m))
    keyed = []
    for r0, c0, r1, c1, m in parts:
        rr, cc = np.nonzero(m)
        keyed.append(((int(round(cc.mean() + c0)), int(round(rr.mean() + r0)), r0, c0), (r0, c0, r1, c1, m)))
    keyed.sort(key=lambda kv: kv[0])
    return [Item(index=k, r0=int(r0), c0=int(c0), r1=int(r1), c1=int(c1), area_px=int(m.sum()),
                 mask=np.ascontiguousarray(m))
            for k, (_, (r0, c0, r1, c1, m)) in enumerate(keyed)]
