"""``nightly_retraining``: at 02:00 (``PEELSCAN_TIMEZONE``, default UTC), one run per lot whose
landing data changed since the data its current model was trained on.

Dynamic partitions cannot use ``build_schedule_from_partitioned_job``, so the schedule walks
the ``lots`` partitions itself. ``run_key = "<lot>:<scheduled date>"``: one run per lot and
night, even if the tick is retried.
"""


import os

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from pipelines.jobs import lot_job
from pipelines.partitions import LOTS_PARTITIONS_NAME
from resources import ModelStoreResource, ScanStoreResource

NIGHTLY_CRON = "0 2 * * *"


def lots_needing_retraining(lots: list[str], scan_store, model_store, kind: str = "tiles") -> list[tuple[str, str]]:
    """(lot, reason) for each lot whose landing content version differs from the
    ``training_data_version`` on its current model card (or that has no model yet)."""
    store = scan_store.store()
    models = model_store.model_store()
    out = []
    for lot in lots:
        version = store.content_version(lot)
        card = models.current_card(lot, kind)
        if card is None:
            out.append((lot, "no model yet"))
        elif card.get("training_data_version") != version:
            out.append((lot, f"data changed ({card.get('training_data_version')} -> {version})"))
    return out


@schedule(job=lot_job, cron_schedule=NIGHTLY_CRON,
          execution_timezone=os.environ.get("PEELSCAN_TIMEZONE", "UTC"),
          default_status=DefaultScheduleStatus.RUNNING,
          description="Nightly retraining of every lot whose data changed since its model.")
def nightly_retraining(context: ScheduleEvaluationContext, scan_store: ScanStoreResource,
                       model_store: ModelStoreResource):
    lots = sorted(context.instance.get_dynamic_partitions(LOTS_PARTITIONS_NAME))
    date = context.scheduled_execution_time.strftime("%Y-%m-%d")
    todo = lots_needing_retraining(lots, scan_store, model_store)
    if not todo:
        return SkipReason(f"{len(lots)} lot(s), none changed since its model")
    return [RunRequest(partition_key=lot, run_key=f"{lot}:{date}",
                       tags={"peelscan/lot": lot, "peelscan/reason": reason[:200]})
            for lot, reason in todo]
