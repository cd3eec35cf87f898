"""Shared fixtures: an isolated PEELSCAN_HOME per test and a small synthetic landing zone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def peelscan_env(tmp_path, monkeypatch):
    """PEELSCAN_HOME, landing, lake, warehouse and DAGSTER_HOME under ``tmp_path``."""
    home = tmp_path / "var"
    (home / "dagster").mkdir(parents=True)
    monkeypatch.setenv("PEELSCAN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    for var in ("PEELSCAN_LANDING_URI", "PEELSCAN_LAKE_URI", "PEELSCAN_WAREHOUSE", "PEELSCAN_DASK_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return home
