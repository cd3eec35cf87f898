"""Shared by the benchmarks: a synthetic lot taken through the asset graph in a scratch home.

Seeds here (9000+) are used by no test and no default, so benchmarks measure data the code
was never tuned on."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def materialize_lot(home: Path, lot: str, through: str = "autoencoder", epochs: int = 30,
                    kinds: tuple[str, ...] = ("tiles",), peel: dict | None = None):
    """Materialize the lot in ``home/landing`` up to ``through`` (``peeled_tiles``,
    ``autoencoder`` or ``scan_scores``), training each model kind of ``kinds``; ``peel``: the
    ``peeled_tiles`` config (e.g. ``{"stride": 32}``). Returns (resources, instance)."""
    from dagster import DagsterInstance, materialize

    from assets.ingest import items, preprocessed_scans, raw_scans
    from assets.peel import peeled_tiles
    from assets.score import scan_scores, tile_scores
    from assets.train import autoencoder, autoencoder_no_regression
    from resources import DaskResource, LakeResource, ModelStoreResource, ScanStoreResource, WarehouseResource

    os.environ["PEELSCAN_HOME"] = str(home)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("lots", [lot])
    res = {"scan_store": ScanStoreResource(uri=str(home / "landing")),
           "lake": LakeResource(uri=str(home / "lake")),
           "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
           "model_store": ModelStoreResource(lake_uri=str(home / "lake")),
           "dask": DaskResource(n_workers=2)}
    ok = materialize([raw_scans, preprocessed_scans, items, peeled_tiles], partition_key=lot,
                     resources=res, instance=instance,
                     run_config={"ops": {"peeled_tiles": {"config": dict(peel)}}} if peel else None).success
    assert ok, "ingest/peel failed"
    if through == "peeled_tiles":
        return res, instance
    for kind in kinds:
        ok = materialize([autoencoder, autoencoder_no_regression], partition_key=lot, resources=res,
                         instance=instance,
                         run_config={"ops": {"autoencoder": {"config": {"epochs": epochs, "model_kind": kind}}}}).success
        assert ok, f"training {kind} failed"
    if through == "scan_scores":
        ok = materialize([tile_scores, scan_scores], partition_key=lot, resources=res, instance=instance).success
        assert ok, "scoring failed"
    return res, instance


def prepare_lot(home: Path, scans: int, seed: int, anomaly_rate: float = 0.3, **kw):
    """Synthesize one lot under ``home/landing`` and :func:`materialize_lot` it.
    Returns (lot_id, resources, instance)."""
    from peelscan.synth import write_landing

    lot = write_landing(str(home / "landing"), lots=1, scans=scans, anomaly_rate=anomaly_rate, seed=seed)[0]
    res, instance = materialize_lot(home, lot, **kw)
    return lot, res, instance
