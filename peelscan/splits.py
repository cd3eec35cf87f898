"""Deterministic train/eval split of scans.

A scan's split depends only on its id (and a salt), never on the order files were listed or on
how many scans a lot has, so a rerun, a backfill or a lot that grows keeps every scan where it
was. Scans labelled ``anomalous`` always go to ``eval``: the autoencoder is trained on good
samples only, and an anomalous scan must never be used to fit it.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "eval")


def split_fraction(scan_id: str, salt: str = "") -> float:
    """A number in ``[0, 1)`` from ``sha256(salt + scan_id)`` (first 8 bytes, big-endian)."""
    digest = hashlib.sha256((salt + scan_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(scan_id: str, label: str | None, eval_fraction: float = 0.3, salt: str = "") -> str:
    """``"train"`` or ``"eval"`` for one scan.

    ``label`` ``"anomalous"`` -> ``"eval"`` always; ``"good"`` or ``None`` (unlabelled) ->
    ``"eval"`` when :func:`split_fraction` ``< eval_fraction``, else ``"train"``.
    ``eval_fraction`` must lie in ``[0, 1]``.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must lie in [0, 1], got {eval_fraction}")
    if label not in (None, "good", "anomalous"):
        raise ValueError(f"unknown label {label!r} for scan {scan_id!r} (expected good, anomalous or None)")
    if label == "anomalous":
        return "eval"
    return "eval" if split_fraction(scan_id, salt) < eval_fraction else "train"
