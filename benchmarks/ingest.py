"""Ingest + preprocess (+ segment) throughput, in scans per second, for 256×256 scans.

    .venv/bin/python benchmarks/ingest.py [--scans 64] [--size 256] [--source synth|simple] [--frames]

A lot is written to a scratch landing folder, then timed: ``ingest_lot`` (list, read, decode,
validate, labels, masks), ``preprocess_scan`` for every accepted scan, ``segment_items`` on each
result. ``--source synth`` uses :func:`peelscan.synth.write_landing` (seed 9301, used by no
test); ``--source simple`` writes ellipsoid potatoes through a small line-scan forward model
(Poisson counts, per-column gain, heel), for when the synth module is not at hand. Single
process, single thread (BLAS/OpenMP threads pinned to 1 unless already set), so the figure is
per core; a 2-core machine runs two lots at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def write_simple_lot(folder: Path, n: int, size: int, frames: bool, seed: int = 9301) -> None:
    """``n`` uint16 TIFF scans of 1-3 ellipsoid potatoes, optional dark/flat frames, labels."""
    from peelscan.xrayio import encode_tiff

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x = np.linspace(-1, 1, size)
    gain = (1 + 0.05 * rng.standard_normal(size)) * (1 - 0.15 * x)
    i0, dark = 20000.0, 100.0
    r, c = np.mgrid[:size, :size].astype(np.float64)
    lines = ["scan_id,label"]
    for i in range(n):
        att = np.zeros((size, size))
        k = int(rng.integers(1, 4))
        for j in range(k):
            cc = (j + 0.5) * size / k + rng.normal(0, 3)
            cr = size / 2 + rng.normal(0, 10)
            ar, ac = rng.uniform(0.25, 0.35) * size, rng.uniform(0.6, 0.8) * size / (2 * k)
            q = 1 - ((r - cr) / ar) ** 2 - ((c - cc) / ac) ** 2
            att += 0.0105 * 2 * min(ar, ac) * np.sqrt(np.clip(q, 0, None))
        lam = i0 * gain[None, :] * np.exp(-att)
        raw = np.clip(rng.poisson(lam) + dark, 0, 65535).astype(np.uint16)
        (folder / f"scan-{i:04d}.tif").write_bytes(encode_tiff(raw))
        lines.append(f"scan-{i:04d},good")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    if frames:
        flat = np.clip(rng.poisson(i0 * gain[None, :] * np.ones((32, size))) + dark, 0, 65535).astype(np.uint16)
        (folder / "flat.tif").write_bytes(encode_tiff(flat))
        darkf = np.clip(np.round(rng.normal(dark, 3, (32, size))), 0, 65535).astype(np.uint16)
        (folder / "dark.tif").write_bytes(encode_tiff(darkf))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--source", choices=("synth", "simple"), default="synth")
    ap.add_argument("--frames", action="store_true", help="simple source: write dark/flat frames")
    ap.add_argument("--png8", action="store_true", help="synth source: 8-bit pre-corrected PNG lot")
    ap.add_argument("--drop-frames", action="store_true",
                    help="synth source: delete dark/flat (open beam estimated from each scan)")
    ap.add_argument("--objects", type=int, default=1, help="synth source: tubers per scan")
    args = ap.parse_args(argv)

    from peelscan.ingest import ingest_lot
    from peelscan.lake import Store
    from peelscan.preprocess import PreprocessConfig, preprocess_scan
    from peelscan.segment import SegmentConfig, segment_items

    with tempfile.TemporaryDirectory() as tmp:
        landing = Path(tmp) / "landing"
        if args.source == "synth":
            from peelscan.synth import write_landing

            (lot,) = write_landing(str(landing), lots=1, scans=args.scans, anomaly_rate=0.2, seed=9301,
                                   size=args.size, png8=args.png8, objects_per_scan=args.objects)
            if args.drop_frames:
                for p in (landing / lot).glob("*"):
                    if p.stem in ("dark", "flat"):
                        p.unlink()
        else:
            lot = "bench-lot"
            write_simple_lot(landing / lot, args.scans, args.size, args.frames)
        store = Store(str(landing))
        pcfg, scfg = PreprocessConfig(), SegmentConfig()
        # warm the imports (skimage, tifffile) outside the timing
        warm = ingest_lot(store, lot)
        if warm.scans:
            segment_items(preprocess_scan(warm.scans[0].array, None, None, pcfg).attenuation, scfg)

        t0 = time.perf_counter()
        ing = ingest_lot(store, lot)
        t1 = time.perf_counter()
        frames = ing.calibration_frames()
        dark = frames.get("dark", (None,))[0]
        flat = frames.get("flat", (None,))[0]
        pres = [preprocess_scan(s.array, dark, flat, pcfg) for s in ing.scans]
        t2 = time.perf_counter()
        n_items = sum(len(segment_items(p.attenuation, scfg)) for p in pres)
        t3 = time.perf_counter()

    n = len(ing.scans)
    if n == 0:
        print("no scans ingested", ing.accounting())
        return 1
    calib = sorted({p.calibration for p in pres})
    print(f"{n} scans {args.size}×{args.size} ({args.source}, calibration {', '.join(calib)}), "
          f"{len(ing.quarantine)} quarantined, {n_items} items")
    print(f"  ingest      {n / (t1 - t0):8.1f} scans/s  ({1000 * (t1 - t0) / n:6.1f} ms/scan)")
    print(f"  preprocess  {n / (t2 - t1):8.1f} scans/s  ({1000 * (t2 - t1) / n:6.1f} ms/scan)")
    print(f"  segment     {n / (t3 - t2):8.1f} scans/s  ({1000 * (t3 - t2) / n:6.1f} ms/scan)")
    print(f"  ingest+preprocess          {n / (t2 - t0):8.1f} scans/s")
    print(f"  ingest+preprocess+segment  {n / (t3 - t0):8.1f} scans/s  (one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
