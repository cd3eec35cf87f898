"""Drive the Dagster instance from the command line (``peelscan run`` / ``peelscan backfill``).

Runs are recorded in the instance at ``DAGSTER_HOME`` — the same one ``make ui`` shows — so
command-line runs appear in the UI's run history and partition status.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus

from peelscan.config import settings
from peelscan.ids import is_valid_id, validate_id
from peelscan.lake import Store
from pipelines.partitions import LOTS_PARTITIONS_NAME

ROOT = Path(__file__).resolve().parent.parent
INSTANCE_TEMPLATE = ROOT / "dagster.yaml"
TERMINAL = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def ensure_instance_config(dagster_home: str | None = None) -> Path | None:
    """Copy the repository's ``dagster.yaml`` (per-lot run concurrency) into ``DAGSTER_HOME``
    when that folder has none; an operator's own file is never touched. Returns the path
    written, or None."""
    home = dagster_home or os.environ.get("DAGSTER_HOME")
    if not home:
        return None
    target = Path(home) / "dagster.yaml"
    if target.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_TEMPLATE, target)
    return target


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

    if instance is None:
        ensure_instance_config()
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


def daemon_running(instance: DagsterInstance, max_age_s: float = 60.0) -> bool:
    """Whether a ``dagster-daemon`` (e.g. the one ``make ui`` / ``dagster dev`` starts) has
    sent a backfill heartbeat in the last ``max_age_s`` seconds."""
    try:
        beats = instance.get_daemon_heartbeats()
    except Exception:  # noqa: BLE001 - an instance without daemon storage
        return False
    beat = beats.get("BACKFILL")
    return beat is not None and time.time() - beat.timestamp < max_age_s


@contextmanager
def stopped_on_exit(cmd: list[str], cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in its own session and stop it (terminate, then kill after 30 s) when the
    block ends: normally, on an exception, on Ctrl-C, and on SIGTERM or SIGHUP, which while the
    block runs in the main thread become ``SystemExit(128 + signal)`` so that a scheduler or a
    closed terminal ending ``peelscan backfill`` does not leave its Dagster daemon behind."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, leave)
    try:
        yield proc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def backfill_all(timeout_s: float = 6 * 3600, instance: DagsterInstance | None = None, poll_s: float = 2.0) -> bool:
    """One Dagster backfill of ``lot_job`` over every ``lots`` partition — the same kind of
    backfill the UI launches — and wait for its runs. Returns True when all succeeded.

    The backfill is submitted with ``dagster job backfill``; Dagster's daemon turns it into
    runs. If no daemon is running (no recent heartbeat), one is started for the duration and
    stopped afterwards, also when this process is interrupted or terminated
    (:func:`stopped_on_exit`). Runs of one lot never overlap (``dagster.yaml``'s tag concurrency),
    so a sensor or schedule run of the same lot waits its turn.
    """
    ensure_instance_config()
    instance = instance or DagsterInstance.get()
    lots, invalid = discover_lots()
    for name in invalid:
        print(f"skipping landing folder {name[:80]!r}: not a valid lot id", file=sys.stderr)
    if not lots:
        print("no lots found in the landing store", file=sys.stderr)
        return False
    register_lots(instance, lots)
    known = {b.backfill_id for b in instance.get_backfills()}
    cmd = [sys.executable, "-m", "dagster", "job", "backfill", "-w", str(ROOT / "workspace.yaml"),
           "-j", "lot_job", "--all", "lots", "--noprompt"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    new = [b for b in instance.get_backfills() if b.backfill_id not in known]
    if len(new) != 1:
        print(f"expected one new backfill, found {len(new)}", file=sys.stderr)
        return False
    backfill_id = new[0].backfill_id
    print(f"backfill {backfill_id}: {len(lots)} lot(s)", flush=True)
    daemon_cmd = [sys.executable, "-m", "dagster._daemon", "run", "-w", str(ROOT / "workspace.yaml")]
    with (nullcontext(None) if daemon_running(instance) else stopped_on_exit(daemon_cmd)) as daemon:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if daemon is not None and daemon.poll() is not None:
                print(f"the Dagster daemon exited with status {daemon.returncode}", file=sys.stderr)
                return False
            backfill = instance.get_backfill(backfill_id)
            runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
            submitted = backfill.status != BulkActionStatus.REQUESTED
            if submitted and len(runs) >= len(lots) and all(r.status in TERMINAL for r in runs):
                for r in sorted(runs, key=lambda r: r.tags.get("dagster/partition", "")):
                    print(f"lot {r.tags.get('dagster/partition')}: run {r.run_id[:8]} {r.status.value}")
                return all(r.status == DagsterRunStatus.SUCCESS for r in runs)
            if submitted and backfill.status in (BulkActionStatus.FAILED, BulkActionStatus.CANCELED):
                print(f"backfill {backfill_id} {backfill.status.value}", file=sys.stderr)
                return False
            time.sleep(poll_s)
        print(f"backfill {backfill_id} did not finish in {timeout_s:.0f} s", file=sys.stderr)
        return False
