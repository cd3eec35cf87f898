"""Dagster resources of peelscan: thin ``ConfigurableResource`` wrappers over the library.

- :class:`ScanStoreResource`: the landing store (local folder or ``s3://``), fsspec.
- :class:`LakeResource`: the lake (Parquet datasets, models), fsspec.
- :class:`WarehouseResource`: the DuckDB warehouse (locked writes + published read copy).
- :class:`DaskResource`: a LocalCluster by default, or an existing scheduler.
- :class:`ModelStoreResource`: safetensors models with JSON cards, in the lake.

Defaults come from the environment variables of shared/DESIGN.md (:func:`peelscan.config.settings`).
Credentials are never fields of these resources: s3fs reads the standard AWS variables.
"""


import contextlib
import os
from collections.abc import Iterator

from dagster import ConfigurableResource

from peelscan.config import settings
from peelscan.lake import Store


class ScanStoreResource(ConfigurableResource):
    """Where scans land: ``<uri>/<lot_id>/<scan_id>.<ext>`` (local path or ``s3://bucket/prefix``)."""

    uri: str

    def store(self) -> Store:
        return Store(self.uri)


class LakeResource(ConfigurableResource):
    """The lake: atomic Parquet datasets per lot and the model store (local path or ``s3://``)."""

    uri: str

    def store(self) -> Store:
        return Store(self.uri)


class WarehouseResource(ConfigurableResource):
    """The DuckDB warehouse file. Writes take an inter-process lock and publish a read copy."""

    path: str

    def warehouse(self):  # -> peelscan.warehouse.Warehouse
        from peelscan.warehouse import Warehouse

        return Warehouse(self.path)


class DaskResource(ConfigurableResource):
    """A Dask client: an existing scheduler at ``address``, or a LocalCluster of worker
    processes (one thread each, so one torch thread each) sized to the machine."""

    address: str = ""
    n_workers: int = 0  # 0 = number of CPU cores

    @contextlib.contextmanager
    def client(self) -> Iterator:
        from distributed import Client, LocalCluster

        if self.address:
            with Client(self.address) as client:
                yield client
            return
        n = self.n_workers or (os.cpu_count() or 1)
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None,
                          env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}) as cluster, \
                Client(cluster) as client:
            yield client


class ModelStoreResource(ConfigurableResource):
    """Models in the lake: ``models/<lot>/<kind>/<version>/`` (safetensors + JSON card)."""

    lake_uri: str

    def model_store(self):  # -> peelscan.modelstore.ModelStore
        from peelscan.modelstore import ModelStore

        return ModelStore(Store(self.lake_uri))


def default_resources() -> dict[str, ConfigurableResource]:
    """The resources built from the environment (shared/DESIGN.md)."""
    s = settings()
    return {
        "scan_store": ScanStoreResource(uri=s.landing_uri),
        "lake": LakeResource(uri=s.lake_uri),
        "warehouse": WarehouseResource(path=s.warehouse),
        "dask": DaskResource(address=s.dask_address),
        "model_store": ModelStoreResource(lake_uri=s.lake_uri),
    }
