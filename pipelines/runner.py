"""Drive the Dagster instance from the command line (``peelscan run`` / ``peelscan backfill``).

Runs are recorded in the instance at ``DAGSTER_HOME`` — the same one ``make ui`` shows — so
command-line runs appear in the UI's run history and partition status.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from peelscan.config import settings
from peelscan.ids import is_valid_id, validate_id
from peelscan.lake import Store
from pipelines.partitions import LOTS_PARTITIONS_NAME

ROOT = Path(__file__).resolve().parent.parent


def discover_lots() -> tuple[list[str], list[str]]:
    """(valid lot ids, invalid folder names) in the landing store."""
    names = Store(settings().landing_uri).list_dirs()
    return [n for n in names if is_valid_id(n)], [n for n in names if not is_valid_id(n)]


def register_lots(instance: DagsterInstance, lots: list[str]) -> None:
    """Add the lots that are not yet partitions of ``lots``."""
    known = set(instance.get_dynamic_partitions(LOTS_PARTITIONS_NAME))
    new = [validate_id(lot, "lot id") for lot in lots if lot not in known]
    if new:
        instance.add_dynamic_partitions(LOTS_PARTITIONS_NAME, new)


def run_lots(lots: list[str] | None = None, raise_on_error: bool = True,
             instance: DagsterInstance | None = None) -> bool:
    """Materialize the whole asset graph (``lot_job``) for each lot, one run per lot, in this
    process. Returns True when every run succeeded."""
    from pipelines.definitions import defs

    instance = instance or DagsterInstance.get()
    if lots is None:
        lots, invalid = discover_lots()
        for name in invalid:
            print(f"skipping landing folder {name[:80]!r}: not a valid lot id", file=sys.stderr)
    lots = [validate_id(lot, "lot id") for lot in lots]
    if not lots:
        print("no lots found in the landing store", file=sys.stderr)
        return False
    register_lots(instance, lots)
    job = defs.resolve_job_def("lot_job")
    ok = True
    for lot in lots:
        t0 = time.perf_counter()
        result = job.execute_in_process(instance=instance, partition_key=lot,
                                        raise_on_error=raise_on_error,
                                        tags={"peelscan/trigger": "cli"})
        status = "ok" if result.success else "FAILED"
        print(f"lot {lot}: run {result.run_id[:8]} {status} in {time.perf_counter() - t0:.1f}s")
        ok &= result.success
    return ok


def backfill_all(timeout_s: float = 3600, instance: DagsterInstance | None = None) -> bool:
    """One Dagster backfill of ``lot_job`` over every ``lots`` partition (``dagster job
    backfill --all``), then wait for its runs. Returns True when all succeeded."""
    instance = instance or DagsterInstance.get()
    lots, _ = discover_lots()
    register_lots(instance, lots)
    before = {r.run_id for r in instance.get_runs()}
    cmd = [sys.executable, "-m", "dagster", "job", "backfill", "-w", str(ROOT / "workspace.yaml"),
           "-j", "lot_job", "--all", "lots", "--noprompt"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [r for r in instance.get_runs(RunsFilter(tags={})) if r.run_id not in before]
        done = [r for r in runs if r.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE,
                                               DagsterRunStatus.CANCELED)]
        if runs and len(done) == len(runs) and len(runs) >= len(lots):
            failed = [r for r in runs if r.status != DagsterRunStatus.SUCCESS]
            for r in runs:
                print(f"lot {r.tags.get('dagster/partition')}: run {r.run_id[:8]} {r.status.value}")
            return not failed
        time.sleep(2)
    print("backfill did not finish in time", file=sys.stderr)
    return False
