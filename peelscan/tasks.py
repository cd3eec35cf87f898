"""The unit of distributed scoring: one Parquet row group of tiles, scored on a Dask worker.

:func:`score_row_group` reads one row group of a lot's ``tiles`` (or ``whole``) dataset from
the lake (local or S3), loads the lot's model once per worker process (cached by version),
reconstructs the tiles and computes the measures (:func:`peelscan.scoring.score_tiles`). The
result keeps every tile's keys, so the caller can check that each tile was scored exactly once
even when a worker died and Dask re-ran its tasks elsewhere.
"""

from __future__ import annotations

import functools
import os

import pyarrow as pa

from peelscan.lake import Store

KEY_COLUMNS = ["lot_id", "scan_id", "item_index", "tile_row", "tile_col", "split", "label",
               "defect_type", "defect_fraction"]


@functools.lru_cache(maxsize=8)
def _model(lake_uri: str, lot_id: str, kind: str, version: str):
    import torch

    from peelscan.modelstore import ModelStore

    torch.set_num_threads(int(os.environ.get("PEELSCAN_TORCH_THREADS", "1")))
    model, _card = ModelStore(Store(lake_uri)).load(lot_id, kind, version)
    model.eval()
    return model


@functools.lru_cache(maxsize=2)
def _store(lake_uri: str) -> Store:
    return Store(lake_uri)


def score_row_group(lake_uri: str, path: str, row_group: int, lot_id: str, kind: str, version: str,
                    names: tuple[str, ...] | None = None) -> pa.Table:
    """Score the tiles of row group ``row_group`` of part file ``path``.

    Returns a table with :data:`KEY_COLUMNS` + ``model_kind, model_version, recon_mse`` + one
    float64 column per measure (natural values, :mod:`peelscan.metrics`)."""
    from peelscan.peel import table_to_pixels
    from peelscan.scoring import score_tiles

    store = _store(lake_uri)
    table = store.read_row_group(path, row_group)
    model = _model(lake_uri, lot_id, kind, version)
    x = table_to_pixels(table)
    scores = score_tiles(model, x, names=list(names) if names else None)
    out = {c: table[c] for c in KEY_COLUMNS}
    out["model_kind"] = pa.array([kind] * table.num_rows, pa.string())
    out["model_version"] = pa.array([version] * table.num_rows, pa.string())
    for name in sorted(scores):
        out[name] = pa.array(scores[name], pa.float64())
    return pa.table(out)
