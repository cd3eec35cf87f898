"""The one ``Definitions`` of peelscan: assets landing -> reports, checks, the lot job, the
landing sensor, the nightly retraining schedule, and resources from the environment."""

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from assets import checks, ingest, peel, score, train
from pipelines.jobs import lot_job
from pipelines.schedules import nightly_retraining
from pipelines.sensors import landing_sensor
from resources import default_resources

_modules = [ingest, peel, train, score, checks]

defs = Definitions(
    assets=load_assets_from_modules(_modules),
    asset_checks=load_asset_checks_from_modules(_modules),
    jobs=[lot_job],
    sensors=[landing_sensor],
    schedules=[nightly_retraining],
    resources=default_resources(),
)
