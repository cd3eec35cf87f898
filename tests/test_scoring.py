"""peelscan.scoring: score_tiles, tile -> item -> scan aggregation, label-free thresholds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from peelscan.metrics import MEASURE_NAMES, anomaly_score, compute_measures
from peelscan.scoring import aggregate, calibrate_threshold, decide, score_tiles

torch.set_num_threads(1)


def _tiles_frame() -> pd.DataFrame:
    """Two scans: scan a has items 0 and 1, scan b one item; FSIM and RMSE natural values."""
    rows = [
        # scan, item, row, col, fsim, rmse
        ("a", 0, 0, 0, 0.93, 0.010),
        ("a", 0, 0, 16, 0.61, 0.050),   # worst tile of item 0
        ("a", 0, 16, 0, 0.90, 0.012),
        ("a", 1, 32, 48, 0.97, 0.004),
        ("a", 1, 48, 48, 0.42, 0.090),  # worst tile of item 1, and of scan a
        ("a", 1, 48, 64, 0.88, 0.020),
        ("b", 0, 8, 8, 0.99, 0.002),
        ("b", 0, 8, 24, 0.95, 0.006),   # worst tile of scan b
    ]
    df = pd.DataFrame(rows, columns=["scan_id", "item_index", "tile_row", "tile_col", "fsim", "rmse"])
    df.insert(0, "lot_id", "lot-1")
    df["model_kind"] = "tiles"
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)  # order must not matter


def test_aggregate_picks_the_worst_tile_and_its_position():
    df = _tiles_frame()
    for metric in ("fsim", "rmse"):  # a similarity (higher = similar) and a distance
        items, scans = aggregate(df, metric)
        it = items.set_index(["scan_id", "item_index"])
        assert (it.loc[("a", 0), ["worst_tile_row", "worst_tile_col"]] == [0, 16]).all()
        assert (it.loc[("a", 1), ["worst_tile_row", "worst_tile_col"]] == [48, 48]).all()
        assert list(it["n_tiles"]) == [3, 3, 2]
        sc = scans.set_index("scan_id")
        assert sc.loc["a", "item_index"] == 1 and sc.loc["b", "item_index"] == 0
        assert (sc.loc["a", "worst_tile_row"], sc.loc["a", "worst_tile_col"]) == (48, 48)
        assert (sc.loc["b", "worst_tile_row"], sc.loc["b", "worst_tile_col"]) == (8, 24)
        assert sc.loc["a", "n_items"] == 2 and sc.loc["a", "n_tiles"] == 6
        assert list(scans["lot_id"]) == ["lot-1", "lot-1"]
    items, scans = aggregate(df, "fsim")
    sc = scans.set_index("scan_id")
    # natural value at the worst tile, and its anomaly score (1 - FSIM)
    assert sc.loc["a", "score"] == pytest.approx(0.42)
    assert sc.loc["a", "anomaly_score"] == pytest.approx(0.58)
    assert sc.loc["b", "score"] == pytest.approx(0.95)
    items, scans = aggregate(df, "rmse")
    assert scans.set_index("scan_id").loc["a", "anomaly_score"] == pytest.approx(0.090)


def test_aggregate_rules():
    df = _tiles_frame()
    items, scans = aggregate(df, "fsim", rule="top_k_mean", k=2)
    it = items.set_index(["scan_id", "item_index"])["anomaly_score"]
    assert it[("a", 0)] == pytest.approx(((1 - 0.61) + (1 - 0.90)) / 2)
    assert it[("a", 1)] == pytest.approx(((1 - 0.42) + (1 - 0.88)) / 2)
    assert it[("b", 0)] == pytest.approx(((1 - 0.95) + (1 - 0.99)) / 2)
    # k larger than the item: all its tiles
    items, _ = aggregate(df, "fsim", rule="top_k_mean", k=10)
    assert items.set_index(["scan_id", "item_index"])["anomaly_score"][("b", 0)] == pytest.approx(0.03)
    items, scans = aggregate(df, "fsim", rule="quantile", q=0.5)
    it = items.set_index(["scan_id", "item_index"])["anomaly_score"]
    assert it[("a", 0)] == pytest.approx(np.quantile([0.07, 0.39, 0.10], 0.5))
    # the worst tile is still reported whatever the rule
    assert (scans.set_index("scan_id").loc["a", ["worst_tile_row", "worst_tile_col"]] == [48, 48]).all()
    assert aggregate(df, "fsim", rule="quantile", q=1.0)[1]["anomaly_score"].tolist() == \
        pytest.approx(aggregate(df, "fsim")[1]["anomaly_score"].tolist())


def test_ties_are_deterministic():
    df = pd.DataFrame({"scan_id": ["s"] * 4, "item_index": [1, 1, 0, 0], "tile_row": [16, 0, 16, 0],
                       "tile_col": [0, 0, 0, 16], "fsim": [0.5, 0.5, 0.5, 0.5]})
    items, scans = aggregate(df, "fsim")
    assert list(items["worst_tile_row"]) == [0, 0] and list(items["worst_tile_col"]) == [16, 0]
    assert scans.loc[0, "item_index"] == 0  # lowest item index wins a tie


def test_items_without_tiles_are_listed_and_never_silently_good():
    df = _tiles_frame()
    all_items = pd.DataFrame({"lot_id": "lot-1", "scan_id": ["a", "a", "a", "b", "c"],
                              "item_index": [0, 1, 2, 0, 0]})
    items, scans = aggregate(df, "fsim", all_items=all_items)
    it = items.set_index(["scan_id", "item_index"])
    assert it.loc[("a", 2), "n_tiles"] == 0 and math.isnan(it.loc[("a", 2), "anomaly_score"])
    sc = scans.set_index("scan_id")
    assert sc.loc["a", "n_items"] == 3 and sc.loc["a", "n_unjudged_items"] == 1
    assert sc.loc["a", "anomaly_score"] == pytest.approx(0.58)  # judged items still decide
    assert math.isnan(sc.loc["c", "anomaly_score"]) and pd.isna(sc.loc["c", "item_index"])
    assert sc.loc["c", "n_tiles"] == 0
    # without all_items, a tile-less scan is simply absent (the caller merges its scan list)
    assert "c" not in set(aggregate(df, "fsim")[1]["scan_id"])
    assert list(decide(scans["anomaly_score"], 0.5).astype(object)) == [True, False, pd.NA]
    # a lot with no tile at all: empty frames with the same columns
    none_items, none_scans = aggregate(df.iloc[:0], "fsim")
    assert len(none_items) == len(none_scans) == 0 and list(none_scans.columns) == list(scans.columns)


def test_aggregate_refuses_bad_input():
    df = _tiles_frame()
    with pytest.raises(KeyError, match="unknown measure"):
        aggregate(df, "mse")
    with pytest.raises(ValueError, match="rule must be"):
        aggregate(df, "fsim", rule="mean")
    with pytest.raises(ValueError, match="lacks column"):
        aggregate(df.drop(columns=["tile_col"]), "fsim")
    mixed = pd.concat([df, df.assign(model_kind="whole")])
    with pytest.raises(ValueError, match="mixes model kinds"):
        aggregate(mixed, "fsim")
    with pytest.raises(ValueError, match="more than once"):
        aggregate(pd.concat([df, df.head(1)]), "fsim")
    bad = df.copy()
    bad.loc[0, "fsim"] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite fsim"):
        aggregate(bad, "fsim")


def test_calibration_order_statistic_is_conservative_for_every_n():
    # scores 0..n-1: the threshold's value is its rank - 1
    for alpha in (0.01, 0.05):
        for n in range(1, 700):
            t = calibrate_threshold(np.arange(n, dtype=float), alpha)
            k = int(t) + 1
            if n + 1 >= 1 / alpha:
                # expected FPR of "score > s_(k)" for an exchangeable good scan
                assert 1 - k / (n + 1) <= alpha + 1e-12, (alpha, n, k)
                assert 1 - (k - 1) / (n + 1) > alpha - 1e-12  # and not more conservative than needed
            else:
                assert k == n  # too few scans for the target: the maximum


def test_calibration_hits_target_fpr_on_held_out_good_scores():
    rng = np.random.default_rng(42)
    alpha = 0.01
    for n in (150, 400):
        fprs = []
        for _ in range(300):
            calib = rng.normal(0.2, 0.05, n)  # good scans' anomaly scores: N(0.2, 0.05)
            t = calibrate_threshold(calib, alpha)
            fprs.append(norm.sf(t, 0.2, 0.05))  # exact FPR on the held-out good population
        fprs = np.array(fprs)
        # E[FPR] <= alpha; allow 2 standard errors of the Monte Carlo mean
        assert fprs.mean() <= alpha + 2 * fprs.std() / np.sqrt(fprs.size), (n, fprs.mean())
        # and the threshold is not needlessly high
        assert fprs.mean() > alpha / 3
    # an empirical check on held-out samples of the same distribution
    calib, held_out = rng.gamma(4.0, 0.05, 1000), rng.gamma(4.0, 0.05, 200_000)
    t = calibrate_threshold(calib, 0.05)
    assert np.mean(decide(held_out, t).to_numpy(dtype=bool)) <= 0.05 + 0.01
    # unlabelled calibration data with some anomalies only makes it more conservative
    contaminated = np.r_[calib, rng.gamma(4.0, 0.05, 30) + 1.0]
    assert calibrate_threshold(contaminated, 0.05) >= t


def test_calibration_small_and_degenerate_cases():
    x = np.array([0.3, 0.1, 0.2])
    assert calibrate_threshold(x, 0.01) == 0.3  # too few: the maximum
    assert calibrate_threshold([0.5], 0.01) == 0.5
    assert calibrate_threshold([0.2, np.nan, 0.1], 0.01) == 0.2  # NaN = unjudged scans, ignored
    assert calibrate_threshold(np.full(500, 0.7), 0.01) == 0.7  # all equal: nothing called anomalous
    assert not decide(np.full(5, 0.7), 0.7).any()
    with pytest.raises(ValueError, match="no calibration score"):
        calibrate_threshold([np.nan, np.nan])
    with pytest.raises(ValueError, match="no calibration score"):
        calibrate_threshold([])
    with pytest.raises(ValueError, match="infinite"):
        calibrate_threshold([0.1, np.inf])
    with pytest.raises(ValueError, match="target_fpr"):
        calibrate_threshold([0.1], 0.0)
    with pytest.raises(ValueError, match="finite"):
        decide([0.1], float("nan"))


def test_score_tiles_is_reconstruction_plus_every_measure():
    from peelscan.model import build_autoencoder, reconstruct

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0.5, 0.1, (7, 32, 32)), 0, 1).astype(np.float32)
    model = build_autoencoder("tiles", 32)
    out = score_tiles(model, x, batch_size=3)
    assert set(out) == set(MEASURE_NAMES) | {"recon_mse"}
    assert all(v.shape == (7,) and v.dtype == np.float64 for v in out.values())
    r = np.asarray(reconstruct(model, x), dtype=np.float32)
    np.testing.assert_allclose(out["recon_mse"], ((x.astype(np.float64) - r) ** 2).mean(axis=(1, 2)),
                               rtol=1e-6)
    ref = compute_measures(x, r, 1.0)
    for k in MEASURE_NAMES:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # the batch size changes nothing
    one = score_tiles(model, x, names=["fsim", "rmse"], batch_size=512)
    assert set(one) == {"fsim", "rmse", "recon_mse"}
    np.testing.assert_allclose(one["fsim"], out["fsim"], rtol=1e-5)
    assert anomaly_score("fsim", one["fsim"]).shape == (7,)
    empty = score_tiles(model, np.zeros((0, 32, 32), np.float32), names=["fsim"])
    assert empty["fsim"].shape == (0,) and empty["recon_mse"].shape == (0,)


def test_score_tiles_refuses_bad_tiles():
    with pytest.raises(ValueError, match=r"\(N, T, T\)"):
        score_tiles(None, np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="must be float"):
        score_tiles(None, np.zeros((2, 32, 32), np.uint16))
    bad = np.zeros((2, 32, 32), np.float32)
    bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        score_tiles(None, bad)
    with pytest.raises(KeyError, match="unknown measure"):
        score_tiles(None, np.zeros((2, 32, 32), np.float32), names=["psnr", "nope"])
