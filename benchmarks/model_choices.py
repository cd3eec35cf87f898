"""The evidence behind the autoencoder's defaults: loss and input normalisation, compared on one
synthetic lot (seed 9401, used by no test or default).

The lot is taken through the asset graph up to ``peeled_tiles``; then, outside Dagster, for
each variant the tile autoencoder is trained on the good ``train`` tiles
(:func:`peelscan.model.train_autoencoder`, the asset's code path), every ``eval`` tile is
scored with all thirteen measures (:func:`peelscan.scoring.score_tiles`), scans take their
worst tile (the default rule), and AUROC is computed per measure and per defect type (against
all good eval scans).

    python benchmarks/model_choices.py [--scans 300] [--epochs 15] [--out docs/model_choices.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _lot import ROOT, materialize_lot

VARIANTS = [
    ("ssim_l2, no stretch", {"loss": "ssim_l2", "normalise": False}),
    ("l2, stretch", {"loss": "l2", "normalise": True}),
    ("ssim_l2, stretch", {"loss": "ssim_l2", "normalise": True}),
    ("ssim, stretch (default)", {"loss": "ssim", "normalise": True}),
]


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    from peelscan.roc import auroc

    return float(auroc(y, s))


def prepare(home: Path, scans: int, seed: int) -> str:
    """Write the lot and take it through the asset graph up to ``peeled_tiles``."""
    from peelscan.synth import write_landing

    lot = write_landing(str(home / "landing"), lots=1, scans=scans, anomaly_rate=0.35, seed=seed,
                        lot_prefix="choice")[0]
    materialize_lot(home, lot, through="peeled_tiles")
    return lot


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=9401)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from peelscan.lake import Store
    from peelscan.metrics import MEASURES, anomaly_score
    from peelscan.model import TrainConfig, train_autoencoder
    from peelscan.peel import table_to_pixels
    from peelscan.scoring import score_tiles

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        lot = prepare(home, args.scans, args.seed)
        table = Store(str(home / "lake")).read_dataset(lot, "tiles")
    meta = table.drop(["pixels"]).to_pandas()
    px = table_to_pixels(table)
    train = (meta["split"] == "train").to_numpy()
    ev = meta[~train].reset_index(drop=True)
    rows, per_type = [], []
    for name, kw in VARIANTS:
        cfg = TrainConfig(epochs=args.epochs, threads=2, seed=0, **kw)
        res = train_autoencoder(px[train], cfg)
        scores = score_tiles(res.model, px[~train])
        row = {"variant": name, "train s": round(res.seconds, 1)}
        for m in MEASURES:
            d = ev.assign(a=anomaly_score(m, scores[m]))
            scan = d.groupby("scan_id").agg(a=("a", "max"), label=("label", "first"), dt=("defect_type", "first"))
            y = (scan["label"] == "anomalous").to_numpy()
            row[m] = _auroc(y, scan["a"].to_numpy())
            good = scan.loc[~y, "a"].to_numpy()
            for dt, g in scan[y].groupby("dt"):
                per_type.append({"variant": name, "measure": m, "defect_type": dt,
                                 "auroc": _auroc(np.r_[np.zeros(len(good)), np.ones(len(g))],
                                                 np.r_[good, g["a"].to_numpy()])})
        rows.append(row)
        print(name, f"{res.seconds:.0f}s", {m: round(row[m], 3) for m in ("ssim", "fsim", "gmsd")}, flush=True)
    table_ = pd.DataFrame(rows)
    pt = pd.DataFrame(per_type)
    best = {r["variant"]: max(MEASURES, key=lambda m: r[m]) for r in rows}
    pt_best = (pt[pt.apply(lambda r: r["measure"] == best[r["variant"]], axis=1)]
               .pivot(index="variant", columns="defect_type", values="auroc")
               .reindex([v for v, _ in VARIANTS]))
    pt_best.insert(0, "best measure", [best[v] for v, _ in VARIANTS])
    text = (f"# Autoencoder choices: loss and input normalisation\n\n"
            f"`python benchmarks/model_choices.py` — one synthetic lot (seed {args.seed}, {args.scans} scans, "
            f"35 % anomalous, all seven defect types; {int(train.sum()):,} training tiles, "
            f"{int((~train).sum()):,} eval tiles), tile autoencoder, {args.epochs} epochs, seed 0. Scan score = "
            f"worst tile; AUROC on the eval split.\n\n"
            f"## AUROC per measure\n\n{table_.to_markdown(index=False, floatfmt='.3f')}\n\n"
            f"## AUROC per defect type, best measure of each variant\n\n{pt_best.reset_index().to_markdown(index=False, floatfmt='.3f')}\n")
    print(text)
    if args.out:
        (ROOT / args.out).write_text(text)


if __name__ == "__main__":
    main()
