"""Virtual peeling and tiles (peelscan.peel, peelscan.peelplots): round trip through the lake's
Parquet, the coverage rule, monotone peel depth, awkward items, whole-item images, splits that
never leak, reruns that replace."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.spatial.distance import cdist
from skimage.morphology import disk, erosion

from peelscan.lake import Store
from peelscan.peel import (ROW_GROUP_TILES, TILE_SCHEMA, PeelConfig, Tiles, WholeItems, cut_tiles, peel_mask,
                           peel_scan, table_to_pixels, tile_schema, tiles_to_table, whole_item_image,
                           whole_to_table)
from peelscan.peelplots import coverage_histogram_png, overlay_png
from peelscan.splits import assign_split

PNG = b"\x89PNG\r\n\x1a\n"


def blob(shape=(256, 256), center=(128, 128), radii=(70, 50), seed=0) -> np.ndarray:
    """A wobbly ellipse (bool ``shape``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    theta = np.arctan2(yy - center[0], xx - center[1])
    wobble = 1 + 0.08 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.05 * np.cos(5 * theta + rng.uniform(0, 6))
    r = np.hypot((yy - center[0]) / radii[0], (xx - center[1]) / radii[1])
    return r < wobble


def scan_with(*masks: np.ndarray, seed=1) -> np.ndarray:
    """Thick-in-the-middle items with noise, 0 outside (float32)."""
    rng = np.random.default_rng(seed)
    att = np.zeros(masks[0].shape, np.float32)
    from scipy import ndimage
    for m in masks:
        d = ndimage.distance_transform_edt(m)
        att += np.where(m, 0.4 * np.sqrt(d / max(d.max(), 1)), 0)
    return (att + np.where(att > 0, 0.01 * rng.standard_normal(att.shape), 0)).astype(np.float32)


def grid_reference(peeled: np.ndarray, t: int, s: int, min_cov: float):
    """Brute force: every grid tile inside the image with enough peeled coverage."""
    out = []
    for r in range(0, peeled.shape[0] - t + 1, s):
        for c in range(0, peeled.shape[1] - t + 1, s):
            cov = peeled[r:r + t, c:c + t].mean()
            if cov >= min_cov:
                out.append((r, c, cov))
    return out


def check_fill(tile, att, crop, inside, item_peeled, r, c, rule):
    """Outside-the-peel pixels of one tile follow the fill rule."""
    out = ~inside
    if not out.any():
        return
    if rule == "mean":
        np.testing.assert_allclose(tile[out], crop[inside].astype(np.float64).mean(), rtol=1e-5)
        return
    # nearest: the value of a peeled pixel of the item at the minimal Euclidean distance
    pr, pc_ = np.nonzero(item_peeled)
    orr, occ = np.nonzero(out)
    d = cdist(np.c_[orr + r, occ + c], np.c_[pr, pc_])
    for k in range(len(orr)):
        nearest = np.flatnonzero(d[k] <= d[k].min() + 1e-9)
        assert tile[orr[k], occ[k]] in set(att[pr[nearest], pc_[nearest]].tolist())


@pytest.mark.parametrize("fill", ["nearest", "mean"])
def test_tiles_round_trip_through_parquet_equal_the_scan_crop(tmp_path, fill):
    a = blob(center=(90, 80), radii=(60, 45), seed=3)
    b = blob(center=(170, 185), radii=(55, 50), seed=4)
    att = scan_with(a, b)
    defect = np.zeros_like(a)
    defect[100:112, 70:90] = True
    cfg = PeelConfig(fill=fill)
    tiles, wholes = peel_scan(att, [a, b], cfg, defect)
    assert len(tiles) > 20 and set(tiles.item_index.tolist()) == {0, 1}
    store = Store(str(tmp_path))
    table = tiles_to_table("lot-1", "s-1", "eval", "anomalous", "stone", tiles, cfg)
    assert table.schema.equals(TILE_SCHEMA)
    store.write_dataset("lot-1", "tiles", table, row_group_size=ROW_GROUP_TILES, schema=TILE_SCHEMA)
    back = store.read_dataset("lot-1", "tiles")
    assert back.schema.equals(TILE_SCHEMA) and back.num_rows == len(tiles)
    px = table_to_pixels(back)
    assert px.dtype == np.float32 and px.shape == (len(tiles), 32, 32)
    peeled = {0: cfg.peeled(a), 1: cfg.peeled(b)}
    t = cfg.tile_size
    rows = back.to_pydict()
    partial = 0
    for i in range(back.num_rows):
        r, c, k = rows["tile_row"][i], rows["tile_col"][i], rows["item_index"][i]
        crop, inside = att[r:r + t, c:c + t], peeled[k][r:r + t, c:c + t]
        assert r % cfg.stride == 0 and c % cfg.stride == 0  # on the scan-anchored grid
        np.testing.assert_array_equal(px[i][inside], crop[inside])  # bit-exact where peeled
        if inside.all():
            np.testing.assert_array_equal(px[i], crop)
        else:
            partial += 1
            check_fill(px[i], att, crop, inside, peeled[k], r, c, fill)
        assert rows["coverage"][i] == pytest.approx(inside.mean(), abs=1e-6)
        assert rows["coverage"][i] >= cfg.min_coverage
        assert rows["defect_fraction"][i] == pytest.approx(defect[r:r + t, c:c + t].mean(), abs=1e-6)
        assert rows["tile_size"][i] == t and rows["lot_id"][i] == "lot-1" and rows["label"][i] == "anomalous"
    assert partial > 0  # the fill rule was exercised
    assert max(rows["defect_fraction"]) > 0
    # whole-item images: same schema at 128, bbox origins and the item's share of defect
    wt = whole_to_table("lot-1", "s-1", "eval", "anomalous", "stone", wholes, cfg)
    assert wt.schema.equals(tile_schema(128))
    assert wt["tile_row"].to_pylist() == [int(np.nonzero(a.any(1))[0][0]), int(np.nonzero(b.any(1))[0][0])]
    assert wt["tile_col"].to_pylist() == [int(np.nonzero(a.any(0))[0][0]), int(np.nonzero(b.any(0))[0][0])]
    assert wt["defect_fraction"].to_pylist()[0] == pytest.approx((defect & a).sum() / a.sum(), rel=1e-5)
    assert wt["defect_fraction"].to_pylist()[1] == 0.0
    store.write_dataset("lot-1", "whole", wt)
    np.testing.assert_array_equal(table_to_pixels(store.read_dataset("lot-1", "whole")), np.stack(wholes))


def test_no_defect_mask_gives_null_defect_fraction():
    m = blob()
    tiles, wholes = peel_scan(scan_with(m), [m], PeelConfig())
    assert tiles.defect_fraction is None and wholes.defect_fraction is None
    table = tiles_to_table("l", "s", "train", None, None, tiles, 32)
    assert table["defect_fraction"].null_count == table.num_rows > 0
    assert table["label"].null_count == table.num_rows
    nan_tiles = Tiles(tiles.pixels, tiles.item_index, tiles.tile_row, tiles.tile_col, tiles.coverage,
                      np.full(len(tiles), np.nan, np.float32))
    assert tiles_to_table("l", "s", "train", None, None, nan_tiles, 32)["defect_fraction"].null_count == len(tiles)


@pytest.mark.parametrize("radius", [1, 2, 3, 6, 9])
def test_peel_is_erosion_by_a_disk(radius):
    m = blob(seed=radius)
    pad = radius + 1
    ref = erosion(np.pad(m, pad), disk(radius)).astype(bool)[pad:-pad, pad:-pad]
    np.testing.assert_array_equal(peel_mask(m, radius), ref)
    # a disk, not a square: a square of the same radius would peel the diagonals deeper
    sq = erosion(np.pad(m, pad), np.ones((2 * radius + 1,) * 2, bool)).astype(bool)[pad:-pad, pad:-pad]
    assert radius == 0 or sq.sum() < peel_mask(m, radius).sum()


def test_peel_mask_depth_and_border():
    m = blob()
    np.testing.assert_array_equal(peel_mask(m, 0), m)
    assert peel_mask(m, 4.5).sum() < peel_mask(m, 4).sum() < peel_mask(m, 2).sum() < m.sum()
    assert not peel_mask(np.zeros((30, 30), bool), 3).any()
    full = np.ones((40, 50), bool)  # an item filling the frame is peeled along the image border
    p = peel_mask(full, 3)
    assert p[3:-3, 3:-3].all() and not p[:3].any() and not p[:, -3:].any()
    assert PeelConfig(peel_depth_mm=3, pixel_mm=0.5).depth_px == 6.0
    with pytest.raises(ValueError, match="depth_px"):
        peel_mask(m, -1)


@pytest.mark.parametrize("seed", range(4))
def test_coverage_rule_and_deeper_peel_never_more_tiles(seed):
    rng = np.random.default_rng(seed)
    masks = [blob(center=(rng.integers(60, 200), rng.integers(60, 200)),
                  radii=(rng.integers(20, 80), rng.integers(20, 80)), seed=seed)]
    att = scan_with(*masks, seed=seed)
    for t, s, mc in ((32, 16, 0.75), (16, 8, 0.5), (32, 32, 1.0)):
        counts = {True: [], False: []}
        for depth in (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0):
            for small in (True, False):
                cfg = PeelConfig(peel_depth_mm=depth, tile_size=t, stride=s, min_coverage=mc, small_item_tile=small)
                tiles = cut_tiles(att, masks[0], cfg)
                assert (tiles.coverage >= mc).all()
                counts[small].append(len(tiles))
                if not small:  # exactly the brute-force set of grid tiles
                    ref = grid_reference(cfg.peeled(masks[0]), t, s, mc)
                    assert list(zip(tiles.tile_row.tolist(), tiles.tile_col.tolist())) == [(r, c) for r, c, _ in ref]
        for small in (True, False):
            assert counts[small] == sorted(counts[small], reverse=True), (t, s, mc, small, counts[small])


def test_border_tiny_and_smaller_than_a_tile_items():
    cfg = PeelConfig()
    t = cfg.tile_size
    for center in ((10, 128), (128, 250), (250, 5)):  # cut by the image border
        border = blob(center=center, radii=(60, 60))
        tiles = cut_tiles(scan_with(border), border, cfg)
        assert len(tiles) > 0
        assert (tiles.tile_row >= 0).all() and (tiles.tile_row + t <= 256).all()
        assert (tiles.tile_col >= 0).all() and (tiles.tile_col + t <= 256).all()
    # tiny item: nothing survives the peel -> zero tiles, no error
    tiny = np.zeros((256, 256), bool)
    tiny[100:110, 100:110] = True
    assert len(cut_tiles(scan_with(tiny), tiny, cfg)) == 0
    # a one-pixel item, an empty mask, a scan smaller than one tile
    dot = np.zeros((256, 256), bool)
    dot[5, 5] = True
    empty = np.zeros((256, 256), bool)
    tiles, wholes = peel_scan(np.zeros((256, 256), np.float32), [empty, tiny, dot], cfg)
    assert len(tiles) == 0 and len(wholes) == 3 and all(w.shape == (128, 128) for w in wholes)
    assert not wholes[0].any()
    small_scan = np.zeros((20, 20), bool)
    small_scan[2:18, 2:18] = True
    assert len(cut_tiles(scan_with(small_scan), small_scan, cfg)) == 0
    # an item whose peeled part fits a tile only off the grid: one tile with small_item_tile
    item = np.zeros((256, 256), bool)
    item[18:63, 18:63] = True  # peeled by 6 px -> 33×33 at rows/cols 24..56; grid tiles at 16 and 32 cover < 0.75
    att = scan_with(item)
    assert len(cut_tiles(att, item, PeelConfig(small_item_tile=False))) == 0
    one = cut_tiles(att, item, cfg)
    assert len(one) == 1 and one.coverage[0] == 1.0
    r, c = int(one.tile_row[0]), int(one.tile_col[0])
    np.testing.assert_array_equal(one.pixels[0], att[r:r + t, c:c + t])
    assert r in (24, 25) and c in (24, 25)  # the most central full-coverage position


def test_whole_item_image_is_centred_fixed_size_and_keeps_aspect():
    mask = blob(center=(80, 170), radii=(40, 60))
    att = scan_with(mask)
    img = whole_item_image(att, mask, 128)
    assert img.shape == (128, 128) and img.dtype == np.float32
    rows, cols = np.nonzero(img > 0)
    assert abs(rows.mean() - 63.5) < 4 and abs(cols.mean() - 63.5) < 4
    assert cols.max() - cols.min() >= 124  # the longer side fills the image
    h, w = np.ptp(np.nonzero(mask)[0]) + 1, np.ptp(np.nonzero(mask)[1]) + 1
    assert (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1) == pytest.approx(h / w, abs=0.05)
    assert 0.0 <= img.min() and img.max() <= att.max() + 1e-6
    assert img[0].max() == 0 and img[-1].max() == 0  # padding is open beam
    other = blob(center=(80, 170), radii=(40, 60), seed=1)
    assert whole_item_image(att, mask, 64).shape == (64, 64)
    assert not np.array_equal(whole_item_image(scan_with(other), other, 128), img)


def test_items_from_segment_are_accepted():
    from peelscan.segment import Item

    m = blob(center=(128, 100), radii=(50, 40))
    rr, cc = np.nonzero(m)
    r0, r1, c0, c1 = rr.min(), rr.max() + 1, cc.min(), cc.max() + 1
    item = Item(index=3, r0=r0, c0=c0, r1=r1, c1=c1, area_px=int(m.sum()), mask=m[r0:r1, c0:c1])
    att = scan_with(m)
    a, _ = peel_scan(att, [item], PeelConfig(), whole=False)
    b = cut_tiles(att, m, PeelConfig(), item_index=3)
    assert len(a) > 0 and (a.item_index == 3).all()
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_bad_input_is_refused_with_a_reason():
    m = blob()
    att = scan_with(m)
    with pytest.raises(ValueError, match="differs from the scan"):
        cut_tiles(att, m[:100], PeelConfig())
    with pytest.raises(ValueError, match="defect_mask"):
        peel_scan(att, [m], PeelConfig(), np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="2-D"):
        cut_tiles(att[None], m, PeelConfig())
    for bad in ({"min_coverage": 0}, {"min_coverage": 1.5}, {"fill": "reflect"}, {"stride": 0},
                {"pixel_mm": 0}, {"peel_depth_mm": -1}, {"tile_size": 2}):
        with pytest.raises(ValueError, match="PeelConfig"):
            PeelConfig(**bad)
    assert PeelConfig.from_dict({**PeelConfig(stride=8).as_dict(), "unknown": 1}) == PeelConfig(stride=8)
    with pytest.raises(ValueError, match="fixed_size_list"):
        table_to_pixels(pa.table({"pixels": pa.array([[1.0, 2.0]], pa.list_(pa.float64()))}))


def test_table_to_pixels_is_zero_copy_and_handles_slices():
    m = blob()
    tiles, _ = peel_scan(scan_with(m), [m], PeelConfig(), whole=False)
    table = tiles_to_table("l", "s", "train", "good", None, tiles, PeelConfig())
    px = table_to_pixels(table)
    buf = table.column("pixels").chunk(0).values.buffers()[1]
    assert px.ctypes.data == buf.address  # a view of the Arrow buffer, no copy
    np.testing.assert_array_equal(px, tiles.pixels)
    np.testing.assert_array_equal(table_to_pixels(table.slice(3, 5)), tiles.pixels[3:8])
    two = pa.concat_tables([table.slice(0, 4), table.slice(4)])
    np.testing.assert_array_equal(table_to_pixels(two), tiles.pixels)
    assert table_to_pixels(TILE_SCHEMA.empty_table()).shape == (0, 32, 32)


def test_row_groups_stream_one_at_a_time(tmp_path):
    m = blob()
    tiles, _ = peel_scan(scan_with(m), [m], PeelConfig(stride=4), whole=False)
    table = tiles_to_table("lot-1", "s", "train", "good", None, tiles, 32)
    store = Store(str(tmp_path))
    store.write_dataset("lot-1", "tiles", table, row_group_size=64)
    groups = list(store.iter_row_groups("lot-1", "tiles"))
    assert len(groups) == -(-table.num_rows // 64) > 1
    parts = [store.read_row_group(p, g) for p, g in groups]
    assert max(p.num_rows for p in parts) == 64
    np.testing.assert_array_equal(np.concatenate([table_to_pixels(p) for p in parts]), tiles.pixels)
    assert ROW_GROUP_TILES * 32 * 32 * 4 == 2 * 2 ** 20  # 2 MiB of pixels per scoring task


def test_nearest_fill_leaves_no_step_at_the_peel_line_on_a_synthetic_scan():
    """On a physically rendered scan the nearest fill keeps the peel line below the tissue's
    own pixel-to-pixel differences; the mean fill does not (docs/peeling.md)."""
    from peelscan.preprocess import preprocess_scan
    from peelscan.segment import segment_items
    from peelscan.synth import machine_for_lot, make_phantom, render_counts, render_dark, render_flat

    rng = np.random.default_rng(77)
    machine = machine_for_lot(rng, 256)
    att = preprocess_scan(render_counts(make_phantom(rng), machine, rng), render_dark(machine, rng, (16, 256)),
                          render_flat(machine, rng, (16, 256))).attenuation
    items = segment_items(att)
    assert len(items) == 1
    m = items[0].full_mask(att.shape)
    steps = {}
    for rule in ("nearest", "mean"):
        cfg = PeelConfig(fill=rule)
        tiles = cut_tiles(att, m, cfg)
        assert len(tiles) >= 8
        peeled = cfg.peeled(m)
        step, tissue = [], []
        for px, r, c in zip(tiles.pixels, tiles.tile_row, tiles.tile_col):
            ins = peeled[r:r + 32, c:c + 32]
            d, a, b = np.abs(np.diff(px, axis=1)), ins[:, 1:], ins[:, :-1]
            step.append(d[a != b])
            tissue.append(d[a & b])
        steps[rule] = np.concatenate(step).mean() / np.concatenate(tissue).mean()
    assert steps["nearest"] < 1.0 < 5.0 < steps["mean"], steps


def test_pictures_are_pngs_of_the_input():
    a, b = blob(center=(80, 80), radii=(50, 40)), blob(center=(180, 180), radii=(50, 55), seed=2)
    att = scan_with(a, b)
    cfg = PeelConfig()
    tiles, _ = peel_scan(att, [a, b], cfg, whole=False)
    png = overlay_png(att, [a, b], [cfg.peeled(a), cfg.peeled(b)], tiles, defect_mask=a & ~cfg.peeled(a))
    fewer = Tiles(tiles.pixels[:3], tiles.item_index[:3], tiles.tile_row[:3], tiles.tile_col[:3], tiles.coverage[:3])
    png2 = overlay_png(att, [a, b], [cfg.peeled(a), cfg.peeled(b)], fewer, 32)
    assert png.startswith(PNG) and png2.startswith(PNG) and png != png2
    h = coverage_histogram_png(tiles.coverage, cfg.min_coverage)
    assert h.startswith(PNG) and h != coverage_histogram_png(tiles.coverage[:2])


def test_splits_never_leak():
    ids = [f"scan-{i:04d}" for i in range(400)]
    labels = ["anomalous" if i % 5 == 0 else ("good" if i % 2 else None) for i in range(400)]
    splits = [assign_split(s, lab, eval_fraction=0.3) for s, lab in zip(ids, labels)]
    assert all(sp == "eval" for sp, lab in zip(splits, labels) if lab == "anomalous")
    again = [assign_split(s, lab, eval_fraction=0.3) for s, lab in zip(ids, labels)]
    assert splits == again  # deterministic: a scan is always on the same side
    share = np.mean([sp == "eval" for sp, lab in zip(splits, labels) if lab != "anomalous"])
    assert 0.2 < share < 0.4


def test_rerun_replaces_the_dataset(tmp_path):
    mask = blob()
    att = scan_with(mask)
    cfg = PeelConfig()
    tiles, _ = peel_scan(att, [mask], cfg)
    store = Store(str(tmp_path))
    for _ in range(2):
        store.write_dataset("lot-1", "tiles", tiles_to_table("lot-1", "s-1", "train", "good", None, tiles, cfg))
    table = store.read_dataset("lot-1", "tiles")
    assert table.num_rows == len(tiles)
    keys = pc.binary_join_element_wise(pc.cast(table["item_index"], "string"), pc.cast(table["tile_row"], "string"),
                                       pc.cast(table["tile_col"], "string"), "-")
    assert pc.count_distinct(keys).as_py() == table.num_rows


def test_whole_to_table_explicit_boxes_and_mismatch():
    imgs = [np.zeros((128, 128), np.float32), np.ones((128, 128), np.float32) * 0.5]
    t = whole_to_table("l", "s", "eval", "good", None, imgs, PeelConfig(), item_boxes=[(1, 2), (3, 4)])
    assert t["tile_row"].to_pylist() == [1, 3] and t["tile_col"].to_pylist() == [2, 4]
    assert t["coverage"].to_pylist() == [1.0, 1.0] and t["defect_fraction"].null_count == 2
    assert t["item_index"].to_pylist() == [0, 1]
    with pytest.raises(ValueError, match="boxes"):
        whole_to_table("l", "s", "eval", "good", None, WholeItems(imgs, [(0, 0)]), PeelConfig())


def test_nearest_fill_looks_beyond_the_kept_tiles():
    """The nearest peeled pixel of the item may lie outside every kept tile (a thin arm of
    tissue above the tile): the fill must take it, not a farther pixel inside the tile."""
    mask = np.zeros((128, 128), bool)
    mask[32:64, 32:64] = True
    mask[32:40, 56:64] = False  # an 8×8 notch in the tile's top-right corner
    mask[30:32, 50:71] = True  # the arm, rows 30-31: no tile of its own
    att = np.random.default_rng(5).uniform(0.2, 0.6, mask.shape).astype(np.float32)
    cfg = PeelConfig(peel_depth_mm=0.0)
    tiles = cut_tiles(att, mask, cfg)
    assert list(zip(tiles.tile_row.tolist(), tiles.tile_col.tolist())) == [(32, 32)]
    tile = tiles.pixels[0]
    assert tile[0, 31] == att[31, 63]  # the arm pixel right above, at distance 1
    check_fill(tile, att, att[32:64, 32:64], mask[32:64, 32:64], mask, 32, 32, "nearest")


# ---------------------------------------------------------------------------------------------
# the compiled kernels compute exactly what the scipy / numpy formulation computes: the same
# masks, counts, tile positions and pixels, bit for bit


def _reference_peel_mask(m, depth_px):
    """peel_mask written with scipy's EDT on the item's padded bounding box."""
    from scipy import ndimage

    if depth_px == 0:
        return m.copy()
    out = np.zeros(m.shape, dtype=bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dist = ndimage.distance_transform_edt(np.pad(m[r0:r1, c0:c1], 1))[1:-1, 1:-1]
    out[r0:r1, c0:c1] = dist > depth_px
    return out


def _reference_fill_nearest(att, peeled, box):
    from scipy import ndimage

    r0, r1, c0, c1 = box
    idx = ndimage.distance_transform_edt(~peeled[r0:r1, c0:c1], return_distances=False, return_indices=True)
    return att[r0:r1, c0:c1][idx[0], idx[1]]


def _reference_window_sums(a, t, step):
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(a, axis=0, dtype=np.float64), axis=1, out=ii[1:, 1:])
    r = np.arange((a.shape[0] - t) // step + 1) * step
    c = np.arange((a.shape[1] - t) // step + 1) * step
    return ii[np.ix_(r + t, c + t)] - ii[np.ix_(r, c + t)] - ii[np.ix_(r + t, c)] + ii[np.ix_(r, c)]


def _reference_cut_tiles(att, mask, cfg, dmask=None, item_index=0):
    """cut_tiles as numpy/scipy code: scipy's EDT for the peel and (with indices) the fill,
    an integral image for the coverage, fancy indexing for the tiles."""
    from peelscan.peel import _grid_range

    t, s = cfg.tile_size, cfg.stride
    h, w = att.shape
    empty = Tiles.empty(t, dmask is not None)
    peeled = _reference_peel_mask(mask, cfg.depth_px)
    if not peeled.any() or h < t or w < t:
        return empty
    pr_, pc_ = np.flatnonzero(peeled.any(axis=1)), np.flatnonzero(peeled.any(axis=0))
    a0, a1, b0, b1 = pr_[0], pr_[-1] + 1, pc_[0], pc_[-1] + 1
    kr0, kr1 = _grid_range(a0, a1, h, t, s)
    kc0, kc1 = _grid_range(b0, b1, w, t, s)
    rows = cols = np.zeros(0, np.int64)
    cover = np.zeros(0, np.float64)
    if kr1 >= kr0 and kc1 >= kc0:
        y0, x0 = kr0 * s, kc0 * s
        cov = _reference_window_sums(peeled[y0:kr1 * s + t, x0:kc1 * s + t], t, s) / float(t * t)
        kr, kc = np.nonzero(cov >= cfg.min_coverage)
        rows, cols, cover = y0 + kr * s, x0 + kc * s, cov[kr, kc]
    if rows.size == 0 and cfg.small_item_tile:
        y0, y1 = max(0, a0 - t + 1), min(h - t, a1 - 1)
        x0, x1 = max(0, b0 - t + 1), min(w - t, b1 - 1)
        cov = _reference_window_sums(peeled[y0:y1 + t, x0:x1 + t], t, 1) / float(t * t)
        best = cov.max()
        if best >= cfg.min_coverage:
            cr, cc = np.nonzero(cov == best)
            pr, pc = np.nonzero(peeled[a0:a1, b0:b1])
            centre = (pr.mean() + a0 - (t - 1) / 2.0 - y0, pc.mean() + b0 - (t - 1) / 2.0 - x0)
            j = int(np.argmin((cr - centre[0]) ** 2 + (cc - centre[1]) ** 2))
            rows, cols, cover = np.array([y0 + cr[j]]), np.array([x0 + cc[j]]), np.array([best])
    if rows.size == 0:
        return empty
    pixels = np.lib.stride_tricks.sliding_window_view(att, (t, t))[rows, cols]
    inside = np.lib.stride_tricks.sliding_window_view(peeled, (t, t))[rows, cols]
    if cover.min() < 1.0:
        if cfg.fill == "nearest":
            fbox = (min(a0, int(rows.min())), max(a1, int(rows.max()) + t),
                    min(b0, int(cols.min())), max(b1, int(cols.max()) + t))
            filled = _reference_fill_nearest(att, peeled, fbox)
            fw = np.lib.stride_tricks.sliding_window_view(filled, (t, t))[rows - fbox[0], cols - fbox[2]]
            pixels = np.where(inside, pixels, fw)
        else:
            n_in = inside.sum(axis=(1, 2))
            mean_in = np.where(inside, pixels, 0.0).sum(axis=(1, 2), dtype=np.float64) / n_in
            pixels = np.where(inside, pixels, mean_in[:, None, None].astype(np.float32))
    df = None
    if dmask is not None:
        df = (np.lib.stride_tricks.sliding_window_view(dmask, (t, t))[rows, cols]
              .sum(axis=(1, 2)) / float(t * t)).astype(np.float32)
    n = rows.size
    return Tiles(np.ascontiguousarray(pixels, dtype=np.float32), np.full(n, item_index, np.int32),
                 rows.astype(np.int32), cols.astype(np.int32), cover.astype(np.float32), df)


def _reference_peel_scan(att, masks, cfg, dmask, whole):
    """peel_scan from the reference pieces: tiles, whole-item images, origins, defect shares."""
    parts, images, origins, fractions = [], [], [], []
    for i, m in enumerate(masks):
        parts.append(_reference_cut_tiles(att, m, cfg, dmask, i))
        if whole:
            images.append(whole_item_image(att, m, cfg.whole_size))
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            origins.append((int(rows[0]), int(cols[0])) if rows.size else (0, 0))
            if dmask is not None:
                area = int(m.sum())
                fractions.append(float((dmask & m).sum()) / area if area else 0.0)
    return (Tiles.concatenate(parts, cfg.tile_size, dmask is not None),
            WholeItems(images, origins, fractions if (whole and dmask is not None) else None))


def _assert_identical(a, b, what=""):
    """Same dtype, shape and bits (NaN and -0.0 included), or both None."""
    if a is None or b is None:
        assert a is None and b is None, what
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype.kind == "f":
        a, b = a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}")
    np.testing.assert_array_equal(a, b, err_msg=str(what))


def _assert_same_tiles(x, y, what=""):
    for f in ("pixels", "item_index", "tile_row", "tile_col", "coverage", "defect_fraction"):
        _assert_identical(getattr(x, f), getattr(y, f), (what, f))


def _random_masks(rng, count, max_side=120):
    """Noise, smooth blobs (some cut by the frame), unions/differences of ellipses, lattices."""
    from scipy import ndimage

    for trial in range(count):
        h, w = (int(v) for v in rng.integers(3, max_side, 2))
        kind = trial % 4
        if kind == 0:
            yield rng.random((h, w)) < rng.choice([0.02, 0.3, 0.7, 0.97])
        elif kind == 1:
            yield ndimage.gaussian_filter(rng.random((h, w)), rng.choice([1.5, 3.0, 6.0])) > 0.5
        elif kind == 2:
            r, c = np.mgrid[:h, :w]
            m = np.zeros((h, w), bool)
            for _ in range(int(rng.integers(1, 4))):
                cr, cc = rng.integers(-10, h + 10), rng.integers(-10, w + 10)
                ar, ac = rng.integers(2, 60), rng.integers(2, 60)
                m ^= ((r - cr) / ar) ** 2 + ((c - cc) / ac) ** 2 <= 1
            yield m
        else:  # regular patterns: many pixels at equal distances (ties)
            r, c = np.mgrid[:h, :w]
            k = int(rng.integers(2, 8))
            yield [(r % k == 0) & (c % k == 0), (r + c) % k == 0, (r % k == 0) ^ (c % (k + 1) == 1),
                   np.ones((h, w), bool)][trial // 4 % 4]


@pytest.mark.parametrize("seed", range(2))
def test_peel_mask_equals_the_scipy_edt_formulation(seed):
    """Same mask pixel for pixel at depths on and between the integer squared distances
    (sqrt(2), sqrt(5), 6 = sqrt(36), ...), also for items touching the frame and depths no
    pixel survives."""
    rng = np.random.default_rng(seed)
    depths = [0.0, 1e-9, 0.5, 1.0, float(np.sqrt(2.0)), 1.5, 2.0, float(np.sqrt(5.0)), 2.5, 3.0,
              float(np.nextafter(3.0, 0.0)), float(np.sqrt(13.0)), 4.5, 6.0, 7.3, 12.0, 40.0, 1e6, np.inf]
    for m in _random_masks(rng, 60):
        for d in rng.choice(depths, 5, replace=False):
            np.testing.assert_array_equal(peel_mask(m, float(d)), _reference_peel_mask(m, float(d)),
                                          err_msg=f"depth {d}")
    full = np.ones((40, 50), bool)
    for d in depths:
        np.testing.assert_array_equal(peel_mask(full, d), _reference_peel_mask(full, d))


def test_nearest_fill_equals_scipy_feature_transform():
    """Every filled pixel takes the value of the pixel scipy's EDT indices name, ties included:
    the nearest inside pixel, the one of smallest column among equals, then smallest row."""
    from scipy.spatial.distance import cdist as _cdist

    from peelscan import peel as P

    rng = np.random.default_rng(11)
    for m in _random_masks(rng, 80, max_side=60):
        if not m.any():
            continue
        h, w = m.shape
        att = rng.random((h, w)).astype(np.float32)
        _assert_identical(P._fill_nearest(att, m, (0, h, 0, w)), _reference_fill_nearest(att, m, (0, h, 0, w)))
        r0, c0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        box = (r0, int(rng.integers(r0 + 1, h + 1)), c0, int(rng.integers(c0 + 1, w + 1)))
        if m[box[0]:box[1], box[2]:box[3]].any():
            _assert_identical(P._fill_nearest(att, m, box), _reference_fill_nearest(att, m, box))
        # only inside rectangles: the same values there, the scan's elsewhere
        rects = np.array([[a, a + int(rng.integers(1, h - a + 1)), b, b + int(rng.integers(1, w - b + 1))]
                          for a, b in zip(rng.integers(0, h, 3), rng.integers(0, w, 3))], np.int64)
        out = np.empty_like(att)
        P._nb_fill_nearest(att, m.view(np.uint8), rects, out)
        want = att.copy()
        ref = _reference_fill_nearest(att, m, (0, h, 0, w))
        for a, b, c, d in rects:
            want[a:b, c:d] = ref[a:b, c:d]
        _assert_identical(out, want)
        # the tie rule, by brute force: unique values name the pixel taken
        ids = np.arange(h * w, dtype=np.float32).reshape(h, w)
        got = P._fill_nearest(ids, m, (0, h, 0, w)).astype(np.int64)
        pr, pc = np.nonzero(m)
        order = np.lexsort((pr, pc))  # by column, then row
        pr, pc = pr[order], pc[order]
        qr, qc = np.nonzero(np.ones((h, w), bool))
        d2 = _cdist(np.c_[qr, qc], np.c_[pr, pc], "sqeuclidean")
        k = np.argmin(d2, axis=1)  # the first minimum: smallest column, then row
        np.testing.assert_array_equal(got.reshape(-1), pr[k] * w + pc[k])


def test_window_counts_equal_the_integral_image():
    from peelscan import peel as P

    rng = np.random.default_rng(5)
    for m in _random_masks(rng, 40, max_side=90):
        for t, step in ((4, 1), (4, 3), (8, 8), (16, 8), (5, 2)):
            if m.shape[0] >= t and m.shape[1] >= t:
                _assert_identical(P._window_sums(m, t, step), _reference_window_sums(m, t, step))
                sub = m[1:, 2:]  # a strided view
                if sub.shape[0] >= t and sub.shape[1] >= t:
                    _assert_identical(P._window_sums(sub, t, step), _reference_window_sums(sub, t, step))
    a = rng.random((40, 30))
    _assert_identical(P._window_sums(a, 8, 4), _reference_window_sums(a, 8, 4))


@pytest.mark.parametrize("seed", range(3))
def test_cut_tiles_equals_the_reference_formulation(seed):
    """Positions, coverage, defect fractions and every pixel (both fill rules, the small-item
    tile, odd tile/stride/coverage settings) equal the numpy/scipy formulation's, bit for bit."""
    rng = np.random.default_rng(100 + seed)
    settings = ((32, 16, 0.75), (16, 8, 0.5), (8, 4, 0.9), (16, 16, 1.0), (12, 5, 0.6))
    for k, m in enumerate(_random_masks(rng, 24, max_side=140)):
        att = rng.random(m.shape).astype(np.float32)
        dmask = rng.random(m.shape) < 0.1
        t, s, mc = settings[k % len(settings)]
        for depth in rng.choice([0.0, 0.5, 1.0, 1.5, 3.0], 2, replace=False):
            for fill in ("nearest", "mean"):
                cfg = PeelConfig(peel_depth_mm=float(depth), tile_size=t, stride=s, min_coverage=mc, fill=fill,
                                 small_item_tile=bool(k % 2))
                _assert_same_tiles(cut_tiles(att, m, cfg, dmask, 2), _reference_cut_tiles(att, m, cfg, dmask, 2),
                                   (k, cfg))
    for seed2 in range(3):  # potato-sized blobs in a full frame
        m = blob(center=(int(rng.integers(40, 216)), int(rng.integers(40, 216))),
                 radii=(int(rng.integers(15, 80)), int(rng.integers(15, 80))), seed=seed2)
        att = scan_with(m, seed=seed2)
        for cfg in (PeelConfig(), PeelConfig(fill="mean"), PeelConfig(stride=8), PeelConfig(peel_depth_mm=4.3)):
            _assert_same_tiles(cut_tiles(att, m, cfg), _reference_cut_tiles(att, m, cfg))


def test_peel_scan_on_synthetic_scans_equals_the_reference_formulation():
    """Both callers' paths — the line scorer's (no defect mask, no whole-item images) and the
    asset's (defect mask, whole-item images) — on rendered, preprocessed, segmented scans
    with one to three tubers, touching ones included."""
    from peelscan.preprocess import preprocess_scan
    from peelscan.segment import segment_items
    from peelscan.synth import (DEFECT_TYPES, machine_for_lot, make_phantom, render_counts, render_dark,
                                render_flat, scan_mask)

    rng = np.random.default_rng(9703)
    machine = machine_for_lot(rng, 256)
    dark, flat = render_dark(machine, rng, (16, 256)), render_flat(machine, rng, (16, 256))
    n_items = 0
    for k in range(6):
        phantom = make_phantom(rng, n_objects=1 + k % 3, defect=DEFECT_TYPES[k % len(DEFECT_TYPES)] if k % 2 else None,
                               touching=k == 4)
        att = preprocess_scan(render_counts(phantom, machine, rng), dark, flat).attenuation
        masks = [it.full_mask(att.shape) for it in segment_items(att)]
        n_items += len(masks)
        dmask = scan_mask(phantom, machine)
        for cfg in (PeelConfig(), PeelConfig(fill="mean", stride=8)):
            for dm, whole in ((None, False), (dmask, True)):
                got = peel_scan(att, masks, cfg, dm, whole=whole)
                ref = _reference_peel_scan(att, masks, cfg, dm, whole)
                _assert_same_tiles(got[0], ref[0], (k, cfg, whole))
                assert len(got[1]) == len(ref[1]) == (len(masks) if whole else 0)
                for x, y in zip(got[1], ref[1]):
                    _assert_identical(x, y)
                assert got[1].origins == ref[1].origins and got[1].defect_fraction == ref[1].defect_fraction
    assert n_items >= 10
