"""Preprocessing removes the machine (peelscan.preprocess).

The same phantom (potatoes with a hollow-heart void and a stone) is scanned by two machines
that differ in source intensity, per-column gain pattern, heel effect, dark offset and
source drift over rows; after preprocessing the two attenuation images must agree:

- mean absolute difference inside the objects < 0.01 of the normalised range [0, 1]
  (0.04 nepers with the default attenuation_scale of 4),
- mean absolute difference over the background < 0.005,
- and both agree with the true attenuation / attenuation_scale to < 0.01 inside the objects,

with calibration frames, without them (open beam from the scan itself), and for the 8-bit
pre-corrected path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from peelscan.preprocess import PreprocessConfig, Preprocessed, estimate_noise, preprocess_scan

SHAPE = (192, 256)
PIXEL_MM = 0.5
MU_POTATO = 0.021   # 1/mm, water-like tissue near 60 keV
MU_STONE = 0.08     # 1/mm
TOL_OBJECT = 0.01
TOL_BACKGROUND = 0.005


def phantom(shape=SHAPE, potatoes=((96, 70, 34, 30), (90, 185, 40, 44)), void=True, stone=True) -> np.ndarray:
    """True attenuation [nepers] of ellipsoidal potatoes (centre row, col, semi-axes in px;
    depth = the smaller semi-axis), a hollow-heart void in the first and a stone in the second."""
    h, w = shape
    r, c = np.mgrid[:h, :w].astype(np.float64)
    att = np.zeros(shape)
    for k, (cr, cc, ar, ac) in enumerate(potatoes):
        q = 1 - ((r - cr) / ar) ** 2 - ((c - cc) / ac) ** 2
        depth_mm = 2 * min(ar, ac) * PIXEL_MM * np.sqrt(np.clip(q, 0, None))
        att += MU_POTATO * depth_mm
        if k == 0 and void:
            qv = 1 - ((r - cr) / 8) ** 2 - ((c - cc) / 5) ** 2
            att -= MU_POTATO * 2 * 5 * PIXEL_MM * np.sqrt(np.clip(qv, 0, None))
        if k == 1 and stone:
            qs = 1 - ((r - cr - 6) / 4) ** 2 - ((c - cc + 5) / 4) ** 2
            att += (MU_STONE - MU_POTATO) * 2 * 4 * PIXEL_MM * np.sqrt(np.clip(qs, 0, None))
    return att


@dataclass
class Machine:
    """A line-scan X-ray machine: source intensity [counts], per-column gain, heel profile,
    dark offset [counts], relative source drift over rows."""

    i0: float
    gain: np.ndarray
    heel: np.ndarray
    dark: float
    drift: np.ndarray
    read_noise: float = 3.0

    def counts(self, att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = att.shape
        lam = self.i0 * self.gain[None, :w] * self.heel[None, :w] * self.drift[:h, None] * np.exp(-att)
        out = rng.poisson(lam) + self.dark + rng.normal(0, self.read_noise, att.shape)
        return np.clip(np.round(out), 0, 65535).astype(np.uint16)

    def flat(self, rng: np.random.Generator, rows: int = 32) -> np.ndarray:
        m = Machine(self.i0, self.gain, self.heel, self.dark, np.ones(rows), self.read_noise)
        return m.counts(np.zeros((rows, self.gain.size)), rng)

    def dark_frame(self, rng: np.random.Generator, rows: int = 32) -> np.ndarray:
        out = self.dark + rng.normal(0, self.read_noise, (rows, self.gain.size))
        return np.clip(np.round(out), 0, 65535).astype(np.uint16)


def machines(w: int = SHAPE[1], h: int = SHAPE[0]) -> tuple[Machine, Machine]:
    rng = np.random.default_rng(7)
    x = np.linspace(-1, 1, w)
    t = np.linspace(0, 1, h)
    m1 = Machine(i0=18000, gain=1 + 0.06 * rng.standard_normal(w), heel=1 - 0.18 * x, dark=120,
                 drift=1 + 0.02 * np.sin(2 * np.pi * t))
    m2 = Machine(i0=42000, gain=1 + 0.10 * rng.standard_normal(w), heel=1 + 0.25 * x - 0.1 * x**2, dark=900,
                 drift=1 - 0.03 * t)
    return m1, m2


def _agree(p1: Preprocessed, p2: Preprocessed, att: np.ndarray, cfg: PreprocessConfig) -> tuple[float, float, float]:
    inside = att > 0.1
    outside = att == 0
    a, b = p1.attenuation, p2.attenuation
    truth = np.clip(att / cfg.attenuation_scale, 0, 1)
    d_obj = float(np.abs(a - b)[inside].mean())
    d_bg = float(np.abs(a - b)[outside].mean())
    d_truth = max(float(np.abs(a - truth)[inside].mean()), float(np.abs(b - truth)[inside].mean()))
    return d_obj, d_bg, d_truth


@pytest.mark.parametrize("with_frames", [False, True])
def test_two_machines_give_the_same_attenuation(with_frames):
    att = phantom()
    cfg = PreprocessConfig()
    rng = np.random.default_rng(11)
    out = []
    for m in machines():
        raw = m.counts(att, rng)
        dark, flat = (m.dark_frame(rng), m.flat(rng)) if with_frames else (None, None)
        p = preprocess_scan(raw, dark, flat, cfg)
        assert p.attenuation.dtype == np.float32 and p.attenuation.shape == SHAPE
        assert 0.0 <= p.attenuation.min() and p.attenuation.max() <= 1.0
        assert p.calibration == ("frames" if with_frames else "self")
        # the open beam: source intensity x median gain x heel, in counts above dark
        expected = m.i0 * np.median(m.gain * m.heel)
        assert abs(p.open_beam / expected - 1) < 0.1, (p.open_beam, expected)
        out.append(p)
    d_obj, d_bg, d_truth = _agree(out[0], out[1], att, cfg)
    assert d_obj < TOL_OBJECT, d_obj
    assert d_bg < TOL_BACKGROUND, d_bg
    assert d_truth < TOL_OBJECT, d_truth
    # without correction the machines differ far more than the tolerance (the test can fail)
    raw_a = [np.clip(-np.log(np.maximum(m.counts(att, rng) - m.dark, 1) / m.i0) / cfg.attenuation_scale, 0, 1)
             for m in machines()]
    assert float(np.abs(raw_a[0] - raw_a[1])[att > 0.1].mean()) > 3 * TOL_OBJECT


def test_without_correction_of_gain_stripes_remain():
    """The per-column gain is what the column offsets remove: switching the background
    estimate off (threshold so high that nothing is object, no margin) still removes them,
    but a plain global open beam would not."""
    att = phantom()
    m1, _ = machines()
    raw = m1.counts(att, np.random.default_rng(3))
    p = preprocess_scan(raw)
    assert p.column_offset.shape == (SHAPE[1],) and p.row_offset.shape == (SHAPE[0],)
    # the estimated column offsets follow -ln(gain x heel) up to a constant
    truth = -np.log(m1.gain * m1.heel)
    est = p.column_offset.astype(np.float64)
    assert np.corrcoef(truth, est)[0, 1] > 0.98
    # the background is flat: no stripes left (std of the column means of background rows)
    bg_rows = p.attenuation[:20] * 4.0
    assert float(bg_rows.mean(axis=0).std()) < 0.005


def test_png8_precorrected_matches_raw_counts():
    """An 8-bit pre-corrected transmission image (T*255) and raw counts of another machine."""
    att = phantom()
    cfg = PreprocessConfig()
    rng = np.random.default_rng(5)
    m1, m2 = machines()
    t = np.exp(-att) * (1 + 0.01 * rng.standard_normal(att.shape))
    png8 = np.clip(np.round(t * 255), 0, 255).astype(np.uint8)
    p8 = preprocess_scan(png8, config=cfg)
    assert p8.calibration == "pre-corrected" and p8.open_beam == 255.0
    p16 = preprocess_scan(m2.counts(att, rng), m2.dark_frame(rng), m2.flat(rng), cfg)
    d_obj, d_bg, d_truth = _agree(p8, p16, att, cfg)
    assert d_obj < TOL_OBJECT and d_bg < TOL_BACKGROUND and d_truth < TOL_OBJECT, (d_obj, d_bg, d_truth)
    # float32 transmission is pre-corrected too
    pf = preprocess_scan(t.astype(np.float32), config=cfg)
    assert pf.calibration == "pre-corrected" and pf.open_beam == 1.0


def test_columns_covered_by_an_object_get_gain_from_the_fit_and_stripe_estimate():
    """A potato taller than the frame leaves some columns without background."""
    att = phantom(potatoes=((96, 128, 120, 40),), void=False, stone=False)
    covered = (att > 0).all(axis=0)
    assert covered.sum() >= 20
    m1, m2 = machines()
    rng = np.random.default_rng(9)
    p1 = preprocess_scan(m1.counts(att, rng))
    p2 = preprocess_scan(m2.counts(att, rng))
    cfg = PreprocessConfig()
    truth = att / cfg.attenuation_scale
    cols = np.flatnonzero(covered)
    for p in (p1, p2):
        err = np.abs(p.attenuation[:, cols] - truth[:, cols]).mean()
        assert err < 2 * TOL_OBJECT, err
    assert np.abs(p1.attenuation - p2.attenuation)[att > 0.1].mean() < 2 * TOL_OBJECT


def test_zero_negative_and_saturated_pixels():
    att = phantom()
    m1, _ = machines()
    rng = np.random.default_rng(2)
    raw = m1.counts(att, rng)
    dark = m1.dark_frame(rng)
    flat = m1.flat(rng)
    raw[95:100, 65:75] = 0           # below the dark level: no signal -> maximum attenuation
    raw[5:15, 5:15] = 65535          # saturated detector in the background -> attenuation 0
    cfg = PreprocessConfig(denoise_sigma=0.0)
    p = preprocess_scan(raw, dark, flat, cfg)
    assert np.all(p.attenuation[95:100, 65:75] == 1.0)  # -ln(1/65535) = 11.1 > scale 4 -> 1
    assert np.all(p.attenuation[5:15, 5:15] == 0.0)
    assert np.all(np.isfinite(p.attenuation))
    wide = PreprocessConfig(attenuation_scale=20.0, denoise_sigma=0.0)
    p = preprocess_scan(raw, dark, flat, wide)
    np.testing.assert_allclose(p.attenuation[96, 70], np.log(65535) / 20.0, rtol=1e-5)


def test_denoising_reduces_background_noise_and_keeps_small_stones():
    att = phantom()
    m1, _ = machines()
    raw = m1.counts(att, np.random.default_rng(4))
    off = preprocess_scan(raw, config=PreprocessConfig(denoise_sigma=0.0))
    on = preprocess_scan(raw, config=PreprocessConfig(denoise_sigma=0.7))
    assert estimate_noise(on.attenuation) < 0.6 * estimate_noise(off.attenuation)
    stone = (slice(90 + 6 - 2, 90 + 6 + 3), slice(185 - 5 - 2, 185 - 5 + 3))
    assert on.attenuation[stone].mean() > 0.9 * off.attenuation[stone].mean()


def test_beam_hardening_linearisation_and_config_round_trip():
    att = phantom()
    m1, _ = machines()
    raw = m1.counts(att, np.random.default_rng(6))
    base = preprocess_scan(raw)
    bh_cfg = PreprocessConfig(beam_hardening=(0.05,))
    bh = preprocess_scan(raw, config=bh_cfg)
    inside = att > 0.3
    assert np.all(bh.attenuation[inside] >= base.attenuation[inside])
    assert np.allclose(bh.attenuation[att == 0], base.attenuation[att == 0], atol=1e-3)
    d = bh_cfg.as_dict()
    assert PreprocessConfig.from_dict(d) == bh_cfg
    assert PreprocessConfig.from_dict({**d, "unknown_future_key": 1}) == bh_cfg
    assert bh_cfg.version() != PreprocessConfig().version()
    assert PreprocessConfig().version() == PreprocessConfig.from_dict(PreprocessConfig().as_dict()).version()
    with pytest.raises(ValueError):
        PreprocessConfig(attenuation_scale=0)


def test_bad_inputs_raise_clear_errors():
    raw = np.full((32, 40), 1000, np.uint16)
    with pytest.raises(ValueError, match="flat frame width 30 does not match the scan width 40"):
        preprocess_scan(raw, flat=np.full((4, 30), 2000, np.uint16))
    with pytest.raises(ValueError, match="2-D"):
        preprocess_scan(np.zeros((3, 32, 40), np.uint16))
    bad = raw.astype(np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        preprocess_scan(bad)


def test_empty_frame_is_all_background():
    m1, _ = machines()
    raw = m1.counts(np.zeros(SHAPE), np.random.default_rng(8))
    p = preprocess_scan(raw)
    assert p.calibration == "self" and float(p.attenuation.max()) < 0.02
    assert p.background.mean() > 0.99


# ---------------------------------------------------------------------------------------------
# the same, on peelscan.synth's physically modelled machines (polychromatic spectrum with beam
# hardening, module gain pattern, heel, motion blur, dark per column, read noise)


@pytest.mark.parametrize("with_frames", [False, True])
@pytest.mark.parametrize("phantom_seed", [5, 6])
def test_two_synth_machines_give_the_same_attenuation(with_frames, phantom_seed):
    import dataclasses

    from scipy import ndimage

    from peelscan import synth

    shape = (192, 192)
    ph = synth.make_phantom(np.random.default_rng(phantom_seed), shape, 0.5, n_objects=2, defect="stone")
    m1 = synth.machine_for_lot(np.random.default_rng(1), shape[1])
    m2 = synth.machine_for_lot(np.random.default_rng(2), shape[1])
    # the two machines differ in everything the preprocessing must remove
    assert abs(m2.source_counts / m1.source_counts - 1) > 0.2
    assert np.abs(m1.column_gain - m2.column_gain).max() > 0.02
    assert not np.allclose(synth.heel_profile(m1), synth.heel_profile(m2), atol=0.02)
    cfg = PreprocessConfig()
    out = []
    for k, m in enumerate((m1, m2)):
        rng = np.random.default_rng(20 + k)
        raw = synth.render_counts(ph, m, rng)
        if with_frames:
            p = preprocess_scan(raw, synth.render_dark(m, rng, (32, shape[1])), synth.render_flat(m, rng, (32, shape[1])), cfg)
        else:
            p = preprocess_scan(raw, None, None, cfg)
        assert p.calibration == ("frames" if with_frames else "self")
        out.append(p.attenuation)
    inside = ph.object_mask
    background = ~ndimage.binary_dilation(inside, iterations=3)
    d = np.abs(out[0] - out[1])
    assert float(d[inside].mean()) < TOL_OBJECT, float(d[inside].mean())
    assert float(d[background].mean()) < TOL_BACKGROUND, float(d[background].mean())
    # and a machine with the same spectrum and blur as m1 agrees more closely still
    m3 = dataclasses.replace(m2, spectrum=m1.spectrum.copy(), motion_blur_px=m1.motion_blur_px)
    raw3 = synth.render_counts(ph, m3, np.random.default_rng(23))
    p3 = preprocess_scan(raw3, None, None, cfg) if not with_frames else preprocess_scan(
        raw3, synth.render_dark(m3, np.random.default_rng(24), (32, shape[1])),
        synth.render_flat(m3, np.random.default_rng(25), (32, shape[1])), cfg)
    assert float(np.abs(out[0] - p3.attenuation)[inside].mean()) < TOL_OBJECT / 2


# ---------------------------------------------------------------------------------------------
# the compiled kernels compute exactly what the plain numpy/scipy formulation computes


def _reference_preprocess(raw, dark=None, flat=None, cfg=None):
    """The straightforward numpy/scipy formulation of preprocess_scan (float64 throughout):
    the fast implementation must give the same attenuation, offsets and background."""
    from scipy import ndimage

    from peelscan import preprocess as P

    cfg = cfg or PreprocessConfig()

    def as2d(a):
        return np.asarray(a).astype(np.float64)

    def frame(f, shape):
        f = as2d(f)
        return f if (not cfg.calibration_per_column and f.shape == shape) else f.mean(axis=0, keepdims=True)

    def noise(att):
        return float(1.4826 * np.median(np.abs(np.diff(att, axis=0))) / np.sqrt(2.0))

    def masked_median(values, mask, axis, min_count):
        v = np.sort(np.where(mask, values, np.nan), axis=axis)
        count = mask.sum(axis=axis)
        lo = np.expand_dims(np.maximum(count - 1, 0) // 2, axis)
        hi = np.minimum(np.expand_dims(np.maximum(count, 1) // 2, axis), v.shape[axis] - 1)
        med = np.squeeze(0.5 * (np.take_along_axis(v, lo, axis) + np.take_along_axis(v, hi, axis)), axis=axis)
        med[count < max(1, min_count)] = np.nan
        return med

    def background(att):
        thr = max(cfg.background_threshold, cfg.background_sigmas * noise(att))
        obj = ndimage.binary_opening(att > thr, structure=np.ones((3, 3), dtype=bool))
        if cfg.object_margin_px > 0 and obj.any():
            obj = ndimage.maximum_filter(obj, size=2 * cfg.object_margin_px + 1, mode="nearest")
        return ~obj

    def stripes(att):
        k = max(3, cfg.stripe_window_px | 1)
        return np.median(att - ndimage.median_filter(att, size=(1, k), mode="nearest"), axis=0)

    def rough_cols(att, stripe):
        w = att.shape[1]
        low = np.percentile(att - stripe[None, :], 5, axis=0)
        env = low.copy()
        for _ in range(20):
            fit = P._smooth_fit(env, np.ones(w, dtype=bool), cfg.heel_degree)
            new_env = np.minimum(env, fit)
            if float(np.max(env - new_env)) < 1e-4:
                break
            env = new_env
        res0 = low - fit
        sigma = 1.4826 * float(np.median(np.abs(res0 - np.median(res0))))
        thr = max(4.0 * sigma, cfg.background_threshold)
        keep = (low - fit) < thr + 2.0 * sigma
        for _ in range(3):
            if keep.sum() < cfg.heel_degree + 2:
                break
            fit = P._smooth_fit(low, keep, cfg.heel_degree)
            new_keep = (low - fit) < thr
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
        return np.where(keep, low, fit) + stripe

    x = as2d(raw)
    h, w = x.shape
    d = frame(dark, x.shape) if dark is not None else None
    f = frame(flat, x.shape) if flat is not None else None
    rough = False
    if f is not None:
        dd = d if d is not None else 0.0
        denom = f - dd
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (x - dd) / np.where(denom > 0, denom, np.nan)
        t = np.where(np.isfinite(t), t, 1.0)
    elif d is None and (np.asarray(raw).dtype == np.uint8 or (np.asarray(raw).dtype.kind == "f" and x.max() <= 2.0)):
        t = x / (255.0 if np.asarray(raw).dtype == np.uint8 else 1.0)
    else:
        y = x - d if d is not None else x
        scale = float(np.percentile(y, 99))
        t = y / scale
        rough = True
    att = -np.log(np.maximum(t, cfg.transmission_floor))
    col, row, stripe = np.zeros(w), np.zeros(h), None
    if rough:
        stripe = stripes(att)
        col = rough_cols(att, stripe)
        row = np.percentile(att - col[None, :], 5, axis=1)
    for _ in range(2):
        bg = background(att - col[None, :] - row[:, None])
        if not bg.any():
            break
        new_col = masked_median(att - row[:, None], bg, 0, min(cfg.min_background_px, h))
        if stripe is None and not np.isfinite(new_col).all():
            stripe = stripes(att)
        col = P._fill_columns(new_col, stripe if stripe is not None else np.zeros(w), cfg)
        row = P._fill_rows(masked_median(att - col[None, :], bg, 1, min(cfg.min_background_px, w)))
    a = np.minimum(att - col[None, :] - row[:, None], -np.log(cfg.transmission_floor))
    a = np.clip(ndimage.gaussian_filter(a, cfg.denoise_sigma, mode="nearest"), 0.0, None)
    return np.clip(a / cfg.attenuation_scale, 0.0, 1.0).astype(np.float32), col, row, bg


@pytest.mark.parametrize("path", ["frames", "self", "png8", "covered"])
def test_preprocess_equals_the_reference_formulation(path):
    """Attenuation, offsets and background mask equal those of the plain numpy/scipy
    formulation (to float32 rounding; in practice bit for bit)."""
    from peelscan import synth

    shape = (160, 192)
    m = synth.machine_for_lot(np.random.default_rng(31), shape[1])
    for seed in (1, 2):
        ph = synth.make_phantom(np.random.default_rng(seed), shape, 0.5, n_objects=2, touching=seed == 2, defect="stone")
        rng = np.random.default_rng(40 + seed)
        raw = synth.render_counts(ph, m, rng)
        dark = flat = None
        if path == "frames":
            dark, flat = synth.render_dark(m, rng, (16, shape[1])), synth.render_flat(m, rng, (16, shape[1]))
        elif path == "png8":
            t = synth.flat_correct(raw, synth.render_dark(m, rng, (16, shape[1])), synth.render_flat(m, rng, (16, shape[1])))
            raw = np.rint(np.clip(t, 0, 1) * 255).astype(np.uint8)
        elif path == "covered":  # a tuber taller than the frame: columns without background
            raw = machines(shape[1], shape[0])[seed - 1].counts(phantom(shape, ((80, 96, 120, 40),), False, False), rng)
        p = preprocess_scan(raw, dark, flat)
        ref_att, ref_col, ref_row, ref_bg = _reference_preprocess(raw, dark, flat)
        assert np.abs(p.attenuation.astype(np.float64) - ref_att).max() <= 1e-6
        np.testing.assert_array_equal(p.background, ref_bg)
        np.testing.assert_allclose(p.column_offset, ref_col.astype(np.float32), rtol=0, atol=1e-6)
        np.testing.assert_allclose(p.row_offset, ref_row.astype(np.float32), rtol=0, atol=1e-6)


def test_selection_kernels_match_numpy():
    """Exact medians/percentiles (order statistics of the same float64 values) for small,
    mid-size (equal-width buckets) and large (float32-key buckets) inputs, with ties, zeros,
    outliers and huge ranges."""
    from peelscan import preprocess as P

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 31, 33, 100, 255, 2048, 2049, 65280):
        for kind in ("normal", "ties", "zeros", "wide"):
            v = rng.standard_normal(n)
            if kind == "ties":
                v = np.round(v * 3) / 3
            elif kind == "zeros":
                v = np.where(rng.random(n) < 0.6, 0.0, v)
            elif kind == "wide":
                v = np.exp(rng.standard_normal(n) * 30) * np.sign(v)
            assert P._nb_median(v.copy(), n) == np.median(v)
            for q in (0, 5, 50, 99, 100):
                assert P._nb_percentile(v.copy(), n, *P._percentile_index(n, q)) == np.percentile(v, q)
    a = rng.standard_normal((64, 48)) * 0.01
    d = np.abs(np.diff(a, axis=0))
    assert P.estimate_noise(a) == float(1.4826 * np.median(d) / np.sqrt(2.0))


def test_filter_kernels_match_scipy():
    from scipy import ndimage

    from peelscan import preprocess as P

    rng = np.random.default_rng(1)
    for trial in range(12):
        h, w = rng.integers(2, 50, 2)
        att = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.5) * 0.3 + rng.standard_normal((h, w)) * 0.01
        if trial % 3 == 0:
            att = np.round(att * 20) / 20  # ties
        for margin in (0, 3):
            cfg = PreprocessConfig(object_margin_px=margin, stripe_window_px=9 if trial % 2 else 5)
            thr = max(cfg.background_threshold, cfg.background_sigmas * P.estimate_noise(att))
            obj = ndimage.binary_opening(att > thr, structure=np.ones((3, 3), dtype=bool))
            if margin and obj.any():
                obj = ndimage.maximum_filter(obj, size=2 * margin + 1, mode="nearest")
            np.testing.assert_array_equal(P.background_mask(att, cfg), ~obj)
            k = max(3, cfg.stripe_window_px | 1)
            ref = np.median(att - ndimage.median_filter(att, size=(1, k), mode="nearest"), axis=0)
            np.testing.assert_array_equal(P.column_stripes(att, cfg), ref)
        mask = rng.random((h, w)) < 0.7
        for axis in (0, 1):
            v = np.sort(np.where(mask, att, np.nan), axis=axis)
            count = mask.sum(axis=axis)
            lo = np.expand_dims(np.maximum(count - 1, 0) // 2, axis)
            hi = np.minimum(np.expand_dims(np.maximum(count, 1) // 2, axis), v.shape[axis] - 1)
            ref = np.squeeze(0.5 * (np.take_along_axis(v, lo, axis) + np.take_along_axis(v, hi, axis)), axis=axis)
            ref[count < 3] = np.nan
            np.testing.assert_array_equal(P._masked_median(att, mask, axis, 3), ref)
        col, row = rng.standard_normal(w), rng.standard_normal(h)
        for sigma in (0.0, 0.7, 1.6):
            ref = np.minimum(att * 20 - col[None, :] - row[:, None], 11.0)
            if sigma:
                ref = ndimage.gaussian_filter(ref, sigma, mode="nearest")
            ref = np.clip(np.clip(ref, 0, None) / 4.0, 0, 1).astype(np.float32)
            out = np.empty((h, w), np.float32)
            P._nb_finish(att * 20, col, row, 11.0, P._gaussian_weights(sigma) if sigma else np.ones(1), 4.0, out,
                         np.empty((h, w)))
            np.testing.assert_array_equal(out, ref)
