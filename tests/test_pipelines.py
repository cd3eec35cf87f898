"""The code location: definitions load, the landing sensor and the nightly schedule decide right."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from dagster import (
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

ROOT = Path(__file__).resolve().parent.parent


def test_definitions_validate_loadable():
    from dagster import Definitions

    from pipelines.definitions import defs

    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_scans", "preprocessed_scans", "items", "peeled_tiles", "autoencoder",
            "tile_scores", "scan_scores"} <= keys
    assert defs.resolve_job_def("lot_job").partitions_def.name == "lots"


def test_dagster_definitions_validate_cli(peelscan_env):
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def _write_lot(root: Path, lot: str, n: int = 2) -> None:
    d = root / lot
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(d / f"scan-{i}.npy", np.full((32, 32), 1000 + i, dtype=np.uint16))


def test_landing_sensor_adds_partitions_requests_runs_and_skips(tmp_path):
    from pipelines.sensors import landing_sensor
    from resources import LakeResource, ScanStoreResource

    landing = tmp_path / "landing"
    _write_lot(landing, "lot-a")
    _write_lot(landing, "lot-b")
    (landing / "bad lot, name").mkdir()
    (landing / "..hidden").mkdir()
    instance = DagsterInstance.ephemeral()
    res = {"scan_store": ScanStoreResource(uri=str(landing)), "lake": LakeResource(uri=str(tmp_path / "lake"))}

    ctx = build_sensor_context(instance=instance, resources=res)
    result = landing_sensor(ctx)
    assert isinstance(result, SensorResult)
    assert sorted(r.partition_key for r in result.run_requests) == ["lot-a", "lot-b"]
    assert len({r.run_key for r in result.run_requests}) == 2
    added = [k for req in result.dynamic_partitions_requests for k in req.partition_keys]
    assert sorted(added) == ["lot-a", "lot-b"]  # the invalid folder names are never keys
    instance.add_dynamic_partitions("lots", added)

    # unchanged: skip
    ctx2 = build_sensor_context(instance=instance, resources=res, cursor=result.cursor)
    again = landing_sensor(ctx2)
    assert isinstance(again, SkipReason)

    # one lot changes, one is new: two requests, one new partition
    _write_lot(landing, "lot-b", n=3)
    _write_lot(landing, "lot-c")
    ctx3 = build_sensor_context(instance=instance, resources=res, cursor=result.cursor)
    third = landing_sensor(ctx3)
    assert sorted(r.partition_key for r in third.run_requests) == ["lot-b", "lot-c"]
    assert [k for req in third.dynamic_partitions_requests for k in req.partition_keys] == ["lot-c"]
    old_key = next(r.run_key for r in result.run_requests if r.partition_key == "lot-b")
    new_key = next(r.run_key for r in third.run_requests if r.partition_key == "lot-b")
    assert old_key != new_key
    assert json.loads(third.cursor).keys() == {"lot-a", "lot-b", "lot-c"}
    instance.add_dynamic_partitions("lots", ["lot-c"])

    # lot-a changes but a run of it is in progress (a backfill's): not requested, cursor kept, so a
    # later tick still sees the change; lot-c changes but the lake already holds exactly this
    # content (processed by a backfill or `peelscan run`): no run, only the cursor moves
    import pyarrow as pa
    from dagster import DagsterRun, DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    from peelscan.lake import Store

    _write_lot(landing, "lot-a", n=4)
    _write_lot(landing, "lot-c", n=5)
    queued = DagsterRun(job_name="lot_job", run_id=make_new_run_id(), status=DagsterRunStatus.STARTED,
                        tags={"dagster/partition": "lot-a"})
    instance.add_run(queued)
    lot_c_version = Store(str(landing)).content_version("lot-c")
    Store(str(tmp_path / "lake")).write_dataset("lot-c", "raw", pa.table({"x": [1]}),
                                                metadata={"content_version": lot_c_version})
    fourth = landing_sensor(build_sensor_context(instance=instance, resources=res, cursor=third.cursor))
    assert isinstance(fourth, SensorResult) and not fourth.run_requests
    cur = json.loads(fourth.cursor)
    assert cur["lot-c"] == lot_c_version and cur["lot-a"] == json.loads(third.cursor)["lot-a"]
    # once the queued run is over, the change of lot-a is requested
    instance.delete_run(queued.run_id)
    fifth = landing_sensor(build_sensor_context(instance=instance, resources=res, cursor=fourth.cursor))
    assert [r.partition_key for r in fifth.run_requests] == ["lot-a"]


def test_nightly_schedule_requests_changed_lots_only(tmp_path):
    landing = tmp_path / "landing"
    lake = tmp_path / "lake"
    for lot in ("lot-a", "lot-b", "lot-c"):
        _write_lot(landing, lot)
    with instance_for_test() as instance:
        _check_schedule(instance, landing, lake)


def _check_schedule(instance, landing, lake):
    from peelscan.lake import Store
    from pipelines.schedules import nightly_retraining
    from resources import ModelStoreResource, ScanStoreResource

    instance.add_dynamic_partitions("lots", ["lot-a", "lot-b", "lot-c"])
    scan_store = ScanStoreResource(uri=str(landing))
    model_store = ModelStoreResource(lake_uri=str(lake))
    ms = model_store.model_store()
    # lot-a: a current model trained on today's data; lot-b: trained on older data; lot-c: no model
    import torch

    from peelscan.model import build_autoencoder

    store = Store(str(landing))
    for lot, data_version in (("lot-a", store.content_version("lot-a")), ("lot-b", "stale")):
        torch.manual_seed(0)
        v = ms.save(lot, "tiles", build_autoencoder("tiles", 32), {"kind": "tiles", "tile_size": 32,
                                                                   "training_data_version": data_version})
        ms.promote(lot, "tiles", v)
    when = datetime(2026, 11, 28, 2, 0, tzinfo=timezone.utc)
    ctx = build_schedule_context(instance=instance, scheduled_execution_time=when,
                                 resources={"scan_store": scan_store, "model_store": model_store})
    reqs = nightly_retraining(ctx)
    assert sorted(r.partition_key for r in reqs) == ["lot-b", "lot-c"]
    assert {r.run_key for r in reqs} == {"lot-b:2026-11-28", "lot-c:2026-11-28"}


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_backfill_daemon_is_stopped_when_the_backfill_is_terminated(signame):
    """`peelscan backfill` starts a Dagster daemon when none runs. A scheduler's SIGTERM (or a
    closed terminal's SIGHUP) ending the backfill must stop that daemon too, not orphan it:
    `stopped_on_exit`, the block the backfill waits in, is run in a child Python with a
    stand-in daemon, the child gets the signal, and the stand-in must be gone after it exits."""
    import os
    import signal
    import time

    script = (
        "import sys, time\n"
        "from pipelines.runner import stopped_on_exit\n"
        "with stopped_on_exit([sys.executable, '-c', 'import time; time.sleep(600)']) as daemon:\n"
        "    print(daemon.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    daemon_pid = None

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    try:
        daemon_pid = int(proc.stdout.readline())
        assert alive(daemon_pid)  # the stand-in daemon runs
        sig = getattr(signal, signame)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig  # left through SystemExit, so the block's cleanup ran
        deadline = time.monotonic() + 10
        while alive(daemon_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(daemon_pid), f"the daemon outlived the backfill ended by {signame}"
    finally:
        if proc.poll() is None:
            proc.kill()
        if daemon_pid is not None and alive(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)
