"""Arrow schemas and codecs of the lake datasets ``raw``, ``calibration``, ``preprocessed``
and ``items`` (docs/architecture.md, "Lake layout").

Images travel as C-order bytes in a ``binary`` column with ``height``, ``width`` and ``dtype``
beside them; masks as ``uint8`` 0/1 bytes. The tile datasets' schema lives in
:mod:`peelscan.peel` (``TILE_SCHEMA``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

RAW_SCHEMA = pa.schema([
    ("lot_id", pa.string()), ("scan_id", pa.string()), ("source_uri", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("dtype", pa.string()),
    ("label", pa.string()), ("defect_type", pa.string()), ("split", pa.string()),
    ("pixels", pa.binary()), ("defect_mask", pa.binary()),
    ("ingested_at", pa.timestamp("us", tz="UTC")),
])

CALIBRATION_SCHEMA = pa.schema([
    ("kind", pa.string()), ("source_uri", pa.string()), ("height", pa.int32()),
    ("width", pa.int32()), ("dtype", pa.string()), ("pixels", pa.binary()),
])

PREPROCESSED_SCHEMA = pa.schema([
    ("lot_id", pa.string()), ("scan_id", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("pixels", pa.binary()), ("label", pa.string()), ("defect_type", pa.string()),
    ("split", pa.string()), ("defect_mask", pa.binary()), ("calibration", pa.string()),
    ("open_beam", pa.float64()), ("preprocess_version", pa.string()),
])

ITEMS_SCHEMA = pa.schema([
    ("lot_id", pa.string()), ("scan_id", pa.string()), ("item_index", pa.int32()),
    ("r0", pa.int32()), ("c0", pa.int32()), ("r1", pa.int32()), ("c1", pa.int32()),
    ("area_px", pa.int32()), ("mask", pa.binary()),
])


def encode_mask(mask: np.ndarray | None) -> bytes | None:
    """A boolean mask ``(H, W)`` as uint8 0/1 C-order bytes (None stays None)."""
    if mask is None:
        return None
    return np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8).tobytes()


def decode_mask(data: bytes | None, height: int, width: int) -> np.ndarray | None:
    """Inverse of :func:`encode_mask`: ``(height, width)`` bool, or None."""
    if data is None:
        return None
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size != height * width:
        raise ValueError(f"mask has {arr.size} bytes, expected {height}x{width}")
    return arr.reshape(height, width).astype(bool)


def frame_from_row(row: dict[str, Any], dtype: np.dtype | type | None = None) -> np.ndarray:
    """The ``(height, width)`` image of a lake row (``pixels`` bytes in ``row['dtype']`` or
    ``dtype``). The array is a read-only view of the bytes."""
    dt = np.dtype(dtype if dtype is not None else row["dtype"])
    arr = np.frombuffer(row["pixels"], dtype=dt)
    h, w = int(row["height"]), int(row["width"])
    if arr.size != h * w:
        raise ValueError(f"pixels of {row.get('scan_id', row.get('kind', '?'))}: {arr.size} values, expected {h}x{w}")
    return arr.reshape(h, w)
