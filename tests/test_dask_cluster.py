"""A real multi-process Dask cluster — ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1 — scores a lot with the same results as the LocalCluster, and a worker killed in the
middle of ``tile_scores`` does not lose or duplicate a tile."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained_lot(tmp_path_factory):
    """A small synthetic lot taken through training, in its own PEELSCAN_HOME."""
    from assets.ingest import items, preprocessed_scans, raw_scans
    from assets.peel import peeled_tiles
    from assets.train import autoencoder, autoencoder_no_regression
    from peelscan.synth import write_landing
    from resources import LakeResource, ModelStoreResource, ScanStoreResource, WarehouseResource

    home = tmp_path_factory.mktemp("dask")
    old = os.environ.get("PEELSCAN_HOME")
    os.environ["PEELSCAN_HOME"] = str(home)
    lots = write_landing(str(home / "landing"), lots=1, scans=16, anomaly_rate=0.25, seed=21)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("lots", lots)
    res = {"scan_store": ScanStoreResource(uri=str(home / "landing")), "lake": LakeResource(uri=str(home / "lake")),
           "warehouse": WarehouseResource(path=str(home / "wh.duckdb")),
           "model_store": ModelStoreResource(lake_uri=str(home / "lake"))}
    result = materialize([raw_scans, preprocessed_scans, items, peeled_tiles, autoencoder, autoencoder_no_regression],
                         partition_key=lots[0], resources=res, instance=instance,
                         run_config={"ops": {"autoencoder": {"config": {"epochs": 3}},
                                                 # many small row groups: many tasks to spread and to lose
                                                 "peeled_tiles": {"config": {"row_group_tiles": 32}}}})
    assert result.success
    yield home, lots[0], res, instance
    if old is None:
        os.environ.pop("PEELSCAN_HOME", None)
    else:
        os.environ["PEELSCAN_HOME"] = old


@pytest.fixture(scope="module")
def dask_cluster():
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    sched = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", ":0", "--no-show"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"tcp://127.0.0.1:{port}"
    workers = [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                 "--dashboard-address", ":0", "--no-nanny"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    from distributed import Client

    with Client(address, timeout=60) as c:
        c.wait_for_workers(2, timeout=120)
    yield address, workers
    for p in workers + [sched]:
        p.terminate()
    for p in workers + [sched]:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def _score(trained_lot, dask_resource) -> pd.DataFrame:
    from assets.score import tile_scores
    from peelscan.lake import Store

    home, lot, res, instance = trained_lot
    result = materialize([tile_scores], partition_key=lot, resources={**res, "dask": dask_resource},
                         instance=instance)
    assert result.success
    df = Store(str(home / "lake")).read_dataset(lot, "tile_scores").to_pandas()
    return df.sort_values(["model_kind", "scan_id", "item_index", "tile_row", "tile_col"]).reset_index(drop=True)


@pytest.mark.slow
def test_external_cluster_matches_local_cluster(trained_lot, dask_cluster):
    from peelscan.metrics import MEASURES
    from resources import DaskResource

    local = _score(trained_lot, DaskResource(n_workers=2))
    remote = _score(trained_lot, DaskResource(address=dask_cluster[0]))
    assert len(local) == len(remote) > 0
    for name in MEASURES:
        np.testing.assert_allclose(local[name].to_numpy(), remote[name].to_numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_worker_killed_mid_scoring_loses_and_duplicates_nothing(trained_lot, dask_cluster):
    from distributed import Client

    from peelscan.lake import Store
    from resources import DaskResource

    address, _workers = dask_cluster
    home, lot, _, _ = trained_lot
    expected = Store(str(home / "lake")).dataset_manifest(lot, "tiles")["rows"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    victim = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                               "--dashboard-address", ":0", "--no-nanny", "--name", "victim"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed: list[str] = []
    with Client(address, timeout=60) as c:
        c.wait_for_workers(3, timeout=120)
        victim_addr = next(a for a, w in c.scheduler_info()["workers"].items() if w.get("name") == "victim")

        def killer() -> None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if c.processing().get(victim_addr):
                    os.kill(victim.pid, signal.SIGKILL)
                    killed.append(victim_addr)
                    return
                time.sleep(0.01)

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        df = _score(trained_lot, DaskResource(address=address))
        t.join(timeout=5)
    victim.wait(timeout=30)
    assert killed, "the victim worker never received a task"
    assert len(df) == expected
    keys = df[["model_kind", "scan_id", "item_index", "tile_row", "tile_col"]]
    assert not keys.duplicated().any()
