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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy import ndimage

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


def _as_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    if a.dtype.kind not in "uif":
        raise ValueError(f"{name} must hold numbers, got dtype {a.dtype}")
    out = a.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return out


def _frame_for(name: str, frame: np.ndarray, shape: tuple[int, int], per_column: bool) -> np.ndarray:
    """A calibration frame as an array broadcastable to ``shape``: its per-column mean
    ``(1, W)``, or the frame itself when it has the scan's shape and ``per_column`` is off."""
    f = _as_2d(name, frame)
    if f.shape[1] != shape[1]:
        raise ValueError(f"{name} frame width {f.shape[1]} does not match the scan width {shape[1]}")
    if not per_column and f.shape == shape:
        return f
    return f.mean(axis=0, keepdims=True)


def estimate_noise(att: np.ndarray) -> float:
    """Robust noise standard deviation of an attenuation image [nepers]: MAD of the vertical
    differences (along a detector column the gain cancels), / sqrt(2) for the difference."""
    d = np.abs(np.diff(att, axis=0))
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(d) / np.sqrt(2.0))


def _masked_median(values: np.ndarray, mask: np.ndarray, axis: int, min_count: int) -> np.ndarray:
    """Median of ``values`` over ``mask`` along ``axis``; NaN where fewer than ``min_count``.
    (One sort with the masked-out values as NaN, which sort last.)"""
    v = np.sort(np.where(mask, values, np.nan), axis=axis)
    count = mask.sum(axis=axis)
    lo = np.expand_dims(np.maximum(count - 1, 0) // 2, axis)
    hi = np.expand_dims(np.maximum(count, 1) // 2, axis)
    hi = np.minimum(hi, v.shape[axis] - 1)
    med = 0.5 * (np.take_along_axis(v, lo, axis) + np.take_along_axis(v, hi, axis))
    med = np.squeeze(med, axis=axis)
    med[count < max(1, min_count)] = np.nan
    return med


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


def background_mask(att: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Pixels of an (approximately corrected) attenuation image that show open beam: below the
    object threshold (after a 3x3 opening of the object pixels, so that lone noise pixels and
    one-column stripes do not count) and farther than ``object_margin_px`` from an object
    pixel. bool (H, W)."""
    sigma = estimate_noise(att)
    thr = max(cfg.background_threshold, cfg.background_sigmas * sigma)
    # an object is a blob: a 3x3 opening drops lone noise pixels and one-column stripes left by
    # a mis-estimated gain, which would otherwise hide their whole column (and its neighbours)
    obj = ndimage.binary_opening(att > thr, structure=np.ones((3, 3), dtype=bool))
    m = int(cfg.object_margin_px)
    if m > 0 and obj.any():
        obj = ndimage.maximum_filter(obj, size=2 * m + 1, mode="nearest")
    return ~obj


def column_stripes(att: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The fixed-pattern (high-frequency) part of the per-column offsets [nepers], shape (W,):
    the median over all rows of each column's deviation from a median filter of width
    ``stripe_window_px`` across columns. Objects are smooth at the scale of a few pixels and
    the gain pattern is the same in every row, so this works in columns an object covers too
    (stripe removal; Vo, Atwood & Drakopoulos, Opt. Express 26, 2018)."""
    k = max(3, cfg.stripe_window_px | 1)
    smooth = ndimage.median_filter(att, size=(1, k), mode="nearest")
    return np.median(att - smooth, axis=0)


def _smooth_fit(values: np.ndarray, keep: np.ndarray, degree: int) -> np.ndarray:
    x = np.arange(values.size) / max(1, values.size - 1)
    coef = np.polynomial.polynomial.polyfit(x[keep], values[keep], degree)
    return np.polynomial.polynomial.polyval(x, coef)


def rough_column_offsets(att: np.ndarray, cfg: PreprocessConfig, stripe: np.ndarray | None = None) -> np.ndarray:
    """First per-column offset estimate [nepers] without any background mask.

    The fixed-pattern part comes from :func:`column_stripes`; on the destriped image the 5th
    percentile of each column is the open-beam level where at least 5% of the column is
    background. Where it sits clearly *above* a smooth robust fit across columns (degree
    ``heel_degree``; one-sided clipping at max(3 MAD-sigma, ``background_threshold``),
    iterated), an object covers the column and the fit is used instead."""
    w = att.shape[1]
    if stripe is None:
        stripe = column_stripes(att, cfg)
    low = np.percentile(att - stripe[None, :], 5, axis=0)
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
    Returns (corrected attenuation, column offsets (W,), row offsets (H,), background mask).
    """
    h, w = att.shape
    col = np.zeros(w)
    row = np.zeros(h)
    stripe: np.ndarray | None = None
    if rough:
        stripe = column_stripes(att, cfg)
        col = rough_column_offsets(att, cfg, stripe)
        if cfg.row_correction:
            row = np.percentile(att - col[None, :], 5, axis=1)
    min_col = min(cfg.min_background_px, h)
    min_row = min(cfg.min_background_px, w)
    bg = np.ones_like(att, dtype=bool)
    for _ in range(2):
        cur = att - col[None, :] - row[:, None]
        bg = background_mask(cur, cfg)
        if not bg.any():
            break
        new_col = _masked_median(att - row[:, None], bg, axis=0, min_count=min_col)
        if not np.isfinite(new_col).any() and rough:
            new_col = col  # no background anywhere: keep the percentile estimate
        if stripe is None and not np.isfinite(new_col).all():
            stripe = column_stripes(att, cfg)
        col = _fill_columns(new_col, stripe if stripe is not None else np.zeros(w), cfg)
        if cfg.row_correction:
            new_row = _masked_median(att - col[None, :], bg, axis=1, min_count=min_row)
            row = _fill_rows(new_row)
    return att - col[None, :] - row[:, None], col, row, bg


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
    :class:`Preprocessed` with ``attenuation`` float32 ``(H, W)`` in ``[0, 1]``.
    """
    cfg = config or PreprocessConfig()
    raw_arr = np.asarray(raw)
    x = _as_2d("raw scan", raw_arr)
    shape = x.shape
    floor = cfg.transmission_floor
    a_max = -np.log(floor)
    d = _frame_for("dark", dark, shape, cfg.calibration_per_column) if dark is not None else None
    f = _frame_for("flat", flat, shape, cfg.calibration_per_column) if flat is not None else None

    if f is not None:
        calibration = "frames"
        dd = d if d is not None else 0.0
        denom = f - dd
        open_beam = float(np.median(denom))
        denom = np.where(denom > 0, denom, np.nan)  # a dead flat pixel: no transmission known
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (x - dd) / denom
        t = np.where(np.isfinite(t), t, 1.0)
        rough = False
    elif d is None and (raw_arr.dtype == np.uint8 or
                        (raw_arr.dtype.kind == "f" and float(x.max()) <= cfg.precorrected_float_max)):
        calibration = "pre-corrected"
        open_beam = 255.0 if raw_arr.dtype == np.uint8 else 1.0
        t = x / open_beam
        rough = False
    else:
        calibration = "self"
        y = x - d if d is not None else x
        scale = float(np.percentile(y, 99))
        if not scale > 0:
            scale = float(y.max()) if y.max() > 0 else 1.0
        t = y / scale
        open_beam = scale
        rough = True

    a = -np.log(np.maximum(t, floor))
    a, col, row, bg = correct_offsets(a, cfg, rough=rough)
    if calibration == "self":
        # the open beam of column c is scale * exp(-col[c]) (median over rows)
        open_beam = float(np.median(open_beam * np.exp(-(col + np.median(row)))))
    a = np.minimum(a, a_max)
    if cfg.beam_hardening:
        pos = np.maximum(a, 0.0)
        a = a + sum(c * pos ** (k + 2) for k, c in enumerate(cfg.beam_hardening))
    if cfg.denoise_sigma > 0:
        a = ndimage.gaussian_filter(a, cfg.denoise_sigma, mode="nearest")
    a = np.clip(a, 0.0, None)
    norm = np.clip(a / cfg.attenuation_scale, 0.0, 1.0).astype(np.float32)
    return Preprocessed(attenuation=norm, calibration=calibration, open_beam=open_beam,
                        column_offset=col.astype(np.float32), row_offset=row.astype(np.float32), background=bg)
