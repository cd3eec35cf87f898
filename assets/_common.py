"""Small helpers shared by the asset modules: pictures in metadata, report files, tables."""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
from dagster import MetadataValue

from peelscan.config import settings
from peelscan.ids import validate_id


def png_markdown(png: bytes, title: str) -> MetadataValue:
    """A PNG shown inline in the Dagster UI (markdown with a data URI)."""
    b64 = base64.b64encode(png).decode("ascii")
    return MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{b64})")


def save_report_png(lot_id: str, name: str, png: bytes) -> str:
    """Write ``$PEELSCAN_HOME/reports/<lot>/<name>.png``; returns the path."""
    folder = Path(settings().reports_dir) / validate_id(lot_id, "lot id")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{validate_id(name, 'report name')}.png"
    tmp = path.with_suffix(".png.tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
    return str(path)


def picture(lot_id: str, name: str, png: bytes, title: str) -> dict[str, MetadataValue]:
    """Metadata entries for one picture: inline markdown plus the saved file's path."""
    path = save_report_png(lot_id, name, png)
    return {name: png_markdown(png, title), f"{name}_path": MetadataValue.path(path)}


def df_markdown(df: pd.DataFrame, max_rows: int = 30) -> MetadataValue:
    if df.empty:
        return MetadataValue.md("_(none)_")
    return MetadataValue.md(df.head(max_rows).to_markdown(index=False))
