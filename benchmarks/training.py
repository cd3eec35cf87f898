"""Training time of the tile autoencoder on 2 CPU threads, two ways, in one run:

1. **per 10,000 tiles** (32×32, cut from synthetic scans, seed 9501): from scratch with the
   asset's defaults (``TrainConfig()``: SSIM loss, up to 30 epochs, early stopping) and
   warm-started from that model for the asset's ``warm_epochs`` (8); plus inference tiles/s;
2. **a lot of 500 scans through the ``autoencoder`` asset** (seed 9601, 30 % anomalous): the
   first materialization trains from scratch, the second warm-starts from the first (what the
   nightly retraining does); the seconds are the asset's own (``training_runs.seconds``).

Goals (issue 5): a 500-scan lot trains from scratch in under 2 minutes and warm-starts in
under 30 seconds.

    python benchmarks/training.py [--tiles 10000] [--threads 2] [--lot-scans 500] [--out docs/training_bench.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lot import ROOT  # noqa: E402


def synthetic_tiles(n: int, seed: int = 9501) -> tuple[np.ndarray, float]:
    """``n`` peeled good tiles and the mean tiles per scan."""
    from peelscan.peel import PeelConfig, peel_scan
    from peelscan.preprocess import preprocess_scan
    from peelscan.segment import segment_items
    from peelscan.synth import machine_for_lot, make_phantom, render_counts, render_dark, render_flat

    rng = np.random.default_rng(seed)
    machine = machine_for_lot(rng, 256)
    dark, flat = render_dark(machine, rng, (32, 256)), render_flat(machine, rng, (32, 256))
    parts, n_scans = [], 0
    while sum(len(p) for p in parts) < n:
        att = preprocess_scan(render_counts(make_phantom(rng), machine, rng), dark, flat).attenuation
        tiles, _ = peel_scan(att, [it.full_mask(att.shape) for it in segment_items(att)], PeelConfig(), whole=False)
        parts.append(tiles.pixels)
        n_scans += 1
    return np.concatenate(parts)[:n], n / n_scans


def lot_training(scans: int, threads: int) -> dict:
    """Train a ``scans``-scan lot through the asset from scratch, then warm-started."""
    import duckdb
    from dagster import materialize

    from _lot import prepare_lot
    from assets.train import autoencoder, autoencoder_no_regression

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        lot, res, instance = prepare_lot(home, scans, seed=9601, epochs=30)
        ok = materialize([autoencoder, autoencoder_no_regression], partition_key=lot, resources=res,
                         instance=instance,
                         run_config={"ops": {"autoencoder": {"config": {"threads": threads, "force_retrain": True}}}}).success
        assert ok, "warm-start training failed"
        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        runs = con.execute("SELECT n_train_tiles, epochs, seconds, parent_version FROM training_runs "
                           "ORDER BY trained_at").fetchall()
        con.close()
    (n0, e0, s0, p0), (n1, e1, s1, p1) = runs[0], runs[-1]
    assert p0 is None and p1 is not None
    return {"scans": scans, "tiles": n0, "scratch_s": s0, "scratch_epochs": e0, "warm_s": s1, "warm_epochs": e1}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lot-scans", type=int, default=500)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from peelscan.model import TrainConfig, normalise_tiles, reconstruct, train_autoencoder

    x, per_scan = synthetic_tiles(args.tiles)
    cold = train_autoencoder(x, TrainConfig(threads=args.threads, seed=0))
    warm = train_autoencoder(x, TrainConfig(epochs=8, threads=args.threads, seed=1), init_state=cold.state_dict)
    torch.set_num_threads(args.threads)
    xn = normalise_tiles(cold.model, x)
    reconstruct(cold.model, xn[:512])
    t0 = time.perf_counter()
    reconstruct(cold.model, xn)
    inf = len(x) / (time.perf_counter() - t0)
    lot = lot_training(args.lot_scans, args.threads)
    ok = lambda v, goal: "met" if v < goal else "**not met**"  # noqa: E731
    text = f"""# Autoencoder training time

`python benchmarks/training.py` — {args.threads} torch threads, {os.cpu_count()} cores, load average
{os.getloadavg()[0]:.2f} at the end. SSIM loss, Adam, batch 64, early stopping (patience 4).

| what | tiles | epochs run | seconds | per 10,000 tiles × epoch |
|---|---:|---:|---:|---:|
| {args.tiles:,} tiles from scratch | {len(x):,} | {cold.epochs_run} | {cold.seconds:.1f} | {cold.seconds / cold.epochs_run * 10000 / len(x):.2f} s |
| {args.tiles:,} tiles warm-started (8 epochs) | {len(x):,} | {warm.epochs_run} | {warm.seconds:.1f} | {warm.seconds / warm.epochs_run * 10000 / len(x):.2f} s |
| {lot['scans']}-scan lot through the asset, from scratch | {lot['tiles']:,} | {lot['scratch_epochs']} | {lot['scratch_s']:.1f} | {lot['scratch_s'] / lot['scratch_epochs'] * 10000 / lot['tiles']:.2f} s |
| {lot['scans']}-scan lot through the asset, warm start | {lot['tiles']:,} | {lot['warm_epochs']} | {lot['warm_s']:.1f} | {lot['warm_s'] / lot['warm_epochs'] * 10000 / lot['tiles']:.2f} s |

A {lot['scans']}-scan lot trains on the good scans of its `train` split less the 15 % held out for
validation ({lot['tiles']:,} tiles; {per_scan:.1f} tiles per scan). Goals: from scratch < 120 s —
{ok(lot['scratch_s'], 120)} ({lot['scratch_s']:.0f} s); warm start < 30 s — {ok(lot['warm_s'], 30)}
({lot['warm_s']:.0f} s). Inference: {inf:,.0f} tiles/s.
"""
    print(text)
    if args.out:
        (ROOT / args.out).write_text(text)


if __name__ == "__main__":
    main()
