"""peelscan.roc against hand-computed small cases and scikit-learn (test extra)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from peelscan.roc import (auprc, auroc, best_accuracy, precision_recall_curve, roc_curve, summarise,
                          tpr_at_fpr)


def test_hand_case_without_ties():
    # scores, highest first: 0.9 A, 0.8 G, 0.7 A, 0.6 A, 0.2 G
    y = np.array([True, False, True, True, False])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], [0.9, 0.8, 0.7, 0.6, 0.2])
    # pairs (A, G): 3 x 2 = 6; A beats G in: 0.9>0.8, 0.9>0.2, 0.7>0.2, 0.6>0.2 = 4 -> 4/6
    assert auroc(y, s) == pytest.approx(4 / 6)
    # AP: recall steps at ranks 1, 3, 4 with precision 1, 2/3, 3/4
    assert auprc(y, s) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # best accuracy: threshold 0.6 -> TP 3, TN 1 -> 4/5
    assert best_accuracy(y, s) == pytest.approx(0.8)


def test_ties_give_one_point_and_half_credit():
    # one anomalous and one good sample with the same score, plus a clear pair
    y = np.array([True, False, True, False])
    s = np.array([0.5, 0.5, 0.9, 0.1])
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])  # the tie moves both rates at once
    # pairs: (0.9 vs 0.5) 1, (0.9 vs 0.1) 1, (0.5 vs 0.5) 0.5, (0.5 vs 0.1) 1 -> 3.5 / 4
    assert auroc(y, s) == pytest.approx(3.5 / 4)
    # the order of tied samples does not matter
    assert auroc(y[::-1], s[::-1]) == pytest.approx(3.5 / 4)
    # all scores equal: chance
    assert auroc([True, False, True, False], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.5)
    assert auprc([True, False, True, False], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.5)


def test_matches_scikit_learn_on_random_data_with_ties():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(5, 300))
        y = rng.random(n) < rng.uniform(0.1, 0.9)
        if y.all() or not y.any():
            y[0] = not y[0]
        s = np.round(rng.normal(y * rng.uniform(0, 2), 1.0), int(rng.integers(0, 3)))  # coarse -> ties
        fpr, tpr, thr = roc_curve(y, s)
        f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(fpr, f2)
        np.testing.assert_allclose(tpr, t2)
        np.testing.assert_allclose(thr[1:], th2[1:])
        assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert auprc(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        p, r, th = precision_recall_curve(y, s)
        p2, r2, th3 = skm.precision_recall_curve(y, s)
        # scikit-learn: increasing thresholds, with the (precision 1, recall 0) end point appended
        np.testing.assert_allclose(p, p2[:-1][::-1])
        np.testing.assert_allclose(r, r2[:-1][::-1])
        # best accuracy by brute force over every cut
        accs = [np.mean((s >= t) == y) for t in np.r_[np.inf, np.unique(s)]]
        assert best_accuracy(y, s) == pytest.approx(max(accs))


def test_tpr_at_fpr_rules():
    fpr = np.array([0.0, 0.0, 0.02, 0.02, 0.1, 1.0])
    tpr = np.array([0.0, 0.4, 0.5, 0.7, 0.9, 1.0])
    # step: best real operating point with FPR <= target
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(0.4)
    assert tpr_at_fpr(fpr, tpr, 0.02) == pytest.approx(0.7)
    assert tpr_at_fpr(fpr, tpr, 0.05) == pytest.approx(0.7)
    assert tpr_at_fpr(fpr, tpr, 1.0) == pytest.approx(1.0)
    # linear: along the curve's segment from (0, 0.4) to (0.02, 0.5)
    assert tpr_at_fpr(fpr, tpr, 0.01, rule="linear") == pytest.approx(0.45)
    assert tpr_at_fpr(fpr, tpr, 0.06, rule="linear") == pytest.approx(0.8)
    with pytest.raises(ValueError, match="rule"):
        tpr_at_fpr(fpr, tpr, 0.01, rule="cubic")
    with pytest.raises(ValueError, match="non-decreasing"):
        tpr_at_fpr(fpr[::-1], tpr, 0.01)


def test_summarise_and_undefined_cases():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, bool), np.ones(50, bool)]
    s = np.r_[rng.normal(0, 1, 200), rng.normal(2.5, 1, 50)]
    out = summarise(y, s)
    assert out["n_good"] == 200 and out["n_anomalous"] == 50
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert out["auprc"] == pytest.approx(skm.average_precision_score(y, s))
    f, t, _ = skm.roc_curve(y, s, drop_intermediate=False)
    assert out["tpr_at_fpr_1pct"] == pytest.approx(t[f <= 0.01].max())
    assert out["tpr_at_fpr_5pct"] == pytest.approx(t[f <= 0.05].max())
    assert 0.5 < out["tpr_at_fpr_1pct"] < out["tpr_at_fpr_5pct"] <= 1
    assert out["best_accuracy"] == pytest.approx(best_accuracy(y, s))

    only_good = summarise(np.zeros(5, bool), np.arange(5.0))
    assert only_good == {"n_good": 5, "n_anomalous": 0, "auroc": None, "auprc": None,
                         "tpr_at_fpr_1pct": None, "tpr_at_fpr_5pct": None, "best_accuracy": None}
    assert summarise(np.ones(3, bool), np.arange(3.0))["auroc"] is None
    assert summarise(np.zeros(0, bool), np.zeros(0))["n_good"] == 0
    assert auroc([True, True], [0.1, 0.2]) is None
    assert auprc([False, False], [0.1, 0.2]) is None
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([True, True], [0.1, 0.2])


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        auroc([True, False, True], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        auroc([True, False], [0.1, np.nan])
    with pytest.raises(ValueError, match="labels must be bool"):
        auroc(["anomalous", "good"], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels must be bool"):
        auroc([2, 0], [0.1, 0.2])
    # 0/1 integers are accepted
    assert auroc([1, 0], [0.9, 0.1]) == 1.0
