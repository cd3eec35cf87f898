"""Ingestion stage: ``raw_scans -> preprocessed_scans -> items`` (per lot).

- ``raw_scans`` lists the lot folder in the landing store, decodes every scan, and puts every
  file either in the ``scans`` table (and the lake's ``<lot>/raw`` dataset) or in the
  ``quarantine`` table with a reason (:func:`peelscan.ingest.ingest_lot`).
- ``preprocessed_scans`` turns detector counts into normalised attenuation
  (:func:`peelscan.preprocess.preprocess_scan`) -> ``<lot>/preprocessed``.
- ``items`` segments every object (:func:`peelscan.segment.segment_items`) -> ``<lot>/items``.
"""


from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from assets._common import df_markdown, picture
from peelscan.records import (
    CALIBRATION_SCHEMA,
    ITEMS_SCHEMA,
    PREPROCESSED_SCHEMA,
    RAW_SCHEMA,
    decode_mask,
    encode_mask,
    frame_from_row,
)
from peelscan.ids import validate_id
from peelscan.ingest import ingest_lot
from peelscan.plots import scan_before_after_png
from peelscan.preprocess import PreprocessConfig, preprocess_scan
from peelscan.segment import SegmentConfig, segment_items
from pipelines.partitions import lots_partitions
from resources import LakeResource, ScanStoreResource, WarehouseResource


class IngestConfig(Config):
    eval_fraction: float = 0.3
    """Share of good/unlabelled scans held out for evaluation (split by scan-id hash)."""


@asset(partitions_def=lots_partitions, group_name="lot_pipeline", kinds={"python", "parquet", "duckdb"},
       description="Decoded, validated scans of a lot; every landing file ends in `scans` or `quarantine`.")
def raw_scans(context: AssetExecutionContext, config: IngestConfig, scan_store: ScanStoreResource,
              lake: LakeResource, warehouse: WarehouseResource) -> MaterializeResult:
    lot = validate_id(context.partition_key, "lot id")
    landing = scan_store.store()
    content_version = landing.content_version(lot)
    ing = ingest_lot(landing, lot, eval_fraction=config.eval_fraction)
    now = datetime.now(timezone.utc)

    rows = []
    for rec in ing.scans:
        arr = np.ascontiguousarray(rec.array)
        rows.append({
            "lot_id": lot, "scan_id": rec.scan_id, "source_uri": rec.source_uri,
            "height": int(arr.shape[0]), "width": int(arr.shape[1]), "dtype": str(arr.dtype),
            "label": rec.label, "defect_type": rec.defect_type, "split": rec.split,
            "pixels": arr.tobytes(), "defect_mask": encode_mask(rec.mask), "ingested_at": now,
        })
    raw = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
    cal_rows = [{"kind": kind, "source_uri": src, "height": int(a.shape[0]), "width": int(a.shape[1]),
                 "dtype": str(a.dtype), "pixels": np.ascontiguousarray(a).tobytes()}
                for kind, a, src in ((k, *v) for k, v in ing.calibration_frames().items())]
    store = lake.store()
    store.write_dataset(lot, "calibration", pa.Table.from_pylist(cal_rows, schema=CALIBRATION_SCHEMA))
    store.write_dataset(lot, "raw", raw, row_group_size=64,
                        metadata={"content_version": content_version, "landing": landing.display(lot)})

    scans_df = pd.DataFrame([{
        "lot_id": lot, "scan_id": r["scan_id"], "source_uri": r["source_uri"], "width": r["width"],
        "height": r["height"], "dtype": r["dtype"], "n_items": None, "label": r["label"],
        "defect_type": r["defect_type"], "split": r["split"], "ingested_at": now} for r in rows])
    quarantine_df = pd.DataFrame([{"lot_id": lot, "source_uri": q.source_uri, "reason": q.reason,
                                   "detected_at": now} for q in ing.quarantine])
    wh = warehouse.warehouse()
    wh.replace_lot_rows("scans", lot, scans_df)
    wh.replace_lot_rows("quarantine", lot, quarantine_df)

    meta: dict = {
        "n_files": ing.n_files, "n_scans": len(rows), "n_quarantined": len(ing.quarantine),
        "content_version": content_version,
        "calibration": ", ".join(sorted(ing.calibration_frames())) or "none (open beam from each scan)",
        "quarantine": df_markdown(quarantine_df[["source_uri", "reason"]] if len(quarantine_df) else quarantine_df),
        "labels": MetadataValue.json({str(k): int(v) for k, v in
                                      scans_df["label"].fillna("unlabelled").value_counts().items()}
                                     if len(scans_df) else {}),
    }
    ing.check_counts()  # every file is a scan, a calibration/label/mask file, or quarantined
    meta["accounting"] = MetadataValue.json(ing.accounting())
    return MaterializeResult(metadata=meta)


class PreprocessAssetConfig(Config):
    attenuation_scale: float | None = None
    """Attenuation mapped to 1.0 in the normalised image (None = the library default)."""
    denoise_sigma: float | None = None
    """Gaussian denoising sigma in pixels (None = the library default)."""


def _preprocess_config(cfg: PreprocessAssetConfig) -> PreprocessConfig:
    kw = {k: v for k, v in (("attenuation_scale", cfg.attenuation_scale),
                            ("denoise_sigma", cfg.denoise_sigma)) if v is not None}
    return PreprocessConfig(**kw)


@asset(partitions_def=lots_partitions, group_name="lot_pipeline", deps=[raw_scans], kinds={"python", "parquet"},
       description="Dark/flat-corrected, -log, gain/heel-corrected, denoised, normalised attenuation images.")
def preprocessed_scans(context: AssetExecutionContext, config: PreprocessAssetConfig,
                       lake: LakeResource) -> MaterializeResult:
    lot = validate_id(context.partition_key, "lot id")
    store = lake.store()
    pcfg = _preprocess_config(config)
    cal = {r["kind"]: frame_from_row(r) for r in store.read_dataset(lot, "calibration").to_pylist()}
    raw = store.read_dataset(lot, "raw")
    out_rows = []
    first = None
    calib_counts: dict[str, int] = {}
    for r in raw.to_pylist():
        counts = frame_from_row(r)
        pre = preprocess_scan(counts, cal.get("dark"), cal.get("flat"), pcfg)
        calib_counts[pre.calibration] = calib_counts.get(pre.calibration, 0) + 1
        out_rows.append({
            "lot_id": lot, "scan_id": r["scan_id"], "height": r["height"], "width": r["width"],
            "pixels": np.ascontiguousarray(pre.attenuation, dtype=np.float32).tobytes(),
            "label": r["label"], "defect_type": r["defect_type"], "split": r["split"],
            "defect_mask": r["defect_mask"], "calibration": pre.calibration,
            "open_beam": float(pre.open_beam), "preprocess_version": pcfg.version(),
        })
        if first is None:
            first = (counts, pre.attenuation, r["scan_id"])
    store.write_dataset(lot, "preprocessed", pa.Table.from_pylist(out_rows, schema=PREPROCESSED_SCHEMA),
                        row_group_size=64, metadata={"config": pcfg.as_dict()})
    meta: dict = {"n_scans": len(out_rows), "calibration": MetadataValue.json(calib_counts),
                  "preprocess_version": pcfg.version()}
    if first is not None:
        counts, att, sid = first
        items = segment_items(att, SegmentConfig())
        png = scan_before_after_png(counts, att, [it.full_mask(att.shape) for it in items])
        meta.update(picture(lot, "preprocessing", png, f"scan {sid}: raw counts, attenuation, items"))
    return MaterializeResult(metadata=meta)


class SegmentAssetConfig(Config):
    min_area_px: int | None = None
    """Fragments smaller than this many pixels are dropped (None = library default)."""


@asset(partitions_def=lots_partitions, group_name="lot_pipeline", deps=[preprocessed_scans],
       kinds={"python", "parquet", "duckdb"},
       description="Every object in every scan: mask and bounding box (watershed splits touching objects).")
def items(context: AssetExecutionContext, config: SegmentAssetConfig, lake: LakeResource,
          warehouse: WarehouseResource) -> MaterializeResult:
    lot = validate_id(context.partition_key, "lot id")
    store = lake.store()
    scfg = SegmentConfig(**({"min_area_px": config.min_area_px} if config.min_area_px else {}))
    rows = []
    n_items: dict[str, int] = {}
    example = None
    for r in store.read_dataset(lot, "preprocessed").to_pylist():
        att = frame_from_row(r, dtype=np.float32)
        found = segment_items(att, scfg)
        n_items[r["scan_id"]] = len(found)
        if found and (example is None or len(found) > len(example[1])):
            example = (att, found, r["scan_id"])
        for it in found:
            rows.append({"lot_id": lot, "scan_id": r["scan_id"], "item_index": it.index,
                         "r0": it.r0, "c0": it.c0, "r1": it.r1, "c1": it.c1, "area_px": int(it.area_px),
                         "mask": encode_mask(it.mask)})
    store.write_dataset(lot, "items", pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA), row_group_size=512)
    warehouse.warehouse().update_n_items(lot, n_items)
    counts = pd.Series(list(n_items.values()), dtype="int64")
    pictures: dict = {}
    if example is not None:
        att, found, sid = example
        masks = [it.full_mask(att.shape) for it in found]
        pictures = picture(lot, "items", scan_before_after_png(att, att, masks),
                           f"scan {sid}: {len(found)} item(s) and their outlines")
    return MaterializeResult(metadata={**pictures,
        "n_scans": len(n_items), "n_items": len(rows),
        "scans_without_item": int((counts == 0).sum()) if len(counts) else 0,
        "items_per_scan": MetadataValue.json({str(k): int(v) for k, v in counts.value_counts().sort_index().items()}),
    })
