"""Tests of peelscan.metrics against independent implementations and defined edge cases.

References (test dependencies, installed by the Makefile): scikit-image (SSIM, PSNR, MSE),
piq 0.8.0 (FSIM, GMSD; loaded module by module because its package __init__ needs
torchvision), phasepack (phase congruency), image-similarity-measures 0.3.6 and OpenCV (UIQ,
ISSM's entropy and Canny edge terms), and brute-force transcriptions of the papers' formulas.

Tolerances: float64 inputs agree with float64 references to 1e-9 or better; float32 inputs
(the pipeline's) within 1e-5 (SSIM, GMSD, UIQ) and 1e-4 (FSIM, the issue's bound).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from peelscan import metrics as M

torch.set_num_threads(1)


@functools.lru_cache(maxsize=None)
def _load_piq() -> types.SimpleNamespace:
    """Import piq's metric modules without running piq/__init__.py (which imports torchvision)."""
    if "piq" not in sys.modules:
        spec = importlib.util.find_spec("piq")
        if spec is None or spec.submodule_search_locations is None:
            pytest.fail("piq is a test dependency: pip install --no-deps piq==0.8.0")
        pkg = types.ModuleType("piq")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["piq"] = pkg
    return types.SimpleNamespace(
        fsim=importlib.import_module("piq.fsim"), gmsd=importlib.import_module("piq.gmsd")
    )


def _ism():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("image_similarity_measures.quality_metrics")


def _pairs(n: int, h: int, w: int | None = None, seed: int = 0, noise: float = 0.05, sigma: float = 1.5):
    """Smooth random tiles in [0, 1] and noisy reconstructions clipped to [0, 1], float64."""
    w = h if w is None else w
    rng = np.random.default_rng(seed)
    x = np.stack([gaussian_filter(rng.random((h, w)), sigma) for _ in range(n)])
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    x = (x - lo) / (hi - lo)
    y = np.clip(x + noise * rng.standard_normal(x.shape), 0.0, 1.0)
    return x, y


# ------------------------------------------------------------------------------------------
# registry and API
# ------------------------------------------------------------------------------------------


def test_registry_holds_all_thirteen_with_directions():
    names = "se imed ssim zncc gmsd rmse psnr fsim issm sre sam uiq sh".split()
    assert list(M.MEASURES) == names == list(M.MEASURE_NAMES)
    lower_better = {"se", "imed", "gmsd", "rmse", "sam"}
    for name, m in M.MEASURES.items():
        assert m.name == name and callable(m.fn) and m.reference
        assert m.higher_is_similar == (name not in lower_better)


def test_each_function_matches_compute_measures_and_anomaly_direction():
    x, y = _pairs(6, 32, seed=1)
    y_worse = np.clip(x + 0.2 * np.random.default_rng(9).standard_normal(x.shape), 0, 1)
    allm = M.compute_measures(x, y)
    worse = M.compute_measures(x, y_worse)
    for name, m in M.MEASURES.items():
        v = m.fn(x, y, data_range=1.0)
        assert v.shape == (6,) and v.dtype == np.float64
        np.testing.assert_allclose(v, allm[name], rtol=0, atol=1e-12)
        # a much noisier reconstruction is more anomalous under every measure
        assert (M.anomaly_score(name, worse[name]) > M.anomaly_score(name, allm[name])).all(), name


def test_anomaly_score_conversions():
    v = np.array([0.2, 0.9])
    np.testing.assert_allclose(M.anomaly_score("fsim", v), [0.8, 0.1])
    np.testing.assert_allclose(M.anomaly_score("gmsd", v), v)
    np.testing.assert_allclose(M.anomaly_score("psnr", torch.tensor([30.0, 40.0])), [-30.0, -40.0])
    with pytest.raises(KeyError, match="unknown measure"):
        M.anomaly_score("nope", v)


def test_chunked_batch_equals_single_tiles_and_torch_input():
    x, y = _pairs(70, 24, seed=2)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    batch = M.compute_measures(x32, y32)  # 70 > FSIM's chunk at 24x24? (chunk is 76) -> mixed
    one = M.compute_measures(torch.from_numpy(x32[5]), torch.from_numpy(y32[5]))
    for k in M.MEASURE_NAMES:
        np.testing.assert_allclose(one[k], batch[k][5:6], rtol=1e-6, atol=1e-6, err_msg=k)
    big = M.compute_measures(np.repeat(x32, 3, axis=0), np.repeat(y32, 3, axis=0), names=["fsim", "ssim"])
    np.testing.assert_allclose(big["fsim"], np.repeat(batch["fsim"], 3), atol=1e-7)


def test_bad_input_errors():
    x = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="shapes differ"):
        M.ssim(x, np.zeros((2, 8, 9), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        M.fsim(x, np.full((2, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(x, x, data_range=0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        M.se(np.zeros((1, 2, 8, 8)), np.zeros((1, 2, 8, 8)))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        M.rmse([[0.0]], [[0.0]])
    with pytest.raises(KeyError, match="unknown measure"):
        M.compute_measures(x, x, names=["fsimc"])


def test_empty_batch():
    out = M.compute_measures(np.zeros((0, 16, 16), np.float32), np.zeros((0, 16, 16), np.float32))
    assert all(v.shape == (0,) for v in out.values())


# ------------------------------------------------------------------------------------------
# against independent implementations
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32), (64, 64), (17, 23)])
def test_ssim_matches_skimage(shape):
    x, y = _pairs(4, *shape, seed=3, noise=0.1)
    ref = [
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        for a, b in zip(x, y)
    ]
    np.testing.assert_allclose(M.ssim(x, y), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(M.ssim(x.astype(np.float32), y.astype(np.float32)), ref, rtol=0, atol=1e-5)
    ref255 = [
        structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        for a, b in zip(x * 255, y * 255)
    ]
    np.testing.assert_allclose(M.ssim(x * 255, y * 255, data_range=255), ref255, atol=1e-10)


def test_psnr_rmse_se_match_skimage():
    x, y = _pairs(5, 32, seed=4)
    np.testing.assert_allclose(
        M.psnr(x, y), [peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(x, y)], atol=1e-10
    )
    np.testing.assert_allclose(
        M.psnr(x * 4095, y * 4095, data_range=4095),
        [peak_signal_noise_ratio(a, b, data_range=4095) for a, b in zip(x * 4095, y * 4095)],
        atol=1e-10,
    )
    np.testing.assert_allclose(M.rmse(x, y), [math.sqrt(mean_squared_error(a, b)) for a, b in zip(x, y)], atol=1e-12)
    np.testing.assert_allclose(M.se(x, y), ((x - y) ** 2).sum(axis=(1, 2)), rtol=1e-12)


@pytest.mark.parametrize("size", [32, 64, 256])
def test_fsim_matches_piq(size):
    piq = _load_piq()
    x, y = _pairs(3 if size < 256 else 2, size, seed=size, noise=0.06)
    tx, ty = torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None]
    ref = piq.fsim.fsim(tx, ty, data_range=1.0, reduction="none", chromatic=False).numpy()
    np.testing.assert_allclose(M.fsim(x, y), ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(M.fsim(x.astype(np.float32), y.astype(np.float32)), ref, rtol=0, atol=1e-4)


def test_fsim_matches_piq_non_square_odd_and_downsampled():
    piq = _load_piq()
    for h, w in [(33, 40), (21, 21), (400, 390)]:  # 390: piq / FeatureSIM.m pool by 2
        x, y = _pairs(1, h, w, seed=h, noise=0.05)
        ref = piq.fsim.fsim(
            torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None], reduction="none", chromatic=False
        ).numpy()
        np.testing.assert_allclose(M.fsim(x, y), ref, atol=1e-9, err_msg=f"{h}x{w}")
        # data_range: the same tiles on a 12-bit scale give the same FSIM
        np.testing.assert_allclose(M.fsim(x * 4095, y * 4095, data_range=4095), ref, atol=1e-9)


def test_phase_congruency_map_matches_piq():
    piq = _load_piq()
    x, _ = _pairs(2, 48, seed=7)
    t = torch.from_numpy(x * 255)[:, None]
    filters = piq.fsim._construct_filters(t)
    ref = piq.fsim._phase_congruency(t, filters)[:, 0].numpy()
    np.testing.assert_allclose(M.phase_congruency(x), ref, atol=1e-9)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fsim_noise_median_is_the_exact_lower_median_of_each_lane(dtype):
    """FSIM's noise threshold needs the exact lower median of the finest-scale amplitudes of x
    (even lanes) and y (odd lanes); the radix-bracketed selection must return it for any
    non-negative data: spread over decades, heavy ties, zeros, a flat lane, one pixel."""
    rng = np.random.default_rng(3)
    shift = np.finfo(dtype).nmant - M._MEDIAN_BIN_BITS
    kdt = np.int64 if dtype == np.float64 else np.int32
    nbins = 1 << (8 * np.dtype(dtype).itemsize - 1 - shift)
    hx, hy = np.zeros(nbins, np.int32), np.zeros(nbins, np.int32)
    cases = {
        "log-uniform over 12 decades": 10.0 ** rng.uniform(-6, 6, (2, 1024)),
        "amplitude-like": np.abs(rng.normal(0, 30, (2, 1024))),
        "ties": rng.integers(0, 4, (2, 1024)).astype(float),
        "zeros and one bin": np.where(rng.random((2, 1023)) < 0.6, 0.0, 1.0 + rng.random((2, 1023)) * 1e-3),
        "flat x, spread y": np.stack([np.full(400, 7.5), rng.random(400)]),
        "one pixel": np.array([[2.0], [0.0]]),
    }
    for what, lanes in cases.items():
        lanes = lanes.astype(dtype)
        hw = lanes.shape[1]
        k = (hw - 1) // 2
        v = np.empty(2 * hw, dtype)
        v[0::2], v[1::2] = lanes
        before = v.copy()
        bx, by = np.empty(hw, dtype), np.empty(hw, dtype)
        mx, my = M._nb_lane_medians(v, v.view(kdt), hw, k, shift, hx, hy, bx, by)
        assert (mx, my) == (np.sort(lanes[0])[k], np.sort(lanes[1])[k]), what
        assert np.array_equal(v, before), what  # the amplitudes are read, not reordered
        assert not hx.any() and not hy.any(), what  # the histograms are left zeroed for reuse

def test_phase_congruency_agrees_with_phasepack_in_structure():
    """phasepack implements Kovesi's phasecong3 (cosine angular spread, frequency-spread
    weighting, per-orientation normalisation), FSIM's code uses phasecong2: the maps cannot be
    equal, but with FSIM's scales and orientations they must mark the same features."""
    from phasepack import phasecong

    for size, seed in [(32, 11), (64, 12)]:
        x, _ = _pairs(1, size, seed=seed, sigma=2.0)
        ours = M.phase_congruency(x)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = phasecong(x[0] * 255, nscale=4, norient=4, minWaveLength=6, mult=2, sigmaOnf=0.55, k=2.0)
        theirs = np.sum(res[4], axis=0)
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.7
        assert 0.0 <= ours.min() and ours.max() <= 1.0 + 1e-9


@pytest.mark.parametrize("shape", [(32, 32), (33, 21), (5, 4), (1, 1)])
def test_gmsd_matches_piq(shape):
    piq = _load_piq()
    x, y = _pairs(3, *shape, seed=5, sigma=1.0) if min(shape) > 1 else (np.full((3, 1, 1), 0.3), np.full((3, 1, 1), 0.6))
    ref = piq.gmsd.gmsd(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None], reduction="none").numpy()
    np.testing.assert_allclose(M.gmsd(x, y), ref, atol=1e-12)
    np.testing.assert_allclose(M.gmsd(x.astype(np.float32), y.astype(np.float32)), ref, atol=1e-5)


def _imed_brute(a: np.ndarray, b: np.ndarray) -> float:
    h, w = a.shape
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    p = np.stack([rr.ravel(), cc.ravel()], 1).astype(float)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    g = np.exp(-d2 / 2) / (2 * np.pi)
    e = (a - b).ravel()
    return math.sqrt(e @ g @ e)


@pytest.mark.parametrize("shape", [(8, 8), (12, 7), (1, 5)])
def test_imed_matches_brute_force(shape):
    rng = np.random.default_rng(6)
    x = rng.random((3, *shape))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    ref = [_imed_brute(a, b) for a, b in zip(x, y)]
    np.testing.assert_allclose(M.imed(x, y), ref, rtol=1e-12)
    np.testing.assert_allclose(M.imed(x.astype(np.float32), y.astype(np.float32)), ref, rtol=1e-5)


def _uiq_brute(a: np.ndarray, b: np.ndarray, win: int = 8) -> float:
    """Wang & Bovik's img_qi.m, window by window."""
    h, w = a.shape
    wh, ww = min(win, h), min(win, w)
    qs = []
    for i in range(h - wh + 1):
        for j in range(w - ww + 1):
            u, v = a[i : i + wh, j : j + ww].ravel(), b[i : i + wh, j : j + ww].ravel()
            mu, mv = u.mean(), v.mean()
            vu, vv = u.var(), v.var()
            cuv = ((u - mu) * (v - mv)).mean()
            d1, d2 = vu + vv, mu * mu + mv * mv
            if d1 < 1e-12 and d2 > 0:
                q = 2 * mu * mv / d2
            elif d1 >= 1e-12 and d2 == 0:
                q = 2 * cuv / d1
            elif d1 >= 1e-12:
                q = 4 * cuv * mu * mv / (d1 * d2)
            else:
                q = 1.0
            qs.append(q)
    return float(np.mean(qs))


def test_uiq_matches_image_similarity_measures_and_wang_bovik():
    ism = pytest.importorskip("image_similarity_measures.quality_metrics")
    x, y = _pairs(3, 20, seed=8)
    # image-similarity-measures needs (H, W, bands): its 2-D path is broken
    ref = [ism.uiq(a[..., None], b[..., None]) for a, b in zip(x, y)]
    np.testing.assert_allclose(M.uiq(x, y), ref, atol=1e-6)  # it computes in float32
    # flat windows, zero windows, a flat tile against a textured one, tiny tiles
    a = np.zeros((2, 12, 12))
    a[0, :, 6:] = 0.5
    a[1] = 0.25
    b = a.copy()
    b[0, 3:5, 3:5] = 0.7
    b[1, :, :] = np.linspace(0, 1, 12)[None, :]
    for xs, ys in [(a, b), (a[:, :5, :6], b[:, :5, :6])]:
        np.testing.assert_allclose(M.uiq(xs, ys), [_uiq_brute(p, q) for p, q in zip(xs, ys)], atol=1e-9)


def test_canny_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(10)
    imgs = [
        (gaussian_filter(rng.random((32, 32)), 1.0) * 255 * 3).clip(0, 255),
        (rng.random((32, 32)) * 255),
        np.kron(rng.integers(0, 4, (4, 4)) * 80, np.ones((8, 8))).astype(float),
        gaussian_filter(rng.random((64, 48)), 2.0) * 255 * 5 % 256,
    ]
    for im in imgs:
        u8 = im.astype(np.uint8)
        ours = M.canny_edges(torch.from_numpy(u8.astype(np.float32))[None])[0].numpy()
        ref = cv2.Canny(u8, 100, 200) > 0
        assert (ours == ref).all()


def test_issm_matches_image_similarity_measures_terms():
    """ISSM = (rho EHS (A+B) + e) / (A rho EHS + B EHS + C SSIM + e): EHS and rho taken from
    image-similarity-measures on 12-bit (H, W) data (its convention), SSIM from skimage with
    Wang's settings (the library uses skimage's 7x7 default there)."""
    ism = pytest.importorskip("image_similarity_measures.quality_metrics")
    pytest.importorskip("cv2")
    x, y = _pairs(4, 32, seed=13, noise=0.08)
    x12, y12 = x * 4095, y * 4095
    ours = M.issm(x, y)
    ours12 = M.issm(x12, y12, data_range=4095)
    for i in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ehs = ism._ehs(x12[i], y12[i])
            rho = ism._edge_c(x12[i], y12[i])
        s = structural_similarity(x[i], y[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert np.isfinite(rho)
        ref = (rho * ehs * 0.8 + math.e) / (0.3 * rho * ehs + 0.5 * ehs + 0.7 * s + math.e)
        assert ours[i] == pytest.approx(ref, abs=1e-9)
        assert ours12[i] == pytest.approx(ref, abs=1e-9)


def test_zncc_sam_sre_sh_definitions():
    x, y = _pairs(4, 16, seed=14)
    np.testing.assert_allclose(M.zncc(x, y), [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(x, y)], atol=1e-12)
    cos = (x * y).sum((1, 2)) / np.sqrt((x * x).sum((1, 2)) * (y * y).sum((1, 2)))
    np.testing.assert_allclose(M.sam(x, y), np.arccos(cos), atol=1e-7)
    mse = ((x - y) ** 2).mean((1, 2))
    np.testing.assert_allclose(M.sre(x, y), 10 * np.log10(x.mean((1, 2)) ** 2 / mse), atol=1e-10)
    hx = np.stack([np.histogram(a, bins=32, range=(0, 1))[0] for a in x])
    hy = np.stack([np.histogram(b, bins=32, range=(0, 1))[0] for b in y])
    np.testing.assert_allclose(M.sh(x, y), np.minimum(hx, hy).sum(1) / 256, atol=1e-12)
    # SAM is an angle: orthogonal tiles are pi/2 apart, opposite-free here
    a = np.zeros((1, 2, 2))
    b = np.zeros((1, 2, 2))
    a[0, 0, 0] = 1
    b[0, 1, 1] = 1
    assert M.sam(a, b)[0] == pytest.approx(math.pi / 2)


# ------------------------------------------------------------------------------------------
# defined edge behaviour (docs/metrics.md, "Edge cases")
# ------------------------------------------------------------------------------------------

IDENTICAL = {
    "se": 0.0, "imed": 0.0, "ssim": 1.0, "zncc": 1.0, "gmsd": 0.0, "rmse": 0.0, "psnr": 200.0,
    "fsim": 1.0, "sam": 0.0, "uiq": 1.0, "sh": 1.0,
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identical_tiles(dtype):
    x, _ = _pairs(3, 32, seed=15)
    x = x.astype(dtype)
    out = M.compute_measures(x, x.copy())
    for k, v in IDENTICAL.items():
        np.testing.assert_allclose(out[k], v, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(out["sre"], 10 * np.log10(x.mean((1, 2)).astype(float) ** 2 / 1e-20), rtol=1e-6)
    assert (out["issm"] > 0.5).all()


def test_flat_tiles():
    a = np.full((1, 32, 32), 0.4)
    b = np.full((1, 32, 32), 0.6)
    same = M.compute_measures(a, a.copy())
    for k in ("ssim", "zncc", "fsim", "uiq", "sh"):
        assert same[k][0] == pytest.approx(1.0, abs=1e-12), k
    # ISSM: one joint-histogram bin of 1024 (EHS = -10240), no edges in either (rho = 1), SSIM 1
    ehs = -1024 * 10.0
    assert same["issm"][0] == pytest.approx((0.8 * ehs + math.e) / (0.8 * ehs + 0.7 + math.e), abs=1e-12)
    assert same["gmsd"][0] == 0.0 and same["sam"][0] == 0.0
    off = M.compute_measures(a, b)  # two flat tiles at different levels
    assert off["zncc"][0] == 1.0  # no structure to disagree on
    # FSIM and GMSD zero-pad their gradient filters, so a flat tile has a step at its border;
    # the values are piq's (phase congruency of a flat tile is eps / eps = 1 there and here)
    piq = _load_piq()
    ta, tb = torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None]
    assert off["fsim"][0] == pytest.approx(float(piq.fsim.fsim(ta, tb, chromatic=False)), abs=1e-12)
    assert off["gmsd"][0] == pytest.approx(float(piq.gmsd.gmsd(ta, tb)), abs=1e-12)
    np.testing.assert_allclose(M.phase_congruency(a), 1.0)
    assert off["sam"][0] == pytest.approx(0.0, abs=1e-7)
    assert off["sh"][0] == 0.0
    assert off["ssim"][0] == pytest.approx((2 * 0.4 * 0.6 + 1e-4) / (0.16 + 0.36 + 1e-4))
    assert off["uiq"][0] == pytest.approx(2 * 0.4 * 0.6 / (0.16 + 0.36))
    assert off["rmse"][0] == pytest.approx(0.2)
    # a flat tile against a textured one
    x, _ = _pairs(1, 32, seed=16)
    mix = M.compute_measures(a, x)
    assert mix["zncc"][0] == 0.0
    # black tiles: SAM and SRE defined
    z = np.zeros((1, 8, 8))
    assert M.sam(z, z)[0] == 0.0 and M.sam(z, x[:, :8, :8])[0] == pytest.approx(math.pi / 2)
    assert M.sre(z, z)[0] == 0.0
    assert M.sre(z, x[:, :8, :8])[0] < -150


def test_constant_offset():
    x, _ = _pairs(2, 32, seed=17)
    x = x * 0.5 + 0.2
    out = M.compute_measures(x, x + 0.1)
    np.testing.assert_allclose(out["zncc"], 1.0, atol=1e-12)
    np.testing.assert_allclose(out["rmse"], 0.1, atol=1e-12)
    np.testing.assert_allclose(out["psnr"], 20.0, atol=1e-9)
    assert (out["ssim"] < 1).all() and (out["ssim"] > 0.9).all()
    # GMSD and FSIM see the same interior gradients and phase, but their filters zero-pad the
    # border (as the references do), where the offset shows as a step
    inner = M.compute_measures(x[:, 8:24, 8:24], x[:, 8:24, 8:24] + 0.1, names=["gmsd", "fsim"])
    assert (out["gmsd"] < 0.05).all() and (out["fsim"] > 0.9).all()
    assert (inner["gmsd"] < 0.05).all()


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 2), (3, 5), (7, 7), (10, 10)])
def test_tiny_tiles_are_finite(shape):
    rng = np.random.default_rng(18)
    x = rng.random((3, *shape)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    x[2] = 0.5  # a flat one
    for a, b in [(x, y), (x, x.copy())]:
        out = M.compute_measures(a, b)
        for k, v in out.items():
            assert v.shape == (3,) and np.isfinite(v).all(), (k, shape, v)
    same = M.compute_measures(x, x.copy())
    for k in ("ssim", "fsim", "uiq", "sh", "zncc"):
        np.testing.assert_allclose(same[k], 1.0, atol=1e-6, err_msg=f"{k} {shape}")
