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


# ---------------------------------------------------------------------------------------------
# the compiled kernels compute exactly what scipy / scikit-image compute


def _random_masks(rng, count):
    from scipy import ndimage

    for trial in range(count):
        h, w = (int(v) for v in rng.integers(3, 70, 2))
        if trial % 3 == 0:
            yield rng.random((h, w)) < rng.choice([0.3, 0.6, 0.9])
        elif trial % 3 == 1:
            yield ndimage.gaussian_filter(rng.random((h, w)), rng.choice([1.5, 3.0])) > 0.5
        else:  # unions of ellipses: lumps, touching blobs, holes
            r, c = np.mgrid[:h, :w]
            m = np.zeros((h, w), bool)
            for _ in range(int(rng.integers(1, 4))):
                cr, cc, ar, ac = rng.integers(0, h), rng.integers(0, w), rng.integers(2, 25), rng.integers(2, 25)
                m ^= ((r - cr) / ar) ** 2 + ((c - cc) / ac) ** 2 <= 1
            yield m


def test_morphology_labels_and_distance_kernels_match_scipy():
    from scipy import ndimage
    from skimage.morphology import h_maxima

    from peelscan import segment as S

    rng = np.random.default_rng(0)
    for m in _random_masks(rng, 90):
        u8 = m.view(np.uint8)
        for r in (1, 2, 3):
            disk = S._disk(r)
            np.testing.assert_array_equal(S._morph(u8, disk, True).view(bool), ndimage.binary_erosion(m, structure=disk))
            np.testing.assert_array_equal(S._morph(u8, disk, False).view(bool), ndimage.binary_dilation(m, structure=disk))
        filled = np.empty(m.shape, np.uint8)
        S._nb_fill_holes(u8, filled)
        np.testing.assert_array_equal(filled.view(bool), ndimage.binary_fill_holes(m))
        labels, boxes, n = S._label8(m)
        ref, n_ref = ndimage.label(m, structure=np.ones((3, 3)))
        assert n == n_ref
        np.testing.assert_array_equal(labels, ref)
        for k, sl in enumerate(ndimage.find_objects(ref)):
            assert tuple(boxes[k]) == (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop, int((ref == k + 1).sum()))
        padded = np.pad(m, 1)
        dist, sq = np.empty(padded.shape), np.empty(padded.shape, np.int64)
        S._nb_edt(padded.view(np.uint8), dist, sq)
        np.testing.assert_array_equal(dist, ndimage.distance_transform_edt(padded))
        for h in (0.5, 2.0):
            np.testing.assert_array_equal(S._h_maxima(dist, h), h_maxima(dist, h))
        smooth = np.round(ndimage.gaussian_filter(rng.random(m.shape), 1.5) * 40) / 4  # plateaus
        np.testing.assert_array_equal(S._h_maxima(smooth, 0.5), h_maxima(smooth, 0.5))


def test_watershed_kernel_matches_skimage():
    """The bucket-queue watershed floods in scikit-image's order, also with markers of equal
    value (symmetric touching discs) and arbitrary labels on equal-valued markers."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    from peelscan import segment as S

    rng = np.random.default_rng(1)
    masks = list(_random_masks(rng, 60))
    for rad in range(4, 16, 3):  # two equal discs touching: equal peaks of different labels
        r, c = np.mgrid[:2 * rad + 3, :4 * rad + 4]
        masks.append(((r - rad - 1) ** 2 + (c - rad - 1) ** 2 <= rad * rad)
                     | ((r - rad - 1) ** 2 + (c - 3 * rad - 2) ** 2 <= rad * rad))
    compared = 0
    for k, m in enumerate(masks):
        padded = np.pad(m, 1)
        dist, sq = np.empty(padded.shape), np.empty(padded.shape, np.int64)
        S._nb_edt(padded.view(np.uint8), dist, sq)
        for depth in (0.5, 2.0):
            peaks = S._h_maxima(dist, depth)
            markers, n = ndimage.label(peaks, structure=np.ones((3, 3)))
            if n < 2:
                continue
            if k % 4 == 0:
                markers = np.where(peaks > 0, rng.integers(1, 4, peaks.shape), 0)
            markers = markers.astype(np.int32)
            np.testing.assert_array_equal(S._nb_watershed_sq(sq, markers, padded), watershed(-dist, markers, mask=padded))
            compared += 1
    assert compared > 30


def _reference_merge_wide_necks(labels, dist, n, neck_ratio):
    """segment._merge_wide_necks written with scipy's per-label maximum and np.unique."""
    from scipy import ndimage

    parent = list(range(n + 1))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    necks = {}
    for a_lab, b_lab, a_d, b_d in ((labels[:, :-1], labels[:, 1:], dist[:, :-1], dist[:, 1:]),
                                   (labels[:-1, :], labels[1:, :], dist[:-1, :], dist[1:, :])):
        sel = (a_lab != b_lab) & (a_lab > 0) & (b_lab > 0)
        la, lb = a_lab[sel], b_lab[sel]
        for x, y, d in zip(np.minimum(la, lb).tolist(), np.maximum(la, lb).tolist(),
                           np.minimum(a_d[sel], b_d[sel]).tolist()):
            if d > necks.get((x, y), -1.0):
                necks[(x, y)] = d
    peak = {k: float(v) for k, v in enumerate(np.atleast_1d(ndimage.maximum(dist, labels, index=np.arange(n + 1))))}
    while True:
        best, best_pair, merged = neck_ratio, None, {}
        for (x, y), d in necks.items():
            fx, fy = find(x), find(y)
            if fx != fy:
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
    out = np.array([find(k) for k in range(n + 1)], dtype=np.int32)[labels]
    dense = np.unique(out, return_inverse=True)[1].reshape(out.shape).astype(np.int32)
    return dense if out.min() == 0 else dense + 1


def _reference_segment(attenuation, cfg=None, stats=None):
    """The plain scipy/scikit-image formulation of segment_items: (r0, c0, r1, c1, mask) per
    item; ``stats['split']`` counts components with two or more markers."""
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from peelscan import segment as S

    cfg = cfg or SegmentConfig()
    att = np.asarray(attenuation, np.float32)
    fg = att > cfg.threshold
    fg = ndimage.binary_opening(fg, structure=S._disk(cfg.opening_radius_px))
    r = cfg.closing_radius_px
    fg = ndimage.binary_closing(np.pad(fg, r), structure=S._disk(r))[r:-r, r:-r]
    fg = ndimage.binary_fill_holes(fg)
    comp, _ = ndimage.label(fg, structure=np.ones((3, 3)))
    parts = []
    for i, sl in enumerate(ndimage.find_objects(comp), start=1):
        crop = comp[sl] == i
        if crop.sum() < cfg.min_area_px:
            continue
        labels = crop.astype(np.int32)
        padded = np.pad(crop, 1)
        dist = ndimage.distance_transform_edt(padded)
        markers, n = ndimage.label(h_maxima(dist, cfg.split_depth_px), structure=np.ones((3, 3)))
        if n > 1:
            if stats is not None:
                stats["split"] = stats.get("split", 0) + 1
            ws = _reference_merge_wide_necks(watershed(-dist, markers, mask=padded), dist, n, cfg.neck_ratio)[1:-1, 1:-1]
            areas = np.bincount(ws.ravel())[1:]
            if ws.max() > 1 and (areas >= cfg.min_area_px).all():
                labels = ws
        for j, sub in enumerate(ndimage.find_objects(labels), start=1):
            m = labels[sub] == j
            if m.sum() >= cfg.min_area_px:
                r0, c0 = sl[0].start + sub[0].start, sl[1].start + sub[1].start
                parts.append((r0, c0, r0 + m.shape[0], c0 + m.shape[1], m))

    def key(p):
        rr, cc = np.nonzero(p[4])
        return int(round(cc.mean() + p[1])), int(round(rr.mean() + p[0])), p[0], p[1]

    return sorted(parts, key=key)


@pytest.mark.parametrize("seed", [3, 7])
def test_segment_items_equals_the_reference_formulation(seed):
    from peelscan import synth

    machine = synth.machine_for_lot(np.random.default_rng(200 + seed), 256)
    stats = {}
    for n, touching in ((1, False), (2, True), (4, True)):
        ph = synth.make_phantom(np.random.default_rng(seed), (256, 256), 0.5, n_objects=n, touching=touching,
                                defect=synth.DEFECT_TYPES[seed % 7])
        att = preprocess_scan(synth.render_counts(ph, machine, np.random.default_rng(seed + 1))).attenuation
        items = segment_items(att)
        ref = _reference_segment(att, stats=stats)
        assert len(items) == len(ref)
        for it, (r0, c0, r1, c1, m) in zip(items, ref):
            assert (it.r0, it.c0, it.r1, it.c1) == (r0, c0, r1, c1)
            np.testing.assert_array_equal(it.mask, m)
        np.testing.assert_array_equal(object_mask(att), _reference_object_mask(att))
    assert stats.get("split", 0) >= 1  # the watershed path was compared too


def _reference_object_mask(att):
    from scipy import ndimage

    from peelscan import segment as S

    fg = ndimage.binary_opening(np.asarray(att, np.float32) > 0.02, structure=S._disk(2))
    fg = ndimage.binary_closing(np.pad(fg, 2), structure=S._disk(2))[2:-2, 2:-2]
    return ndimage.binary_fill_holes(fg)
