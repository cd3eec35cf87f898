"""Scoring stage: ``tile_scores`` (Dask) and ``scan_scores`` (reports, ROC, plots) per lot.

- ``tile_scores`` streams the lot's tile datasets one Parquet row group per Dask task
  (:func:`peelscan.tasks.score_row_group`): reconstruct with the lot's current model and compute
  all thirteen measures, for every model kind that has a current model (``tiles``, and
  ``whole`` when the baseline was trained). Result: ``<lot>/tile_scores``.
- ``scan_scores`` aggregates tile -> item -> scan (:func:`peelscan.scoring.aggregate`),
  calibrates a threshold per measure without labels on the held-out good/unlabelled training
  scans (:func:`peelscan.scoring.calibrate_threshold`), decides every scan, and replaces the
  lot's rows of ``anomaly_reports``, ``roc_summaries``, ``roc_curves`` and ``lot_summaries``.
  ROC figures use the ``eval`` split only: a scan used to train a model is never scored into
  that model's ROC.
"""


from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from assets._common import df_markdown, picture
from assets.train import DATASET_OF_KIND, MODEL_KINDS, VAL_SALT, autoencoder
from peelscan.ids import validate_id
from peelscan.metrics import MEASURES
from peelscan.records import frame_from_row
from peelscan.reports import build_reports
from peelscan.plots import heatmap_png, roc_curves_png, score_distributions_png
from peelscan.tasks import score_row_group
from pipelines.partitions import lots_partitions
from resources import DaskResource, LakeResource, ModelStoreResource, WarehouseResource


@asset(partitions_def=lots_partitions, group_name="lot_pipeline", deps=[autoencoder], kinds={"dask", "pytorch", "parquet"},
       description="Every tile reconstructed by the lot's current model(s) and compared with all thirteen measures.")
def tile_scores(context: AssetExecutionContext, lake: LakeResource, model_store: ModelStoreResource,
                dask: DaskResource) -> MaterializeResult:
    lot = validate_id(context.partition_key, "lot id")
    store = lake.store()
    models = model_store.model_store()
    names = tuple(MEASURES)
    tasks = []
    expected = 0
    versions = {}
    for kind in MODEL_KINDS:
        version = models.current(lot, kind)
        if version is None:
            continue
        versions[kind] = version
        dataset = DATASET_OF_KIND[kind]
        expected += store.dataset_manifest(lot, dataset)["rows"]
        tasks += [(p, g, kind, version) for p, g in store.iter_row_groups(lot, dataset)]
    if not versions:
        raise ValueError(f"lot {lot}: no promoted model to score with (did the autoencoder check fail?)")
    with dask.client() as client:
        futures = [client.submit(score_row_group, lake.uri, p, g, lot, kind, version, names,
                                 key=f"score-{lot}-{kind}-{version}-{i}", retries=2)
                   for i, (p, g, kind, version) in enumerate(tasks)]
        parts = client.gather(futures)
        n_workers = len(client.scheduler_info().get("workers", {}))
    table = pa.concat_tables(parts) if parts else None
    if table is None or table.num_rows != expected:
        raise RuntimeError(f"lot {lot}: scored {0 if table is None else table.num_rows} tiles, expected {expected}")
    keys = table.select(["model_kind", "scan_id", "item_index", "tile_row", "tile_col"]).to_pandas()
    if keys.duplicated().any():
        raise RuntimeError(f"lot {lot}: {int(keys.duplicated().sum())} tiles scored more than once")
    store.write_dataset(lot, "tile_scores", [table], row_group_size=8192,
                        metadata={"model_versions": versions, "measures": list(names)})
    return MaterializeResult(metadata={
        "n_tiles_scored": table.num_rows, "n_tasks": len(tasks), "dask_workers": n_workers,
        "model_versions": MetadataValue.json(versions), "measures": ", ".join(names)})


class ScanScoresConfig(Config):
    aggregation: str = "max"
    """Tile -> item rule: ``max`` (the worst tile), ``top_k_mean`` or ``quantile``."""
    target_fpr: float = 0.01
    """False-positive rate the per-measure thresholds are calibrated to (without labels)."""
    primary_metric: str = "fsim"
    """The measure whose decision is shown in the summary and the heat maps."""
    heatmap_scans: int = 6


@asset(partitions_def=lots_partitions, group_name="lot_pipeline", deps=[tile_scores], kinds={"duckdb", "python"},
       description="Tile -> item -> scan scores, calibrated thresholds, decisions, ROC summaries and pictures.")
def scan_scores(context: AssetExecutionContext, config: ScanScoresConfig, lake: LakeResource,
                warehouse: WarehouseResource, model_store: ModelStoreResource) -> MaterializeResult:
    lot = validate_id(context.partition_key, "lot id")
    store = lake.store()
    tiles = store.read_dataset(lot, "tile_scores").to_pandas()
    scans = store.read_dataset(lot, "preprocessed", columns=["scan_id", "label", "defect_type", "split"]).to_pandas()
    now = datetime.now(timezone.utc)
    rep = build_reports(lot, tiles, scans, rule=config.aggregation, target_fpr=config.target_fpr,
                        val_salt=VAL_SALT, scored_at=now)
    wh = warehouse.warehouse()
    wh.replace_lot_rows("anomaly_reports", lot, rep.anomaly_reports)
    wh.replace_lot_rows("roc_summaries", lot, rep.roc_summaries)
    wh.replace_lot_rows("roc_curves", lot, rep.roc_curves)
    wh.replace_lot_rows("lot_summaries", lot, rep.lot_summary)
    # the calibrated thresholds travel with the model version, for the line-side scorer
    models = model_store.model_store()
    for (kind, version), g in rep.roc_summaries.groupby(["model_kind", "model_version"]):
        models.write_extra(lot, kind, version, "thresholds.json", {
            "aggregation": config.aggregation, "target_fpr": config.target_fpr,
            "thresholds": {m: t for m, t in zip(g["metric"], g["threshold"]) if t is not None and t == t}})

    meta: dict = {"n_scans": len(scans), "n_report_rows": len(rep.anomaly_reports),
                  "summary": df_markdown(rep.lot_summary.drop(columns=["lot_id"], errors="ignore")),
                  "roc": df_markdown(rep.roc_summaries[["model_kind", "metric", "auroc", "auprc",
                                                        "tpr_at_fpr_1pct", "best_accuracy"]]
                                     .sort_values(["model_kind", "auroc"], ascending=[True, False])
                                     if len(rep.roc_summaries) else rep.roc_summaries)}
    primary = rep.anomaly_reports[(rep.anomaly_reports["metric"] == config.primary_metric)
                                  & (rep.anomaly_reports["model_kind"] == "tiles")]
    if len(primary):
        meta["anomalies_found"] = int(primary.drop_duplicates("scan_id")["is_anomaly"].fillna(False).sum())
    for kind in sorted(rep.eval_scan_scores["model_kind"].unique()) if len(rep.eval_scan_scores) else []:
        ev = rep.eval_scan_scores[rep.eval_scan_scores["model_kind"] == kind]
        if ev["label"].nunique() >= 2:
            meta.update(picture(lot, f"score_distributions_{kind}", score_distributions_png(ev),
                                f"{kind}: anomaly scores of good and anomalous eval scans, per measure"))
            curves = rep.roc_curves[rep.roc_curves["model_kind"] == kind]
            by_metric = {m: (g["fpr"].to_numpy(), g["tpr"].to_numpy()) for m, g in curves.groupby("metric")}
            aurocs = rep.roc_summaries[rep.roc_summaries["model_kind"] == kind].set_index("metric")["auroc"].to_dict()
            meta.update(picture(lot, f"roc_curves_{kind}", roc_curves_png(by_metric, aurocs),
                                f"{kind}: ROC curves of all measures (eval split)"))
    if len(primary):
        meta.update(_heatmap(lot, store, tiles, primary, config))
    return MaterializeResult(metadata=meta)


def _heatmap(lot, store, tiles, primary, config) -> dict:
    """Anomaly heat map of the primary measure over the worst scans."""
    from peelscan.metrics import anomaly_score

    worst = primary.sort_values("anomaly_score", ascending=False).drop_duplicates("scan_id").head(config.heatmap_scans)
    if worst.empty:
        return {}
    pre = store.read_dataset(lot, "preprocessed").to_pandas().set_index("scan_id")
    t = tiles[(tiles["model_kind"] == "tiles")]
    panels = []
    for _, w in worst.iterrows():
        sid = w["scan_id"]
        st = t[t["scan_id"] == sid]
        if st.empty or sid not in pre.index:
            continue
        row = pre.loc[sid]
        att = frame_from_row({"pixels": row["pixels"], "height": row["height"], "width": row["width"],
                              "scan_id": sid}, dtype=np.float32)
        a = anomaly_score(config.primary_metric, st[config.primary_metric].to_numpy())
        label = w["label"] if isinstance(w["label"], str) else "unlabelled"
        defect = f", {w['defect_type']}" if isinstance(w["defect_type"], str) else ""
        title = f"{sid} ({label}{defect})"
        tile_size = int(store.dataset_manifest(lot, "tiles")["metadata"]["config"]["tile_size"])
        panels.append((att, st["tile_row"].to_numpy(), st["tile_col"].to_numpy(), tile_size, a, title))
    if not panels:
        return {}
    return picture(lot, "anomaly_heatmap", heatmap_png(panels),
                   f"{config.primary_metric} anomaly heat map over the {len(panels)} worst scans")
