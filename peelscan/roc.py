"""ROC and precision-recall figures of a score against binary labels.

Conventions used everywhere in this module:

- ``labels``: 1-D array, ``True`` (or 1) = anomalous (the positive class), ``False`` (or 0) =
  good. Anything else (strings, NaN, 2) is refused with a clear error.
- ``scores``: 1-D float array of *anomaly scores*, higher = more anomalous
  (:func:`peelscan.metrics.anomaly_score` makes them from the measures' natural values); all
  finite.
- A threshold ``t`` calls a sample anomalous when ``score >= t`` (the convention of the ROC
  points, as in scikit-learn). Samples with equal scores are always on the same side of any
  threshold, so *ties* produce one ROC point (a diagonal step), never an optimistic staircase.
- Undefined figures are ``None`` (SQL NULL): every ranking figure needs both classes, so with
  only good or only anomalous samples (or none) :func:`auroc`, :func:`auprc`,
  :func:`best_accuracy` and the ``tpr_at_fpr_*`` entries of :func:`summarise` are ``None``,
  and :func:`roc_curve` raises (there is no curve to draw).

References: Fawcett, "An introduction to ROC analysis", Pattern Recognition Letters 27(8),
2006 (ROC points from sorted scores with ties, AUROC by the trapezoid rule = the
Mann-Whitney statistic with ties counted one half); Zhu, "Recall, precision and average
precision", 2004, and scikit-learn's ``average_precision_score`` (step-wise average precision,
no interpolation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "auprc",
    "auroc",
    "best_accuracy",
    "precision_recall_curve",
    "roc_curve",
    "summarise",
    "tpr_at_fpr",
]


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to ``(bool (N,), float64 (N,))``."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"roc: labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"roc: {y.shape[0]} labels but {s.shape[0]} scores")
    if y.dtype != bool:
        if y.size and not (np.issubdtype(y.dtype, np.number) and np.isin(y, (0, 1)).all()):
            bad = [v for v in np.unique(y.astype(object)).tolist() if v not in (0, 1)][:5]
            raise ValueError(f"roc: labels must be bool (True = anomalous) or 0/1, got values {bad}")
        y = y.astype(bool)
    if not np.issubdtype(s.dtype, np.number) or s.dtype == bool:
        raise ValueError(f"roc: scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError(f"roc: {int((~np.isfinite(s)).sum())} score(s) are NaN or infinite")
    return y, s


def _counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct score, highest first.

    Returns ``(tp, fp, thresholds)``: ``tp[i]``/``fp[i]`` are the counts of anomalous/good
    samples with ``score >= thresholds[i]``."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores
    ends = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[ends].astype(np.float64)
    fp = (ends + 1) - tp
    return tp, fp, s_sorted[ends]


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve, one point per distinct score.

    Args:
        labels: (N,) bool, True = anomalous.
        scores: (N,) float anomaly scores (higher = more anomalous).

    Returns:
        ``(fpr, tpr, thresholds)``, float64 arrays of length ``D + 1`` (D distinct scores):
        point ``i`` is the operating point of "anomalous iff score >= thresholds[i]". The first
        point is ``(0, 0)`` with threshold ``+inf`` (nothing called anomalous); the last is
        ``(1, 1)`` at the lowest score. fpr and tpr are non-decreasing. Intermediate collinear
        points are kept (equal to scikit-learn's ``roc_curve(..., drop_intermediate=False)``).

    Raises:
        ValueError: bad input, or only one class present (the curve is undefined).
    """
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc: the ROC curve needs both classes, got {n_pos} anomalous and {n_neg} good")
    tp, fp, thr = _counts(y, s)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr, np.r_[np.inf, thr]


def auroc(labels: Any, scores: Any) -> float | None:
    """Area under the ROC curve by the trapezoid rule over :func:`roc_curve`'s points.

    Equals ``P(score_anomalous > score_good) + 0.5 P(equal)`` (Mann-Whitney U over
    ``n_anomalous * n_good``). ``None`` when only one class is present."""
    y, s = _check(labels, scores)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def precision_recall_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score (threshold ``score >= t``), highest first.

    Returns ``(precision, recall, thresholds)`` of length D (distinct scores), without the
    conventional ``(recall 0, precision 1)`` end point. Requires at least one anomalous
    sample (recall is undefined otherwise): raises ValueError."""
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("roc: precision-recall needs at least one anomalous sample")
    tp, fp, thr = _counts(y, s)
    return tp / (tp + fp), tp / n_pos, thr


def auprc(labels: Any, scores: Any) -> float | None:
    """Average precision ``AP = sum_i (R_i - R_{i-1}) P_i`` over the distinct thresholds
    (step-wise, no interpolation; scikit-learn's ``average_precision_score``).

    A random score gives about the anomalous share; a perfect one 1. ``None`` when only one
    class is present (with no good samples AP would be trivially 1)."""
    y, s = _check(labels, scores)
    if y.all() or not y.any():
        return None
    precision, recall, _ = precision_recall_curve(y, s)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tpr_at_fpr(fpr: Any, tpr: Any, target: float = 0.01, rule: str = "step") -> float:
    """The true-positive rate at a false-positive rate of ``target`` read off a ROC curve.

    Rules:
        ``"step"`` (default, conservative): the largest TPR among the curve's points with
        ``fpr <= target`` — an operating point that a real threshold achieves. With few good
        samples (e.g. 50, so FPR moves in steps of 2 %) a 1 % target is met only by FPR 0.
        ``"linear"``: linear interpolation between the two points around ``target`` (the TPR
        of a randomised mix of the two thresholds).

    Args:
        fpr, tpr: a curve from :func:`roc_curve` (non-decreasing, starting at (0, 0)).
        target: FPR in [0, 1].

    Returns:
        TPR in [0, 1].
    """
    f = np.asarray(fpr, dtype=np.float64)
    t = np.asarray(tpr, dtype=np.float64)
    if f.ndim != 1 or f.shape != t.shape or f.size == 0:
        raise ValueError(f"tpr_at_fpr: fpr and tpr must be 1-D of the same non-zero length, got {f.shape}, {t.shape}")
    if not (0.0 <= target <= 1.0) or math.isnan(target):
        raise ValueError(f"tpr_at_fpr: target FPR must be in [0, 1], got {target}")
    if np.any(np.diff(f) < 0) or np.any(np.diff(t) < 0):
        raise ValueError("tpr_at_fpr: fpr and tpr must be non-decreasing (a curve from roc_curve)")
    if rule not in ("step", "linear"):
        raise ValueError(f"tpr_at_fpr: rule must be 'step' or 'linear', got {rule!r}")
    # the curve is sorted, so the last point with fpr <= target has the highest tpr among them
    i = int(np.searchsorted(f, target + 1e-12, side="right")) - 1
    if i < 0:
        return 0.0
    if rule == "step" or i == f.size - 1 or f[i] >= target:
        return float(t[i])
    # linear: along the segment from point i to the next point of the curve
    w = (target - f[i]) / (f[i + 1] - f[i])
    return float(t[i] + w * (t[i + 1] - t[i]))


def best_accuracy(labels: Any, scores: Any) -> float | None:
    """The highest accuracy ``(TP + TN) / N`` of any threshold ``score >= t`` (including
    "everything good" and "everything anomalous"). An optimistic figure (the threshold is
    chosen with the labels), reported as the research does. ``None`` with only one class."""
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    fpr, tpr, _ = roc_curve(y, s)
    acc = (tpr * n_pos + (1.0 - fpr) * n_neg) / (n_pos + n_neg)
    return float(acc.max())


def summarise(labels: Any, scores: Any) -> dict[str, float | int | None]:
    """The figures of one ``roc_summaries`` row.

    Returns:
        ``{n_good, n_anomalous, auroc, auprc, tpr_at_fpr_1pct, tpr_at_fpr_5pct,
        best_accuracy}``; the counts are ints, the rest floats, or ``None`` (SQL NULL) when
        only one class (or no sample) is present. TPR at FPR uses the ``"step"`` rule of
        :func:`tpr_at_fpr`.
    """
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    out: dict[str, float | int | None] = {
        "n_good": n_neg, "n_anomalous": n_pos, "auroc": None, "auprc": None,
        "tpr_at_fpr_1pct": None, "tpr_at_fpr_5pct": None, "best_accuracy": None,
    }
    if n_pos == 0 or n_neg == 0:
        return out
    fpr, tpr, _ = roc_curve(y, s)
    out["auroc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    out["auprc"] = auprc(y, s)
    out["tpr_at_fpr_1pct"] = tpr_at_fpr(fpr, tpr, 0.01)
    out["tpr_at_fpr_5pct"] = tpr_at_fpr(fpr, tpr, 0.05)
    out["best_accuracy"] = float(((tpr * n_pos + (1.0 - fpr) * n_neg) / (n_pos + n_neg)).max())
    return out
