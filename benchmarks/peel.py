"""Peeling stage: throughput (tiles/s) and the measurements behind the defaults.

    .venv/bin/python benchmarks/peel.py [--scans 100]            # tiles/s, 256×256 scans
    .venv/bin/python benchmarks/peel.py --evidence [--scans 60]   # tables for docs/peeling.md
    .venv/bin/python benchmarks/peel.py --evidence --picture docs/img/peel_overlay.png

Scans are synthetic (:mod:`peelscan.synth`, seed 9401, used by no test), preprocessed with
frames and segmented, outside the timed part. Timed: :func:`peelscan.peel.peel_scan` (peel +
tiles, whole-item images off and on) and building the Arrow table + Parquet encoding (zstd,
``ROW_GROUP_TILES`` rows per group, to memory). Single process, one thread (BLAS/OpenMP
pinned to 1 unless already set): the figure is per core.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def make_scans(n: int, seed: int = 9401, anomaly_every: int = 0, n_objects=(1, 1, 1, 2, 3)):
    """``n`` synthetic 256×256 scans: ``[(attenuation, item masks, defect mask, defect type,
    object mask of the phantom)]``. Every ``anomaly_every``-th scan holds a defect (cycling
    through the types); the rest are good."""
    from peelscan.preprocess import preprocess_scan
    from peelscan.segment import segment_items
    from peelscan.synth import (DEFECT_TYPES, machine_for_lot, make_phantom, render_counts, render_dark,
                                render_flat, scan_mask)

    rng = np.random.default_rng(seed)
    machine = machine_for_lot(rng, 256)
    dark, flat = render_dark(machine, rng, (32, 256)), render_flat(machine, rng, (32, 256))
    out, k = [], 0
    for i in range(n):
        defect = None
        if anomaly_every and i % anomaly_every == 0:
            defect = DEFECT_TYPES[k % len(DEFECT_TYPES)]
            k += 1
        ph = make_phantom(rng, n_objects=int(n_objects[i % len(n_objects)]), defect=defect)
        att = preprocess_scan(render_counts(ph, machine, rng), dark, flat).attenuation
        masks = [it.full_mask(att.shape) for it in segment_items(att)]
        dm = scan_mask(ph, machine) if defect else None
        out.append((att, masks, dm, defect, ph.object_mask))
    return out


def throughput(n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from peelscan.peel import ROW_GROUP_TILES, PeelConfig, peel_scan, tiles_to_table

    scans = make_scans(n)
    cfg = PeelConfig()

    def once(whole: bool) -> tuple[int, float, float, int]:
        t0 = time.perf_counter()
        tables, ntiles = [], 0
        for i, (att, masks, dm, _, _) in enumerate(scans):
            tiles, _ = peel_scan(att, masks, cfg, dm, whole=whole)
            ntiles += len(tiles)
            tables.append(tiles_to_table("bench", f"s{i}", "train", "good", None, tiles, cfg))
        t_peel = time.perf_counter() - t0
        buf = io.BytesIO()
        pq.write_table(pa.concat_tables(tables), buf, row_group_size=ROW_GROUP_TILES, compression="zstd")
        return ntiles, t_peel, time.perf_counter() - t0, buf.tell()

    once(False)  # warm-up: first-call costs of numpy/scipy/pyarrow
    for whole in (False, True):
        runs = [once(whole) for _ in range(3)]
        ntiles, t_peel, dt_all, nbytes = sorted(runs, key=lambda r: r[2])[1]  # the median run
        print(f"{n} scans, {ntiles} tiles ({ntiles / n:.1f}/scan), whole-item images {'on ' if whole else 'off'}: "
              f"peel+tile+table {ntiles / t_peel:,.0f} tiles/s ({1000 * t_peel / n:.1f} ms/scan); "
              f"with Parquet encoding {ntiles / dt_all:,.0f} tiles/s ({n / dt_all:.0f} scans/s); "
              f"{nbytes / ntiles / 1024:.2f} KiB/tile on disk (median of 3 runs, one thread)")


# ------------------------------------------------------------------------------------------
# evidence for the defaults (docs/peeling.md)
# ------------------------------------------------------------------------------------------
def rim_profile(scans) -> None:
    """Mean attenuation and gradient magnitude against the distance from the item outline."""
    from scipy import ndimage

    dmax = 30
    s_att, s_grad, s_n = np.zeros(dmax + 1), np.zeros(dmax + 1), np.zeros(dmax + 1)
    offsets = []
    for att, masks, dm, _, obj in scans:
        sm = ndimage.gaussian_filter(att.astype(np.float64), 1.0)
        grad = np.hypot(ndimage.sobel(sm, 0), ndimage.sobel(sm, 1)) / 8.0  # per pixel
        for m in masks:
            d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
            b = np.clip(np.ceil(d).astype(int), 0, dmax)
            sel = m & (b > 0)
            np.add.at(s_att, b[sel], att[sel])
            np.add.at(s_grad, b[sel], grad[sel])
            np.add.at(s_n, b[sel], 1)
            # segmented vs true outline: pixels of the phantom object lost or gained per outline px
            per = (m & ~ndimage.binary_erosion(m)).sum()
            near = ndimage.binary_dilation(m, iterations=4)
            offsets.append(((obj & near).sum() - m.sum()) / max(per, 1))
    a, g = s_att / np.maximum(s_n, 1), s_grad / np.maximum(s_n, 1)
    g_ref = np.median(g[20:dmax + 1])
    print("\n### Rim profile (good scans; distance = Euclidean distance to the nearest pixel outside the item)\n")
    print(f"interior gradient (median over 20-30 px) = {g_ref:.5f} per px; segmented outline lies "
          f"{np.mean(offsets):+.2f} px (mean) inside the true outline\n")
    print(f"| distance px | mm | mean attenuation | share of the value at >= {dmax} px | mean gradient per px | × interior |")
    print("|---|---|---|---|---|---|")
    for d in list(range(1, 13)) + [14, 16, 20, 25, 30]:
        print(f"| {d if d < dmax else f'>= {d}'} | {d * 0.5:.1f} | {a[d]:.4f} | {a[d] / a[dmax]:.2f} | {g[d]:.5f} | {g[d] / g_ref:.2f} |")


def tile_grid(scans) -> None:
    """Tiles per item, interior inspected and defect pixels inspected for tile/stride/coverage."""
    from peelscan.peel import PeelConfig, cut_tiles

    print("\n### Tile size, stride, min_coverage (peel 3 mm)\n")
    print("| T | S | min_coverage | tiles/item | items with 0 tiles | peeled interior inside a kept tile | "
          "defect px (in peeled) inside a kept tile | mean fill share |")
    print("|---|---|---|---|---|---|---|---|")
    for t, s in ((16, 8), (32, 16), (32, 32), (48, 24), (64, 32)):
        for mc in (0.5, 0.75, 0.9, 1.0):
            cfg = PeelConfig(tile_size=t, stride=s, min_coverage=mc, small_item_tile=False)
            _grid_row(scans, cfg, f"| {t} | {s} | {mc} |")


def _grid_row(scans, cfg, head: str) -> None:
    from peelscan.peel import cut_tiles

    n_items = zero = 0
    n_tiles, in_seen, in_all, d_seen, d_all, fill = 0, 0, 0, 0, 0, []
    t = cfg.tile_size
    for att, masks, dm, _, _ in scans:
        for m in masks:
            n_items += 1
            peeled = cfg.peeled(m)
            tl = cut_tiles(att, m, cfg)
            seen = np.zeros(m.shape, bool)
            for r, c in zip(tl.tile_row, tl.tile_col):
                seen[r:r + t, c:c + t] = True
            n_tiles += len(tl)
            zero += len(tl) == 0
            in_all += peeled.sum()
            in_seen += (peeled & seen).sum()
            fill.extend(1 - tl.coverage)
            if dm is not None:
                d_all += (dm & peeled).sum()
                d_seen += (dm & peeled & seen).sum()
    print(f"{head} {n_tiles / n_items:.1f} | {zero}/{n_items} | {in_seen / max(in_all, 1):.2f} | "
          f"{d_seen / max(d_all, 1):.2f} | {np.mean(fill) if fill else 0:.3f} |")


def depth_table(scans) -> None:
    from peelscan.peel import PeelConfig

    print("\n### Peel depth (T 32, S 16, min_coverage 0.75)\n")
    print("| depth mm | depth px | item area kept | tiles/item | items with 0 tiles | peeled interior inside a kept tile | "
          "defect px (in peeled) inside a kept tile | mean fill share |")
    print("|---|---|---|---|---|---|---|---|")
    area = sum(int(m.sum()) for _, masks, *_ in scans for m in masks)
    for depth in (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0):
        cfg = PeelConfig(peel_depth_mm=depth, small_item_tile=False)
        kept = sum(int(cfg.peeled(m).sum()) for _, masks, *_ in scans for m in masks)
        _grid_row(scans, cfg, f"| {depth} | {cfg.depth_px:.0f} | {kept / area:.2f} |")
    # defect pixels that survive peeling at all, per type
    from scipy import ndimage  # noqa: F401

    print("\nshare of each defect's pixels left after peeling (anomalous scans):\n")
    print("| defect | 0 mm | 2 mm | 3 mm | 4 mm | 6 mm |")
    print("|---|---|---|---|---|---|")
    rows: dict[str, list[list[float]]] = {}
    for att, masks, dm, dtype, _ in scans:
        if dm is None or not dm.any():
            continue
        union = np.zeros(dm.shape, bool)
        for m in masks:
            union |= m
        vals = []
        for depth in (0.0, 2.0, 3.0, 4.0, 6.0):
            cfg = PeelConfig(peel_depth_mm=depth)
            kept = np.zeros(dm.shape, bool)
            for m in masks:
                kept |= cfg.peeled(m)
            vals.append((dm & kept).sum() / dm.sum())
        rows.setdefault(dtype, []).append(vals)
    for dtype, v in sorted(rows.items()):
        m = np.mean(v, axis=0)
        print(f"| {dtype} ({len(v)}) | " + " | ".join(f"{x:.2f}" for x in m) + " |")


def fill_rules(scans) -> None:
    """Step across the peel line inside kept tiles, relative to neighbouring tissue pixels."""
    from peelscan.peel import PeelConfig, cut_tiles

    print("\n### Fill rule (kept tiles with coverage < 1; 4-neighbour pairs)\n")
    print("| fill | mean abs step across the peel line | mean abs difference tissue-tissue | ratio | "
          "mean gradient of the filled part / tissue |")
    print("|---|---|---|---|---|")
    for rule in ("nearest", "mean", "zero"):
        cfg = PeelConfig(fill="mean" if rule == "zero" else rule, small_item_tile=False)
        step, tissue, gf, gt = [], [], [], []
        for att, masks, _, _, _ in scans:
            for m in masks:
                peeled = cfg.peeled(m)
                tl = cut_tiles(att, m, cfg)
                part = tl.coverage < 1
                if not part.any():
                    continue
                t = cfg.tile_size
                px = tl.pixels[part]
                ins = np.stack([peeled[r:r + t, c:c + t] for r, c in zip(tl.tile_row[part], tl.tile_col[part])])
                if rule == "zero":
                    px = np.where(ins, px, 0.0)
                for ax in (1, 2):
                    d = np.abs(np.diff(px, axis=ax))
                    a, b = (ins[:, 1:, :], ins[:, :-1, :]) if ax == 1 else (ins[:, :, 1:], ins[:, :, :-1])
                    step.append(d[a != b])
                    tissue.append(d[a & b])
                    gf.append(d[~a & ~b])
        s, ti, f = (np.concatenate(x) for x in (step, tissue, gf))
        print(f"| {rule} | {s.mean():.5f} | {ti.mean():.5f} | {s.mean() / ti.mean():.2f} | {f.mean() / ti.mean():.2f} |")


def float16_check(scans) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy import ndimage

    from peelscan.peel import PeelConfig, peel_scan

    cfg = PeelConfig()
    px = np.concatenate([peel_scan(a, m, cfg, whole=False)[0].pixels for a, m, *_ in scans])
    err = px.astype(np.float16).astype(np.float32) - px
    hf = px - ndimage.gaussian_filter(px, (0, 1.0, 1.0))
    sizes = {}
    for name, arr, typ in (("float32", px, pa.float32()), ("float16", px.astype(np.float16), pa.float16())):
        col = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), typ), px.shape[1] * px.shape[2])
        buf = io.BytesIO()
        pq.write_table(pa.table({"pixels": col}), buf, compression="zstd")
        sizes[name] = buf.tell() / len(px)
    # the weakest defect's contrast: noise-free renders of the same tuber with and without a bruise
    from peelscan.preprocess import preprocess_scan
    from peelscan.synth import machine_for_lot, make_phantom, render_counts, render_dark, render_flat

    contrast = []
    for k in range(4):
        rng = np.random.default_rng(9500 + k)
        mach = machine_for_lot(rng, 256)
        dark, flat = render_dark(mach, rng, (32, 256)), render_flat(mach, rng, (32, 256))
        pair = []
        for defect in ("bruise", None):
            ph = make_phantom(np.random.default_rng(9600 + k), defect=defect)
            raw = render_counts(ph, mach, np.random.default_rng(0), noise=False)
            pair.append((preprocess_scan(raw, dark, flat).attenuation, ph.defect_mask))
        (with_d, dm), (without, _) = pair
        diff = np.abs(with_d - without)[dm]
        contrast.append((diff.mean(), diff.max()))
    contrast = np.array(contrast)
    print("\n### float32 vs float16 pixels\n")
    print(f"bruise contrast (4 noise-free pairs, normalised attenuation over its mask): mean "
          f"{contrast[:, 0].min():.4f}..{contrast[:, 0].max():.4f}, peak {contrast[:, 1].min():.4f}..{contrast[:, 1].max():.4f}")
    print(f"{len(px)} tiles, values {px.min():.3f}..{px.max():.3f}; float16 round-off: RMS {np.sqrt((err ** 2).mean()):.2e}, "
          f"max {np.abs(err).max():.2e}; pixel noise (residual of a 1-px Gaussian) RMS {hf.std():.2e}; "
          f"Parquet zstd {sizes['float32'] / 1024:.2f} KiB/tile (float32) vs {sizes['float16'] / 1024:.2f} KiB/tile (float16)")


def evidence(n: int, picture: str | None) -> None:
    scans = make_scans(n, anomaly_every=2)
    good = [s for s in scans if s[2] is None]
    print(f"{len(scans)} synthetic 256×256 scans (seed 9401), {sum(len(s[1]) for s in scans)} items, "
          f"{len(scans) - len(good)} anomalous")
    rim_profile(good)
    depth_table(scans)
    tile_grid(scans)
    fill_rules(scans)
    float16_check(scans)
    if picture:
        from peelscan.peel import PeelConfig, peel_scan
        from peelscan.peelplots import overlay_png

        cfg = PeelConfig()
        att, masks, dm, dtype, _ = next(s for s in scans if len(s[1]) >= 2 and s[2] is not None)
        tiles, _ = peel_scan(att, masks, cfg, dm, whole=False)
        Path(picture).write_bytes(overlay_png(att, masks, [cfg.peeled(m) for m in masks], tiles, cfg.tile_size,
                                              defect_mask=dm, title=f"{dtype}: {len(tiles)} tiles"))
        print(f"\nwrote {picture}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=100)
    ap.add_argument("--evidence", action="store_true", help="print the tables behind the defaults")
    ap.add_argument("--picture", default=None, help="with --evidence: write the overlay PNG here")
    args = ap.parse_args()
    if args.evidence:
        evidence(args.scans, args.picture)
    else:
        throughput(args.scans)


if __name__ == "__main__":
    main()
