"""``landing_sensor``: finds lots in the landing store and requests a run per new or changed lot.

The cursor is a JSON map ``{lot_id: content_version}``; a lot whose folder content version
(names, sizes and mtimes/ETags of its files: :meth:`peelscan.lake.Store.content_version`)
differs from the cursor's gets a run request with ``run_key = "<lot>:<version>"``, so the same
content never runs twice. Folder names that are not valid lot ids are reported and skipped:
never used as a path or a partition key.

A lot is not requested while a run of it is queued or in progress (a backfill's, the
schedule's or an earlier tick's: that run will process it), nor when the lake already holds
this exact landing content (``raw`` dataset's ``content_version``: a backfill or
``peelscan run`` processed it) — then only the cursor moves.
"""


import json

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunsFilter,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from peelscan.ids import is_valid_id
from pipelines.jobs import lot_job
from pipelines.partitions import LOTS_PARTITIONS_NAME, lots_partitions
from resources import LakeResource, ScanStoreResource

IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
             DagsterRunStatus.STARTED]


def _processed_version(lake: LakeResource | None, lot: str) -> str | None:
    """The landing content version the lake's ``raw`` dataset of ``lot`` was ingested from."""
    if lake is None:
        return None
    try:
        return lake.store().dataset_manifest(lot, "raw")["metadata"].get("content_version")
    except (FileNotFoundError, KeyError):
        return None


@sensor(job=lot_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Adds new lot folders of the landing store as `lots` partitions and "
                    "requests one run per new or changed lot.")
def landing_sensor(context: SensorEvaluationContext, scan_store: ScanStoreResource, lake: LakeResource):
    store = scan_store.store()
    cursor: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(LOTS_PARTITIONS_NAME))
    in_flight = {r.tags.get("dagster/partition")
                 for r in context.instance.get_runs(RunsFilter(job_name=lot_job.name, statuses=IN_FLIGHT))}
    new_keys: list[str] = []
    requests: list[RunRequest] = []
    invalid: list[str] = []
    for name in store.list_dirs():
        if not is_valid_id(name):
            invalid.append(name)
            continue
        version = store.content_version(name)
        if cursor.get(name) == version and name in known:
            continue
        if name not in known:
            new_keys.append(name)
        if name in in_flight:
            continue  # its queued or running run will process it; look again next tick
        if _processed_version(lake, name) == version:
            cursor[name] = version  # a backfill or `peelscan run` already processed this content
            continue
        requests.append(RunRequest(partition_key=name, run_key=f"{name}:{version}",
                                   tags={"peelscan/lot": name, "peelscan/content_version": version}))
        cursor[name] = version
    for name in invalid:
        context.log.warning("landing folder %r is not a valid lot id; skipped", name[:80])
    if not requests and not new_keys:
        if cursor != (json.loads(context.cursor) if context.cursor else {}):
            return SensorResult(cursor=json.dumps(cursor, sort_keys=True))
        msg = "no new or changed lots"
        if invalid:
            msg += f"; {len(invalid)} folder(s) with invalid names skipped"
        return SkipReason(msg)
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[lots_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )
