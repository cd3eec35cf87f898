"""Per-lot reports from tile scores: decisions, ROC summaries and curves, the lot summary.

One function, :func:`build_reports`, turns the ``tile_scores`` of a lot (every model kind,
every measure) and its scan list into the rows of the DuckDB tables of shared/DESIGN.md:

- each scan gets a role: ``fit`` (its tiles trained the model), ``calibration`` (a training
  scan held out of the gradient steps by scan-id hash, good or unlabelled) or ``eval``;
- per model kind and measure, tiles are aggregated to items and scans
  (:func:`peelscan.scoring.aggregate`), a threshold is calibrated *without labels* on the
  calibration scans at the target false-positive rate (:func:`peelscan.scoring.calibrate_threshold`),
  and every scan is decided;
- ROC figures (:func:`peelscan.roc.summarise`) use ``eval`` scans only — a scan used to train a
  model is never scored into that model's ROC — and only where both labels occur.

Scans without any tile (no object found, or an item smaller than one tile) are reported with
a NULL score and ``is_anomaly = NULL``: they were not judged, and the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from peelscan.metrics import MEASURES
from peelscan.roc import roc_curve, summarise
from peelscan.scoring import aggregate, calibrate_threshold
from peelscan.splits import assign_split

PRIMARY_METRIC = "fsim"


@dataclass
class Reports:
    anomaly_reports: pd.DataFrame
    roc_summaries: pd.DataFrame
    roc_curves: pd.DataFrame
    lot_summary: pd.DataFrame
    eval_scan_scores: pd.DataFrame  # metric, anomaly_score, label, model_kind (eval scans): for plots


def scan_roles(scans: pd.DataFrame, val_fraction: float, val_salt: str) -> pd.Series:
    """``fit`` / ``calibration`` / ``eval`` per scan (index aligned with ``scans``)."""
    def role(row) -> str:
        if row["split"] != "train":
            return "eval"
        return "calibration" if assign_split(row["scan_id"], None, eval_fraction=val_fraction,
                                             salt=val_salt) == "eval" else "fit"
    return scans.apply(role, axis=1) if len(scans) else pd.Series(dtype=str)


def build_reports(lot_id: str, tile_scores: pd.DataFrame, scans: pd.DataFrame, rule: str = "max",
                  target_fpr: float = 0.01, val_salt: str = "val", val_fraction: float = 0.15,
                  scored_at: datetime | None = None, primary_metric: str = PRIMARY_METRIC) -> Reports:
    """Rows of ``anomaly_reports``, ``roc_summaries``, ``roc_curves``, ``lot_summaries``.

    ``tile_scores``: one row per scored tile with ``model_kind, model_version, scan_id,
    item_index, tile_row, tile_col`` and one column per measure (natural values).
    ``scans``: ``scan_id, label, defect_type, split`` of every accepted scan of the lot.
    """
    scans = scans[["scan_id", "label", "defect_type", "split"]].drop_duplicates("scan_id").reset_index(drop=True)
    scans["role"] = scan_roles(scans, val_fraction, val_salt)
    reports, summaries, curves, evals, lot_rows = [], [], [], [], []
    for kind, tk in tile_scores.groupby("model_kind", sort=True):
        version = str(tk["model_version"].iloc[0])
        for metric in MEASURES:
            _items, per_scan = aggregate(tk, metric, rule=rule)
            df = scans.merge(per_scan, on="scan_id", how="left")
            calib = df.loc[df["role"] == "calibration", "anomaly_score"].dropna().to_numpy()
            calibration_source = "calibration"
            if len(calib) == 0:  # no held-out training scans: fall back to the fit scans (optimistic)
                calib = df.loc[df["role"] == "fit", "anomaly_score"].dropna().to_numpy()
                calibration_source = "fit"
            threshold = calibrate_threshold(calib, target_fpr) if len(calib) else float("nan")
            judged = df["anomaly_score"].notna() & np.isfinite(threshold)
            is_anom = pd.Series(pd.NA, index=df.index, dtype="boolean")
            is_anom[judged] = df.loc[judged, "anomaly_score"] > threshold
            reports.append(pd.DataFrame({
                "lot_id": lot_id, "scan_id": df["scan_id"],
                "item_index": df["item_index"].astype("Int32"), "metric": metric,
                "score": df["score"].astype(float), "anomaly_score": df["anomaly_score"].astype(float),
                "threshold": threshold if np.isfinite(threshold) else None, "is_anomaly": is_anom,
                "label": df["label"], "defect_type": df["defect_type"],
                "worst_tile_row": df["worst_tile_row"].astype("Int32"),
                "worst_tile_col": df["worst_tile_col"].astype("Int32"),
                "model_version": version, "model_kind": kind, "split": df["role"],
                "calibration_source": calibration_source, "scored_at": scored_at}))
            ev = df[(df["role"] == "eval") & df["label"].isin(["good", "anomalous"]) & df["anomaly_score"].notna()]
            evals.append(pd.DataFrame({"metric": metric, "model_kind": kind, "scan_id": ev["scan_id"],
                                       "anomaly_score": ev["anomaly_score"].astype(float),
                                       "label": ev["label"], "defect_type": ev["defect_type"]}))
            y = (ev["label"] == "anomalous").to_numpy()
            s = ev["anomaly_score"].to_numpy(dtype=float)
            summ = summarise(y, s)
            summaries.append({"lot_id": lot_id, "metric": metric, "model_version": version, "model_kind": kind,
                              **summ, "threshold": threshold if np.isfinite(threshold) else None,
                              "computed_at": scored_at})
            if y.any() and (~y).any():
                fpr, tpr, thr = roc_curve(y, s)
                curves.append(pd.DataFrame({"lot_id": lot_id, "metric": metric, "model_version": version,
                                            "model_kind": kind, "fpr": fpr, "tpr": tpr,
                                            "threshold": np.where(np.isfinite(thr), thr, np.nan)}))
            if metric == primary_metric:
                decided = df[judged]
                found = decided.loc[is_anom[judged].astype(bool).to_numpy()]
                by_type = {}
                labelled = df[df["label"] == "anomalous"]
                for t, g in labelled.groupby(labelled["defect_type"].fillna("unspecified")):
                    hit = g["scan_id"].isin(found["scan_id"])
                    by_type[str(t)] = {"scans": int(len(g)), "found": int(hit.sum())}
                lot_rows.append({"lot_id": lot_id, "model_kind": kind, "model_version": version,
                                 "metric": metric, "n_scans": int(len(df)), "n_judged": int(judged.sum()),
                                 "n_anomalies_found": int(len(found)),
                                 "anomaly_rate": float(len(found) / judged.sum()) if judged.sum() else None,
                                 "n_labelled_anomalous": int(len(labelled)),
                                 "by_defect_type": json.dumps(by_type, sort_keys=True),
                                 "threshold": threshold if np.isfinite(threshold) else None,
                                 "computed_at": scored_at})
    empty = pd.DataFrame()
    return Reports(
        anomaly_reports=pd.concat(reports, ignore_index=True) if reports else empty,
        roc_summaries=pd.DataFrame(summaries),
        roc_curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
            columns=["lot_id", "metric", "model_version", "model_kind", "fpr", "tpr", "threshold"]),
        lot_summary=pd.DataFrame(lot_rows),
        eval_scan_scores=pd.concat(evals, ignore_index=True) if evals else pd.DataFrame(
            columns=["metric", "model_kind", "scan_id", "anomaly_score", "label", "defect_type"]),
    )
