"""Training time of the tile autoencoder on 2 CPU threads: per 10,000 tiles (32×32), from
scratch and warm-started, and inference tiles/s.

    python benchmarks/training.py [--tiles 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    import torch

    from peelscan.model import TrainConfig, reconstruct, train_autoencoder
    from peelscan.peel import PeelConfig, peel_scan
    from peelscan.preprocess import preprocess_scan
    from peelscan.segment import segment_items
    from peelscan.synth import machine_for_lot, make_phantom, render_counts, render_dark, render_flat

    rng = np.random.default_rng(9501)
    machine = machine_for_lot(rng, 256)
    dark, flat = render_dark(machine, rng, (32, 256)), render_flat(machine, rng, (32, 256))
    parts, n_scans = [], 0
    while sum(len(p) for p in parts) < args.tiles:
        att = preprocess_scan(render_counts(make_phantom(rng), machine, rng), dark, flat).attenuation
        tiles, _ = peel_scan(att, [it.full_mask(att.shape) for it in segment_items(att)], PeelConfig(), whole=False)
        parts.append(tiles.pixels)
        n_scans += 1
    x = np.concatenate(parts)[: args.tiles]
    per_scan = args.tiles / n_scans
    cfg = TrainConfig(epochs=args.epochs, threads=args.threads, seed=0)
    cold = train_autoencoder(x, cfg)
    warm_cfg = TrainConfig(epochs=args.epochs, threads=args.threads, seed=1)
    warm = train_autoencoder(x, warm_cfg, init_state=cold.state_dict)
    torch.set_num_threads(args.threads)
    reconstruct(cold.model, x[:512])
    t0 = time.perf_counter()
    reconstruct(cold.model, x)
    inf = len(x) / (time.perf_counter() - t0)
    lot500 = 500 * per_scan / args.tiles
    print(f"{args.tiles} tiles ({per_scan:.1f} tiles per scan), {args.threads} threads")
    print(f"from scratch: {cold.seconds:.1f} s, {cold.epochs_run} epochs (best {cold.best_epoch}), "
          f"val loss {min(cold.history['val_loss']):.4f}")
    print(f"warm start:   {warm.seconds:.1f} s, {warm.epochs_run} epochs (best {warm.best_epoch}), "
          f"val loss {min(warm.history['val_loss']):.4f}")
    print(f"a 500-scan lot ({500 * per_scan:,.0f} tiles): from scratch ~{cold.seconds * lot500:.0f} s "
          f"(goal < 120 s), warm ~{warm.seconds * lot500:.0f} s (goal < 30 s)")
    print(f"inference: {inf:,.0f} tiles/s")


if __name__ == "__main__":
    main()
