"""The synthetic-scan gallery (docs/img/synth_grid.png) and the generator's speed on one core.

    .venv/bin/python benchmarks/synth_gallery.py [--rows 3] [--out docs/img/synth_grid.png]
    .venv/bin/python benchmarks/synth_gallery.py --bench-only [--scans 200]

The picture: one column of good scans and one per defect type; the top row shows the raw
16-bit counts (heel effect and column gain visible), the rows below one lot each (its own
machine and tuber population) as the flat-field-corrected attenuation ``-ln T`` of the raw
counts (corrected with the lot's own dark and flat frames), cropped to the tuber, with the
defect mask's outline in red. The benchmark: scans per second of :func:`peelscan.synth.make_phantom`
+ :func:`peelscan.synth.render_counts` (in memory), and of
:func:`peelscan.synth.write_landing` (with TIFF/PNG encoding and files), single process,
BLAS/OpenMP threads pinned to 1, seeds 9400+ (used by no test).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from peelscan import synth  # noqa: E402


def gallery(out: Path, rows: int, size: int, seed: int = 9400) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    cols = (None,) + synth.DEFECT_TYPES
    fig, axes = plt.subplots(rows + 1, len(cols), figsize=(1.9 * len(cols), 1.95 * (rows + 1) + 0.4))
    for r in range(rows):
        lot_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(r, 0)))
        machine = synth.machine_for_lot(lot_rng, size)
        lot = synth.lot_params(lot_rng)
        frng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(r, 2)))
        dark = synth.render_dark(machine, frng, (32, size))
        flat = synth.render_flat(machine, frng, (32, size))
        for c, defect in enumerate(cols):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(r, 1, c)))
            ph = synth.make_phantom(rng, (size, size), machine.pixel_mm, 1, defect, False, lot)
            raw = synth.render_counts(ph, machine, rng)
            if r == 0:  # first row: the raw 16-bit counts, heel and column gain included
                ax = axes[0, c]
                ax.imshow(raw, cmap="gray", vmin=0, vmax=float(raw.max()), interpolation="nearest")
                ax.set_title(defect or "good", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel("raw counts", fontsize=8)
            att = -np.log(np.clip(synth.flat_correct(raw, dark, flat), 1e-4, None))
            rr, cc = np.nonzero(ph.object_mask)
            sl = (slice(max(rr.min() - 4, 0), rr.max() + 5), slice(max(cc.min() - 4, 0), cc.max() + 5))
            ax = axes[r + 1, c]
            hi = float(np.percentile(att[ph.object_mask], 99.7))
            ax.imshow(att[sl], cmap="gray_r", vmin=0.0, vmax=hi, interpolation="nearest")
            if defect is not None:  # outline drawn 2 px outside the mask, so the defect stays visible
                ring = ndimage.binary_dilation(synth.scan_mask(ph, machine), iterations=2)[sl]
                ax.contour(ring, levels=[0.5], colors="red", linewidths=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"lot {r}: -ln T", fontsize=8)
    fig.suptitle("synthetic X-ray line scans of potatoes (256×256 px at 0.5 mm). Top: raw 16-bit counts; below: "
                 "flat-corrected attenuation -ln T (darker = more), cropped, defect mask outlined in red; "
                 "one lot (machine + tuber population) per row", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def bench(n: int, size: int, seed: int = 9450) -> None:
    lot_rng = np.random.default_rng(seed)
    machine = synth.machine_for_lot(lot_rng, size)
    lot = synth.lot_params(lot_rng)
    defects = (None,) * 4 + synth.DEFECT_TYPES
    t0 = time.perf_counter()
    for j in range(n):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(j,)))
        ph = synth.make_phantom(rng, (size, size), machine.pixel_mm, 1, defects[j % len(defects)], False, lot)
        synth.render_counts(ph, machine, rng)
    dt = time.perf_counter() - t0
    print(f"generate in memory ({size}x{size}, 1 object, 1/3 anomalous): {n / dt:.1f} scans/s "
          f"({1e3 * dt / n:.1f} ms/scan), one core")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        synth.write_landing(tmp, lots=1, scans=n, anomaly_rate=0.3, seed=seed, size=size)
        dt = time.perf_counter() - t0
    print(f"write_landing ({size}x{size} uint16 TIFF + masks + labels): {n / dt:.1f} scans/s "
          f"({1e3 * dt / n:.1f} ms/scan), one core")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "synth_grid.png"))
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--scans", type=int, default=200, help="scans timed by the benchmark")
    ap.add_argument("--bench-only", action="store_true", help="only the speed benchmark, no picture")
    args = ap.parse_args(argv)
    if not args.bench_only:
        gallery(Path(args.out), args.rows, args.size)
    bench(args.scans, args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
