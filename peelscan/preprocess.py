"""Detector counts -> normalised attenuation: undo the X-ray machine, keep the tissue.

A transmission X-ray image follows the Beer–Lambert law: a detector pixel behind an object of
linear attenuation ``mu(s)`` along the ray sees

    I = D + G * I0 * H * exp(-∫ mu ds)

with ``D`` the dark signal (offset with the source off), ``G`` the pixel's gain, ``I0`` the
source intensity and ``H`` the heel effect (the anode-side fall-off of intensity across the
fan; Heel effect: e.g. Bushberg et al., *The Essential Physics of Medical Imaging*, 3rd ed.,
ch. 6). Only the line integral ``A = ∫ mu ds`` (the *attenuation*, in nepers) depends on the
tissue. :func:`preprocess_scan` recovers it in these steps:

1. **Transmission** ``T = I_object / I_open_beam``, in one of three ways (``calibration``):

   - ``'frames'``: dark/flat (open-beam) correction ``T = (raw - dark) / (flat - dark)``
     (flat-field correction; e.g. Seibert et al., "Flat-field correction technique for
     digital detectors", Proc. SPIE 3336, 1998). For a line-scan detector the rows of a
     frame are time, so the frames are reduced to their per-column mean (less noise than one
     frame row; ``calibration_per_column``); a frame of the scan's exact shape may be used
     pixel by pixel instead. Without a dark frame the dark is taken as 0.
   - ``'self'`` (no flat frame): the open beam is estimated per column from the scan's own
     background (pixels with no object), as ``exp`` of the median background log-count in
     that column (step 2), after subtracting the dark frame when one exists. A line-scan
     detector gives each column its own gain, so one global open-beam value would leave
     stripes.
   - ``'pre-corrected'``: an 8-bit image without calibration frames is already flat-corrected
     transmission, ``T = value / 255``; a float32 image whose values are all at most
     ``precorrected_float_max`` is transmission as stored.

   **Zero, negative and saturated pixels**: ``T`` is clipped below at
   ``transmission_floor`` (default 1/65535, one count of a 16-bit detector), so a pixel with
   no signal (or negative after dark subtraction) gets the maximum attenuation
   ``A_max = -ln(floor)`` (≈ 11.09) instead of infinity. Pixels at or above the open beam
   (``T >= 1``: noise or a saturated detector) get attenuation 0; this clip is applied *after*
   denoising, so that background noise averages to 0 instead of being rectified upwards.

2. **Attenuation and residual gain/heel correction**: ``A = -ln T``. In the log domain gain,
   heel and source intensity are *additive*: ``A_measured(r, c) = A(r, c) + o_c(c) + o_r(r)``
   with a per-column term (pixel gain × heel, a fixed pattern of the detector line) and a
   per-row term (source intensity drifting over time as the belt moves). Both are estimated
   from background pixels, where ``A`` is 0: a pixel is background when, after a first rough
   correction (low percentile of each column and row), its attenuation is below
   ``max(background_threshold, background_sigmas × noise)`` (noise: robust MAD of vertical
   pixel differences) and it lies more than ``object_margin_px`` from such an object pixel.
   ``o_c`` = median background attenuation of the column; columns with fewer than
   ``min_background_px`` background pixels (an object covers the whole column) get a smooth
   polynomial fit (degree ``heel_degree``) of the other columns' ``o_c`` — the heel effect is
   smooth — plus their own fixed-pattern gain, estimated as the median over rows of the
   column's deviation from a median filter across columns (stripe removal; cf. Vo, Atwood &
   Drakopoulos, "Superior techniques for eliminating ring artifacts in X-ray micro-tomography",
   Opt. Express 26, 2018). ``o_r`` likewise per row (rows without background are
   interpolated). With frames or pre-corrected input these are *residual* corrections (a
   flat taken at another source intensity, a drifted gain); without frames they are the
   open-beam estimate itself. Two passes refine the background mask.

3. **Beam hardening** (optional, off by default): a polychromatic beam makes ``-ln T`` grow
   less than linearly with thickness. ``beam_hardening = (c2, c3, ...)`` applies the
   polynomial linearisation ``A' = A + c2 A² + c3 A³ + ...`` (Herman, "Correction for beam
   hardening in computed tomography", Phys. Med. Biol. 24, 1979), whose coefficients come from
   a step-wedge calibration of the machine. Off by default: the anomaly model compares tiles
   of one lot and one machine, and the mapping is monotonic, so it removes no information.

4. **Denoising**: a Gaussian filter of ``denoise_sigma`` pixels (default 0.7: halves the
   white-noise standard deviation while blurring edges by less than a pixel; 0 turns it off).
   Quantum (Poisson) noise is the dominant noise of X-ray images; a small linear filter keeps
   the attenuation of small defects quantitative, unlike a median filter that would erase
   stones of 1–2 px.

5. **Normalisation**: ``A / attenuation_scale`` clipped to ``[0, 1]``. The scale is fixed
   (default 4.0 nepers: ~190 mm of water at 60 keV, beyond any potato), not per scan, so
   that lots and scans stay comparable: 0 = open beam, 1 = ``attenuation_scale`` or more.

All arithmetic is in float64; the result is float32.

**Implementation** (per-scan cost: a 256x256 uint16 scan with frames takes about 2-3 ms on
one core, ~5x less than the plain numpy/scipy formulation): the full-image steps are numba
kernels (compiled on first use, cached on disk), each one pass over the image, the medians
and percentiles exact selections instead of sorts, the work arrays reused per thread. They
compute the same float64 values in the same order as the numpy/scipy formulation given in
the docstrings (``tests/test_preprocess.py`` compares the two), so the results are the
same bit for bit, not merely close.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import numba

from peelscan._select import nb_kth as _nb_kth

PREPROCESS_ALGORITHM = "pp1"


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of :func:`preprocess_scan` (units in brackets)."""

    attenuation_scale: float = 4.0
    """Attenuation [nepers, = -ln T] mapped to 1.0 in the normalised image."""
    denoise_sigma: float = 0.7
    """Gaussian denoising sigma [px]; 0 = off."""
    transmission_floor: float = 1.0 / 65535.0
    """Smallest transmission; zero/negative pixels get attenuation -ln(floor)."""
    background_threshold: float = 0.05
    """Attenuation [nepers] above which a pixel is surely object (raised to background_sigmas x noise)."""
    background_sigmas: float = 5.0
    """Object threshold in noise standard deviations."""
    object_margin_px: int = 3
    """Pixels around an object that are not used as background (its thin rim)."""
    min_background_px: int = 16
    """Fewest background pixels for a column's or row's own offset."""
    row_correction: bool = True
    """Correct per-row (source intensity over time) offsets as well as per-column ones."""
    heel_degree: int = 2
    """Polynomial degree of the smooth across-column profile for columns without background."""
    stripe_window_px: int = 9
    """Median window across columns for the fixed-pattern gain of columns without background."""
    calibration_per_column: bool = True
    """Reduce dark/flat frames to their per-column mean (line-scan detector)."""
    precorrected_float_max: float = 2.0
    """A float image with all values <= this and no frames is taken as transmission."""
    beam_hardening: tuple[float, ...] = field(default_factory=tuple)
    """Coefficients (c2, c3, ...) of A' = A + c2 A^2 + c3 A^3 + ...; empty = off."""

    def __post_init__(self) -> None:
        if not self.attenuation_scale > 0:
            raise ValueError(f"attenuation_scale must be > 0, got {self.attenuation_scale}")
        if self.denoise_sigma < 0:
            raise ValueError(f"denoise_sigma must be >= 0, got {self.denoise_sigma}")
        if not 0 < self.transmission_floor < 1:
            raise ValueError(f"transmission_floor must lie in (0, 1), got {self.transmission_floor}")
        object.__setattr__(self, "beam_hardening", tuple(float(c) for c in self.beam_hardening))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able parameters (stored with the preprocessed dataset)."""
        d = asdict(self)
        d["beam_hardening"] = list(self.beam_hardening)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`as_dict`; unknown keys are ignored (older/newer manifests)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in (d or {}).items() if k in names}
        if "beam_hardening" in kw:
            kw["beam_hardening"] = tuple(kw["beam_hardening"] or ())
        return cls(**kw)

    def version(self) -> str:
        """``pp1-<hash of the parameters>``: changes when the algorithm or a parameter does."""
        h = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{PREPROCESS_ALGORITHM}-{h}"


@dataclass
class Preprocessed:
    """Result of :func:`preprocess_scan`.

    ``attenuation``: ``(H, W)`` float32 normalised attenuation in ``[0, 1]``;
    ``calibration``: ``'frames' | 'self' | 'pre-corrected'``; ``open_beam``: the median open-beam
    level in the input's units (counts above dark; 255 or 1.0 for pre-corrected input);
    ``column_offset``/``row_offset``: the additive log-domain corrections applied [nepers];
    ``background``: the background mask used (bool ``(H, W)``)."""

    attenuation: np.ndarray
    calibration: str
    open_beam: float
    column_offset: np.ndarray = field(repr=False)
    row_offset: np.ndarray = field(repr=False)
    background: np.ndarray = field(repr=False)


# ---------------------------------------------------------------------------------------------
# numba kernels (compiled on first use per argument types, cached on disk)
# ---------------------------------------------------------------------------------------------
# One 256x256 scan must take a few ms on one core, so every full-image step is one pass in a
# kernel instead of a chain of numpy temporaries, and the medians are selections (O(n))
# instead of sorts. Every value that feeds a decision (noise, thresholds, background mask,
# offsets) is computed with the same IEEE float64 operations, in the same order, as the numpy
# formulation in the docstrings, so the results are identical, not merely close: a median
# or percentile is an order statistic of exactly the same float64 values (any exact selection
# finds the same one), and no kernel uses fastmath. The logarithm is numpy's (its SIMD log may
# differ from libm's in the last bit).

_NJIT = dict(nogil=True, cache=True, error_model="numpy")
_SELECT_SMALL = 2048  # up to this many values: equal-width buckets; above: float32-key buckets


@numba.njit(**_NJIT)
def _nb_kth2(v, n, k, k1):  # pragma: no cover - compiled
    """Ranks k and k1 (k1 = k or k + 1) of ``v[:n]`` by :func:`_nb_kth` (``v`` is reordered),
    the second as the smallest value after position k."""
    a = _nb_kth(v, n, k)
    if k1 == k:
        return a, a
    b = v[k1]
    for i in range(k1 + 1, n):
        if v[i] < b:
            b = v[i]
    return a, b


@numba.njit(**_NJIT)
def _nb_find_buckets(hist, k, k1):  # pragma: no cover - compiled
    """Buckets ``(bk, bk1)`` of a histogram that hold ranks k and k1 >= k, and ``start``, the
    number of values in the buckets below ``bk``."""
    cum = 0
    bk = -1
    start = 0
    b = 0
    while True:
        c = hist[b]
        if bk < 0 and cum + c > k:
            bk = b
            start = cum
        if cum + c > k1:
            return bk, b, start
        cum += c
        b += 1


@numba.njit(**_NJIT)
def _nb_sort_small(buf, m):  # pragma: no cover - compiled
    """Sort ``buf[:m]`` in place (insertion sort for a few values)."""
    if m > 24:
        buf[:m].sort()
        return
    for i in range(1, m):
        x = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > x:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = x


@numba.njit(**_NJIT)
def _nb_bucket_pass(src, n, k, k1, idx, hist, dst):  # pragma: no cover - compiled
    """One step of :func:`_nb_select2_ws` on ``src[:n]``: ``(True, a, b, 0, 0)`` with the
    ranks k, k1 when they are found, else ``(False, 0, 0, m, start)`` with the ``m`` values of
    the buckets that hold them gathered into ``dst`` and ``start`` values below them."""
    if n <= 32:
        for i in range(n):
            dst[i] = src[i]
        _nb_sort_small(dst, n)
        return True, dst[k], dst[k1], 0, 0
    mn = src[0]
    mx = src[0]
    for i in range(1, n):
        x = src[i]
        mn = x if x < mn else mn
        mx = x if x > mx else mx
    if not mx > mn:  # all equal
        return True, mn, mn, 0, 0
    nb = n >> 2
    scale = nb / (mx - mn)
    if not 0.0 < scale < 1e300:  # a range too wide or too narrow for float buckets
        for i in range(n):
            dst[i] = src[i]
        a, b = _nb_kth2(dst, n, k, k1)
        return True, a, b, 0, 0
    for b in range(nb):
        hist[b] = 0
    for i in range(n):
        b = np.int32((src[i] - mn) * scale)
        b = b if b < nb else nb - 1
        idx[i] = b
        hist[b] += 1
    bk, bk1, start = _nb_find_buckets(hist, k, k1)
    m = 0
    for i in range(n):  # branchless gather of the values in buckets bk..bk1
        key = idx[i]
        dst[m] = src[i]
        m += (key >= bk) & (key <= bk1)
    if m == n:  # no progress (the two ranks in the lowest and the highest bucket)
        a, b = _nb_kth2(dst, n, k, k1)
        return True, a, b, 0, 0
    return False, 0.0, 0.0, m, start


@numba.njit(**_NJIT)
def _nb_select2_ws(v, n, k, idx, hist, tmp, tmp2):  # pragma: no cover - compiled
    """Ranks k and k1 = min(k + 1, n - 1) of ``v[:n]`` (float64, no NaN; ``v`` is not
    modified), with workspaces ``idx`` (int32, >= n), ``hist`` (int32, >= n // 4 + 1),
    ``tmp`` and ``tmp2`` (float64, >= n + 1). A histogram of ``n / 4`` equal-width buckets
    between the minimum and maximum (the bucket index ``int((x - min) * scale)`` never
    decreases as x grows, so every value of a lower bucket is <= every value of a higher
    one); the values of the one or two buckets that hold the two ranks are gathered and the
    same is done on them, until a few are left (sorted) or they are all equal (quantised
    data has many ties)."""
    k1 = k + 1 if k + 1 < n else k
    done, a, b, m, start = _nb_bucket_pass(v, n, k, k1, idx, hist, tmp)
    while not done:
        n = m
        k -= start
        k1 -= start
        done, a, b, m, start = _nb_bucket_pass(tmp, n, k, k1, idx, hist, tmp2)
        if not done:
            tmp[:m] = tmp2[:m]
    return a, b


@numba.njit(**_NJIT)
def _nb_select2(v, n, k):  # pragma: no cover - compiled
    """Ranks k and k1 = min(k + 1, n - 1) of ``v[:n]`` (float64, no NaN; ``v`` is not
    modified). Up to ``_SELECT_SMALL`` values: :func:`_nb_select2_ws`. More: first a
    histogram of the top 16 bits of each value's order-preserving float32 key (float64 ->
    float32 rounding never decreases, so a value of a lower bucket is never larger than one
    of a higher bucket), then :func:`_nb_select2_ws` on the one or two buckets that hold the
    two ranks."""
    if n <= _SELECT_SMALL:
        return _nb_select2_ws(v, n, k, np.empty(n, np.int32), np.empty(n // 4 + 1, np.int32),
                              np.empty(n + 1), np.empty(n + 1))
    k1 = k + 1 if k + 1 < n else k
    f = np.empty(n, np.float32)
    for i in range(n):
        f[i] = v[i]
    bits = f.view(np.uint32)
    keys = np.empty(n, np.int32)
    kmin = 65535
    kmax = 0
    for i in range(n):
        u = np.int64(bits[i])
        if u >= 0x80000000:  # negative: larger magnitude, smaller key
            key = (0xFFFFFFFF - u) >> 16
        else:
            key = (u + 0x80000000) >> 16
        keys[i] = key
        kmin = key if key < kmin else kmin
        kmax = key if key > kmax else kmax
    hist = np.zeros(kmax - kmin + 1, np.int32)
    for i in range(n):
        hist[keys[i] - kmin] += 1
    bk, bk1, start = _nb_find_buckets(hist, k, k1)
    bk += kmin
    bk1 += kmin
    buf = np.empty(n + 1)
    m = 0
    for i in range(n):  # branchless gather of the values with bk <= key <= bk1
        key = keys[i]
        buf[m] = v[i]
        m += (key >= bk) & (key <= bk1)
    return _nb_select_gathered(buf, m, k - start, k1 - start)


@numba.njit(**_NJIT)
def _nb_select_gathered(buf, m, k, k1):  # pragma: no cover - compiled
    """Ranks k and k1 (k1 = k or k + 1) of ``buf[:m]``, with fresh workspaces."""
    a, b = _nb_select2_ws(buf, m, k, np.empty(m, np.int32), np.empty(m // 4 + 1, np.int32),
                          np.empty(m + 1), np.empty(m + 1))
    return a, (b if k1 > k else a)


@numba.njit(**_NJIT)
def _nb_median(v, n):  # pragma: no cover - compiled
    """``np.median(v[:n])`` (float64, no NaN; NaN when empty): the middle value, or the mean
    ``(a + b) / 2`` of the two middle values."""
    if n == 0:
        return np.nan
    a, b = _nb_select2(v, n, (n - 1) // 2)
    if n % 2 == 1:
        return a
    return (a + b) / 2.0


@numba.njit(**_NJIT)
def _nb_lerp(a, b, t):  # pragma: no cover - compiled
    """numpy's quantile interpolation (``numpy.lib._function_base_impl._lerp``)."""
    d = b - a
    if t >= 0.5:
        return b - d * (1.0 - t)
    return a + d * t


@numba.njit(**_NJIT)
def _nb_percentile(v, n, k, same, gamma):  # pragma: no cover - compiled
    """``np.percentile`` (method 'linear') of ``v[:n]`` given :func:`_percentile_index`."""
    a, b = _nb_select2(v, n, k)
    if same:
        b = a
    return _nb_lerp(a, b, gamma)


@numba.njit(**_NJIT)
def _nb_transmission(x, dd, den, floor, out):  # pragma: no cover - compiled
    """``out = max(T, floor)``, ``T = (x - dd) / den`` in float64; T = 1 where it is not finite
    (``den`` NaN: a dead flat pixel). ``dd``/``den``: (1, W) or (H, W)."""
    h, w = x.shape
    dr = dd.shape[0] > 1
    nr = den.shape[0] > 1
    for i in range(h):
        id_ = i if dr else 0
        in_ = i if nr else 0
        for j in range(w):
            t = (np.float64(x[i, j]) - dd[id_, j]) / den[in_, j]
            if not np.isfinite(t):
                t = 1.0
            out[i, j] = t if t >= floor else floor


@numba.njit(**_NJIT)
def _nb_subtract(x, dd, out):  # pragma: no cover - compiled
    """``out = x - dd`` in float64 (``dd``: (1, W) or (H, W))."""
    h, w = x.shape
    dr = dd.shape[0] > 1
    for i in range(h):
        id_ = i if dr else 0
        for j in range(w):
            out[i, j] = np.float64(x[i, j]) - dd[id_, j]


@numba.njit(**_NJIT)
def _nb_scale_floor(y, scale, floor):  # pragma: no cover - compiled
    """In place: ``y = max(y / scale, floor)``."""
    h, w = y.shape
    for i in range(h):
        for j in range(w):
            t = y[i, j] / scale
            y[i, j] = t if t >= floor else floor


@numba.njit(**_NJIT)
def _nb_residual(att, col, row, cur):  # pragma: no cover - compiled
    """``cur = att - col[None, :] - row[:, None]`` (evaluated left to right, as numpy)."""
    h, w = att.shape
    for i in range(h):
        ai = att[i]
        ci = cur[i]
        ri = row[i]
        for j in range(w):
            ci[j] = (ai[j] - col[j]) - ri


@numba.njit(**_NJIT)
def _nb_count_small_diffs(att, c):  # pragma: no cover - compiled
    """How many ``|att[i + 1, j] - att[i, j]|`` are <= c."""
    h, w = att.shape
    n = 0
    for i in range(h - 1):
        a0 = att[i]
        a1 = att[i + 1]
        for j in range(w):
            n += abs(a1[j] - a0[j]) <= c
    return n


@numba.njit(**_NJIT)
def _nb_noise(att, f, hist):  # pragma: no cover - compiled
    """``1.4826 * np.median(|diff(att, axis=0)|) / sqrt(2)`` (0 for a single row). The median
    as in :func:`_nb_select2`'s large case: the differences are >= 0, so the top 16 bits of
    their float32 values order them; a histogram of those, then a sort of the one or two
    buckets that hold the middle ranks; the differences are computed twice instead of stored.
    Scratch: ``f`` float32 (W,), ``hist`` int32 (0x7F81,)."""
    h, w = att.shape
    n = (h - 1) * w
    if n <= 0:
        return 0.0
    bits = f.view(np.uint32)
    hist[:] = 0
    for i in range(h - 1):
        a0 = att[i]
        a1 = att[i + 1]
        for j in range(w):
            f[j] = abs(a1[j] - a0[j])
        for j in range(w):
            hist[bits[j] >> 16] += 1
    lo = (n - 1) // 2
    hi = n // 2
    bk, bk1, start = _nb_find_buckets(hist, lo, hi)
    buf = np.empty(hist[bk] + hist[bk1] + 1)
    m = 0
    for i in range(h - 1):
        a0 = att[i]
        a1 = att[i + 1]
        for j in range(w):
            f[j] = abs(a1[j] - a0[j])
        for j in range(w):  # branchless gather of the differences in buckets bk..bk1
            key = bits[j] >> 16
            buf[m] = abs(a1[j] - a0[j])
            m += (key >= bk) & (key <= bk1)
    a, b = _nb_select_gathered(buf, m, lo - start, hi - start)
    med = a if n % 2 == 1 else (a + b) / 2.0
    return 1.4826 * med / np.sqrt(2.0)


@numba.njit(**_NJIT)
def _nb_background(att, thr, radius, bg, hor, pad, dil):  # pragma: no cover - compiled
    """``bg = ~dilate(open(att > thr))``: a 3x3 opening (border False, as
    ``scipy.ndimage.binary_opening``) of the object pixels, then (radius > 1) a maximum filter
    of width ``2 (radius - 1) + 1`` (scipy's mode 'nearest', i.e. the window clipped at the
    border). The opening's 3x3 dilation and the maximum filter are one box dilation of
    half-width ``radius`` of the 3x3 erosion: boxes add, and with both windows clipped at the
    border the composition is the clipped dilation by the sum. Returns whether any pixel is
    object. Scratch (uint8): ``hor`` (H, W); ``pad`` (H + 2 radius, W + 2 radius) and ``dil``
    (H + 2 radius, W), zero outside the image (kept so between calls)."""
    h, w = att.shape
    r = radius
    # 3x3 erosion of att > thr (outside the image counts as False): 3 along rows, then columns
    for i in range(h):
        ai = att[i]
        hi = hor[i]
        hi[0] = 0
        hi[w - 1] = 0
        for j in range(1, w - 1):
            hi[j] = (ai[j - 1] > thr) & (ai[j] > thr) & (ai[j + 1] > thr)
    anyo = 0
    pad[r, r:r + w] = 0
    pad[r + h - 1, r:r + w] = 0
    for i in range(1, h - 1):
        e = pad[r + i, r:r + w]
        p = hor[i - 1]
        c = hor[i]
        q = hor[i + 1]
        for j in range(w):
            e[j] = p[j] & c[j] & q[j]
            anyo |= e[j]
    if anyo == 0:
        bg[:, :] = True
        return h * w
    # box dilation (zeros outside the image = the clipped window): OR of 2r+1 shifted rows
    for i in range(h):
        e = pad[r + i]
        d = dil[r + i]
        for j in range(w):
            d[j] = e[j]
        for k in range(1, 2 * r + 1):
            for j in range(w):
                d[j] |= e[j + k]
    nbg = 0
    for i in range(h):
        bi = bg[i]
        acc = hor[i]  # reused
        d0 = dil[i]
        for j in range(w):
            acc[j] = d0[j]
        for k in range(1, 2 * r + 1):
            dk = dil[i + k]
            for j in range(w):
                acc[j] |= dk[j]
        for j in range(w):
            bi[j] = acc[j] == 0
            nbg += acc[j] == 0
    return nbg


@numba.njit(**_NJIT)
def _nb_masked_median_cols(att, sub, bg, min_count, out, buf):  # pragma: no cover - compiled
    """``out[j]`` = median over rows i with ``bg[i, j]`` of ``att[i, j] - sub[i]``, as
    ``0.5 * (v[lo] + v[hi])`` of the sorted values; NaN with fewer than ``min_count``.
    Returns the number of NaNs. Scratch: ``buf`` float64 (W, H + 8): one row of values per column, filled in one
    row-major pass (rows padded: a stride of a power of two would map them all to the same
    cache sets)."""
    h, w = att.shape
    idx = np.empty(h, np.int32)
    hist = np.empty(h // 4 + 1, np.int32)
    tmp = np.empty(h + 1)
    tmp2 = np.empty(h + 1)
    cnt = np.zeros(w, np.int64)
    for i in range(h):
        s = sub[i]
        ai = att[i]
        bi = bg[i]
        for j in range(w):  # branchless append
            buf[j, cnt[j]] = ai[j] - s
            cnt[j] += bi[j]
    nan = 0
    for j in range(w):
        n = cnt[j]
        if n < min_count or n == 0:
            out[j] = np.nan
            nan += 1
            continue
        a, b = _nb_select2_ws(buf[j], n, (n - 1) // 2, idx, hist, tmp, tmp2)
        out[j] = 0.5 * (a + (a if n % 2 == 1 else b))
    return nan


@numba.njit(**_NJIT)
def _nb_masked_median_rows(att, sub, bg, min_count, out):  # pragma: no cover - compiled
    """``out[i]`` = median over columns j with ``bg[i, j]`` of ``att[i, j] - sub[j]``
    (as :func:`_nb_masked_median_cols`). Returns the number of NaNs."""
    h, w = att.shape
    buf = np.empty(w)
    idx = np.empty(w, np.int32)
    hist = np.empty(w // 4 + 1, np.int32)
    tmp = np.empty(w + 1)
    tmp2 = np.empty(w + 1)
    nan = 0
    for i in range(h):
        n = 0
        ai = att[i]
        bi = bg[i]
        for j in range(w):  # branchless append
            buf[n] = ai[j] - sub[j]
            n += bi[j]
        if n < min_count or n == 0:
            out[i] = np.nan
            nan += 1
            continue
        a, b = _nb_select2_ws(buf, n, (n - 1) // 2, idx, hist, tmp, tmp2)
        out[i] = 0.5 * (a + (a if n % 2 == 1 else b))
    return nan


@numba.njit(**_NJIT)
def _nb_column_stripes(att, k, out):  # pragma: no cover - compiled
    """``out = np.median(att - median_filter(att, size=(1, k), mode='nearest'), axis=0)``
    (k odd): the running median per row (k = 9: the 19-comparator median network of
    Paeth/Devillard on whole shifted rows, which vectorises; other k: a sorted sliding
    window), then a selection per column."""
    h, w = att.shape
    r = k // 2
    diff = np.empty((w, h + 8))  # transposed (padded rows): columns contiguous for the selections
    if k == 9:
        ext = np.empty(w + 8)
        p = np.empty((9, w))
        net = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
               (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))
        for i in range(h):
            ai = att[i]
            for j in range(w):
                ext[j + 4] = ai[j]
            for j in range(4):
                ext[j] = ai[0]
                ext[w + 4 + j] = ai[w - 1]
            for o in range(9):
                po = p[o]
                for j in range(w):
                    po[j] = ext[j + o]
            for c in range(19):
                pa = p[net[c][0]]
                pb = p[net[c][1]]
                for j in range(w):
                    x = pa[j]
                    y = pb[j]
                    pa[j] = x if x <= y else y
                    pb[j] = y if x <= y else x
            med = p[4]
            for j in range(w):
                diff[j, i] = ai[j] - med[j]
    win = np.empty(k)
    for i in range(h if k != 9 else 0):
        for o in range(k):
            jj = min(max(o - r, 0), w - 1)
            win[o] = att[i, jj]
        win.sort()
        for j in range(w):
            diff[j, i] = att[i, j] - win[r]
            if j + 1 < w:
                old = att[i, max(j - r, 0)]
                new = att[i, min(j + 1 + r, w - 1)]
                p = 0
                while win[p] != old:
                    p += 1
                # remove win[p], insert new, keep sorted
                if new >= old:
                    while p + 1 < k and win[p + 1] < new:
                        win[p] = win[p + 1]
                        p += 1
                else:
                    while p > 0 and win[p - 1] > new:
                        win[p] = win[p - 1]
                        p -= 1
                win[p] = new
    idx = np.empty(h, np.int32)
    hist = np.empty(h // 4 + 1, np.int32)
    tmp = np.empty(h + 1)
    tmp2 = np.empty(h + 1)
    for j in range(w):
        a, b = _nb_select2_ws(diff[j], h, (h - 1) // 2, idx, hist, tmp, tmp2)
        out[j] = a if h % 2 == 1 else (a + b) / 2.0


@numba.njit(**_NJIT)
def _nb_percentile_cols(att, sub, k, same, gamma, out):  # pragma: no cover - compiled
    """``out = np.percentile(att - sub[None, :], q, axis=0)`` with :func:`_percentile_index`'s
    ``k, same, gamma`` for q."""
    h, w = att.shape
    buf = np.empty((w, h))
    for i in range(h):
        for j in range(w):
            buf[j, i] = att[i, j] - sub[j]
    idx = np.empty(h, np.int32)
    hist = np.empty(h // 4 + 1, np.int32)
    tmp = np.empty(h + 1)
    tmp2 = np.empty(h + 1)
    for j in range(w):
        a, b = _nb_select2_ws(buf[j], h, k, idx, hist, tmp, tmp2)
        out[j] = _nb_lerp(a, a if same else b, gamma)


@numba.njit(**_NJIT)
def _nb_percentile_rows(att, sub, k, same, gamma, out):  # pragma: no cover - compiled
    """``out = np.percentile(att - sub[None, :], q, axis=1)``."""
    h, w = att.shape
    buf = np.empty(w)
    idx = np.empty(w, np.int32)
    hist = np.empty(w // 4 + 1, np.int32)
    tmp = np.empty(w + 1)
    tmp2 = np.empty(w + 1)
    for i in range(h):
        for j in range(w):
            buf[j] = att[i, j] - sub[j]
        a, b = _nb_select2_ws(buf, w, k, idx, hist, tmp, tmp2)
        out[i] = _nb_lerp(a, a if same else b, gamma)


@numba.njit(**_NJIT)
def _nb_finish(att, col, row, a_max, weights, scale, out, a):  # pragma: no cover - compiled
    """``out = clip(clip(G(min(att - col - row, a_max)), 0) / scale, 0, 1)`` as float32, with
    ``G`` the separable filter ``weights`` (odd length, symmetric) along axis 0 then axis 1,
    edges extended (scipy's mode 'nearest'), each output summed as scipy's symmetric
    ``correlate1d`` does: ``x0 w0 + sum_k (x[-k] + x[+k]) w_k`` for k = r..1. (Loops over
    whole rows, so that they vectorise.) Scratch: ``a`` float64 (H, W)."""
    h, w = att.shape
    r = weights.size // 2
    w0 = weights[r]
    for i in range(h):
        ai = a[i]
        src = att[i]
        ri = row[i]
        for j in range(w):
            v = (src[j] - col[j]) - ri
            ai[j] = v if v <= a_max else a_max
    ext = np.empty(w + 2 * r)
    acc = np.empty(w)
    for i in range(h):
        # along axis 0 into the middle of ext
        mid = ext[r:r + w]
        ai = a[i]
        for j in range(w):
            mid[j] = ai[j] * w0
        for kk in range(r, 0, -1):
            wk = weights[r - kk]
            up = a[max(i - kk, 0)]
            dn = a[min(i + kk, h - 1)]
            for j in range(w):
                mid[j] += (up[j] + dn[j]) * wk
        # along axis 1
        ext[:r] = mid[0]
        ext[w + r:] = mid[w - 1]
        for j in range(w):
            acc[j] = mid[j] * w0
        for kk in range(r, 0, -1):
            wk = weights[r - kk]
            left = ext[r - kk:r - kk + w]
            right = ext[r + kk:r + kk + w]
            for j in range(w):
                acc[j] += (left[j] + right[j]) * wk
        oi = out[i]
        for j in range(w):
            s = acc[j]
            s = s if s > 0.0 else 0.0
            s = s / scale
            s = s if s > 0.0 else 0.0
            s = s if s < 1.0 else 1.0
            oi[j] = np.float32(s)


def _percentile_index(n: int, q: float) -> tuple[int, bool, float]:
    """``(k, same, gamma)`` of numpy's 'linear' percentile ``q`` of ``n`` values: the result is
    ``lerp(v_k, v_k+1, gamma)`` (``v_k`` twice when ``same``), with the index arithmetic of
    ``numpy.percentile`` (virtual index ``(n - 1) * (q / 100)`` in float64)."""
    virtual = (n - 1) * np.true_divide(q, 100)
    prev = np.floor(virtual)
    gamma = float(virtual - prev)
    if virtual >= n - 1:
        return n - 1, True, gamma
    if virtual < 0:
        return 0, True, gamma
    return int(prev), False, gamma


def _gaussian_weights(sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's 1-D kernel (truncate 4), as passed to correlate1d."""
    radius = int(4.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return np.ascontiguousarray((phi / phi.sum())[::-1])


def _as_2d(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` as a 2-D numeric array, checked finite; not converted (the kernels read any
    integer or float dtype as float64)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    if a.dtype.kind not in "uif":
        raise ValueError(f"{name} must hold numbers, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _frame_for(name: str, frame: np.ndarray, shape: tuple[int, int], per_column: bool) -> np.ndarray:
    """A calibration frame as a float64 array broadcastable to ``shape``: its per-column mean
    ``(1, W)``, or the frame itself when it has the scan's shape and ``per_column`` is off."""
    f = _as_2d(name, frame).astype(np.float64)
    if f.shape[1] != shape[1]:
        raise ValueError(f"{name} frame width {f.shape[1]} does not match the scan width {shape[1]}")
    if not per_column and f.shape == shape:
        return f
    return f.mean(axis=0, keepdims=True)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


class _Scratch:
    """Work arrays of the kernels for one image shape and dilation radius, reused from scan
    to scan by a thread (:func:`_scratch`): a fresh 0.5 MB array costs ~128 page faults
    (~0.2 ms in a VM), as much as a kernel."""

    def __init__(self, h: int, w: int, radius: int):
        self.att = np.empty((h, w))  # attenuation before the offset correction
        self.cur = np.empty((h, w))  # residual image / denoising input
        self.col_buf = np.empty((w, h + 8))  # masked medians along columns
        self.row_f32 = np.empty(w, np.float32)  # noise
        self.hist = np.empty(0x7F81, np.int32)  # noise
        self.hor = np.empty((h, w), np.uint8)  # background mask
        self.pad = np.zeros((h + 2 * radius, w + 2 * radius), np.uint8)
        self.dil = np.zeros((h + 2 * radius, w), np.uint8)
        self.radius = radius


_SCRATCH = threading.local()


def _scratch(h: int, w: int, radius: int) -> _Scratch:
    """This thread's :class:`_Scratch` for the shape (a few shapes kept)."""
    cache = getattr(_SCRATCH, "cache", None)
    if cache is None:
        cache = _SCRATCH.cache = {}
    key = (h, w, radius)
    ws = cache.get(key)
    if ws is None:
        if len(cache) >= 4:
            cache.clear()
        ws = cache[key] = _Scratch(h, w, radius)
    return ws


def _noise(att: np.ndarray, ws: _Scratch) -> float:
    return float(_nb_noise(att, ws.row_f32, ws.hist))


def estimate_noise(att: np.ndarray) -> float:
    """Robust noise standard deviation of an attenuation image ``(H, W)`` [nepers]: MAD of the
    vertical differences (along a detector column the gain cancels), / sqrt(2) for the
    difference: ``1.4826 * median(|diff(att, axis=0)|) / sqrt(2)`` (in float64); 0 for a
    single row."""
    a = _f64(att)
    return float(_nb_noise(a, np.empty(a.shape[1], np.float32), np.empty(0x7F81, np.int32)))


def _masked_median(values: np.ndarray, mask: np.ndarray, axis: int, min_count: int) -> np.ndarray:
    """Median of ``values`` (float64 ``(H, W)``) over ``mask`` along ``axis`` (0 or 1); NaN
    where fewer than ``min_count`` (and at least 1) values. Even counts: the mean of the two
    middle values."""
    v = _f64(values)
    m = np.ascontiguousarray(mask, dtype=bool)
    count = max(1, int(min_count))
    h, w = v.shape
    if axis == 0:
        out = np.empty(w)
        _nb_masked_median_cols(v, np.zeros(h), m, count, out, np.empty((w, h + 8)))
    else:
        out = np.empty(h)
        _nb_masked_median_rows(v, np.zeros(w), m, count, out)
    return out


def _fill_columns(offset: np.ndarray, stripe: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Fill NaN column offsets (no background) with a smooth polynomial of the others plus the
    column's fixed-pattern deviation from its neighbours (stripe estimate)."""
    bad = ~np.isfinite(offset)
    if not bad.any():
        return offset
    cols = np.arange(offset.size, dtype=np.float64)
    good = ~bad
    out = offset.copy()
    if good.sum() >= cfg.heel_degree + 2:
        x = cols / max(1, offset.size - 1)
        coef = np.polynomial.polynomial.polyfit(x[good], offset[good], cfg.heel_degree)
        out[bad] = np.polynomial.polynomial.polyval(x[bad], coef)
    elif good.any():
        out[bad] = float(np.median(offset[good]))
    else:
        out[bad] = 0.0
    # fixed-pattern gain of the filled columns: how much each column sits above its neighbours
    # (``stripe``: :func:`column_stripes` of the image; row offsets do not change it)
    out[bad] += stripe[bad]
    return out


def _fill_rows(offset: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(offset)
    if not bad.any():
        return offset
    if bad.all():
        return np.zeros_like(offset)
    idx = np.arange(offset.size)
    out = offset.copy()
    out[bad] = np.interp(idx[bad], idx[~bad], offset[~bad])
    return out


def _radius(cfg: PreprocessConfig) -> int:
    """Half-width of the box dilation of :func:`_nb_background`: 1 (the opening) + margin."""
    return 1 + max(int(cfg.object_margin_px), 0)


def _sigma_of(med: float) -> float:
    """:func:`estimate_noise` of a median absolute difference (the same float operations)."""
    return float(1.4826 * med / np.sqrt(2.0))


def _median_bound(cfg: PreprocessConfig) -> float:
    """A median absolute difference ``c`` (float64, just below ``background_threshold /
    background_sigmas`` in noise units) whose noise leaves the object threshold at
    ``background_threshold``: ``background_sigmas * sigma(c) <= background_threshold``, and
    so does every smaller median (the float operations are monotonic); -1 when there is
    none."""
    return _median_bound_of(float(cfg.background_threshold), float(cfg.background_sigmas))


@functools.lru_cache(maxsize=64)
def _median_bound_of(bt: float, bs: float) -> float:
    if not bs > 0:
        return -1.0
    c = bt / bs / 1.4826 * np.sqrt(2.0)
    for _ in range(64):
        if not c >= 0:
            return -1.0
        if bs * _sigma_of(c) <= bt:
            return float(c)
        c = float(np.nextafter(c, -np.inf)) if c > 0 else -1.0
    return -1.0


def _threshold(att: np.ndarray, cfg: PreprocessConfig, ws: _Scratch) -> float:
    """``max(background_threshold, background_sigmas * estimate_noise(att))``. The median is
    only needed when it could raise the threshold: when more than half of the differences are
    <= :func:`_median_bound` (one counting pass), so is the median, and the threshold is
    ``background_threshold``."""
    h, w = att.shape
    n = (h - 1) * w
    c = _median_bound(cfg)
    if n > 0 and c >= 0 and _nb_count_small_diffs(att, c) > n // 2:
        return float(cfg.background_threshold)
    return max(cfg.background_threshold, cfg.background_sigmas * _noise(att, ws))


def _background(att: np.ndarray, cfg: PreprocessConfig, ws: _Scratch) -> tuple[np.ndarray, int]:
    """:func:`background_mask` of a C-contiguous float64 image, and its number of pixels."""
    thr = _threshold(att, cfg, ws)
    bg = np.empty(att.shape, dtype=bool)
    nbg = _nb_background(att, float(thr), ws.radius, bg, ws.hor, ws.pad, ws.dil)
    return bg, int(nbg)


def background_mask(att: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Pixels of an (approximately corrected) attenuation image ``(H, W)`` [nepers] that show
    open beam: below the object threshold ``max(background_threshold, background_sigmas x
    noise)`` (:func:`estimate_noise`), after a 3x3 opening (``scipy.ndimage.binary_opening``,
    border False) of the object pixels, so that lone noise pixels and one-column stripes do
    not count, and farther than ``object_margin_px`` from an object pixel (a maximum filter of
    width ``2 object_margin_px + 1``, edges extended). bool ``(H, W)``."""
    # an object is a blob: the opening drops lone noise pixels and one-column stripes left by
    # a mis-estimated gain, which would otherwise hide their whole column (and its neighbours)
    a = _f64(att)
    return _background(a, cfg, _Scratch(a.shape[0], a.shape[1], _radius(cfg)))[0]


def column_stripes(att: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The fixed-pattern (high-frequency) part of the per-column offsets [nepers], shape (W,):
    the median over all rows of each column's deviation from a median filter of width
    ``stripe_window_px`` (made odd, at least 3) across columns (edges extended). Objects are
    smooth at the scale of a few pixels and the gain pattern is the same in every row, so this
    works in columns an object covers too (stripe removal; Vo, Atwood & Drakopoulos, Opt.
    Express 26, 2018)."""
    a = _f64(att)
    k = max(3, cfg.stripe_window_px | 1)
    out = np.empty(a.shape[1])
    _nb_column_stripes(a, k, out)
    return out


def _smooth_fit(values: np.ndarray, keep: np.ndarray, degree: int) -> np.ndarray:
    x = np.arange(values.size) / max(1, values.size - 1)
    coef = np.polynomial.polynomial.polyfit(x[keep], values[keep], degree)
    return np.polynomial.polynomial.polyval(x, coef)


def rough_column_offsets(att: np.ndarray, cfg: PreprocessConfig, stripe: np.ndarray | None = None) -> np.ndarray:
    """First per-column offset estimate [nepers], shape (W,), without any background mask.

    The fixed-pattern part comes from :func:`column_stripes`; on the destriped image the 5th
    percentile of each column is the open-beam level where at least 5% of the column is
    background. Where it sits clearly *above* a smooth robust fit across columns (degree
    ``heel_degree``; one-sided clipping at max(3 MAD-sigma, ``background_threshold``),
    iterated), an object covers the column and the fit is used instead."""
    a = _f64(att)
    h, w = a.shape
    if stripe is None:
        stripe = column_stripes(a, cfg)
    low = np.empty(w)
    _nb_percentile_cols(a, _f64(stripe), *_percentile_index(h, 5), low)
    if w < cfg.heel_degree + 3:
        return low + stripe
    # lower envelope first (ModPoly: Lieber & Mahadevan-Jansen, Appl. Spectrosc. 57, 2003):
    # values above the fit are replaced by it, so object columns stop pulling the fit up
    env = low.copy()
    all_cols = np.ones(w, dtype=bool)
    for _ in range(20):
        fit = _smooth_fit(env, all_cols, cfg.heel_degree)
        new_env = np.minimum(env, fit)
        if float(np.max(env - new_env)) < 1e-4:
            break
        env = new_env
    # spread of the column levels around the envelope (MAD; objects cover a minority of columns)
    res0 = low - fit
    sigma = 1.4826 * float(np.median(np.abs(res0 - np.median(res0))))
    thr = max(4.0 * sigma, cfg.background_threshold)
    keep = (low - fit) < thr + 2.0 * sigma  # the envelope lies ~2 sigma under the mean
    for _ in range(3):
        if keep.sum() < cfg.heel_degree + 2:
            break
        fit = _smooth_fit(low, keep, cfg.heel_degree)
        new_keep = (low - fit) < thr
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return np.where(keep, low, fit) + stripe


def correct_offsets(att: np.ndarray, cfg: PreprocessConfig, rough: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Estimate and remove the additive per-column and per-row offsets of an attenuation
    image (log domain) from its background.

    ``att``: float64 ``(H, W)`` [nepers], background not necessarily at 0. ``rough``: start
    from a low-percentile estimate (no calibration at all) rather than from zero offsets.
    Returns (corrected attenuation float64 ``(H, W)`` = ``att - col[None, :] - row[:, None]``,
    column offsets float64 (W,), row offsets float64 (H,), background mask bool ``(H, W)``).
    """
    att = _f64(att)
    col, row, bg = _offsets(att, cfg, rough, _Scratch(att.shape[0], att.shape[1], _radius(cfg)))
    cur = np.empty_like(att)
    _nb_residual(att, col, row, cur)
    return cur, col, row, bg


def _offsets(att: np.ndarray, cfg: PreprocessConfig, rough: bool, ws: _Scratch
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column offsets (W,), row offsets (H,) and background mask of :func:`correct_offsets`
    (``att``: C-contiguous float64, not ``ws.cur``); two passes of background mask -> masked
    medians."""
    h, w = att.shape
    col = np.zeros(w)
    row = np.zeros(h)
    stripe: np.ndarray | None = None
    if rough:
        stripe = column_stripes(att, cfg)
        col = rough_column_offsets(att, cfg, stripe)
        if cfg.row_correction:
            row = np.empty(h)
            _nb_percentile_rows(att, col, *_percentile_index(w, 5), row)
    min_col = max(1, min(cfg.min_background_px, h))
    min_row = max(1, min(cfg.min_background_px, w))
    bg = np.ones_like(att, dtype=bool)
    cur = ws.cur
    for _ in range(2):
        _nb_residual(att, col, row, cur)
        bg, nbg = _background(cur, cfg, ws)
        if nbg == 0:
            break
        new_col = np.empty(w)
        n_nan = _nb_masked_median_cols(att, row, bg, min_col, new_col, ws.col_buf)
        if n_nan:  # columns without enough background (covered by an object)
            if n_nan == w and rough:
                new_col = col  # no background anywhere: keep the percentile estimate
            elif stripe is None:
                stripe = column_stripes(att, cfg)
            col = _fill_columns(new_col, stripe if stripe is not None else np.zeros(w), cfg)
        else:
            col = new_col
        if cfg.row_correction:
            new_row = np.empty(h)
            if _nb_masked_median_rows(att, col, bg, min_row, new_row):
                new_row = _fill_rows(new_row)
            row = new_row
    return col, row, bg


def preprocess_scan(raw: np.ndarray, dark: np.ndarray | None = None, flat: np.ndarray | None = None,
                    config: PreprocessConfig | None = None) -> Preprocessed:
    """Turn one raw scan into normalised attenuation (see the module docstring for the physics).

    Parameters
    ----------
    raw:
        ``(H, W)`` detector counts (uint16/uint8/float32), or pre-corrected transmission
        (uint8 ``T*255`` or float ``T``) when no frames are given.
    dark, flat:
        Optional calibration frames ``(h, W)`` (same width; any height) in counts.
    config:
        :class:`PreprocessConfig` (default parameters when None).

    Returns
    -------
    :class:`Preprocessed` with ``attenuation`` float32 ``(H, W)`` in ``[0, 1]``,
    ``column_offset`` float32 ``(W,)`` and ``row_offset`` float32 ``(H,)`` [nepers],
    ``background`` bool ``(H, W)``.

    Cost: about 2-3 ms for a 256x256 uint16 scan with frames, or an 8-bit pre-corrected
    one, on one core (numba kernels, compiled on first use and cached on disk: the first
    call in a fresh environment compiles for several seconds); without frames the open-beam
    estimate adds ~4-6 ms (most of it ``numpy.polynomial`` fits).
    """
    cfg = config or PreprocessConfig()
    x = _as_2d("raw scan", raw)
    shape = x.shape
    floor = float(cfg.transmission_floor)
    a_max = float(-np.log(cfg.transmission_floor))
    d = _frame_for("dark", dark, shape, cfg.calibration_per_column) if dark is not None else None
    f = _frame_for("flat", flat, shape, cfg.calibration_per_column) if flat is not None else None
    zero = np.zeros((1, shape[1]))
    ws = _scratch(shape[0], shape[1], _radius(cfg))
    a = ws.att

    if f is not None:
        calibration = "frames"
        dd = d if d is not None else zero
        denom = f - dd
        open_beam = float(np.median(denom))
        denom = np.where(denom > 0, denom, np.nan)  # a dead flat pixel: no transmission known
        _nb_transmission(x, _f64(dd), _f64(denom), floor, a)
        rough = False
    elif d is None and (x.dtype == np.uint8 or (x.dtype.kind == "f" and float(x.max()) <= cfg.precorrected_float_max)):
        calibration = "pre-corrected"
        open_beam = 255.0 if x.dtype == np.uint8 else 1.0
        _nb_transmission(x, zero, np.full((1, shape[1]), open_beam), floor, a)  # (x - 0) / open_beam
        rough = False
    else:
        calibration = "self"
        _nb_subtract(x, _f64(d) if d is not None else zero, a)  # y = x - dark (x - 0 without one)
        k, same, gamma = _percentile_index(a.size, 99)
        scale = float(_nb_percentile(a.ravel(), a.size, k, same, gamma))
        if not scale > 0:
            ymax = float(a.max())
            scale = ymax if ymax > 0 else 1.0
        _nb_scale_floor(a, scale, floor)
        open_beam = scale
        rough = True

    np.log(a, out=a)
    np.negative(a, out=a)  # A = -ln(max(T, floor))
    col, row, bg = _offsets(a, cfg, rough, ws)
    if calibration == "self":
        # the open beam of column c is scale * exp(-col[c]) (median over rows)
        open_beam = float(np.median(open_beam * np.exp(-(col + np.median(row)))))
    norm = np.empty(shape, dtype=np.float32)
    if cfg.beam_hardening:
        cur = np.empty_like(a)
        _nb_residual(a, col, row, cur)
        cur = np.minimum(cur, a_max)
        pos = np.maximum(cur, 0.0)
        cur = cur + sum(c * pos ** (k + 2) for k, c in enumerate(cfg.beam_hardening))
        a, col_f, row_f, cap = _f64(cur), np.zeros(shape[1]), np.zeros(shape[0]), np.inf
    else:
        col_f, row_f, cap = col, row, a_max
    weights = _gaussian_weights(cfg.denoise_sigma) if cfg.denoise_sigma > 0 else np.ones(1)
    # min(A - offsets, A_max) [-> beam hardening] -> Gaussian -> clip -> / scale -> float32
    _nb_finish(a, col_f, row_f, cap, weights, float(cfg.attenuation_scale), norm, ws.cur)
    return Preprocessed(attenuation=norm, calibration=calibration, open_beam=open_beam,
                        column_offset=col.astype(np.float32), row_offset=row.astype(np.float32), background=bg)
