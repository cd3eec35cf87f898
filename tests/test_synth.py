"""The synthetic scan source: landing contract, determinism, physics, masks, layouts."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from peelscan import synth as S
from peelscan.ids import is_valid_id
from peelscan.xrayio import decode_image


def _machine(seed: int = 0, width: int = 256) -> S.Machine:
    return S.machine_for_lot(np.random.default_rng(seed), width)


def _slab(thickness_mm: np.ndarray, material: str = "tissue") -> S.Phantom:
    """A phantom whose row 0 holds the given path lengths of one material."""
    t = np.asarray(thickness_mm, np.float32)[None, :]
    return S.Phantom({material: t}, t > 0, np.zeros(t.shape, bool), None, 1)


def _read_labels(folder: Path) -> list[dict[str, str]]:
    text = (folder / "labels.csv").read_text()
    assert text.splitlines()[0] == "scan_id,label,defect_type"
    return list(csv.DictReader(io.StringIO(text)))


# ----------------------------------------------------------------------------- landing contract
@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("landing")
    lots = S.write_landing(str(root), lots=2, scans=14, anomaly_rate=0.5, seed=5, size=128)
    return root, lots


def test_landing_follows_the_contract(landing):
    root, lots = landing
    assert lots == ["lot-000", "lot-001"] and all(is_valid_id(x) for x in lots)
    for lot in lots:
        folder = root / lot
        rows = _read_labels(folder)
        assert [r["scan_id"] for r in rows] == [f"scan-{j:04d}" for j in range(14)]
        scans = sorted(p.stem for p in folder.glob("*.tif") if p.stem not in ("dark", "flat"))
        assert scans == [r["scan_id"] for r in rows]
        dark = decode_image((folder / "dark.tif").read_bytes(), "dark.tif", signal=False)
        flat = decode_image((folder / "flat.tif").read_bytes(), "flat.tif")
        assert dark.dtype == flat.dtype == np.uint16 and dark.shape[1] == flat.shape[1] == 128
        assert flat.astype(float).mean() > 20 * dark.astype(float).mean()  # the beam is on in the flat
        anomalous = [r for r in rows if r["label"] == "anomalous"]
        assert len(anomalous) == 7 and {r["label"] for r in rows} == {"good", "anomalous"}
        # defect types cycle: seven anomalies hold all seven types
        assert sorted(r["defect_type"] for r in anomalous) == sorted(S.DEFECT_TYPES)
        assert all(r["defect_type"] == "" for r in rows if r["label"] == "good")
        masks = sorted(p.stem for p in (folder / "masks").glob("*.png"))
        assert masks == sorted(r["scan_id"] for r in anomalous)
        for r in rows:
            raw = decode_image((folder / f"{r['scan_id']}.tif").read_bytes(), f"{r['scan_id']}.tif")
            assert raw.dtype == np.uint16 and raw.shape == (128, 128)
            assert raw.min() > 0 and raw.max() < 65535  # neither under- nor overexposed
            if r["label"] == "anomalous":
                m = decode_image((folder / "masks" / f"{r['scan_id']}.png").read_bytes(), "m.png", signal=False)
                assert m.dtype == np.uint8 and m.shape == raw.shape
                assert set(np.unique(m)) == {0, 255}


def test_landing_is_accepted_by_ingest(landing):
    from peelscan.ingest import ingest_lot
    from peelscan.lake import Store

    root, lots = landing
    res = ingest_lot(Store(str(root)), lots[0])
    assert res.quarantine == [] and len(res.scans) == 14
    assert res.dark is not None and res.flat is not None
    by_id = {s.scan_id: s for s in res.scans}
    assert sum(s.label == "anomalous" for s in res.scans) == 7
    assert all(s.mask is not None and s.mask.any() for s in res.scans if s.label == "anomalous")
    assert {by_id[s].defect_type for s in by_id if by_id[s].label == "anomalous"} == set(S.DEFECT_TYPES)


def test_png8_lot_is_precorrected_without_frames(tmp_path):
    lots = S.write_landing(str(tmp_path), lots=1, scans=3, anomaly_rate=0.34, seed=2, size=96, png8=True,
                           lot_prefix="p8")
    folder = tmp_path / lots[0]
    assert lots == ["p8-000"]
    assert not (folder / "dark.tif").exists() and not (folder / "flat.tif").exists()
    for r in _read_labels(folder):
        img = decode_image((folder / f"{r['scan_id']}.png").read_bytes(), "s.png")
        assert img.dtype == np.uint8 and img.shape == (96, 96)
        assert np.median(img[:, :4]) >= 250  # open beam at the frame edge: transmission ~ 1
        assert img.min() < 200  # the tuber absorbs
    assert len(list((folder / "masks").glob("*.png"))) == 1


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="anomaly_rate"):
        S.write_landing(str(tmp_path), lots=1, scans=2, anomaly_rate=1.5)
    with pytest.raises(ValueError, match="scans"):
        S.write_landing(str(tmp_path), lots=1, scans=0)
    with pytest.raises(Exception, match="lot id"):
        S.write_landing(str(tmp_path), lots=1, scans=1, lot_prefix="../x")
    with pytest.raises(ValueError, match="unknown defect type 'rot'"):
        S.make_phantom(np.random.default_rng(0), defect="rot")
    with pytest.raises(ValueError, match="width 64 does not match"):
        S.render_counts(S.make_phantom(np.random.default_rng(0), (64, 64)), _machine(0, 128), np.random.default_rng(0))
    m = _machine()
    m.energies_kev = np.array([30.0, 50.0, 70.0])
    with pytest.raises(ValueError, match="energies_kev"):
        S.transmission(_slab([10.0]), m)


# ------------------------------------------------------------------------------- determinism
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    kw = dict(lots=2, scans=4, anomaly_rate=0.5, seed=9, size=96)
    S.write_landing(str(tmp_path / "a"), **kw)
    S.write_landing(str(tmp_path / "b"), **kw)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[k] == b[k] for k in a)
    S.write_landing(str(tmp_path / "c"), **{**kw, "seed": 10})
    c = _files(tmp_path / "c")
    assert c["lot-000/scan-0000.tif"] != a["lot-000/scan-0000.tif"]


def test_a_scan_does_not_depend_on_how_many_are_generated(tmp_path):
    S.write_landing(str(tmp_path / "few"), lots=2, scans=2, anomaly_rate=0.0, seed=4, size=96)
    S.write_landing(str(tmp_path / "many"), lots=3, scans=5, anomaly_rate=0.0, seed=4, size=96)
    few, many = _files(tmp_path / "few"), _files(tmp_path / "many")
    for k in ("lot-001/scan-0001.tif", "lot-001/dark.tif", "lot-001/flat.tif", "lot-000/scan-0000.tif"):
        assert few[k] == many[k]


def test_lots_differ():
    a, b = (S.machine_for_lot(np.random.default_rng(s), 256) for s in (1, 2))
    assert a.source_counts != b.source_counts
    assert np.abs(a.column_gain - b.column_gain).max() > 0.01
    assert not np.allclose(a.spectrum, b.spectrum)
    la, lb = (S.lot_params(np.random.default_rng(s)) for s in (1, 2))
    assert la.length_mm != lb.length_mm and la.density != lb.density
    # per-column gain is a few per cent
    assert 0.005 < a.column_gain.std() < 0.05 and np.abs(a.column_gain - 1).max() < 0.12


# ----------------------------------------------------------------------------------- physics
def test_materials_are_ordered_by_attenuation():
    mu = S.MATERIALS
    for e in range(len(S.ENERGY_BINS_KEV)):
        assert mu["air"][e] < 1e-4 < mu["pith"][e] < mu["tissue"][e] < mu["bruise"][e] < mu["stone"][e] < mu["iron"][e]
        assert mu["tissue"][e] < mu["glass"][e] < mu["iron"][e]
    # potato tissue is close to water (at 40/60/80 keV); μ falls with energy for every material
    assert list(S.ENERGY_BINS_KEV[1:]) == [40.0, 60.0, 80.0]
    assert np.allclose(mu["tissue"][1:], [0.027, 0.021, 0.0185], rtol=0.08)
    assert all(np.all(np.diff(v) < 0) for v in mu.values())


def test_thicker_tissue_transmits_less_and_beam_hardens():
    m = _machine(3)
    t = np.linspace(2.0, 150.0, 75)
    tr = S.transmission(_slab(t), m)[0].astype(np.float64)
    assert np.all(np.diff(tr) < 0) and tr.max() < 1.0
    mu_eff = -np.log(tr) / t  # attenuation per unit thickness falls with thickness: beam hardening
    assert np.all(np.diff(mu_eff) < 0)
    assert mu_eff[0] / mu_eff[-1] > 1.07
    # it is the spectrum that does it: a single energy bin gives a constant mu
    mono = S.Machine(**{**m.__dict__, "spectrum": np.array([0.0, 0.0, 1.0, 0.0])})
    mu_mono = -np.log(S.transmission(_slab(t), mono)[0].astype(np.float64)) / t
    assert np.allclose(mu_mono, S.MATERIALS["tissue"][2], rtol=1e-4)


def test_dense_materials_attenuate_more_and_voids_less():
    m = _machine(4)
    t = np.full(4, 3.0)
    base = S.transmission(_slab(np.full(4, 40.0)), m)[0]
    for material, denser in (("iron", True), ("stone", True), ("glass", True), ("bruise", True), ("air", False)):
        ph = S.Phantom({"tissue": np.full((1, 4), 37.0, np.float32), material: t[None].astype(np.float32)},
                       np.ones((1, 4), bool), np.zeros((1, 4), bool), None, 1)
        tr = S.transmission(ph, m)[0]
        assert np.all(tr < base) if denser else np.all(tr > base), material


@pytest.mark.parametrize("defect", S.DEFECT_TYPES)
def test_defect_contrast_and_mask_covers_every_changed_pixel(defect):
    m = _machine(6)
    more_attenuating = defect in ("stone", "glass", "metal", "bruise")
    for seed in range(3):
        lot = S.lot_params(np.random.default_rng(100 + seed))
        with_d = S.make_phantom(np.random.default_rng(seed), defect=defect, lot=lot)
        without = S.make_phantom(np.random.default_rng(seed), defect=None, lot=lot)
        assert np.array_equal(with_d.object_mask, without.object_mask)  # the same tuber
        mask = with_d.defect_mask
        assert with_d.defect_type == defect and without.defect_type is None and not without.defect_mask.any()
        assert mask.any() and not (mask & ~with_d.object_mask).any()
        # noise-free transmission: the defect changed pixels only inside its mask ...
        t1, t0 = S.transmission(with_d, m), S.transmission(without, m)
        changed = t1 != t0
        assert not (changed & ~mask).any()
        # ... in the physically right direction, and visibly
        d = np.log(t0[mask]) - np.log(t1[mask])  # extra attenuation [nepers]
        assert (np.all(d >= 0) if more_attenuating else np.all(d <= 0))
        assert np.abs(d).max() > (0.015 if defect == "bruise" else 0.05)
        # the rendered scan (motion blur along the belt) changes only inside scan_mask
        c1 = S.render_counts(with_d, m, np.random.default_rng(0), noise=False)
        c0 = S.render_counts(without, m, np.random.default_rng(0), noise=False)
        sm = S.scan_mask(with_d, m)
        assert not ((c1 != c0) & ~sm).any() and (sm >= mask).all()
        # realistic size, mostly inside the interior (a few mm from the outline)
        area_mm2 = mask.sum() * 0.25
        assert 1.0 <= area_mm2 <= 600.0
        depth_mm = ndimage.distance_transform_edt(with_d.object_mask) * with_d.pixel_mm
        assert (depth_mm[mask] >= 3.0).mean() >= 0.9


def test_hollow_heart_removes_tissue_path_and_mass_is_kept():
    lot = S.LotParams()
    ph = S.make_phantom(np.random.default_rng(1), defect="hollow_heart", lot=lot)
    good = S.make_phantom(np.random.default_rng(1), defect=None, lot=lot)
    m = ph.defect_mask
    solid = ph.path_mm["tissue"] + ph.path_mm["pith"]
    solid0 = good.path_mm["tissue"] + good.path_mm["pith"]
    # the void's path is taken out of the tissue: total path unchanged, tissue path shorter
    assert np.allclose((solid + ph.path_mm["air"])[m], solid0[m], atol=1e-3)
    assert np.all(solid[m] < solid0[m])


def test_flat_field_correction_gives_transmission_in_0_1():
    """(raw - dark) / (flat - dark) with the lot's frames is the transmission, within noise.

    Rule: over the tuber, every corrected pixel is > 0; where the tuber is at least 5 mm thick
    (T <= 0.91, > 8 noise sigmas below 1) every pixel is <= 1; over the whole tuber
    each pixel is within 6 sigma of the noise-free (blurred) transmission (sigma from Poisson
    + read noise), which also shows that heel, gain and dark are undone."""
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        m = S.machine_for_lot(rng, 256)
        lot = S.lot_params(rng)
        dark = S.render_dark(m, rng, (32, 256))
        flat = S.render_flat(m, rng, (32, 256))
        ph = S.make_phantom(rng, lot=lot, defect="stone")
        raw = S.render_counts(ph, m, rng)
        corr = S.flat_correct(raw, dark, flat).astype(np.float64)
        obj = ph.object_mask
        assert corr[obj].min() > 0
        thick = (ph.path_mm["tissue"] + ph.path_mm["pith"]) >= 5.0
        assert corr[thick].max() <= 1.0
        t_true = S._motion_blur(S.transmission(ph, m), m.motion_blur_px).astype(np.float64)
        i0 = m.source_counts * S.heel_profile(m)[None, :]
        sigma = np.sqrt(t_true * i0 * m.column_gain[None, :] ** 2 + m.read_noise ** 2) / (i0 * m.column_gain[None, :])
        assert np.all(np.abs(corr - t_true)[obj] <= 6 * sigma[obj] + 2e-3)
        background = ndimage.binary_dilation(obj, iterations=4) == 0
        assert abs(corr[background].mean() - 1.0) < 0.003


def test_detector_noise_gain_heel_and_dark():
    m = _machine(8)
    rng = np.random.default_rng(0)
    lines = S.render_flat(m, rng, (3000, 256), n_average=1).astype(np.float64)
    mean, var = lines.mean(0), lines.var(0)
    expect = m.dark_level + m.source_counts * S.heel_profile(m) * m.column_gain
    assert np.allclose(mean, expect, rtol=0.002)
    # Poisson: variance = gain² x quanta (+ read noise²)
    quanta = m.source_counts * S.heel_profile(m)
    assert np.allclose(np.median(var / (m.column_gain ** 2 * quanta + m.read_noise ** 2)), 1.0, atol=0.03)
    dark = S.render_dark(m, rng, (64, 256), n_average=1).astype(np.float64)
    assert np.allclose(dark.mean(0), m.dark_level, atol=4 * m.read_noise / 8 + 0.5)
    # the heel: intensity falls towards the anode side
    prof = S.heel_profile(m)
    assert (prof[0] > prof[-1]) == (m.heel_strength > 0) and abs(prof[0] - prof[-1]) > 0.03
    # motion blur along the belt: a sharp edge across rows is spread, across columns it is not
    t = np.zeros((20, 256), np.float32)
    t[10:] = 30.0
    edge = S.Phantom({"tissue": t}, t > 0, np.zeros(t.shape, bool), None, 1)
    c = S.render_counts(edge, S.Machine(**{**m.__dict__, "motion_blur_px": 1.0}), rng, noise=False)
    col = c[:, 100].astype(float)
    assert col[9] == col[0] and col[11] == col[19] and col[0] > col[10] > col[19]


# -------------------------------------------------------------------------------- layouts
def test_several_objects_separated_or_touching():
    for seed in range(3):
        sep = S.make_phantom(np.random.default_rng(seed), (256, 256), n_objects=3)
        _, n = ndimage.label(sep.object_mask)
        assert n == 3 and sep.n_objects == 3 and set(np.unique(sep.labels)) == {0, 1, 2, 3}
        touch = S.make_phantom(np.random.default_rng(seed), (256, 256), n_objects=2, touching=True)
        _, n = ndimage.label(touch.object_mask, structure=np.ones((3, 3)))
        assert n == 1 and set(np.unique(touch.labels)) == {0, 1, 2}
        anom = S.make_phantom(np.random.default_rng(seed), (256, 256), n_objects=4, defect="stone")
        assert anom.defect_mask.any() and len(np.unique(anom.labels[anom.defect_mask])) == 1


def test_tubers_are_irregular_3d_bodies_not_discs():
    lot = S.LotParams()
    ph = S.make_phantom(np.random.default_rng(3), lot=lot)
    t = ph.path_mm["tissue"] + ph.path_mm["pith"]
    obj = ph.object_mask
    # a thickness map: thick in the middle, thin at the rim, tens of mm at most
    depth = ndimage.distance_transform_edt(obj)
    assert t[depth > 30].mean() > 3 * t[(depth > 0) & (depth <= 2)].mean()
    assert 25.0 < t.max() < 120.0
    # the pith is thinner than the tuber and inside it
    assert 0 < ph.path_mm["pith"].max() < t.max()
    # an irregular outline: not an ellipse (compare to the best-fit ellipse of the same moments)
    rr, cc = np.nonzero(obj)
    cov = np.cov(np.stack([rr, cc]))
    d = np.stack([rr - rr.mean(), cc - cc.mean()])
    r2 = np.einsum("in,ij,jn->n", d, np.linalg.inv(cov), d)
    ell = np.zeros_like(obj)
    yy, xx = np.mgrid[: obj.shape[0], : obj.shape[1]]
    dd = np.stack([yy.ravel() - rr.mean(), xx.ravel() - cc.mean()])
    ell.ravel()[:] = np.einsum("in,ij,jn->n", dd, np.linalg.inv(cov), dd) <= 4.0
    assert (ell ^ obj).sum() > 0.01 * obj.sum()
    assert r2.max() > 0  # the moments were well defined


def test_size_and_pixel_size_are_configurable():
    ph = S.make_phantom(np.random.default_rng(0), (96, 160), pixel_mm=0.8, defect="glass")
    assert ph.object_mask.shape == (96, 160) and ph.defect_mask.any()
    rows, cols = np.nonzero(ph.object_mask)
    assert rows.min() > 0 and rows.max() < 95 and cols.min() > 0 and cols.max() < 159  # fits the frame
