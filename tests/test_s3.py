"""A lot ingested from ``s3://`` and its lake written to ``s3://``, through a real S3-protocol
server on 127.0.0.1 (moto's threaded server) reached by s3fs over HTTP — no patched client."""

from __future__ import annotations

import socket

import pytest
from dagster import instance_for_test, materialize


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "peelscan-test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "peelscan-test-secret-DO-NOT-LOG")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="plant")
    yield endpoint
    server.stop()


def test_lot_from_s3_to_s3_lake(s3_server, tmp_path, monkeypatch):
    import s3fs

    from assets.ingest import items, preprocessed_scans, raw_scans
    from assets.peel import peeled_tiles
    from peelscan.lake import Store
    from peelscan.synth import write_landing
    from resources import LakeResource, ScanStoreResource, WarehouseResource

    local = tmp_path / "landing"
    lots = write_landing(str(local), lots=1, scans=6, anomaly_rate=0.34, seed=11)
    fs = s3fs.S3FileSystem()
    fs.put(str(local / lots[0]), f"plant/landing/{lots[0]}", recursive=True)
    monkeypatch.setenv("PEELSCAN_HOME", str(tmp_path / "var"))
    res = {"scan_store": ScanStoreResource(uri="s3://plant/landing"),
           "lake": LakeResource(uri="s3://plant/lake"),
           "warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb"))}
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("lots", lots)
        result = materialize([raw_scans, preprocessed_scans, items, peeled_tiles], partition_key=lots[0],
                             resources=res, instance=instance)
    assert result.success
    lake = Store("s3://plant/lake")
    raw = lake.read_dataset(lots[0], "raw")
    assert raw.num_rows == 6
    assert raw["source_uri"][0].as_py().startswith("s3://plant/landing/")
    assert lake.read_dataset(lots[0], "tiles").num_rows > 0
    assert fs.exists(f"plant/lake/{lots[0]}/tiles/_CURRENT")
    # credentials never reach metadata
    for event in result.all_events:
        assert "peelscan-test-secret-DO-NOT-LOG" not in str(event)
