"""Jobs: the whole per-lot asset graph, landing to reports."""

from dagster import AssetSelection, define_asset_job

from pipelines.partitions import lots_partitions

lot_job = define_asset_job(
    name="lot_job",
    selection=AssetSelection.all(),
    partitions_def=lots_partitions,
    description="Ingest, preprocess, segment, peel, train, score and report one lot.",
)
