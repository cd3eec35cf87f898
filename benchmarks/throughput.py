"""Line rate: scans per second and per-scan latency of the line-side scorer, end to end.

A synthetic lot (seed 9201, used by no test or default) is taken through the asset graph to
get a model and calibrated thresholds; 512 further scans of the same lot, never seen in
training, are then decided by :class:`peelscan.linescan.LineScorer` — decode, preprocess,
segment, peel, reconstruct, measure, decide — from the files' bytes, in batches. Reported:
scans/s, and p50/p99 of the per-scan latency (the wall time of the batch a scan is in), for
the primary measure (FSIM) alone and for all thirteen, plus where the time goes. Then the
same lot is materialized again tiled without overlap (``peeled_tiles`` stride 32 = the tile
size: about a quarter of the tiles), its FSIM line rate measured on the same scans, and both
tilings' detection (AUROC, TPR at 1 % FPR of FSIM and SSIM on the lot's eval split) reported
side by side: the price of the faster tiling.

Goals on 2 cores: ≥ 100 scans/s with FSIM (two 30 t/h lines), p99 ≤ 50 ms; ≥ 20 scans/s with
all thirteen.

    python benchmarks/throughput.py [--train-scans 160] [--line-scans 512] [--out docs/throughput.md]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _lot import materialize_lot


def split_landing(gen: Path, landing: Path, line: Path, lot: str, n_train: int) -> None:
    """Scans 0..n_train-1 (with frames and labels) into the landing lot, the rest to ``line``."""
    src = gen / lot
    scans = sorted(p for p in src.iterdir() if p.is_file() and p.stem not in ("dark", "flat", "labels"))
    (landing / lot / "masks").mkdir(parents=True, exist_ok=True)
    line.mkdir(parents=True, exist_ok=True)
    keep = {p.stem for p in scans[:n_train]}
    for p in src.iterdir():
        if p.is_file() and p.stem in ("dark", "flat"):
            shutil.copy(p, landing / lot / p.name)
    for p in scans:
        shutil.copy(p, (landing / lot / p.name) if p.stem in keep else (line / p.name))
    for m in (src / "masks").glob("*.png"):
        if m.stem in keep:
            shutil.copy(m, landing / lot / "masks" / m.name)
    with open(src / "labels.csv", newline="") as f:
        rows = [r for r in csv.reader(f)]
    with open(landing / lot / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        w.writerows(r for r in rows[1:] if r[0] in keep)


def run(scorer, files: list[Path], batch: int) -> tuple[float, np.ndarray, dict]:
    data = [(p.stem, str(p), p.read_bytes()) for p in files]  # the line delivers bytes
    timings: dict[str, float] = {}
    scorer.decide(data[:batch], timings={})  # warm-up: allocations, FFT plans
    lat = []
    t0 = time.perf_counter()
    for i in range(0, len(data), batch):
        b = data[i:i + batch]
        s = time.perf_counter()
        scorer.decide(b, timings=timings)
        lat += [(time.perf_counter() - s) * 1000.0] * len(b)
    wall = time.perf_counter() - t0
    return len(data) / wall, np.array(lat), timings


def _line_worker(args: tuple) -> tuple[float, list[float], dict]:
    """One line's scorer in its own process (one core, one torch thread): decide ``files``."""
    lake_uri, lot, metric, all_metrics, files, batch = args
    import torch

    from peelscan.lake import Store
    from peelscan.linescan import LineScorer

    torch.set_num_threads(1)
    scorer = LineScorer(Store(lake_uri), lot, metric=metric, all_metrics=all_metrics, threads=1)
    rate, lat, timings = run(scorer, [Path(f) for f in files], batch)
    return rate, lat.tolist(), timings


def run_two_lines(lake_uri: str, lot: str, metric: str, all_metrics: bool, files: list[Path],
                  batch: int) -> tuple[float, np.ndarray]:
    """Two lines at once, one process per core, each deciding half the scans: aggregate scans/s
    (total scans / wall time of the slower line) and the pooled per-scan latencies."""
    import multiprocessing as mp

    halves = [[str(f) for f in files[0::2]], [str(f) for f in files[1::2]]]
    with mp.get_context("spawn").Pool(2) as pool:
        out = pool.map(_line_worker, [(lake_uri, lot, metric, all_metrics, h, batch) for h in halves])
    wall = max(len(h) / r for h, (r, _, _) in zip(halves, out))
    return len(files) / wall, np.concatenate([np.array(lat) for _, lat, _ in out])


def tiles_per_scan(scorer, files: list[Path], n: int = 64) -> float:
    """Mean tiles per scan over the first ``n`` files."""
    ds = scorer.decide([(p.stem, str(p), p.read_bytes()) for p in files[:n]])
    return float(np.mean([d.n_tiles for d in ds]))


def detection_rows(home: Path) -> list[tuple]:
    """(metric, auroc, tpr_at_fpr_1pct, n_good, n_anomalous) of the tile model for FSIM and
    SSIM from the lot's roc_summaries (its eval split)."""
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute("SELECT metric, auroc, tpr_at_fpr_1pct, n_good, n_anomalous FROM roc_summaries "
                           "WHERE model_kind = 'tiles' AND metric IN ('fsim', 'ssim') ORDER BY metric").fetchall()
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-scans", type=int, default=160)
    ap.add_argument("--line-scans", type=int, default=512)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--two-line-batches", default="1,4,8")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-stride32", dest="stride32", action="store_false",
                    help="skip the second lot tiled at stride 32")
    args = ap.parse_args()
    import torch

    from peelscan.lake import Store
    from peelscan.linescan import LineScorer
    from peelscan.synth import write_landing

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        lot = write_landing(str(home / "gen"), lots=1, scans=args.train_scans + args.line_scans,
                            anomaly_rate=0.2, seed=9201)[0]
        split_landing(home / "gen", home / "landing", home / "line", lot, args.train_scans)
        os.environ["PEELSCAN_HOME"] = str(home)
        materialize_lot(home, lot, through="scan_scores")
        files = sorted((home / "line").iterdir())
        lake = Store(str(home / "lake"))
        rows, profiles = [], {}

        def measure(label: str, lake_dir: Path, metric: str, all_metrics: bool) -> None:
            """One scorer's rows: each batch size in one process, then as two lines."""
            scorer = LineScorer(Store(str(lake_dir)), lot, metric=metric, all_metrics=all_metrics)
            for b in [int(x) for x in args.batches.split(",")]:
                rate, lat, timings = run(scorer, files, b)
                rows.append((label, "1 process, 2 threads", b, rate, float(np.percentile(lat, 50)),
                             float(np.percentile(lat, 99))))
                profiles[(label, b)] = timings
                print(f"{label:7s} batch {b:3d}: {rate:7.1f} scans/s  p50 {rows[-1][4]:6.1f} ms  p99 {rows[-1][5]:6.1f} ms",
                      flush=True)
            for b in [int(x) for x in args.two_line_batches.split(",")]:
                rate, lat = run_two_lines(str(lake_dir), lot, metric, all_metrics, files, b)
                rows.append((label, "2 lines: 2 processes × 1 thread", b, rate, float(np.percentile(lat, 50)),
                             float(np.percentile(lat, 99))))
                print(f"{label:7s} two lines batch {b:3d}: {rate:7.1f} scans/s  p50 {rows[-1][4]:6.1f} ms  "
                      f"p99 {rows[-1][5]:6.1f} ms", flush=True)

        for label, metric, all_metrics in (("FSIM", "fsim", False), ("SSIM", "ssim", False),
                                           ("all 13", "fsim", True)):
            measure(label, home / "lake", metric, all_metrics)
        # the same scans, the lot tiled without overlap (stride = tile size): a quarter of the
        # tiles per scan, at the detection cost measured on the lot's eval split below
        detection = [("stride 16 (default)", home, tiles_per_scan(LineScorer(lake, lot), files))]
        if args.stride32:
            home32 = home / "stride32"
            split_landing(home / "gen", home32 / "landing", home32 / "line", lot, args.train_scans)
            materialize_lot(home32, lot, through="scan_scores", peel={"stride": 32})
            detection.append(("stride 32", home32, tiles_per_scan(LineScorer(Store(str(home32 / "lake")), lot), files)))
            measure("FSIM, stride 32", home32 / "lake", "fsim", False)
        dlines = ["| tiling | tiles per scan | measure | AUROC | TPR at 1 % FPR | good / anomalous eval scans |",
                  "|---|---:|---|---:|---:|---|"]
        for name, h, tps in detection:
            for metric, auc, tpr, ng, na in detection_rows(h):
                dlines.append(f"| {name} | {tps:.1f} | {metric} | {auc:.3f} | {tpr:.3f} | {ng} / {na} |")
    lines = ["| measures | layout | batch | scans/s | p50 latency (ms) | p99 latency (ms) |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {lay} | {b} | {r:.1f} | {p50:.1f} | {p99:.1f} |" for m, lay, b, r, p50, p99 in rows]
    best_key = max(((m, b) for m, lay, b, *_ in rows if m == "FSIM" and lay.startswith("1 ")),
                   key=lambda k: next(r for m, lay, b, r, *_ in rows if (m, b) == k and lay.startswith("1 ")))
    prof = profiles[best_key]
    total = sum(prof.values()) or 1.0
    plines = ["| stage | share of time |", "|---|---|"] + [f"| {k} | {v / total:.0%} |" for k, v in
                                                            sorted(prof.items(), key=lambda kv: -kv[1])]
    text = (f"# Line-rate throughput\n\n{len(files)} unseen 256×256 scans (16-bit TIFF bytes) of a synthetic lot, "
            f"{args.threads} torch threads, {os.cpu_count()} cores. Latency of a scan = wall time of its batch "
            "(add the time to fill a batch at line rate: 20 ms per scan at 50 scans/s).\n\n"
            + "\n".join(lines) + f"\n\nWhere the time goes (FSIM, batch {best_key[1]}; front-end stages summed over "
            "the scorer's threads):\n\n" + "\n".join(plines)
            + "\n\nDetection of the two tilings on the lot's own eval split (its roc_summaries):\n\n"
            + "\n".join(dlines) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
