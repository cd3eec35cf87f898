"""Scoring: reconstruct and measure tiles, aggregate tile -> item -> scan, calibrate, decide.

- :func:`score_tiles` is *the* scoring function: both the Dask tasks of ``tile_scores``
  (:mod:`peelscan.tasks`) and the line-side scorer (:mod:`peelscan.linescan`) call it, so a
  tile gets the same numbers wherever it is scored.
- :func:`aggregate` turns a lot's tile scores into item and scan scores for one measure,
  using the measure's *anomaly score* (:func:`peelscan.metrics.anomaly_score`, higher = more
  anomalous). An item's score is a rule over its tiles — by default ``max``, the worst tile
  (a defect is local: one bad tile is enough) — and a scan's score is its worst item's
  (shared/DESIGN.md).
- :func:`calibrate_threshold` sets a threshold without labels from held-out good or
  unlabelled scans at a target false-positive rate (a split-conformal order statistic:
  Vovk, Gammerman, Shafer, "Algorithmic learning in a random world", 2005; Lei et al.,
  "Distribution-free predictive inference for regression", JASA 113, 2018).
- :func:`decide` applies it: anomalous iff ``anomaly_score > threshold``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from peelscan.metrics import MEASURES, anomaly_score

__all__ = ["AGGREGATION_RULES", "aggregate", "calibrate_threshold", "decide", "score_tiles"]

#: Tile -> item rules accepted by :func:`aggregate`.
AGGREGATION_RULES = ("max", "top_k_mean", "quantile")


def score_tiles(model: Any, tiles: np.ndarray, names: Iterable[str] | None = None,
                batch_size: int = 512, data_range: float = 1.0) -> dict[str, np.ndarray]:
    """Reconstruct tiles with an autoencoder and compare input and reconstruction.

    The batch is processed ``batch_size`` tiles at a time (bounded memory: the measures'
    intermediates grow with the batch), with :func:`peelscan.model.reconstruct` and
    :func:`peelscan.metrics.compute_measures`.

    Args:
        model: an autoencoder from :mod:`peelscan.model` (eval mode is set by ``reconstruct``).
        tiles: (N, T, T) dataset units (attenuation / ``attenuation_scale``, in [0, 1]);
            float32 (other real dtypes are converted to float32; integers, NaN and
            infinities are refused). They pass through the model's input normalisation
            (:func:`peelscan.model.normalise_tiles`, the lot's contrast stretch) first; the
            measures compare that normalised tile with its reconstruction.
        names: measures to compute (default: all thirteen, ``peelscan.metrics.MEASURE_NAMES``).
        batch_size: tiles per reconstruction/measure batch (> 0).
        data_range: width of the intensity range for the measures (1.0 for normalised tiles).

    Returns:
        ``{name: (N,) float64 natural value}`` for every measure requested, plus
        ``recon_mse``: the mean squared reconstruction error per tile, in the model's
        normalised units squared.
    """
    from peelscan.metrics import compute_measures

    x = np.asarray(tiles)
    if x.ndim != 3:
        raise ValueError(f"score_tiles: tiles must be (N, T, T), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"score_tiles: tiles must be float (normalised attenuation), got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"score_tiles: {int((~np.isfinite(x)).sum())} tile pixel(s) are NaN or infinite")
    if int(batch_size) <= 0:
        raise ValueError(f"score_tiles: batch_size must be positive, got {batch_size}")
    wanted = list(MEASURES if names is None else names)
    unknown = [n for n in wanted if n not in MEASURES]
    if unknown:
        raise KeyError(f"score_tiles: unknown measure(s) {unknown}; known: {list(MEASURES)}")
    from peelscan.model import normalise_tiles, reconstruct

    # the model's input normalisation (the lot's contrast stretch): measures compare the
    # tile the model saw with its reconstruction, both in the model's [0, 1] space
    x = normalise_tiles(model, x)

    n = x.shape[0]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in [*wanted, "recon_mse"]}
    for i in range(0, n, int(batch_size)):
        xb = x[i : i + int(batch_size)]
        rb = np.asarray(reconstruct(model, xb), dtype=np.float32)
        if rb.shape != xb.shape:
            raise RuntimeError(f"score_tiles: the model returned shape {rb.shape} for tiles of shape {xb.shape}")
        if wanted:
            for k, v in compute_measures(xb, rb, data_range=data_range, names=wanted).items():
                parts[k].append(v)
        d = xb.astype(np.float64) - rb.astype(np.float64)
        parts["recon_mse"].append(np.mean(d * d, axis=(1, 2)))
    return {k: (np.concatenate(v) if v else np.zeros(0, np.float64)) for k, v in parts.items()}


def aggregate(tile_scores: pd.DataFrame, metric: str, rule: str = "max", k: int = 3, q: float = 0.95,
              all_items: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Aggregate one measure's tile scores to item and scan scores.

    Rules (tile -> item), on the anomaly scores ``a`` of the item's tiles:
        ``max`` (default): the worst tile, ``max(a)``. A defect covers a few tiles at most,
            so an average would dilute it.
        ``top_k_mean``: the mean of the ``k`` highest (all of them if the item has fewer
            than ``k`` tiles) — less sensitive to one noisy tile.
        ``quantile``: the ``q``-quantile (linear interpolation, numpy's default).
    Item -> scan: always the worst item (shared/DESIGN.md); ties go to the lowest item index.

    Whatever the rule, the *worst tile* (highest anomaly score; ties: lowest ``tile_row``,
    then ``tile_col``) is kept: its position and its natural value ``score`` (e.g. FSIM in
    [0, 1]) go to ``anomaly_reports``. With ``max`` the item's ``anomaly_score`` is exactly
    the anomaly score of ``score``; with the other rules it is the aggregate.

    Items with no tile (an item smaller than a tile after peeling) cannot be judged: they do
    not appear in ``tile_scores`` at all. Pass ``all_items`` (the ``items`` dataset's keys) to
    have them listed with ``n_tiles = 0`` and a NaN score; a scan's score ignores unjudged
    items (counted in ``n_unjudged_items``), and a scan none of whose items could be judged
    gets a NaN score (not judged — never silently "good"). Scans with no item at all are not
    in the output; callers merge with their scan list (see :mod:`peelscan.reports`).

    Args:
        tile_scores: one row per tile of ONE lot and ONE model kind, with columns
            ``scan_id, item_index, tile_row, tile_col`` and ``metric`` (natural values);
            ``lot_id`` is kept as a key if present.
        metric: a measure name (:data:`peelscan.metrics.MEASURES`).
        rule: ``max`` | ``top_k_mean`` | ``quantile``.
        k: tiles averaged by ``top_k_mean`` (>= 1).
        q: quantile in [0, 1] for ``quantile``.
        all_items: optional frame with ``scan_id, item_index`` (and ``lot_id``) of every item.

    Returns:
        ``(items, scans)``: ``items`` has one row per item: keys, ``n_tiles, anomaly_score,
        score, worst_tile_row, worst_tile_col``; ``scans`` one row per scan: keys,
        ``item_index`` (the worst item), ``anomaly_score, score, worst_tile_row,
        worst_tile_col, n_items, n_unjudged_items, n_tiles``. Sorted by the keys.
    """
    if metric not in MEASURES:
        raise KeyError(f"aggregate: unknown measure {metric!r}; known: {list(MEASURES)}")
    if rule not in AGGREGATION_RULES:
        raise ValueError(f"aggregate: rule must be one of {AGGREGATION_RULES}, got {rule!r}")
    if rule == "top_k_mean" and (int(k) != k or k < 1):
        raise ValueError(f"aggregate: k must be a positive integer, got {k}")
    if rule == "quantile" and not (0.0 <= q <= 1.0):
        raise ValueError(f"aggregate: q must be in [0, 1], got {q}")
    need = ["scan_id", "item_index", "tile_row", "tile_col", metric]
    missing = [c for c in need if c not in tile_scores.columns]
    if missing:
        raise ValueError(f"aggregate: tile_scores lacks column(s) {missing}")
    if "model_kind" in tile_scores.columns and tile_scores["model_kind"].nunique() > 1:
        raise ValueError("aggregate: tile_scores mixes model kinds "
                         f"{sorted(tile_scores['model_kind'].unique())}; aggregate one kind at a time")
    scan_keys = (["lot_id"] if "lot_id" in tile_scores.columns else []) + ["scan_id"]
    item_keys = scan_keys + ["item_index"]

    t = tile_scores[item_keys + ["tile_row", "tile_col"]].copy()
    natural = tile_scores[metric].to_numpy(dtype=np.float64)
    if not np.isfinite(natural).all():
        raise ValueError(f"aggregate: {int((~np.isfinite(natural)).sum())} tile(s) have a NaN or infinite "
                         f"{metric} (the measures are finite for finite tiles: corrupt tile_scores?)")
    t["score"] = natural
    t["a"] = anomaly_score(metric, natural)
    dup = t.duplicated(item_keys + ["tile_row", "tile_col"])
    if dup.any():
        raise ValueError(f"aggregate: {int(dup.sum())} tile(s) appear more than once in tile_scores")
    # worst tile first within each item: anomaly score descending, then position ascending
    t = t.sort_values(item_keys + ["a", "tile_row", "tile_col"],
                      ascending=[True] * len(item_keys) + [False, True, True], kind="mergesort")
    g = t.groupby(item_keys, sort=False)
    worst = g.head(1).set_index(item_keys)
    items = pd.DataFrame({
        "n_tiles": g.size(),
        "score": worst["score"],
        "worst_tile_row": worst["tile_row"],
        "worst_tile_col": worst["tile_col"],
    })
    if rule == "max":
        items["anomaly_score"] = worst["a"]
    elif rule == "top_k_mean":
        items["anomaly_score"] = t[g.cumcount() < int(k)].groupby(item_keys, sort=False)["a"].mean()
    else:
        items["anomaly_score"] = g["a"].quantile(q)
    items = items.reset_index()

    if all_items is not None:
        miss = [c for c in item_keys if c not in all_items.columns]
        if miss:
            raise ValueError(f"aggregate: all_items lacks column(s) {miss}")
        known = all_items[item_keys].drop_duplicates()
        items = known.merge(items, on=item_keys, how="outer")
        items["n_tiles"] = items["n_tiles"].fillna(0)
    items["n_tiles"] = items["n_tiles"].astype("int64")
    for c in ("worst_tile_row", "worst_tile_col"):
        items[c] = items[c].astype("Int64")
    items["item_index"] = items["item_index"].astype("int64")
    items = items[item_keys + ["n_tiles", "anomaly_score", "score", "worst_tile_row", "worst_tile_col"]]
    items = items.sort_values(item_keys, kind="mergesort").reset_index(drop=True)

    # item -> scan: the worst judged item (ties: lowest item_index; NaN sorts last)
    judged = items["anomaly_score"].notna()
    by_scan = items.groupby(scan_keys, sort=False)
    counts = pd.DataFrame({"n_items": by_scan.size(),
                           "n_unjudged_items": (~judged).groupby([items[c] for c in scan_keys]).sum(),
                           "n_tiles": by_scan["n_tiles"].sum()})
    order = items.sort_values(scan_keys + ["anomaly_score", "item_index"],
                              ascending=[True] * len(scan_keys) + [False, True],
                              na_position="last", kind="mergesort")
    scans = order.groupby(scan_keys, sort=False).head(1)
    scans = scans.drop(columns=["n_tiles"]).set_index(scan_keys).join(counts).reset_index()
    scans["item_index"] = scans["item_index"].astype("Int64")
    scans.loc[scans["anomaly_score"].isna(), "item_index"] = pd.NA
    scans = scans[scan_keys + ["item_index", "anomaly_score", "score", "worst_tile_row", "worst_tile_col",
                               "n_items", "n_unjudged_items", "n_tiles"]]
    scans["n_unjudged_items"] = scans["n_unjudged_items"].astype("int64")
    return items, scans.sort_values(scan_keys, kind="mergesort").reset_index(drop=True)


def calibrate_threshold(scores: Any, target_fpr: float = 0.01) -> float:
    """A decision threshold from anomaly scores of good or unlabelled held-out scans.

    No labels are used. Rule (split-conformal): with the ``n`` finite calibration scores
    sorted ascending ``s_(1) <= ... <= s_(n)``, the threshold is the ``k``-th with
    ``k = ceil((1 - target_fpr) (n + 1))``. If the calibration scans and a future good scan
    are exchangeable, "anomalous iff score > threshold" then has an expected false-positive
    rate ``<= 1 - k / (n + 1) <= target_fpr``.

    With few calibration scans (``k > n``, i.e. ``n < 1 / target_fpr - 1``: fewer than 99
    scans for 1 %) no order statistic guarantees the target; the threshold falls back to the
    maximum, the most conservative value the data support, with an expected FPR of
    ``1 / (n + 1)``. Unlabelled calibration data that holds some anomalies only raises the
    threshold (fewer false alarms, lower recall).

    Args:
        scores: anomaly scores (any shape; NaN entries — unjudged scans — are ignored).
        target_fpr: in (0, 1).

    Returns:
        A finite float (never NaN).

    Raises:
        ValueError: no finite score to calibrate on, an infinite score, or a bad target.
    """
    if not (0.0 < float(target_fpr) < 1.0):
        raise ValueError(f"calibrate_threshold: target_fpr must be in (0, 1), got {target_fpr}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[~np.isnan(s)]
    if s.size == 0:
        raise ValueError("calibrate_threshold: no calibration score (need at least one good or unlabelled "
                         "held-out scan that was scored)")
    if np.isinf(s).any():
        raise ValueError(f"calibrate_threshold: {int(np.isinf(s).sum())} calibration score(s) are infinite")
    n = s.size
    k = math.ceil((1.0 - float(target_fpr)) * (n + 1) - 1e-9)  # guard against 0.99*100 = 98.99999
    s.sort()
    return float(s[min(k, n) - 1])


def decide(scan_scores: Any, threshold: float) -> pd.arrays.BooleanArray:
    """Anomalous iff ``anomaly_score > threshold``.

    Args:
        scan_scores: (N,) anomaly scores; NaN = not judged.
        threshold: from :func:`calibrate_threshold` (finite).

    Returns:
        pandas nullable boolean array (N,): True/False, ``<NA>`` where the score is NaN.
    """
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"decide: threshold must be finite, got {threshold}")
    s = np.asarray(scan_scores, dtype=np.float64).ravel()
    out = pd.array(s > t, dtype="boolean")
    out[np.isnan(s)] = pd.NA
    return out
