"""Peeling stage: ``peeled_tiles`` (per lot).

Each item's mask is eroded by the peel depth (mm through the pixel size), the interior is cut
into tiles (:func:`peelscan.peel.peel_scan`) and written to ``<lot>/tiles``; each item, unpeeled
and resized, goes to ``<lot>/whole`` for the whole-image baseline arm.
"""


from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from assets._common import df_markdown, picture
from assets.ingest import items
from peelscan.ids import validate_id
from peelscan.peel import ROW_GROUP_TILES, ROW_GROUP_WHOLE, TILE_SCHEMA, PeelConfig, peel_scan, tiles_to_table, whole_to_table
from peelscan.peelplots import coverage_histogram_png, overlay_png
from peelscan.records import decode_mask, frame_from_row
from pipelines.partitions import lots_partitions
from resources import LakeResource


class PeelAssetConfig(Config):
    pixel_mm: float | None = None
    peel_depth_mm: float | None = None
    tile_size: int | None = None
    stride: int | None = None
    min_coverage: float | None = None
    whole_size: int | None = None
    row_group_tiles: int = ROW_GROUP_TILES
    """Tiles per Parquet row group: the unit one Dask scoring task streams."""


def peel_config(cfg: PeelAssetConfig) -> PeelConfig:
    return PeelConfig(**{k: v for k, v in cfg.model_dump().items() if v is not None and k != "row_group_tiles"})


def item_masks_by_scan(items_table: pa.Table, shapes: dict[str, tuple[int, int]]) -> dict[str, list[np.ndarray]]:
    """Full-size boolean masks ``(H, W)`` of each scan's items, in item order."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for r in sorted(items_table.to_pylist(), key=lambda r: (r["scan_id"], r["item_index"])):
        h, w = shapes[r["scan_id"]]
        full = np.zeros((h, w), dtype=bool)
        crop = decode_mask(r["mask"], r["r1"] - r["r0"], r["c1"] - r["c0"])
        full[r["r0"]:r["r1"], r["c0"]:r["c1"]] = crop
        out[r["scan_id"]].append(full)
    return out


@asset(partitions_def=lots_partitions, group_name="lot_pipeline", deps=[items], kinds={"python", "parquet"},
       description="Peeled interior tiles of every item (Parquet, one row per tile) and whole-item images.")
def peeled_tiles(context: AssetExecutionContext, config: PeelAssetConfig, lake: LakeResource) -> MaterializeResult:
    lot = validate_id(context.partition_key, "lot id")
    store = lake.store()
    pcfg = peel_config(config)
    pre = store.read_dataset(lot, "preprocessed").to_pylist()
    shapes = {r["scan_id"]: (r["height"], r["width"]) for r in pre}
    masks = item_masks_by_scan(store.read_dataset(lot, "items"), shapes)
    tile_tables: list[pa.Table] = []
    whole_tables: list[pa.Table] = []
    example = None
    for r in pre:
        att = frame_from_row(r, dtype=np.float32)
        defect = decode_mask(r["defect_mask"], r["height"], r["width"])
        item_masks = masks.get(r["scan_id"], [])
        tiles, wholes = peel_scan(att, item_masks, pcfg, defect)
        tile_tables.append(tiles_to_table(lot, r["scan_id"], r["split"], r["label"], r["defect_type"], tiles, pcfg))
        whole_tables.append(whole_to_table(lot, r["scan_id"], r["split"], r["label"], r["defect_type"], wholes, pcfg))
        if example is None and item_masks and len(tiles.tile_row):
            example = (att, item_masks, tiles, r["scan_id"])
    tiles_all = pa.concat_tables(tile_tables) if tile_tables else TILE_SCHEMA.empty_table()
    whole_all = pa.concat_tables(whole_tables) if whole_tables else TILE_SCHEMA.empty_table()
    # parts of ROW_GROUP_TILES rows: one Dask task streams one row group
    rg = max(1, config.row_group_tiles)
    store.write_dataset(lot, "tiles", _chunks(tiles_all, rg), row_group_size=rg,
                        schema=tiles_all.schema, metadata={"config": pcfg.as_dict()})
    store.write_dataset(lot, "whole", _chunks(whole_all, ROW_GROUP_WHOLE), row_group_size=ROW_GROUP_WHOLE, schema=whole_all.schema,
                        metadata={"config": pcfg.as_dict()})

    df = tiles_all.select(["scan_id", "split", "coverage"]).to_pandas()
    per_split = df.groupby("split").agg(tiles=("scan_id", "size"), scans=("scan_id", "nunique")).reset_index()
    per_scan = df.groupby("scan_id").size()
    meta: dict = {
        "n_tiles": tiles_all.num_rows, "n_whole_items": whole_all.num_rows,
        "peel_depth_mm": pcfg.peel_depth_mm, "tile_size": pcfg.tile_size, "stride": pcfg.stride,
        "min_coverage": pcfg.min_coverage,
        "tiles_per_split": df_markdown(per_split),
        "tiles_per_scan": MetadataValue.json({"min": int(per_scan.min()) if len(per_scan) else 0,
                                              "median": float(per_scan.median()) if len(per_scan) else 0,
                                              "max": int(per_scan.max()) if len(per_scan) else 0,
                                              "scans_without_tiles": int(len(pre) - len(per_scan))}),
    }
    if len(df):
        meta.update(picture(lot, "coverage_histogram", coverage_histogram_png(df["coverage"].to_numpy()),
                            "coverage of kept tiles by the peeled mask"))
    if example is not None:
        att, item_masks, tiles, sid = example
        peeled = [pcfg.peeled(m) for m in item_masks]
        meta.update(picture(lot, "peel_overlay", overlay_png(att, item_masks, peeled, tiles, pcfg.tile_size),
                            f"scan {sid}: item outline, peeled region, tile grid"))
    return MaterializeResult(metadata=meta)


def _chunks(table: pa.Table, size: int):
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)
