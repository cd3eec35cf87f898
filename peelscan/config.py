"""Run-time settings from the environment (shared/DESIGN.md, "Configuration").

| variable | meaning | default |
|---|---|---|
| PEELSCAN_HOME | where everything local lives | ./var |
| PEELSCAN_LANDING_URI | where scans land (path or s3://bucket/prefix) | $PEELSCAN_HOME/landing |
| PEELSCAN_LAKE_URI | Parquet tiles, scores, models (path or s3://) | $PEELSCAN_HOME/lake |
| PEELSCAN_WAREHOUSE | DuckDB file | $PEELSCAN_HOME/warehouse.duckdb |
| PEELSCAN_DASK_ADDRESS | an existing Dask scheduler; empty = LocalCluster | empty |
| DAGSTER_HOME | Dagster instance | $PEELSCAN_HOME/dagster |

S3 credentials and the endpoint come from the standard AWS variables and are never read or
logged by peelscan itself: s3fs/botocore pick them up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Resolved locations. Local paths are absolute; URIs are returned as given."""

    home: str
    landing_uri: str
    lake_uri: str
    warehouse: str
    dask_address: str
    dagster_home: str

    @property
    def reports_dir(self) -> str:
        """Where per-lot PNG reports are written: ``$PEELSCAN_HOME/reports``."""
        return str(Path(self.home) / "reports")


def _abs(path: str) -> str:
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def settings(env: dict[str, str] | None = None) -> Settings:
    """Read :class:`Settings` from ``env`` (default ``os.environ``)."""
    e = os.environ if env is None else env
    home = _abs(e.get("PEELSCAN_HOME") or "./var")
    return Settings(
        home=home,
        landing_uri=_abs(e.get("PEELSCAN_LANDING_URI") or str(Path(home) / "landing")),
        lake_uri=_abs(e.get("PEELSCAN_LAKE_URI") or str(Path(home) / "lake")),
        warehouse=_abs(e.get("PEELSCAN_WAREHOUSE") or str(Path(home) / "warehouse.duckdb")),
        dask_address=e.get("PEELSCAN_DASK_ADDRESS") or "",
        dagster_home=_abs(e.get("DAGSTER_HOME") or str(Path(home) / "dagster")),
    )
