"""One lot folder of the landing store -> accepted scans + quarantine (shared/DESIGN.md,
"The landing contract").

:func:`ingest_lot` lists ``<landing>/<lot_id>/`` through a :class:`peelscan.lake.Store` (local
path or ``s3://``, one code path) and gives every file found there — recursively, including
``labels.csv``, the calibration frames and ``masks/`` — exactly one fate:

- ``scan``: decoded into a :class:`ScanRecord` (pixels, label, defect mask, split);
- ``labels`` / ``dark`` / ``flat`` / ``mask``: accepted auxiliary file, used by the scans;
- ``quarantine``: a :class:`QuarantineRecord` with a reason a person understands.

Rows of ``labels.csv`` that cannot be used (unknown label, invalid or unknown scan id,
duplicate rows) are quarantine entries too; they name the row (``.../labels.csv#row=5``) and
are not files, so :meth:`LotIngest.check_counts` counts files and entries apart.

Rules (each one is a quarantine reason):

- files: unreadable, truncated or zero-byte, wrong magic, not one 2-D single-channel frame
  (an RGB image with equal channels is grey), too small or too large, NaN/infinite values,
  no signal or saturated (:mod:`peelscan.xrayio`); larger than the size limit (not read);
- names: the stem of a scan must be a valid scan id (:func:`peelscan.ids.is_valid_id`: no
  ``..``, spaces, commas, ``|``, non-ASCII, leading dot); unknown extensions; files in a
  subfolder other than ``masks/``;
- duplicates: two files with the same scan id and different extensions (``a.tif``, ``a.png``):
  every copy is quarantined — we do not guess which one is right. Two dark (or flat) frames
  likewise;
- calibration: a dark or flat frame that does not decode, a flat that is not brighter than
  the dark, dark and flat of different widths (both refused): the lot proceeds without the
  refused frame(s) (preprocessing then estimates the open beam from each scan). A scan whose
  width differs from the accepted calibration frames' width is quarantined;
- labels: ``labels.csv`` must be UTF-8 (a BOM is tolerated) with a header holding ``scan_id``
  and ``label`` (``defect_type`` optional; extra columns ignored). A file that cannot be
  parsed at all is quarantined as a whole and the scans stay unlabelled. Row-level problems
  are entries naming the row. Two rows giving one scan *different* labels quarantine that
  scan as well (an anomalous scan must not slip into training);
- masks: ``masks/<scan_id>.png``, nonzero = defect; a mask whose scan is not in the lot (or
  was quarantined), of a different shape than its scan, or not a PNG is quarantined.

A scan whose frame holds no object (all open beam) is **accepted**: it is a valid frame and
segmentation gives it 0 items (:func:`peelscan.segment.segment_items`), which the ``items``
table reports.

Storage errors that survive the retries of :mod:`peelscan.lake` are *not* quarantined: they
say nothing about the file, so they fail the run with a message naming the object, and the
next run reads the lot again.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from peelscan.ids import is_valid_id, validate_id
from peelscan.lake import Store, with_retries
from peelscan.splits import assign_split
from peelscan.xrayio import (
    DEFAULT_LIMITS,
    SUPPORTED_EXTENSIONS,
    ImageLimits,
    ScanRejected,
    decode_image,
    extension_of,
)

LABELS = ("good", "anomalous")
DEFECT_TYPES = ("hollow_heart", "stone", "glass", "metal", "bruise", "wireworm", "growth_crack")
CALIBRATION_KINDS = ("dark", "flat")
LABELS_FILE = "labels.csv"
MASKS_DIR = "masks"


@dataclass
class ScanRecord:
    """An accepted scan. ``array``: ``(height, width)`` uint8/uint16/float32 as decoded;
    ``mask``: ``(height, width)`` bool ground-truth defect mask or None."""

    lot_id: str
    scan_id: str
    source_uri: str
    width: int
    height: int
    dtype: str
    label: str | None
    defect_type: str | None
    split: str
    array: np.ndarray = field(repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    mask_uri: str | None = None


@dataclass(frozen=True)
class QuarantineRecord:
    """A refused file (``is_file``) or a refused row of ``labels.csv`` (``is_file`` False,
    ``source_uri`` ending in ``#row=N``)."""

    lot_id: str
    source_uri: str
    reason: str
    is_file: bool = True


@dataclass
class CalibrationFrame:
    """An accepted dark or flat frame: ``array`` ``(h, width)`` as decoded."""

    kind: str
    source_uri: str
    array: np.ndarray = field(repr=False)


@dataclass
class LotIngest:
    """The outcome of :func:`ingest_lot` for one lot."""

    lot_id: str
    scans: list[ScanRecord] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    dark: CalibrationFrame | None = None
    flat: CalibrationFrame | None = None
    labels_uri: str | None = None
    mask_uris: list[str] = field(default_factory=list)
    n_files: int = 0
    files: list[str] = field(default_factory=list)
    """Display URIs of every file found in the lot folder (recursive)."""

    def calibration_frames(self) -> dict[str, tuple[np.ndarray, str]]:
        """``{"dark"|"flat": (array, source_uri)}`` for the accepted frames."""
        return {f.kind: (f.array, f.source_uri) for f in (self.dark, self.flat) if f is not None}

    def n_quarantine_files(self) -> int:
        """Number of distinct *files* quarantined (label-row entries excluded)."""
        return len({q.source_uri for q in self.quarantine if q.is_file})

    def accepted_auxiliary(self) -> list[str]:
        """Accepted files that are not scans: labels.csv, dark/flat frames, masks."""
        out = [f.source_uri for f in (self.dark, self.flat) if f is not None]
        if self.labels_uri:
            out.append(self.labels_uri)
        return out + list(self.mask_uris)

    def accounting(self) -> dict[str, int]:
        """Counts of files by fate: ``files = scans + quarantined + auxiliary``."""
        return {"files": self.n_files, "scans": len(self.scans), "quarantined_files": self.n_quarantine_files(),
                "auxiliary_files": len(self.accepted_auxiliary()),
                "quarantined_label_rows": sum(1 for q in self.quarantine if not q.is_file)}

    @property
    def counts_add_up(self) -> bool:
        """True when every file found is accounted for exactly once (scan, quarantined file or
        accepted auxiliary file) and nothing else is."""
        fates = ([s.source_uri for s in self.scans] + sorted({q.source_uri for q in self.quarantine if q.is_file})
                 + self.accepted_auxiliary())
        return len(fates) == self.n_files and Counter(fates) == Counter(self.files)

    def check_counts(self) -> None:
        """Raise ``RuntimeError`` naming the files when :attr:`counts_add_up` is False."""
        if self.counts_add_up:
            return
        fates = Counter([s.source_uri for s in self.scans] + sorted({q.source_uri for q in self.quarantine if q.is_file})
                        + self.accepted_auxiliary())
        found = Counter(self.files)
        missing = sorted((found - fates).elements())
        extra = sorted((fates - found).elements())
        raise RuntimeError(f"lot {self.lot_id}: {self.n_files} files but {self.accounting()}; "
                           f"unaccounted: {missing[:10]}; accounted twice or unknown: {extra[:10]}")


@dataclass
class _Pending:
    scan_id: str
    rel: str
    uri: str
    array: np.ndarray | None = None


def _list_lot(store: Store, lot: str) -> list[tuple[str, int]]:
    """(relative path, size) of every file under ``<lot>/``, recursively, sorted."""
    base = store.path(lot)

    def _find() -> dict[str, Any]:
        try:
            store.fs.invalidate_cache(base)
        except Exception:  # noqa: BLE001
            pass
        if not store.fs.exists(base):
            return {}
        return store.fs.find(base, detail=True)

    found = with_retries(_find, store.display(lot))
    out = []
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        p = path.rstrip("/")
        if not p.startswith(base + "/"):
            continue
        out.append((p[len(base) + 1:], int(info.get("size") or 0)))
    return sorted(out)


def ingest_lot(store: Store, lot_id: str, eval_fraction: float = 0.3,
               limits: ImageLimits = DEFAULT_LIMITS, split_salt: str = "") -> LotIngest:
    """Read, validate and decode every file of one lot folder.

    Parameters
    ----------
    store:
        The landing store (local path or ``s3://``).
    lot_id:
        A valid lot id (validated here; an invalid one raises ``InvalidIdError``).
    eval_fraction:
        Share of good/unlabelled scans held out for evaluation (:func:`peelscan.splits.assign_split`).
    limits:
        Image acceptance limits (:class:`peelscan.xrayio.ImageLimits`); files larger than
        ``limits.max_bytes`` are refused from their listed size, without being read.
    split_salt:
        Salt of the split hash.

    Returns
    -------
    :class:`LotIngest`; :meth:`LotIngest.check_counts` holds on it.
    """
    lot = validate_id(lot_id, "lot id")
    out = LotIngest(lot_id=lot)
    listing = _list_lot(store, lot)
    out.n_files = len(listing)
    out.files = [store.display(lot, rel) for rel, _ in listing]

    def uri(rel: str) -> str:
        return store.display(lot, rel)

    def refuse(rel: str, reason: str) -> None:
        out.quarantine.append(QuarantineRecord(lot, uri(rel), reason))

    def read(rel: str, size: int) -> bytes | None:
        if size == 0:
            refuse(rel, "zero-byte file")
            return None
        if size > limits.max_bytes:
            refuse(rel, f"file of {size} bytes exceeds the limit of {limits.max_bytes} bytes (not read)")
            return None
        try:
            return store.read_bytes(lot, rel)
        except FileNotFoundError:
            refuse(rel, "file disappeared between listing and reading (it will be read by the next run)")
            return None

    # ---- classify every file by its name -------------------------------------------------
    scan_files: dict[str, list[tuple[str, int]]] = defaultdict(list)
    calib_files: dict[str, list[tuple[str, int]]] = defaultdict(list)
    mask_files: list[tuple[str, int]] = []
    labels_file: tuple[str, int] | None = None
    for rel, size in listing:
        parts = rel.split("/")
        name = parts[-1]
        if len(parts) > 1:
            if len(parts) == 2 and parts[0] == MASKS_DIR:
                mask_files.append((rel, size))
            else:
                refuse(rel, f"file in unexpected subfolder '{'/'.join(parts[:-1])}/' "
                            f"(a lot folder holds scans, dark/flat, {LABELS_FILE} and {MASKS_DIR}/ only)")
            continue
        if name == LABELS_FILE:
            labels_file = (rel, size)
            continue
        ext = extension_of(name)
        stem = name[: -(len(ext) + 1)] if ext else name
        if ext not in SUPPORTED_EXTENSIONS:
            shown = f"'.{ext}'" if ext else "no extension"
            refuse(rel, f"unknown file type ({shown}; expected .tif, .tiff, .png, .npy scans, "
                        f"dark/flat frames, {LABELS_FILE} or {MASKS_DIR}/)")
            continue
        if stem in CALIBRATION_KINDS:
            calib_files[stem].append((rel, size))
            continue
        if not is_valid_id(stem):
            refuse(rel, f"invalid scan id {stem[:80]!r}: scan ids are 1-64 letters, digits, '.', '_' or '-', "
                        "start with a letter or digit, and hold no '..', spaces, commas, '|' or non-ASCII")
            continue
        scan_files[stem].append((rel, size))

    # ---- calibration frames --------------------------------------------------------------
    calib: dict[str, CalibrationFrame] = {}
    for kind in CALIBRATION_KINDS:
        files = calib_files.get(kind, [])
        if len(files) > 1:
            names = ", ".join(r for r, _ in files)
            for rel, _ in files:
                refuse(rel, f"{len(files)} {kind} frames in the lot ({names}); all refused, not guessing which is "
                            f"right (the lot proceeds without a {kind} frame)")
            continue
        for rel, size in files:
            data = read(rel, size)
            if data is None:
                continue
            try:
                # a line-scan calibration frame may be a few rows (even one): only its width must be sane
                arr = decode_image(data, rel, replace(limits, min_side=1), signal=(kind == "flat"))
                if arr.shape[1] < limits.min_side:
                    raise ScanRejected(f"frame {arr.shape[1]} px wide is narrower than the minimum {limits.min_side} px")
                if kind == "dark":
                    top = np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else None
                    if top is not None and np.mean(arr == top) > limits.max_saturated_fraction:
                        raise ScanRejected(f"saturated dark frame (pixels at the detector maximum {top})")
            except ScanRejected as exc:
                refuse(rel, f"{kind} frame refused, the lot proceeds without it: {exc.reason}")
                continue
            calib[kind] = CalibrationFrame(kind, uri(rel), arr)
    if "dark" in calib and "flat" in calib:
        d, f = calib["dark"], calib["flat"]
        if d.array.shape[1] != f.array.shape[1]:
            for fr in (d, f):
                out.quarantine.append(QuarantineRecord(
                    lot, fr.source_uri, f"dark frame width {d.array.shape[1]} differs from flat frame width "
                                        f"{f.array.shape[1]}; both refused, the lot proceeds without calibration frames"))
            calib.clear()
        else:
            dcol = d.array.astype(np.float64).mean(axis=0)
            fcol = f.array.astype(np.float64).mean(axis=0)
            bad = int(np.count_nonzero(fcol <= dcol))
            if bad:
                out.quarantine.append(QuarantineRecord(
                    lot, f.source_uri, f"flat frame is not brighter than the dark frame in {bad} of "
                                       f"{fcol.size} columns; refused, the lot proceeds with the dark frame only"))
                del calib["flat"]
    out.dark, out.flat = calib.get("dark"), calib.get("flat")
    calib_width = next((fr.array.shape[1] for fr in calib.values()), None)

    # ---- scans ---------------------------------------------------------------------------
    pending: dict[str, _Pending] = {}
    for stem, files in sorted(scan_files.items()):
        if len(files) > 1:
            names = ", ".join(r for r, _ in files)
            for rel, _ in files:
                refuse(rel, f"duplicate scan id {stem!r} in {len(files)} files ({names}); all copies refused, "
                            "not guessing which is right")
            continue
        rel, size = files[0]
        data = read(rel, size)
        if data is None:
            continue
        try:
            arr = decode_image(data, rel, limits)
        except ScanRejected as exc:
            refuse(rel, exc.reason)
            continue
        if calib_width is not None and arr.shape[1] != calib_width:
            refuse(rel, f"scan width {arr.shape[1]} does not match the calibration frames' width {calib_width}")
            continue
        pending[stem] = _Pending(stem, rel, uri(rel), arr)

    # ---- labels --------------------------------------------------------------------------
    labels: dict[str, tuple[str | None, str | None]] = {}
    refused_by_labels: dict[str, str] = {}
    if labels_file is not None:
        rel, size = labels_file
        data = read(rel, size)
        if data is not None:
            parsed = _parse_labels(data, uri(rel), lot, set(scan_files))
            if isinstance(parsed, str):
                refuse(rel, parsed)
            else:
                labels, row_entries, refused_by_labels = parsed
                out.quarantine.extend(row_entries)
                out.labels_uri = uri(rel)
    for stem, why in refused_by_labels.items():
        p = pending.pop(stem, None)
        if p is not None:
            refuse(p.rel, why)

    # ---- masks ---------------------------------------------------------------------------
    masks: dict[str, tuple[np.ndarray, str]] = {}
    def _stem(rel: str) -> str:
        name = rel.split("/")[-1]
        ext = extension_of(name)
        return name[: -(len(ext) + 1)] if ext else name

    mask_stems = Counter(_stem(r) for r, _ in mask_files if extension_of(r) == "png")
    for rel, size in mask_files:
        name = rel.split("/")[-1]
        ext = extension_of(name)
        stem = _stem(rel)
        if ext != "png":
            refuse(rel, f"mask is not a PNG ('{name}'; masks are {MASKS_DIR}/<scan_id>.png, nonzero = defect)")
            continue
        if not is_valid_id(stem):
            refuse(rel, f"mask for an invalid scan id {stem[:80]!r}")
            continue
        if mask_stems[stem] > 1:
            refuse(rel, f"several masks for scan {stem!r}; all refused")
            continue
        if stem not in pending:
            why = "was quarantined" if stem in scan_files else "is not in the lot"
            refuse(rel, f"mask for scan {stem!r}, which {why}")
            continue
        data = read(rel, size)
        if data is None:
            continue
        try:
            m = decode_image(data, rel, limits, signal=False)
        except ScanRejected as exc:
            refuse(rel, f"mask refused: {exc.reason}")
            continue
        shape = pending[stem].array.shape
        if m.shape != shape:
            refuse(rel, f"mask of {m.shape[1]}×{m.shape[0]} does not match its scan's {shape[1]}×{shape[0]}")
            continue
        masks[stem] = (m != 0, uri(rel))
        out.mask_uris.append(uri(rel))

    # ---- records -------------------------------------------------------------------------
    for stem, p in sorted(pending.items()):
        label, defect = labels.get(stem, (None, None))
        arr = p.array
        assert arr is not None
        mask, mask_uri = masks.get(stem, (None, None))
        out.scans.append(ScanRecord(
            lot_id=lot, scan_id=stem, source_uri=p.uri, width=int(arr.shape[1]), height=int(arr.shape[0]),
            dtype=str(arr.dtype), label=label, defect_type=defect,
            split=assign_split(stem, label, eval_fraction=eval_fraction, salt=split_salt),
            array=arr, mask=mask, mask_uri=mask_uri))
    return out


def _parse_labels(data: bytes, src: str, lot: str, scan_stems: set[str]
                  ) -> str | tuple[dict[str, tuple[str | None, str | None]], list[QuarantineRecord], dict[str, str]]:
    """Parse ``labels.csv``. Returns a reason string when the whole file is unusable, else
    (labels by scan id, row quarantine entries, scans to quarantine with their reason).

    ``scan_stems``: every scan id that has a file in the lot (accepted or not), so that a row
    naming a quarantined scan is not reported as naming a missing one."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return f"{LABELS_FILE} is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if "\x00" in text:
        return f"{LABELS_FILE} holds NUL bytes (not a text file)"
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        return f"{LABELS_FILE} is not valid CSV: {exc}"
    rows_numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows_numbered:
        return f"{LABELS_FILE} is empty (expected a header scan_id,label[,defect_type])"
    header_line, header = rows_numbered[0]
    cols = [c.strip().lower() for c in header]
    missing = [c for c in ("scan_id", "label") if c not in cols]
    if missing:
        return (f"{LABELS_FILE} header {','.join(c.strip() for c in header)[:120]!r} lacks column(s) "
                f"{', '.join(missing)} (expected scan_id,label[,defect_type])")
    dup_cols = [c for c, n in Counter(cols).items() if n > 1 and c in ("scan_id", "label", "defect_type")]
    if dup_cols:
        return f"{LABELS_FILE} header repeats column(s) {', '.join(dup_cols)}"
    i_id, i_label = cols.index("scan_id"), cols.index("label")
    i_defect = cols.index("defect_type") if "defect_type" in cols else None

    entries: list[QuarantineRecord] = []
    seen: dict[str, list[tuple[int, str | None, str | None]]] = defaultdict(list)

    def bad(line: int, reason: str) -> None:
        entries.append(QuarantineRecord(lot, f"{src}#row={line}", f"{LABELS_FILE} row {line}: {reason}", is_file=False))

    for line, row in rows_numbered[1:]:
        need = max(i_id, i_label) + 1
        if len(row) < need:
            bad(line, f"{len(row)} cell(s), expected at least {need} ({row!r:.80})")
            continue
        sid = row[i_id].strip()
        label = row[i_label].strip().lower() or None
        defect = (row[i_defect].strip().lower() or None) if i_defect is not None and i_defect < len(row) else None
        if not is_valid_id(sid):
            bad(line, f"invalid scan id {sid[:80]!r}")
            continue
        if sid not in scan_stems:
            bad(line, f"label for scan {sid!r}, which does not exist in the lot")
            continue
        if label is not None and label not in LABELS:
            bad(line, f"unknown label {row[i_label].strip()[:40]!r} for scan {sid!r} (expected good or anomalous)")
            continue
        if defect is not None and defect not in DEFECT_TYPES:
            bad(line, f"unknown defect_type {defect[:40]!r} for scan {sid!r} (expected one of "
                      f"{', '.join(DEFECT_TYPES)}); the label is kept, the defect type dropped")
            defect = None
        if defect is not None and label != "anomalous":
            bad(line, f"defect_type {defect!r} given for a scan labelled {label or 'unlabelled'} ({sid!r}); "
                      "the defect type is dropped")
            defect = None
        seen[sid].append((line, label, defect))

    labels: dict[str, tuple[str | None, str | None]] = {}
    refused: dict[str, str] = {}
    for sid, occ in seen.items():
        first_line, label, defect = occ[0]
        if len(occ) > 1:
            distinct = {o[1] for o in occ}
            lines = ", ".join(str(o[0]) for o in occ)
            if len(distinct) > 1:
                for o in occ:
                    bad(o[0], f"scan {sid!r} is labelled differently in rows {lines} "
                              f"({', '.join(str(o2[1]) for o2 in occ)}); the scan is quarantined")
                refused[sid] = (f"conflicting labels in {LABELS_FILE} rows {lines} "
                                f"({', '.join(str(o2[1]) for o2 in occ)}); not guessing which is right")
                continue
            for o in occ[1:]:
                bad(o[0], f"duplicate row for scan {sid!r} (first given in row {first_line}); ignored")
            defect = next((o[2] for o in occ if o[2] is not None), None)
        labels[sid] = (label, defect)
    return labels, entries, refused
