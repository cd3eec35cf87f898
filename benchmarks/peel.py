"""Tiles per second of the peeling stage (peel + tile + Parquet encoding) for 256×256 scans.

    python benchmarks/peel.py [--scans 200]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=200)
    args = ap.parse_args()
    import pyarrow as pa

    from peelscan.peel import PeelConfig, peel_scan, tiles_to_table
    from peelscan.preprocess import preprocess_scan
    from peelscan.segment import segment_items
    from peelscan.synth import machine_for_lot, make_phantom, render_counts, render_dark, render_flat

    rng = np.random.default_rng(9401)
    machine = machine_for_lot(rng, 256)
    dark, flat = render_dark(machine, rng, (32, 256)), render_flat(machine, rng, (32, 256))
    scans = []
    for _ in range(args.scans):
        att = preprocess_scan(render_counts(make_phantom(rng), machine, rng), dark, flat).attenuation
        scans.append((att, [it.full_mask(att.shape) for it in segment_items(att)]))
    cfg = PeelConfig()
    t0 = time.perf_counter()
    tables, n = [], 0
    for i, (att, masks) in enumerate(scans):
        tiles, _ = peel_scan(att, masks, cfg, whole=False)
        tables.append(tiles_to_table("bench", f"s{i}", "train", "good", None, tiles, cfg))
        n += len(tiles.pixels)
    t_peel = time.perf_counter() - t0
    buf = io.BytesIO()
    pq.write_table(pa.concat_tables(tables), buf, row_group_size=2048, compression="zstd")
    dt = time.perf_counter() - t0
    print(f"{args.scans} scans, {n} tiles ({n / args.scans:.1f} per scan): peel+tile {n / t_peel:,.0f} tiles/s, "
          f"with Parquet encoding {n / dt:,.0f} tiles/s ({args.scans / dt:.0f} scans/s), one process")


if __name__ == "__main__":
    main()
