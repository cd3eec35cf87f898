"""The blocking check ``autoencoder_no_regression``: a new model that reconstructs the held-out
good tiles worse than the model it would replace is never put into service, and the run stops
before anything downstream uses it."""

from __future__ import annotations

import os

import pytest
from dagster import instance_for_test, materialize

pytestmark = pytest.mark.slow


def test_blocking_check_refuses_a_worse_model_and_stops_downstream(tmp_path, monkeypatch):
    from assets.ingest import items, preprocessed_scans, raw_scans
    from assets.peel import peeled_tiles
    from assets.score import tile_scores
    from assets.train import autoencoder, autoencoder_no_regression
    from peelscan.synth import write_landing
    from resources import DaskResource, LakeResource, ModelStoreResource, ScanStoreResource, WarehouseResource

    monkeypatch.setenv("PEELSCAN_HOME", str(tmp_path))
    lot = write_landing(str(tmp_path / "landing"), lots=1, scans=24, anomaly_rate=0.25, seed=4242)[0]
    res = {"scan_store": ScanStoreResource(uri=str(tmp_path / "landing")),
           "lake": LakeResource(uri=str(tmp_path / "lake")),
           "warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
           "model_store": ModelStoreResource(lake_uri=str(tmp_path / "lake")),
           "dask": DaskResource(n_workers=1)}
    models = res["model_store"].model_store()

    def train(cfg: dict, with_downstream: bool = False):
        assets = [autoencoder, autoencoder_no_regression] + ([tile_scores] if with_downstream else [])
        return materialize(assets, partition_key=lot, resources=res, instance=instance, raise_on_error=False,
                           run_config={"ops": {"autoencoder": {"config": {"threads": 1, **cfg}}}})

    with instance_for_test() as instance:
        instance.add_dynamic_partitions("lots", [lot])
        assert materialize([raw_scans, preprocessed_scans, items, peeled_tiles], partition_key=lot,
                           resources=res, instance=instance).success
        # a properly trained first model goes into service (nothing to regress against)
        assert train({"epochs": 12, "min_steps": 300}).success
        good = models.current(lot, "tiles")
        assert good is not None and models.candidate(lot, "tiles") == good

        # a model trained from scratch for one epoch reconstructs far worse: refused
        bad_run = train({"epochs": 1, "min_steps": 0, "warm_start": "none", "seed": 5}, with_downstream=True)
        assert not bad_run.success
        checks = [e for e in bad_run.get_asset_check_evaluations()
                  if e.check_name == "autoencoder_no_regression"]
        assert len(checks) == 1 and not checks[0].passed
        verdict = checks[0].metadata["verdicts"].value["tiles"]
        assert verdict["promoted"] is False and verdict["candidate_mse"] > verdict["current_mse"] * 1.1
        bad = models.candidate(lot, "tiles")
        assert bad != good, "the bad model was saved as the candidate"
        assert models.current(lot, "tiles") == good, "the bad model must not be put into service"
        # and the blocking check kept tile_scores from running on it
        scored = [e for e in bad_run.get_step_success_events() if e.step_key == "tile_scores"]
        assert scored == []
        assert not os.path.exists(tmp_path / "lake" / lot / "tile_scores")
