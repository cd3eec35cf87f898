"""Items in a scan (peelscan.segment): separated, touching, empty, voids, fragments, order."""

from __future__ import annotations

import numpy as np
import pytest

from peelscan.preprocess import PreprocessConfig, preprocess_scan
from peelscan.segment import Item, SegmentConfig, object_mask, segment_items

SHAPE = (256, 256)


def ellipsoids(potatoes, shape=SHAPE, mu_px=0.0105) -> np.ndarray:
    """True attenuation [nepers] of ellipsoids ``(row, col, semi-axis rows, semi-axis cols)``
    with depth = the smaller semi-axis (mu 0.021/mm at 0.5 mm/px)."""
    r, c = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    att = np.zeros(shape)
    for cr, cc, ar, ac in potatoes:
        q = 1 - ((r - cr) / ar) ** 2 - ((c - cc) / ac) ** 2
        att += mu_px * 2 * min(ar, ac) * np.sqrt(np.clip(q, 0, None))
    return att


def scan(att: np.ndarray, seed: int, i0: float = 20000.0) -> np.ndarray:
    """Raw line-scan counts of ``att``: per-column gain, heel, Poisson noise, dark 100."""
    rng = np.random.default_rng(seed)
    w = att.shape[1]
    gain = (1 + 0.05 * rng.standard_normal(w)) * (1 - 0.15 * np.linspace(-1, 1, w))
    lam = i0 * gain[None, :] * np.exp(-att)
    return np.clip(rng.poisson(lam) + 100, 0, 65535).astype(np.uint16)


def pre(att: np.ndarray, seed: int = 0) -> np.ndarray:
    return preprocess_scan(scan(att, seed), config=PreprocessConfig()).attenuation


def test_three_separated_potatoes_give_three_items():
    att = ellipsoids([(128, 50, 45, 32), (120, 128, 50, 30), (136, 206, 40, 34)])
    items = segment_items(pre(att, 1))
    assert len(items) == 3
    assert [it.index for it in items] == [0, 1, 2]
    # ordered by centroid column; each item covers its potato
    truth = [ellipsoids([p]) > 0 for p in [(128, 50, 45, 32), (120, 128, 50, 30), (136, 206, 40, 34)]]
    for it, t in zip(items, truth):
        m = it.full_mask(SHAPE)
        iou = (m & t).sum() / (m | t).sum()
        assert iou > 0.85, iou
        assert it.area_px == int(it.mask.sum()) and it.mask.shape == (it.r1 - it.r0, it.c1 - it.c0)
        assert m[it.r0:it.r1, it.c0:it.c1].any(axis=1).all()


def test_two_touching_potatoes_give_two_items():
    potatoes = [(128, 88, 48, 44), (132, 170, 46, 40)]  # overlapping by ~2 px at the neck
    att = ellipsoids(potatoes)
    fg = object_mask(pre(att, 2))
    from scipy import ndimage

    assert ndimage.label(fg)[1] == 1  # one connected blob: only the watershed can split it
    items = segment_items(pre(att, 2))
    assert len(items) == 2
    left, right = items
    assert left.centroid[1] < right.centroid[1]
    assert abs(left.centroid[1] - 88) < 6 and abs(right.centroid[1] - 170) < 6
    assert not (left.full_mask(SHAPE) & right.full_mask(SHAPE)).any()
    # without splitting they are one item
    assert len(segment_items(pre(att, 2), SegmentConfig(split_touching=False))) == 1


def test_one_elongated_potato_is_not_split():
    att = ellipsoids([(128, 128, 45, 100)])
    assert len(segment_items(pre(att, 3))) == 1


def test_empty_frame_gives_no_items():
    assert segment_items(pre(np.zeros(SHAPE), 4)) == []
    assert segment_items(np.zeros((32, 32), np.float32)) == []
    assert segment_items(np.zeros((32, 32), np.float32), SegmentConfig(method="otsu")) == []


def test_hollow_heart_void_stays_inside_the_item_and_fragments_are_dropped():
    att = ellipsoids([(128, 128, 60, 50)])
    r, c = np.mgrid[:256, :256]
    void = ((r - 128) / 14) ** 2 + ((c - 128) / 10) ** 2 < 1
    att[void] = 0.0  # a hole right through: the attenuation drops to open beam
    att[10:14, 10:14] = 0.5  # a 16-px fragment (a clod of soil)
    items = segment_items(pre(att, 5), SegmentConfig(min_area_px=200))
    assert len(items) == 1
    assert items[0].full_mask(SHAPE)[void].all()
    assert len(segment_items(pre(att, 5), SegmentConfig(min_area_px=5, opening_radius_px=1))) == 2


def test_order_is_deterministic_and_independent_of_labels():
    att = ellipsoids([(60, 60, 30, 30), (190, 60, 30, 30), (128, 190, 40, 40)])
    a = pre(att, 6)
    first = segment_items(a)
    again = segment_items(a.copy())
    assert [(i.r0, i.c0, i.r1, i.c1, i.area_px) for i in first] == [(i.r0, i.c0, i.r1, i.c1, i.area_px) for i in again]
    # same column: ordered by row
    assert first[0].centroid[0] < first[1].centroid[0] and first[2].centroid[1] > 150
    assert isinstance(first[0], Item) and first[0].mask.dtype == bool


def test_bad_input_and_config():
    with pytest.raises(ValueError, match="2-D"):
        segment_items(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        segment_items(np.full((32, 32), np.nan, np.float32))
    with pytest.raises(ValueError):
        SegmentConfig(method="magic")
    cfg = SegmentConfig(min_area_px=50)
    assert SegmentConfig.from_dict({**cfg.as_dict(), "future": 1}) == cfg


# ---------------------------------------------------------------------------------------------
# on peelscan.synth frames: irregular tubers with defects, raw counts of a random machine


@pytest.mark.parametrize("seed", [0, 4, 5, 9])
@pytest.mark.parametrize("n, touching", [(3, False), (2, True), (1, False)])
def test_synth_frames_give_one_item_per_tuber(seed, n, touching):
    from peelscan import synth

    machine = synth.machine_for_lot(np.random.default_rng(100 + seed), 256)
    ph = synth.make_phantom(np.random.default_rng(seed), (256, 256), 0.5, n_objects=n, touching=touching,
                            defect=synth.DEFECT_TYPES[seed % 7])
    raw = synth.render_counts(ph, machine, np.random.default_rng(seed + 1))
    att = preprocess_scan(raw).attenuation
    items = segment_items(att)
    assert len(items) == n
    if touching:
        from scipy import ndimage

        assert ndimage.label(ph.object_mask)[1] < n  # the tubers really touch
    # every item is (mostly) one tuber, and every tuber is covered
    owners = []
    for it in items:
        counts = np.bincount(ph.labels[it.full_mask(att.shape)], minlength=n + 1)[1:]
        assert counts.max() > 0.9 * counts.sum()
        owners.append(int(counts.argmax()))
    assert sorted(owners) == list(range(n))
