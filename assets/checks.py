"""Asset checks that guard the report tables of a lot (shared/DESIGN.md tables)."""


from dagster import AssetCheckExecutionContext, AssetCheckResult, MetadataValue, asset_check

from assets.score import scan_scores
from peelscan.ids import validate_id
from pipelines.partitions import lots_partitions
from resources import WarehouseResource


def _one(wh, sql: str, lot: str):
    cols, rows = wh.query(sql, [lot])
    return rows[0][0] if rows else None


@asset_check(asset=scan_scores, partitions_def=lots_partitions,
             description="anomaly_reports has exactly one row per scan, measure and model kind.")
def reports_match_scans(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    lot = validate_id(context.partition_key, "lot id")
    wh = warehouse.warehouse()
    n_scans = _one(wh, "SELECT count(*) FROM scans WHERE lot_id = ?", lot)
    _, rows = wh.query("SELECT model_kind, metric, count(*), count(DISTINCT scan_id) FROM anomaly_reports "
                       "WHERE lot_id = ? GROUP BY ALL ORDER BY ALL", [lot])
    bad = [r for r in rows if r[2] != n_scans or r[3] != n_scans]
    return AssetCheckResult(passed=bool(rows) and not bad, metadata={
        "n_scans": n_scans, "groups": len(rows),
        "mismatched": MetadataValue.json([list(map(str, r)) for r in bad])})


@asset_check(asset=scan_scores, partitions_def=lots_partitions,
             description="No duplicate rows in the lot's report tables after reruns and backfills.")
def reports_have_no_duplicates(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    lot = validate_id(context.partition_key, "lot id")
    wh = warehouse.warehouse()
    dup = {
        "scans": _one(wh, "SELECT count(*) - count(DISTINCT scan_id) FROM scans WHERE lot_id = ?", lot),
        "anomaly_reports": _one(wh, "SELECT count(*) - count(DISTINCT (model_kind, metric, scan_id)) "
                                    "FROM anomaly_reports WHERE lot_id = ?", lot),
        "roc_summaries": _one(wh, "SELECT count(*) - count(DISTINCT (model_kind, metric, model_version)) "
                                  "FROM roc_summaries WHERE lot_id = ?", lot),
    }
    return AssetCheckResult(passed=all((v or 0) == 0 for v in dup.values()),
                            metadata={"duplicates": MetadataValue.json(dup)})


@asset_check(asset=scan_scores, partitions_def=lots_partitions,
             description="AUROC is present for every measure wherever the lot's eval split has both labels.")
def auroc_present_where_labelled(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    lot = validate_id(context.partition_key, "lot id")
    wh = warehouse.warehouse()
    _, rows = wh.query("SELECT model_kind, metric, n_good, n_anomalous, auroc FROM roc_summaries "
                       "WHERE lot_id = ?", [lot])
    missing = [f"{r[0]}/{r[1]}" for r in rows if (r[2] or 0) > 0 and (r[3] or 0) > 0 and r[4] is None]
    labelled = any((r[2] or 0) > 0 and (r[3] or 0) > 0 for r in rows)
    return AssetCheckResult(passed=not missing, metadata={
        "labelled_eval": labelled, "missing_auroc": MetadataValue.json(missing)})
