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
