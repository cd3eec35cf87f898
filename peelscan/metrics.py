"""The thirteen image-similarity measures between an input tile and its reconstruction.

Every measure has one signature::

    fn(x, y, data_range: float = 1.0) -> np.ndarray  # shape (N,), float64

``x`` is the input tile batch, ``y`` the reconstruction, both ``(N, H, W)`` (a single
``(H, W)`` tile is accepted as ``N = 1``) numpy arrays or torch tensors of real numbers in
intensity units where ``data_range`` is the width of the value range (1.0 for tiles scaled to
[0, 1], 255 for 8-bit, 4095 for 12-bit). float64 inputs are computed in float64; every other
dtype is computed in float32 (the pipeline's tiles), with reductions in float64. The output is
always a float64 numpy array of length N, finite for every finite input (see
``docs/metrics.md`` for the table of edge cases: flat, identical, offset and tiny tiles).

``MEASURES`` maps the names ``se imed ssim zncc gmsd rmse psnr fsim issm sre sam uiq sh`` to a
:class:`Measure` (function, direction, reference); :func:`anomaly_score` is the single place
where a natural value becomes an anomaly score (higher = more anomalous);
:func:`compute_measures` computes several measures on one batch, sharing the intermediate
maps (differences, local moments, spectra) and working in cache-sized chunks.

References are given in each function's docstring. Torch is used on the CPU with the caller's
thread settings (``torch.get_num_threads()``); nothing here changes them.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numba
import numpy as np
import torch
import torch.nn.functional as F

from peelscan._clock import StageClock
from peelscan._select import nb_kth

__all__ = [
    "MEASURE_NAMES",
    "MEASURES",
    "Measure",
    "anomaly_score",
    "compute_measures",
    "fsim",
    "gmsd",
    "imed",
    "issm",
    "phase_congruency",
    "psnr",
    "rmse",
    "sam",
    "se",
    "sh",
    "sre",
    "ssim",
    "uiq",
    "zncc",
    "canny_edges",
]

ArrayLike = "np.ndarray | torch.Tensor"

MEASURE_NAMES: tuple[str, ...] = (
    "se", "imed", "ssim", "zncc", "gmsd", "rmse", "psnr", "fsim", "issm", "sre", "sam", "uiq", "sh",
)

#: Ratio measures (PSNR, SRE) floor the mean squared error (and SRE the squared mean) at
#: ``(DB_FLOOR * data_range) ** 2``: identical tiles give a finite 200 dB instead of +inf.
DB_FLOOR = 1e-10

# FSIM constants (Zhang et al. 2011, and the authors' FeatureSIM.m / phasecong2.m)
_FSIM_SCALES = 4
_FSIM_ORIENTATIONS = 4
_FSIM_MIN_WAVELENGTH = 6.0
_FSIM_MULT = 2.0
_FSIM_SIGMA_ONF = 0.55
_FSIM_DTHETA_ON_SIGMA = 1.2
_FSIM_K = 2.0
_FSIM_T1 = 0.85
_FSIM_T2 = 160.0
_MEDIAN_BIN_BITS = 5  # FSIM noise medians: radix bins of the exponent + 5 mantissa bits (1/32 octave)

# SSIM constants (Wang et al. 2004)
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # scipy.ndimage: int(truncate * sigma + 0.5) with truncate 3.5 -> 11x11 window
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03

_UIQ_WINDOW = 8
_GMSD_T = 170.0 / 255.0**2
_SH_BINS = 32
_ISSM_A, _ISSM_B, _ISSM_C = 0.3, 0.5, 0.7
_ISSM_HIST_BINS = 10
_CANNY_LOW, _CANNY_HIGH = 100, 200


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _to_tensor(a: object, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach()
        if t.device.type != "cpu":
            t = t.cpu()
    elif isinstance(a, np.ndarray):
        if a.dtype == np.float16 or a.dtype.kind in "biu":
            a = a.astype(np.float32)
        if a.dtype.kind not in "f":
            raise TypeError(f"metrics: {what} must be a real numeric array, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    else:
        raise TypeError(f"metrics: {what} must be a numpy array or torch tensor, got {type(a).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"metrics: {what} must be real, got {t.dtype}")
    if t.dtype != torch.float64:
        t = t.to(torch.float32)
    return t


def _prepare(x: object, y: object, data_range: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Validate and convert a pair of tile batches to ``(N, H, W)`` tensors of one dtype."""
    xt = _to_tensor(x, "x (input tiles)")
    yt = _to_tensor(y, "y (reconstructions)")
    if xt.ndim == 2:
        xt = xt.unsqueeze(0)
    if yt.ndim == 2:
        yt = yt.unsqueeze(0)
    if xt.ndim != 3 or yt.ndim != 3:
        raise ValueError(
            f"metrics: x and y must have shape (N, H, W) or (H, W), got {tuple(xt.shape)} and {tuple(yt.shape)}"
        )
    if xt.shape != yt.shape:
        raise ValueError(f"metrics: x and y shapes differ: {tuple(xt.shape)} vs {tuple(yt.shape)}")
    if xt.shape[1] < 1 or xt.shape[2] < 1:
        raise ValueError(f"metrics: tiles must be at least 1x1, got {tuple(xt.shape[1:])}")
    dt = torch.float64 if (xt.dtype == torch.float64 or yt.dtype == torch.float64) else torch.float32
    xt = xt.to(dt).contiguous()
    yt = yt.to(dt).contiguous()
    if not bool(torch.isfinite(xt).all()):
        raise ValueError("metrics: x (input tiles) contains NaN or inf")
    if not bool(torch.isfinite(yt).all()):
        raise ValueError("metrics: y (reconstructions) contains NaN or inf")
    dr = float(data_range)
    if not math.isfinite(dr) or dr <= 0:
        raise ValueError(f"metrics: data_range must be a positive finite number, got {data_range!r}")
    return xt, yt, dr


# --------------------------------------------------------------------------------------------
# cached constant operators (per size and dtype)
# --------------------------------------------------------------------------------------------

_cache_lock = threading.Lock()
_cache: dict[tuple, object] = {}


def _cached(key: tuple, build: Callable[[], object]) -> object:
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None:
        hit = build()
        with _cache_lock:
            _cache.setdefault(key, hit)
            hit = _cache[key]
    return hit


def _symmetric_index(i: int, n: int) -> int:
    """scipy.ndimage 'reflect' (half-sample symmetric, d c b a | a b c d) index for any i."""
    period = 2 * n
    i = i % period
    return i if i < n else period - 1 - i


def _ssim_matrix(n: int, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n) matrix applying the 11-tap Gaussian (sigma 1.5) with scipy 'reflect' edges,
    keeping only the rows skimage keeps after cropping 5 px (all rows if n < 11)."""

    def build() -> torch.Tensor:
        r = _SSIM_RADIUS
        taps = np.exp(-0.5 * (np.arange(-r, r + 1) / _SSIM_SIGMA) ** 2)
        taps /= taps.sum()
        full = np.zeros((n, n))
        for i in range(n):
            for k, w in zip(range(-r, r + 1), taps):
                full[i, _symmetric_index(i + k, n)] += w
        rows = full[r : n - r] if n >= 2 * r + 1 else full
        return torch.from_numpy(np.ascontiguousarray(rows)).to(dtype)

    return _cached(("ssim", n, dtype), build)  # type: ignore[return-value]


def _imed_matrix(n: int) -> torch.Tensor:
    """1-D factor of the IMED metric matrix: g[i, j] = exp(-(i-j)^2 / 2) / sqrt(2 pi) (sigma 1)."""

    def build() -> torch.Tensor:
        d = np.arange(n)[:, None] - np.arange(n)[None, :]
        return torch.from_numpy(np.exp(-0.5 * d**2) / math.sqrt(2 * math.pi))

    return _cached(("imed", n), build)  # type: ignore[return-value]


@dataclass(frozen=True)
class _PCFilters:
    """The log-Gabor bank in the layout the kernels read: each frequency bin appears twice, once
    per lane of the complex spectrum ``Fz = Fx + i Fy`` viewed as (re, im) pairs."""

    sym2: np.ndarray  # (O*S, 2*H*W) (G(k) + G(-k)) / 2 on both lanes (real, even)
    anti2: np.ndarray  # (O*S, 2*H*W) (G(k) - G(-k)) / 2 on lane re, its negative on lane im
    alpha: np.ndarray  # (O,) noise threshold T = alpha_o * median |EO_o,0|
    eps: np.floating  # machine epsilon of the dtype (piq's eps in the phase-congruency ratio)


def _pc_filters(h: int, w: int, dtype: torch.dtype) -> _PCFilters:
    """Log-Gabor filter bank of phasecong2 as used by FSIM (4 scales x 4 orientations), built in
    float64 exactly as the authors' FeatureSIM.m (and piq) do, plus the per-orientation noise
    constants that depend only on the filters."""

    def build() -> _PCFilters:
        S, O = _FSIM_SCALES, _FSIM_ORIENTATIONS

        def axis(n: int) -> np.ndarray:
            if n % 2:
                return np.arange(-(n - 1) / 2, n / 2) / max(n - 1, 1)
            return np.arange(-n / 2, n / 2) / n

        gx, gy = np.meshgrid(axis(h), axis(w), indexing="ij")
        radius = np.sqrt(gx**2 + gy**2)
        theta = np.arctan2(-gy, gx)
        lp = np.fft.ifftshift(1.0 / (1.0 + (radius / 0.45) ** 30))
        radius = np.fft.ifftshift(radius)
        theta = np.fft.ifftshift(theta)
        radius[0, 0] = 1.0
        sin_t, cos_t = np.sin(theta), np.cos(theta)
        log_gabor = []
        for s in range(S):
            f0 = 1.0 / (_FSIM_MIN_WAVELENGTH * _FSIM_MULT**s)
            g = np.exp(-(np.log(radius / f0) ** 2) / (2 * math.log(_FSIM_SIGMA_ONF) ** 2)) * lp
            g[0, 0] = 0.0
            log_gabor.append(g)
        theta_sigma = math.pi / O / _FSIM_DTHETA_ON_SIGMA
        filt = np.empty((O, S, h, w))
        for o in range(O):
            ang = o * math.pi / O
            ds = sin_t * math.cos(ang) - cos_t * math.sin(ang)
            dc = cos_t * math.cos(ang) + sin_t * math.sin(ang)
            spread = np.exp(-(np.arctan2(ds, dc) ** 2) / (2 * theta_sigma**2))
            for s in range(S):
                filt[o, s] = spread * log_gabor[s]
        # noise model constants (phasecong2): spatial filters and their (cross) energies
        spatial = np.real(np.fft.ifft2(filt, axes=(-2, -1))) * math.sqrt(h * w)
        sum_an2 = (spatial**2).sum(axis=(1, 2, 3))
        sum_ai_aj = np.zeros(O)
        for s in range(S - 1):
            sum_ai_aj += (spatial[:, s : s + 1] * spatial[:, s + 1 :]).sum(axis=(1, 2, 3))
        em_n = (filt[:, 0] ** 2).sum(axis=(1, 2))
        # noise_power = median / ln 2 / em_n; energy2 = noise_power * (2 sum_an2 + 4 sum_ai_aj)
        # tau = sqrt(energy2 / 2); T = (tau sqrt(pi/2) + k sqrt(2 - pi/2) tau) / 1.7
        with np.errstate(divide="ignore", invalid="ignore"):
            k_o = (2 * sum_an2 + 4 * sum_ai_aj) / em_n
        k_o = np.where(np.isfinite(k_o) & (k_o > 0), k_o, 0.0)
        c = (math.sqrt(math.pi / 2) + _FSIM_K * math.sqrt(2 - math.pi / 2)) / 1.7
        alpha = np.sqrt(k_o / (2 * math.log(2))) * c
        flat = filt.reshape(O * S, h * w)
        mirrored = np.roll(filt.reshape(O * S, h, w)[:, ::-1, ::-1], (1, 1), axis=(1, 2)).reshape(O * S, h * w)
        sym2 = np.repeat((flat + mirrored) / 2, 2, axis=1)
        anti2 = np.repeat((flat - mirrored) / 2, 2, axis=1)
        anti2[:, 1::2] *= -1.0
        nd = np.float64 if dtype == torch.float64 else np.float32
        return _PCFilters(
            np.ascontiguousarray(sym2, dtype=nd),
            np.ascontiguousarray(anti2, dtype=nd),
            alpha.astype(nd),
            nd(np.finfo(nd).eps),
        )

    return _cached(("pc", h, w, dtype), build)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# FSIM kernels (numba; compiled on first use per dtype and cached on disk)
# --------------------------------------------------------------------------------------------
# The FFTs are torch's (oneMKL); everything between and after them is one pass per step in
# these kernels, over a chunk of pairs per thread (see _fsim_pairs).
# error_model="numpy" lets LLVM vectorise the divisions (no ZeroDivisionError branch).

_NJIT = dict(nogil=True, cache=True, error_model="numpy")


@numba.njit(**_NJIT)
def _nb_interleave(x, y, z):  # pragma: no cover - compiled
    """x, y (B, HW) real -> z (B, 2 HW): the real view of the complex images x + i y."""
    for i in range(x.shape[0]):
        for p in range(x.shape[1]):
            z[i, 2 * p] = x[i, p]
            z[i, 2 * p + 1] = y[i, p]


@numba.njit(**_NJIT)
def _nb_spectra(fz, sym2, anti2, out):  # pragma: no cover - compiled
    """Filtered spectra of one chunk. fz (B, 2HW) real view of Fz = Fx + i Fy; out (B, 2F, 2HW)
    real view of the complex products: [:, :F] = Fz Gs, [:, F:] = Fz Ga / i, where
    Fz Ga / i = Ga (Im Fz, -Re Fz) (``anti2`` carries the sign per lane)."""
    nf = sym2.shape[0]
    q2 = fz.shape[1]
    sw = np.empty(q2, fz.dtype)
    for i in range(fz.shape[0]):
        for q in range(0, q2, 2):
            sw[q] = fz[i, q + 1]
            sw[q + 1] = fz[i, q]
        for f in range(nf):
            for q in range(q2):
                out[i, f, q] = fz[i, q] * sym2[f, q]
            for q in range(q2):
                out[i, nf + f, q] = sw[q] * anti2[f, q]


@numba.njit(**_NJIT)
def _nb_lane_medians(v, key, hw, k, shift, hx, hy, bx, by):  # pragma: no cover - compiled
    """Exact k-th smallest of each lane of an interleaved x/y array of non-negative floats.

    v (2 hw,) float32/64 with x at even and y at odd positions; key the same memory viewed as
    int32/int64 (for non-negative IEEE floats the integer order is the value order). Returns
    (k-th of x, k-th of y), the values themselves.

    Most-significant-digit radix selection: one pass histograms ``key >> shift`` (the exponent
    and the top ``_MEDIAN_BIN_BITS`` = 5 mantissa bits: bins a 32nd of an octave wide) for both
    lanes at once; the cumulative counts name the bin that holds rank k; a second pass gathers
    that bin's values (a few percent of them) and Hoare's FIND (:func:`nb_kth`) finishes. Two
    branch-free passes and no data-dependent miss path. hx, hy (2^(bits - 1 - shift),) int32
    zeroed scratch (left zeroed), bx, by (hw,) scratch."""
    lo_x = key[0] >> shift
    lo_y = key[1] >> shift
    hi_x = lo_x
    hi_y = lo_y
    for p in range(hw):
        a = key[2 * p] >> shift
        b = key[2 * p + 1] >> shift
        hx[a] += 1
        hy[b] += 1
        lo_x = min(lo_x, a)
        lo_y = min(lo_y, b)
        hi_x = max(hi_x, a)
        hi_y = max(hi_y, b)
    bin_x = lo_x
    below_x = 0
    while below_x + hx[bin_x] <= k:
        below_x += hx[bin_x]
        bin_x += 1
    bin_y = lo_y
    below_y = 0
    while below_y + hy[bin_y] <= k:
        below_y += hy[bin_y]
        bin_y += 1
    for j in range(lo_x, hi_x + 1):
        hx[j] = 0
    for j in range(lo_y, hi_y + 1):
        hy[j] = 0
    cx = 0
    cy = 0
    for p in range(hw):
        bx[cx] = v[2 * p]
        by[cy] = v[2 * p + 1]
        cx += np.int32((key[2 * p] >> shift) == bin_x)
        cy += np.int32((key[2 * p + 1] >> shift) == bin_y)
    return nb_kth(bx, cx, k - below_x), nb_kth(by, cy, k - below_y)


@numba.njit(**_NJIT)
def _nb_phase_congruency(r, alpha, eps, A, an0, an0_key, shift, san, hx, hy, bx, by, pc):  # pragma: no cover - compiled
    """Phase congruency (phasecong2) of one pair from its 2 x O*S filter responses.

    r (2 O S, 2HW): real view of ifft(Fz Gs) = e_x + i e_y (rows :OS) and ifft(Fz Ga / i) =
    o_x + i o_y (rows OS:), orientation-major; each lane is one pixel of x (even lanes) or y
    (odd lanes) and every step is per lane. A, an0 (O, 2HW), san (2HW,) scratch, an0_key the
    memory of an0 viewed as integers; shift, hx, hy, bx, by as in :func:`_nb_lane_medians`;
    pc (2HW,) out, interleaved x/y like the lanes.

    Per orientation: ``E = sum_s(e_s m_e + o_s m_o) - sum_s |e_s m_o - o_s m_e| - T`` with
    ``(m_e, m_o) = (sum e, sum o) / (|sum EO| + eps)``, i.e. ``(|sum EO|^2 - sum_s |e_s sum o -
    o_s sum e|) / (|sum EO| + eps)``; T from the lower median of the finest-scale amplitude;
    ``PC = (sum_o max(E_o, 0) + eps) / (sum_o,s |EO| + eps)``.
    """
    O = 4
    S = 4
    OS = O * S
    q2 = r.shape[1]
    hw = q2 // 2
    for q in range(q2):
        san[q] = 0
    for o in range(O):
        b0 = o * S
        for q in range(q2):
            e0 = r[b0, q]
            e1 = r[b0 + 1, q]
            e2 = r[b0 + 2, q]
            e3 = r[b0 + 3, q]
            o0 = r[OS + b0, q]
            o1 = r[OS + b0 + 1, q]
            o2 = r[OS + b0 + 2, q]
            o3 = r[OS + b0 + 3, q]
            a0 = np.sqrt(e0 * e0 + o0 * o0)
            an0[o, q] = a0
            san[q] += ((a0 + np.sqrt(e1 * e1 + o1 * o1)) + np.sqrt(e2 * e2 + o2 * o2)) + np.sqrt(e3 * e3 + o3 * o3)
            se = ((e0 + e1) + e2) + e3
            so = ((o0 + o1) + o2) + o3
            n2 = se * se + so * so
            cr = ((abs(e0 * so - o0 * se) + abs(e1 * so - o1 * se)) + abs(e2 * so - o2 * se)) + abs(e3 * so - o3 * se)
            A[o, q] = (n2 - cr) / (np.sqrt(n2) + eps)
    k = (hw - 1) // 2
    zero = eps - eps
    for q in range(q2):
        pc[q] = 0
    for o in range(O):
        mx, my = _nb_lane_medians(an0[o], an0_key[o], hw, k, shift, hx, hy, bx, by)
        tx = mx * alpha[o]
        ty = my * alpha[o]
        for p in range(hw):
            pc[2 * p] += max(A[o, 2 * p] - tx, zero)
            pc[2 * p + 1] += max(A[o, 2 * p + 1] - ty, zero)
    for q in range(q2):
        pc[q] = (pc[q] + eps) / (san[q] + eps)


@numba.njit(**_NJIT)
def _nb_scharr(img, pad, g):  # pragma: no cover - compiled
    """Gradient magnitude of img (H, W) with the Scharr kernel / 16 and zero padding
    (FeatureSIM.m, piq). pad (H+2, W+2) scratch, g (H, W) out."""
    h, w = img.shape
    for i in range(h + 2):
        for j in range(w + 2):
            pad[i, j] = 0
    for i in range(h):
        for j in range(w):
            pad[i + 1, j + 1] = img[i, j]
    for i in range(h):
        for j in range(w):
            gx = (
                3.0 * (pad[i, j + 2] - pad[i, j]) + 10.0 * (pad[i + 1, j + 2] - pad[i + 1, j])
                + 3.0 * (pad[i + 2, j + 2] - pad[i + 2, j])
            ) / 16.0
            gy = (
                3.0 * (pad[i + 2, j] - pad[i, j]) + 10.0 * (pad[i + 2, j + 1] - pad[i, j + 1])
                + 3.0 * (pad[i + 2, j + 2] - pad[i, j + 2])
            ) / 16.0
            g[i, j] = np.sqrt(gx * gx + gy * gy)


@numba.njit(**_NJIT)
def _nb_fsim_chunk(r, x, y, alpha, eps, t1, t2, an0, an0_key, shift, hx, hy, out, pcs, keep_pc):  # pragma: no cover - compiled
    """FSIM of each pair of a chunk from its filter responses r (B, 2 O S, 2HW) and the
    0..255 images x, y (B, H, W); out (B,) float64. an0 (O, 2HW) scratch and an0_key its
    integer view, shift and the zeroed histograms hx, hy as in :func:`_nb_lane_medians`.
    keep_pc: also write the phase-congruency maps to pcs (B, 2HW) (x/y interleaved)."""
    nb_, _, q2 = r.shape
    h, w = x.shape[1], x.shape[2]
    hw = h * w
    dt = r.dtype
    A = np.empty((4, q2), dt)
    san = np.empty(q2, dt)
    bx = np.empty(hw, dt)
    by = np.empty(hw, dt)
    pc = np.empty(q2, dt)
    pad = np.empty((h + 2, w + 2), x.dtype)
    gx = np.empty((h, w), x.dtype)
    gy = np.empty((h, w), x.dtype)
    for i in range(nb_):
        _nb_phase_congruency(r[i], alpha, eps, A, an0, an0_key, shift, san, hx, hy, bx, by, pc)
        if keep_pc:
            for q in range(q2):
                pcs[i, q] = pc[q]
        _nb_scharr(x[i], pad, gx)
        _nb_scharr(y[i], pad, gy)
        num = 0.0
        den = 0.0
        tot = 0.0
        for a in range(h):
            for b in range(w):
                p = a * w + b
                px = pc[2 * p]
                py = pc[2 * p + 1]
                u = gx[a, b]
                v = gy[a, b]
                ppc = px * py
                s_pc = (ppc + ppc + t1) / (px * px + py * py + t1)
                pg = u * v
                s_g = (pg + pg + t2) / (u * u + v * v + t2)
                s_l = np.float64(s_pc * s_g)
                m = np.float64(max(px, py))
                num += s_l * m
                den += m
                tot += s_l
        # no phase congruency anywhere in either tile: weight all pixels equally
        out[i] = num / den if den > 0 else tot / hw


# --------------------------------------------------------------------------------------------
# building blocks shared between measures
# --------------------------------------------------------------------------------------------


@numba.njit(**_NJIT)
def _nb_canny(img, low, high, mag, mp, stack, edge):  # pragma: no cover - compiled
    """OpenCV's cv2.Canny(img, low, high) on one (H, W) int32 image in 0..255: 3x3 Sobel with
    replicated borders, L1 magnitude, OpenCV's fixed-point non-maximum suppression, hysteresis
    over 8-neighbours (a flood fill from the strong pixels through the candidates). mag (H, W),
    mp (H+2, W+2) int32, stack (H*W,) int64 scratch; edge (H, W) uint8 out."""
    h, w = img.shape
    for i in range(h + 2):
        for j in range(w + 2):
            mp[i, j] = 0
    dxs = np.empty((h, w), np.int32)
    dys = np.empty((h, w), np.int32)
    for i in range(h):
        im = max(i - 1, 0)
        ip = min(i + 1, h - 1)
        for j in range(w):
            jm = max(j - 1, 0)
            jp = min(j + 1, w - 1)
            dx = (img[im, jp] + 2 * img[i, jp] + img[ip, jp]) - (img[im, jm] + 2 * img[i, jm] + img[ip, jm])
            dy = (img[ip, jm] + 2 * img[ip, j] + img[ip, jp]) - (img[im, jm] + 2 * img[im, j] + img[im, jp])
            dxs[i, j] = dx
            dys[i, j] = dy
            m = abs(dx) + abs(dy)
            mag[i, j] = m
            mp[i + 1, j + 1] = m
    top = 0
    for i in range(h):
        for j in range(w):
            edge[i, j] = 0
            c = mag[i, j]
            if c <= low:
                continue
            dx = dxs[i, j]
            dy = dys[i, j]
            ax = abs(dx)
            ay = abs(dy)
            tg22 = ax * 13573  # round(tan(22.5 deg) * 2^15)
            yv = ay * 32768
            if yv < tg22:
                keep = c > mp[i + 1, j] and c >= mp[i + 1, j + 2]
            elif yv > tg22 + ax * 65536:
                keep = c > mp[i, j + 1] and c >= mp[i + 2, j + 1]
            elif (dx ^ dy) >= 0:
                keep = c > mp[i, j] and c > mp[i + 2, j + 2]
            else:
                keep = c > mp[i, j + 2] and c > mp[i + 2, j]
            if keep:
                edge[i, j] = 1  # candidate
                if c > high:
                    edge[i, j] = 2  # strong edge
                    stack[top] = i * w + j
                    top += 1
    while top > 0:
        top -= 1
        p = stack[top]
        i = p // w
        j = p - i * w
        for a in range(max(i - 1, 0), min(i + 2, h)):
            for b in range(max(j - 1, 0), min(j + 2, w)):
                if edge[a, b] == 1:
                    edge[a, b] = 2
                    stack[top] = a * w + b
                    top += 1
    for i in range(h):
        for j in range(w):
            edge[i, j] = edge[i, j] == 2


@numba.njit(**_NJIT)
def _nb_edge_correlation(u8x, u8y, low, high, out):  # pragma: no cover - compiled
    """Pearson correlation of the Canny edge maps of u8x[i] and u8y[i] (int32, (B, H, W));
    both maps constant: 1 if equal else 0. out (B,) float64."""
    nb_, h, w = u8x.shape
    mag = np.empty((h, w), np.int32)
    mp = np.empty((h + 2, w + 2), np.int32)
    stack = np.empty(h * w, np.int64)
    ex = np.empty((h, w), np.uint8)
    ey = np.empty((h, w), np.uint8)
    n = h * w
    for i in range(nb_):
        _nb_canny(u8x[i], low, high, mag, mp, stack, ex)
        _nb_canny(u8y[i], low, high, mag, mp, stack, ey)
        sg = 0
        sh = 0
        sgh = 0
        same = True
        for a in range(h):
            for b in range(w):
                g = np.int64(ex[a, b])
                e = np.int64(ey[a, b])
                sg += g
                sh += e
                sgh += g * e
                same = same and g == e
        # centred sums, as the mean-removed float64 formula
        vg = sg - sg * sg / n
        vh = sh - sh * sh / n
        den = np.sqrt(vg * vh)
        if den > 0:
            out[i] = (sgh - sg * sh / n) / den
        else:
            out[i] = 1.0 if same else 0.0


@numba.njit(**_NJIT)
def _nb_hist_bins(v, nb, idx):  # pragma: no cover - compiled
    """numpy.histogram bins (nb equal bins over v's own min..max, a flat v spans value +- 0.5;
    bin i holds edges[i] <= v < edges[i+1], the last also v == max) of a 1-D float64 v."""
    lo = v[0]
    hi = v[0]
    for p in range(v.shape[0]):
        lo = min(lo, v[p])
        hi = max(hi, v[p])
    if lo == hi:
        lo -= 0.5
        hi += 0.5
    step = (hi - lo) / nb
    for p in range(v.shape[0]):
        k = int(np.floor((v[p] - lo) / step))
        k = min(max(k, 0), nb - 1)
        # the arithmetic guess, corrected by one bin where rounding put it across an edge
        if v[p] < lo + k * step:
            k -= 1
        upper = hi if k + 1 >= nb else lo + (k + 1) * step
        if v[p] >= upper:
            k += 1
        idx[p] = min(max(k, 0), nb - 1)


@numba.njit(**_NJIT)
def _nb_joint_entropy_counts(x, y, nb, out):  # pragma: no cover - compiled
    """-sum(c log2 c) over the nb x nb joint histogram counts of x[i] and y[i] ((B, n)
    float64); out (B,) float64."""
    n = x.shape[1]
    ix = np.empty(n, np.int64)
    iy = np.empty(n, np.int64)
    counts = np.empty(nb * nb, np.int64)
    for i in range(x.shape[0]):
        _nb_hist_bins(x[i], nb, ix)
        _nb_hist_bins(y[i], nb, iy)
        counts[:] = 0
        for p in range(n):
            counts[ix[p] * nb + iy[p]] += 1
        s = 0.0
        for c in counts:
            if c > 0:
                s += c * np.log2(np.float64(c))
        out[i] = -s


_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None
_tls = threading.local()


def _thread_pool(nt: int) -> ThreadPoolExecutor:
    """A shared pool of ``nt`` worker threads (``torch.get_num_threads()`` at the call)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != nt:
            _pool = (nt, ThreadPoolExecutor(max_workers=nt, thread_name_prefix="peelscan-metrics"))
        return _pool[1]


def _split(fn: Callable[[int, int], None], n: int, min_part: int = 32) -> None:
    """Run ``fn(i0, i1)`` over [0, n) in up to ``torch.get_num_threads()`` parts of at least
    ``min_part`` items on the shared pool (the kernels release the GIL); inline for one part."""
    nt = max(1, torch.get_num_threads())
    parts = max(1, min(nt, n // max(1, min_part)))
    if parts == 1:
        fn(0, n)
        return
    cuts = [n * j // parts for j in range(parts + 1)]
    list(_thread_pool(nt).map(lambda j: fn(cuts[j], cuts[j + 1]), range(parts)))


def _scratch(name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """Per-thread reusable buffer (fresh multi-MB temporaries cost more in page faults than the
    arithmetic done on them); keeps the last shape per name."""
    bufs: dict = getattr(_tls, "bufs", None) or {}
    _tls.bufs = bufs
    a = bufs.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = bufs[name] = np.empty(shape, dtype)
    return a


def _fft2(a: np.ndarray, inverse: bool) -> np.ndarray:
    """2-D FFT over the last two axes of the complex array ``a``, unnormalised forward and
    1/(H W) inverse as numpy's, into a new array. Runs on torch's FFT (oneMKL's DFTI in the CPU
    wheel: 2-3x scipy's pocketfft on batches of 32x32 and 64x64 complex64 transforms,
    docs/metrics.md) on a tensor that shares ``a``'s memory. A new result, not ``out=``: torch's
    ``out=`` path ran the same transforms 1.6-1.8x slower here (docs/metrics.md)."""
    src = torch.from_numpy(a)
    return (torch.fft.ifft2(src) if inverse else torch.fft.fft2(src)).numpy()


def _fsim_pairs(
    x: np.ndarray, y: np.ndarray, keep_pc: bool = False, stages: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """FSIM (and optionally the phase-congruency maps) of pairs of 0..255 images.

    Args:
        x, y: (N, H, W) C-contiguous float32 or float64 arrays on the 0..255 scale (already
            pooled as FSIM pools).
        keep_pc: also return the phase-congruency maps.
        stages: if given, seconds spent in each step are added to it (summed over threads):
            ``pack`` (interleaving x and y), ``transforms`` (the forward and the 32 inverse
            FFTs), ``spectra`` (the filter products), ``phase congruency`` (amplitudes, energy,
            noise medians, gradients and pooling); ``benchmarks/metrics.py`` reports them.

    Returns:
        (N,) float64 FSIM values and, if ``keep_pc``, (N, H, W, 2) maps of x ([..., 0]) and y.

    Pipeline per chunk of pairs (about 4 MiB of responses), chunks spread over
    ``torch.get_num_threads()`` threads: x and y travel as one
    complex image ``z = x + i y`` (one forward FFT gives both spectra); each log-Gabor filter G is
    split into its even part Gs and odd part Ga, and since the images are real
    ``ifft(Fz Gs) = e_x + i e_y`` and ``ifft(Fz Ga / i) = o_x + i o_y``: the 2 x 16 inverse FFTs
    per pair are the minimum for the 64 real responses, and x and y stay interleaved as lanes
    that every later step treats alike.
    """
    n, h, w = x.shape
    nd = x.dtype
    cdt = np.complex128 if nd == np.float64 else np.complex64
    pcf = _pc_filters(h, w, torch.float64 if nd == np.float64 else torch.float32)
    nf = _FSIM_ORIENTATIONS * _FSIM_SCALES
    out = np.empty(n, np.float64)
    pcs = np.empty((n, 2 * h * w) if keep_pc else (1, 1), nd)
    t1, t2 = nd.type(_FSIM_T1), nd.type(_FSIM_T2)
    # the noise medians' radix bins (5 mantissa bits: 8-11 % faster than 3 at 32 and 64 px)
    kdt = np.int64 if nd == np.float64 else np.int32
    shift = np.finfo(nd).nmant - _MEDIAN_BIN_BITS
    nbins = 1 << (8 * nd.itemsize - 1 - shift)
    # chunk: about 4 MiB of responses and at least 8 pairs (256 transforms) where a pair's
    # responses are under 4 MiB: oneMKL's per-call cost dominates smaller batches (64x64 pairs one
    # at a time ran at a third of the speed); split evenly when the batch is small (line scoring)
    per_pair = 2 * nf * h * w * np.dtype(cdt).itemsize
    step = max(1, min(8, (32 << 20) // per_pair), (4 << 20) // per_pair)
    nt = torch.get_num_threads()
    if n <= step * nt:
        step = max(1, -(-n // nt))

    clock = StageClock(stages)

    def work(i0: int) -> None:
        i1 = min(n, i0 + step)
        b = i1 - i0
        # per-thread buffers sized for a full chunk; the last, shorter chunk uses a prefix
        z = _scratch("z", (step, h, w), np.dtype(cdt))[:b]
        clock("pack", _nb_interleave, x[i0:i1].reshape(b, -1), y[i0:i1].reshape(b, -1), z.view(nd).reshape(b, -1))
        fz = clock("transforms", _fft2, z, inverse=False)
        resp = _scratch("resp", (step, 2 * nf, h, w), np.dtype(cdt))[:b]
        clock("spectra", _nb_spectra, fz.view(nd).reshape(b, -1), pcf.sym2, pcf.anti2,
              resp.view(nd).reshape(b, 2 * nf, -1))
        resp = clock("transforms", _fft2, resp, inverse=True)
        an0 = _scratch("an0", (_FSIM_ORIENTATIONS, 2 * h * w), np.dtype(nd))
        clock(
            "phase congruency", _nb_fsim_chunk,
            resp.view(nd).reshape(b, 2 * nf, -1), x[i0:i1], y[i0:i1], pcf.alpha, pcf.eps, t1, t2,
            an0, an0.view(kdt), shift, np.zeros(nbins, np.int32), np.zeros(nbins, np.int32),
            out[i0:i1], pcs[i0:i1] if keep_pc else pcs, keep_pc,
        )

    starts = list(range(0, n, step))
    if nt > 1 and len(starts) > 1:
        list(_thread_pool(nt).map(work, starts))
    else:
        for i0 in starts:
            work(i0)
    return out, (pcs.reshape(n, h, w, 2) if keep_pc else None)


def _prewitt_magnitude(img: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude with the Prewitt kernel /3 and zero padding (GMSD.m, piq)."""
    k = torch.tensor([[-1.0, 0.0, 1.0]] * 3, dtype=img.dtype) / 3
    kernels = torch.stack([k, k.t()]).unsqueeze(1)
    g = F.conv2d(img.unsqueeze(1), kernels, padding=1)
    return g.square().sum(1).sqrt()


def canny_edges(img_u8: torch.Tensor, low: int = _CANNY_LOW, high: int = _CANNY_HIGH) -> torch.Tensor:
    """Canny edge map of a batch of 8-bit images, as OpenCV's ``cv2.Canny(img, low, high)``
    (3x3 Sobel with replicated borders, L1 magnitude, OpenCV's fixed-point non-maximum
    suppression, hysteresis over 8-neighbours). Canny, "A computational approach to edge
    detection", IEEE TPAMI 8(6), 1986.

    Args:
        img_u8: (N, H, W) integer-valued tensor in 0..255 (any dtype).
        low, high: hysteresis thresholds on the L1 Sobel magnitude.

    Returns:
        (N, H, W) bool edge map.
    """
    u8 = img_u8.detach().cpu().to(torch.int32).contiguous().numpy()
    if u8.ndim != 3:
        raise ValueError(f"canny_edges: img_u8 must be (N, H, W), got shape {tuple(u8.shape)}")
    n, h, w = u8.shape
    out = np.empty((n, h, w), np.uint8)
    if n and h and w:
        mag = np.empty((h, w), np.int32)
        mp = np.empty((h + 2, w + 2), np.int32)
        stack = np.empty(h * w, np.int64)
        for i in range(n):
            _nb_canny(u8[i], int(low), int(high), mag, mp, stack, out[i])
    return torch.from_numpy(out.astype(bool))


class _Batch:
    """One chunk of tile pairs with lazily computed shared intermediates."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, data_range: float) -> None:
        self.x, self.y, self.dr = x, y, data_range
        self.n, self.h, self.w = x.shape
        self._memo: dict[str, object] = {}

    def _get(self, key: str, fn: Callable[[], object]) -> object:
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    # pixel-wise -------------------------------------------------------------------------
    @property
    def x64(self) -> torch.Tensor:
        return self._get("x64", lambda: self.x.to(torch.float64))  # type: ignore[return-value]

    @property
    def y64(self) -> torch.Tensor:
        return self._get("y64", lambda: self.y.to(torch.float64))  # type: ignore[return-value]

    @property
    def diff(self) -> torch.Tensor:
        return self._get("diff", lambda: self.x64 - self.y64)  # type: ignore[return-value]

    @property
    def sse(self) -> torch.Tensor:
        return self._get("sse", lambda: self.diff.square().sum(dim=(1, 2)))  # type: ignore[return-value]

    @property
    def mse(self) -> torch.Tensor:
        return self.sse / (self.h * self.w)

    @property
    def flat_x(self) -> torch.Tensor:
        return self._get("flat_x", lambda: self.x.amax(dim=(1, 2)) == self.x.amin(dim=(1, 2)))  # type: ignore

    @property
    def flat_y(self) -> torch.Tensor:
        return self._get("flat_y", lambda: self.y.amax(dim=(1, 2)) == self.y.amin(dim=(1, 2)))  # type: ignore

    # local moments -------------------------------------------------------------------------
    def _moments(self, key: str, mh: torch.Tensor, mw: torch.Tensor, dtype: torch.dtype):
        def build():
            x = self.x.to(dtype)
            y = self.y.to(dtype)
            # centre on the tile mean of x: the moments are shift-invariant and cancellation in
            # E[x^2] - E[x]^2 stays small in float32
            c = x.mean(dim=(1, 2), keepdim=True)
            xc, yc = x - c, y - c
            st = torch.stack([xc, yc, xc * xc, yc * yc, xc * yc])  # (5, N, H, W)
            f = torch.matmul(torch.matmul(mh.to(dtype), st), mw.to(dtype).t())
            mx, my = f[0], f[1]
            vx = f[2] - mx * mx
            vy = f[3] - my * my
            cxy = f[4] - mx * my
            return mx + c, my + c, vx, vy, cxy

        return self._get(key, build)

    @property
    def ssim_map(self) -> torch.Tensor:
        def build():
            dt = self.x.dtype
            ux, uy, vx, vy, cxy = self._moments(
                "gauss", _ssim_matrix(self.h, dt), _ssim_matrix(self.w, dt), dt
            )
            c1 = (_SSIM_K1 * self.dr) ** 2
            c2 = (_SSIM_K2 * self.dr) ** 2
            return ((2 * ux * uy + c1) * (2 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))

        return self._get("ssim_map", build)  # type: ignore[return-value]

    @property
    def ssim(self) -> torch.Tensor:
        return self._get("ssim", lambda: self.ssim_map.to(torch.float64).mean(dim=(1, 2)))  # type: ignore

    # FSIM ----------------------------------------------------------------------------------
    def fsim_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """x and y on FSIM's 0..255 scale, average-pooled by max(1, round(min(H, W) / 256)) as
        FeatureSIM.m and piq do; C-contiguous numpy arrays of the batch's dtype."""

        def build():
            k = max(1, round(min(self.h, self.w) / 256))
            both = torch.cat([self.x, self.y]) * (255.0 / self.dr)
            if k > 1:
                both = F.avg_pool2d(both.unsqueeze(1), k).squeeze(1)
            a = both.contiguous().numpy()
            return a[: self.n], a[self.n :]

        return self._get("fsim_in", build)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# the measures (internal, on a _Batch)
# --------------------------------------------------------------------------------------------


def _se(b: _Batch) -> torch.Tensor:
    return b.sse


def _rmse(b: _Batch) -> torch.Tensor:
    return b.mse.sqrt()


def _floor(b: _Batch) -> float:
    return (DB_FLOOR * b.dr) ** 2


def _psnr(b: _Batch) -> torch.Tensor:
    return 10.0 * torch.log10(b.dr**2 / b.mse.clamp_min(_floor(b)))


def _sre(b: _Batch) -> torch.Tensor:
    mu2 = b.x64.mean(dim=(1, 2)).square()
    return 10.0 * torch.log10(mu2.clamp_min(_floor(b)) / b.mse.clamp_min(_floor(b)))


def _imed(b: _Batch) -> torch.Tensor:
    gh, gw = _imed_matrix(b.h), _imed_matrix(b.w)
    e = b.diff
    d2 = (e * torch.matmul(torch.matmul(gh, e), gw)).sum(dim=(1, 2))
    return d2.clamp_min(0.0).sqrt()


def _zncc(b: _Batch) -> torch.Tensor:
    xc = b.x64 - b.x64.mean(dim=(1, 2), keepdim=True)
    yc = b.y64 - b.y64.mean(dim=(1, 2), keepdim=True)
    sx = xc.square().sum(dim=(1, 2)).sqrt()
    sy = yc.square().sum(dim=(1, 2)).sqrt()
    fx, fy = b.flat_x, b.flat_y
    den = torch.where(fx | fy, torch.ones_like(sx), sx * sy)
    r = ((xc * yc).sum(dim=(1, 2)) / den).clamp(-1.0, 1.0)
    r = torch.where(fx | fy, torch.zeros_like(r), r)
    return torch.where(fx & fy, torch.ones_like(r), r)


def _sam(b: _Batch) -> torch.Tensor:
    nx = b.x64.square().sum(dim=(1, 2)).sqrt()
    ny = b.y64.square().sum(dim=(1, 2)).sqrt()
    zx, zy = nx == 0, ny == 0
    ux = b.x64 / torch.where(zx, torch.ones_like(nx), nx).view(-1, 1, 1)
    uy = b.y64 / torch.where(zy, torch.ones_like(ny), ny).view(-1, 1, 1)
    a = 2.0 * torch.atan2((ux - uy).square().sum(dim=(1, 2)).sqrt(), (ux + uy).square().sum(dim=(1, 2)).sqrt())
    a = torch.where(zx ^ zy, torch.full_like(a, math.pi / 2), a)
    return torch.where(zx & zy, torch.zeros_like(a), a)


def _ssim(b: _Batch) -> torch.Tensor:
    return b.ssim


def _box_moments(b: _Batch, window: int):
    """Means, variances and covariance of x and y over every ``window`` x ``window`` window
    inside the tile (stride 1; the whole tile if smaller), float64, from integral images of the
    tile-mean-centred data."""
    wh, ww = min(window, b.h), min(window, b.w)
    c = b.x64.mean(dim=(1, 2), keepdim=True)
    xc, yc = b.x64 - c, b.y64 - c
    st = torch.stack([xc, yc, xc * xc, yc * yc, xc * yc])  # (5, N, H, W)
    ii = F.pad(st.cumsum(2).cumsum(3), (1, 0, 1, 0))
    s = ii[:, :, wh:, ww:] - ii[:, :, :-wh, ww:] - ii[:, :, wh:, :-ww] + ii[:, :, :-wh, :-ww]
    s = s / (wh * ww)
    mx, my = s[0], s[1]
    return mx + c, my + c, s[2] - mx * mx, s[3] - my * my, s[4] - mx * my


def _uiq(b: _Batch) -> torch.Tensor:
    mx, my, vx, vy, cxy = _box_moments(b, _UIQ_WINDOW)
    # Wang & Bovik's img_qi.m, with "== 0" read as "below float64 round-off of the moments"
    tol_v = 1e-12 * b.dr**2
    tol_m = 1e-28 * b.dr**2
    d1 = vx + vy
    d2 = mx * mx + my * my
    z1 = d1 <= tol_v
    z2 = d2 <= tol_m
    one = torch.ones_like(d1)
    q = torch.where(~z1 & ~z2, 4 * cxy * mx * my / torch.where(z1 | z2, one, d1 * d2), one)
    q = torch.where(z1 & ~z2, 2 * mx * my / torch.where(z2, one, d2), q)
    q = torch.where(~z1 & z2, 2 * cxy / torch.where(z1, one, d1), q)
    return q.mean(dim=(1, 2))


def _gmsd(b: _Batch) -> torch.Tensor:
    both = torch.cat([b.x, b.y]) / b.dr
    pad = max(b.h % 2, b.w % 2)
    if pad:
        both = F.pad(both, (0, pad, 0, pad))
    both = F.avg_pool2d(both.unsqueeze(1), 2, stride=2).squeeze(1)
    g = _prewitt_magnitude(both)
    gx, gy = g[: b.n], g[b.n :]
    gms = (2 * gx * gy + _GMSD_T) / (gx * gx + gy * gy + _GMSD_T)
    gms = gms.to(torch.float64)
    return gms.std(dim=(1, 2), unbiased=False)


def _fsim(b: _Batch) -> torch.Tensor:
    x, y = b.fsim_inputs()
    return torch.from_numpy(_fsim_pairs(x, y)[0])


def _joint_entropy_counts(b: _Batch) -> torch.Tensor:
    """-sum(c log2 c) over the 10x10 joint histogram counts c (numpy.histogram2d defaults:
    each axis spans that tile's own min..max, a flat tile spans value +- 0.5)."""
    x = b.x64.reshape(b.n, -1).contiguous().numpy()
    y = b.y64.reshape(b.n, -1).contiguous().numpy()
    out = np.empty(b.n, np.float64)

    def part(i0: int, i1: int) -> None:
        _nb_joint_entropy_counts(x[i0:i1], y[i0:i1], _ISSM_HIST_BINS, out[i0:i1])

    _split(part, b.n)
    return torch.from_numpy(out)


def _edge_correlation(b: _Batch) -> torch.Tensor:
    """Pearson correlation of the two Canny edge maps; both maps constant: 1 if equal else 0."""
    scale = 4095.0 * 0.0625  # image-similarity-measures assumes 12-bit data and takes x / 16
    both = torch.cat([b.x64, b.y64]) / b.dr * scale
    u8 = torch.trunc(both).clamp_(0, 255).to(torch.int32).numpy()
    ux, uy = u8[: b.n], u8[b.n :]
    out = np.empty(b.n, np.float64)

    def part(i0: int, i1: int) -> None:
        _nb_edge_correlation(ux[i0:i1], uy[i0:i1], _CANNY_LOW, _CANNY_HIGH, out[i0:i1])

    _split(part, b.n)
    return torch.from_numpy(out)


def _issm(b: _Batch) -> torch.Tensor:
    ehs = _joint_entropy_counts(b)
    rho = _edge_correlation(b)
    s = b.ssim
    e = math.e
    num = rho * ehs * (_ISSM_A + _ISSM_B) + e
    den = _ISSM_A * rho * ehs + _ISSM_B * ehs + _ISSM_C * s + e
    ok = den.abs() > 1e-9
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def _sh(b: _Batch) -> torch.Tensor:
    nb = _SH_BINS

    def hist(v: torch.Tensor) -> torch.Tensor:
        idx = torch.floor(v.reshape(b.n, -1).to(torch.float64) / b.dr * nb).clamp_(0, nb - 1).long()
        idx = idx + (torch.arange(b.n) * nb)[:, None]
        return torch.bincount(idx.reshape(-1), minlength=b.n * nb).reshape(b.n, nb)

    hx, hy = hist(b.x), hist(b.y)
    return torch.minimum(hx, hy).sum(dim=1).to(torch.float64) / (b.h * b.w)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

_IMPL: dict[str, Callable[[_Batch], torch.Tensor]] = {
    "se": _se, "imed": _imed, "ssim": _ssim, "zncc": _zncc, "gmsd": _gmsd, "rmse": _rmse,
    "psnr": _psnr, "fsim": _fsim, "issm": _issm, "sre": _sre, "sam": _sam, "uiq": _uiq, "sh": _sh,
}


def _chunk_size(h: int, w: int, fsim_group: bool) -> int:
    """Tiles per chunk. FSIM takes the whole batch (:func:`_fsim_pairs` chunks and threads it
    itself); the other measures work on up to 64 MiB of float64 moment stacks at a time."""
    if fsim_group:
        return 1 << 62
    return max(1, (64 << 20) // (h * w * 8 * 12))


def compute_measures(
    x: "np.ndarray | torch.Tensor",
    y: "np.ndarray | torch.Tensor",
    data_range: float = 1.0,
    names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Compute several similarity measures between input tiles and their reconstructions.

    Intermediates are computed once per chunk and shared: the float64 difference image (SE,
    RMSE, PSNR, SRE, IMED), the Gaussian local moments (SSIM and the SSIM term of ISSM), the
    spectra and log-Gabor responses of x and y in one FFT batch (FSIM's phase congruency) and
    FSIM's gradient maps. The batch is processed in chunks sized to stay in cache.

    Args:
        x: input tiles, (N, H, W) (or (H, W)) numpy array or CPU tensor, intensity units.
        y: reconstructions, same shape.
        data_range: width of the intensity range (1.0 for [0, 1] tiles).
        names: measures to compute (default: all thirteen, in ``MEASURE_NAMES`` order).

    Returns:
        ``{name: float64 array of shape (N,)}`` with each measure's natural value.
    """
    wanted = list(MEASURE_NAMES if names is None else names)
    unknown = [n for n in wanted if n not in _IMPL]
    if unknown:
        raise KeyError(f"metrics: unknown measure(s) {unknown}; known: {list(MEASURE_NAMES)}")
    xt, yt, dr = _prepare(x, y, data_range)
    n, h, w = xt.shape
    out: dict[str, list[torch.Tensor]] = {k: [] for k in wanted}
    # FSIM shares nothing with the others and wants small, cache-sized chunks; the rest share
    # differences and local moments and run in large chunks (fewer, larger torch calls)
    groups = [[k for k in wanted if k == "fsim"], [k for k in wanted if k != "fsim"]]
    with torch.no_grad():
        for group in groups:
            if not group:
                continue
            step = _chunk_size(h, w, group == ["fsim"])
            for i in range(0, n, step):
                b = _Batch(xt[i : i + step], yt[i : i + step], dr)
                for k in group:
                    out[k].append(_IMPL[k](b).to(torch.float64))
    res: dict[str, np.ndarray] = {}
    for k in wanted:
        v = torch.cat(out[k]).numpy() if out[k] else np.zeros(0, dtype=np.float64)
        if not np.isfinite(v).all():  # an invariant of this module, never expected
            raise FloatingPointError(f"metrics: {k} produced a non-finite value")
        res[k] = v
    return res


def _single(name: str) -> Callable[..., np.ndarray]:
    def fn(x, y, data_range: float = 1.0) -> np.ndarray:
        return compute_measures(x, y, data_range, names=[name])[name]

    return fn


def se(x, y, data_range: float = 1.0) -> np.ndarray:
    """Sum of squared errors ``sum((x - y)^2)`` over each tile, in squared intensity units.

    "SE" in the research's list is read as the squared error summed over the tile (the
    unnormalised form of MSE; RMSE covers the normalised one). ``data_range`` is not used.
    Identical tiles give 0. Lower is more similar.
    """
    return _single("se")(x, y, data_range)


def rmse(x, y, data_range: float = 1.0) -> np.ndarray:
    """Root mean squared error ``sqrt(mean((x - y)^2))`` in intensity units (equals
    ``sqrt(skimage.metrics.mean_squared_error)``; not skimage's ``normalized_root_mse``).
    ``data_range`` is not used. Lower is more similar."""
    return _single("rmse")(x, y, data_range)


def psnr(x, y, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB (as
    ``skimage.metrics.peak_signal_noise_ratio``). MSE is floored at ``(1e-10 data_range)^2`` so
    identical tiles give 200 dB, not inf. Higher is more similar."""
    return _single("psnr")(x, y, data_range)


def sre(x, y, data_range: float = 1.0) -> np.ndarray:
    """Signal-to-reconstruction error ratio ``10 log10(mean(x)^2 / MSE)`` in dB.

    Lanaras, Bioucas-Dias, Galliani, Baltsavias, Schindler, "Super-resolution of Sentinel-2
    images: learning a globally applicable deep neural network", ISPRS J. 146, 2018 (eq. 10:
    ``SRE = 10 log10(mu_x^2 / (||x_hat - x||^2 / n))``). image-similarity-measures divides the
    unsquared norm by n, which is not the paper's formula. Both mean^2 and MSE are floored at
    ``(1e-10 data_range)^2`` (finite for identical or black tiles). Higher is more similar.
    """
    return _single("sre")(x, y, data_range)


def imed(x, y, data_range: float = 1.0) -> np.ndarray:
    """IMage Euclidean Distance, Wang, Zhang, Feng, "On the Euclidean distance of images",
    IEEE TPAMI 27(8), 2005: ``sqrt(sum_ij g_ij (x_i - y_i)(x_j - y_j))`` with
    ``g_ij = exp(-|P_i - P_j|^2 / 2) / (2 pi)`` (sigma = 1 pixel).

    ``G`` is separable (a row and a column Gaussian), so ``e^T G e = sum(e * (G_r e G_c))``:
    the standardising transform as two small matrix products, exact (no truncation), O(n^1.5)
    instead of O(n^2). In intensity units; ``data_range`` is not used. Lower is more similar.
    """
    return _single("imed")(x, y, data_range)


def zncc(x, y, data_range: float = 1.0) -> np.ndarray:
    """Zero-normalised cross-correlation (Pearson correlation of the pixels), in [-1, 1].

    A flat tile has no structure to correlate: both flat -> 1, one flat -> 0. Invariant to a
    constant offset. ``data_range`` is not used. Higher is more similar.
    """
    return _single("zncc")(x, y, data_range)


def sam(x, y, data_range: float = 1.0) -> np.ndarray:
    """Spectral angle mapper: the angle in radians between the two tiles as vectors (Kruse et
    al., "The spectral image processing system (SIPS)", Remote Sens. Environ. 44, 1993),
    computed as ``2 atan2(|u - v|, |u + v|)`` on unit vectors (accurate near 0). Both tiles zero
    -> 0, one zero -> pi/2. ``data_range`` is not used. Lower is more similar."""
    return _single("sam")(x, y, data_range)


def ssim(x, y, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity, Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 13(4), 2004: 11x11 Gaussian window
    (sigma 1.5), K1 0.01, K2 0.03, population covariances, mean over the map without its 5-px
    border. Equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range)``; tiles under 11 px (which skimage
    refuses) are averaged over the whole map. Higher is more similar (1 = identical)."""
    return _single("ssim")(x, y, data_range)


def uiq(x, y, data_range: float = 1.0) -> np.ndarray:
    """Universal image quality index, Wang & Bovik, "A universal image quality index", IEEE SPL
    9(3), 2002: ``Q = 4 s_xy m_x m_y / ((s_x^2 + s_y^2)(m_x^2 + m_y^2))`` on every 8x8 window
    (stride 1, inside the tile), averaged. Degenerate windows follow the authors' img_qi.m: no
    variance in either -> ``2 m_x m_y / (m_x^2 + m_y^2)``; both means zero -> ``2 s_xy /
    (s_x^2 + s_y^2)``; both -> 1. Tiles under 8 px use one window of the tile's size. Higher
    is more similar (1 = identical)."""
    return _single("uiq")(x, y, data_range)


def gmsd(x, y, data_range: float = 1.0) -> np.ndarray:
    """Gradient magnitude similarity deviation, Xue, Zhang, Mou, Bovik, "Gradient magnitude
    similarity deviation: a highly efficient perceptual image quality index", IEEE TIP 23(2),
    2014, as ``piq.gmsd``: scale to [0, 1], zero-pad odd sizes, 2x2 average pooling, Prewitt/3
    gradients with zero padding, ``GMS = (2 g_x g_y + c) / (g_x^2 + g_y^2 + c)`` with
    ``c = 170/255^2``, population standard deviation of GMS. Lower is more similar."""
    return _single("gmsd")(x, y, data_range)


def fsim(x, y, data_range: float = 1.0) -> np.ndarray:
    """Feature similarity index (greyscale), Zhang, Zhang, Mou, Zhang, "FSIM: a feature
    similarity index for image quality assessment", IEEE TIP 20(8), 2011, as the authors'
    FeatureSIM.m and ``piq.fsim(chromatic=False)``: scale to 0..255, average-pool by
    ``max(1, round(min(H, W) / 256))``, phase congruency (phasecong2: 4 scales from wavelength 6,
    x2, sigma_f 0.55, 4 orientations, dTheta/sigma 1.2, k 2) from cached log-Gabor filters and
    one batched FFT, Scharr gradient magnitude, T1 0.85, T2 160,
    ``FSIM = sum(S_PC S_G PC_max) / sum(PC_max)``. If no pixel of either tile has phase
    congruency (sum PC_max = 0) the pixels are weighted equally. Higher is more similar."""
    return _single("fsim")(x, y, data_range)


def issm(x, y, data_range: float = 1.0) -> np.ndarray:
    """Information theoretic-based statistic similarity measure, Aljanabi, Hussain, Shnain, Lu,
    "Design of a hybrid measure for image similarity: a statistical, algebraic, and
    information-theoretic approach", Eur. J. Remote Sens. 52(sup4), 2019, in the form of
    image-similarity-measures 0.3.6 ``issm``::

        ISSM = (rho EHS (A + B) + e) / (A rho EHS + B EHS + C SSIM + e),  A, B, C = .3, .5, .7

    EHS = -sum(c log2 c) over the 10x10 joint histogram counts of x and y; rho = correlation of
    the two Canny edge maps (OpenCV Canny, thresholds 100/200, on the tile mapped to 12 bits
    and divided by 16 as the library does, i.e. ``trunc(x / data_range * 4095 / 16)``);
    SSIM = :func:`ssim` (Wang et al.'s Gaussian form, shared with SSIM, where the library uses
    skimage's 7x7 defaults). Where the library returns 0 because rho is NaN (an edge map with no
    edges), rho is defined: two equal edge maps correlate 1, otherwise 0. A vanishing
    denominator (possible only on tiles of a few dozen pixels) gives 0. Higher is more similar.
    """
    return _single("issm")(x, y, data_range)


def sh(x, y, data_range: float = 1.0) -> np.ndarray:
    """Histogram similarity: the histogram intersection of Swain & Ballard, "Color indexing",
    IJCV 7(1), 1991, ``sum_k min(h_x[k], h_y[k]) / n`` over 32 equal bins on
    [0, data_range] (values outside are counted in the end bins). In [0, 1]; 1 = same grey-level
    distribution. See docs/metrics.md for why "SH" is read this way. Higher is more similar."""
    return _single("sh")(x, y, data_range)


def phase_congruency(x, data_range: float = 1.0) -> np.ndarray:
    """Phase congruency map of each tile as FSIM uses it (Kovesi's phasecong2 with FSIM's
    parameters, on the tile scaled to 0..255, after FSIM's average pooling).

    Args:
        x: (N, H, W) or (H, W) tiles.
        data_range: width of the intensity range.

    Returns:
        (N, H', W') float64 array in [0, 1] (H' = H unless min(H, W) >= 384).
    """
    xt, _, dr = _prepare(x, x, data_range)
    with torch.no_grad():
        xs, _ = _Batch(xt, xt, dr).fsim_inputs()
    pcs = _fsim_pairs(xs, xs, keep_pc=True)[1]
    return pcs[..., 0].astype(np.float64)  # type: ignore[index]


@dataclass(frozen=True)
class Measure:
    """A registered measure.

    Attributes:
        name: short name (``MEASURE_NAMES``).
        fn: ``fn(x, y, data_range=1.0) -> (N,) float64``.
        higher_is_similar: direction of the natural value.
        reference: the paper or definition it follows.
        best: the natural value of identical tiles for bounded similarity measures (1.0), else
            None; :func:`anomaly_score` returns ``best - value`` for those.
    """

    name: str
    fn: Callable[..., np.ndarray]
    higher_is_similar: bool
    reference: str
    best: float | None = None


MEASURES: dict[str, Measure] = {
    "se": Measure("se", se, False, "sum of squared errors"),
    "imed": Measure("imed", imed, False, "Wang, Zhang, Feng 2005, IEEE TPAMI 27(8)"),
    "ssim": Measure("ssim", ssim, True, "Wang, Bovik, Sheikh, Simoncelli 2004, IEEE TIP 13(4)", 1.0),
    "zncc": Measure("zncc", zncc, True, "zero-normalised cross-correlation (Pearson)", 1.0),
    "gmsd": Measure("gmsd", gmsd, False, "Xue, Zhang, Mou, Bovik 2014, IEEE TIP 23(2)"),
    "rmse": Measure("rmse", rmse, False, "root mean squared error"),
    "psnr": Measure("psnr", psnr, True, "peak signal-to-noise ratio, dB"),
    "fsim": Measure("fsim", fsim, True, "Zhang, Zhang, Mou, Zhang 2011, IEEE TIP 20(8)", 1.0),
    "issm": Measure("issm", issm, True, "Aljanabi, Hussain, Shnain, Lu 2019, Eur. J. Remote Sens. 52"),
    "sre": Measure("sre", sre, True, "Lanaras et al. 2018, ISPRS J. 146, dB"),
    "sam": Measure("sam", sam, False, "spectral angle mapper, Kruse et al. 1993, radians"),
    "uiq": Measure("uiq", uiq, True, "Wang & Bovik 2002, IEEE SPL 9(3)", 1.0),
    "sh": Measure("sh", sh, True, "histogram intersection, Swain & Ballard 1991, IJCV 7(1)", 1.0),
}


def anomaly_score(name: str, values: "np.ndarray | torch.Tensor | Iterable[float]") -> np.ndarray:
    """Turn a measure's natural values into anomaly scores (higher = more anomalous).

    The single place that converts: distances (SE, IMED, GMSD, RMSE, SAM) are returned as
    they are; bounded similarities (SSIM, ZNCC, FSIM, UIQ, SH) as ``1 - value``; unbounded
    similarities (PSNR, SRE in dB, ISSM) as ``-value``. Every conversion is strictly decreasing
    in similarity, so ROC curves are unchanged.

    Args:
        name: a key of ``MEASURES``.
        values: natural values, any shape.

    Returns:
        float64 array of the same shape.
    """
    if name not in MEASURES:
        raise KeyError(f"metrics: unknown measure {name!r}; known: {list(MEASURE_NAMES)}")
    m = MEASURES[name]
    if isinstance(values, torch.Tensor):
        v = values.detach().cpu().to(torch.float64).numpy()
    else:
        v = np.asarray(values, dtype=np.float64)
    if not m.higher_is_similar:
        return v.copy()
    if m.best is not None:
        return m.best - v
    return -v
