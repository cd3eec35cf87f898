"""The line-side scorer: ``peelscan score``.

Loads a lot's current model, its thresholds and the preprocessing/peeling configuration the
lot was processed with, and decides scans as they arrive — a list of files, folders it
watches, or paths on stdin — printing one line per scan: decision, anomaly score, threshold,
worst item and tile, latency. It calls the same functions as the assets (decode, preprocess,
segment, peel, reconstruct, measure, aggregate): one implementation, two drivers.

Scans are processed in small batches (``--batch``): the tiles of all scans of a batch go
through the autoencoder and the measures together, which is what makes line rate reachable
on a CPU; the latency of a scan is the time of its batch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peelscan._clock import StageClock
from peelscan.config import settings
from peelscan.ids import validate_id
from peelscan.lake import Store


@dataclass
class Decision:
    scan_id: str
    source: str
    is_anomaly: bool | None
    anomaly_score: float | None
    threshold: float
    worst_item: int | None
    worst_tile_row: int | None
    worst_tile_col: int | None
    n_items: int
    n_tiles: int
    latency_ms: float
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.scan_id}\tREJECTED\t{self.source}: {self.error}"
        verdict = {True: "ANOMALY", False: "ok", None: "NO-ITEM"}[self.is_anomaly]
        score = "" if self.anomaly_score is None else f"{self.anomaly_score:.5f}"
        tile = "" if self.worst_tile_row is None else f"item {self.worst_item} tile ({self.worst_tile_row},{self.worst_tile_col})"
        return f"{self.scan_id}\t{verdict}\tscore={score}\tthreshold={self.threshold:.5f}\t{tile}\t{self.latency_ms:.1f} ms"


class LineScorer:
    """Everything needed to decide a scan of one lot, loaded once."""

    def __init__(self, lake: Store, lot_id: str, metric: str = "fsim", all_metrics: bool = False,
                 kind: str = "tiles", threads: int | None = None):
        import torch

        from peelscan.metrics import MEASURES
        from peelscan.modelstore import ModelStore
        from peelscan.peel import PeelConfig
        from peelscan.preprocess import PreprocessConfig
        from peelscan.records import frame_from_row
        from peelscan.segment import SegmentConfig

        self.lot_id = validate_id(lot_id, "lot id")
        if metric not in MEASURES:
            raise ValueError(f"unknown measure {metric!r}; one of {', '.join(MEASURES)}")
        if threads:
            torch.set_num_threads(threads)
        self.metric = metric
        self.names = list(MEASURES) if all_metrics else [metric]
        models = ModelStore(lake)
        version = models.current(self.lot_id, kind)
        if version is None:
            raise FileNotFoundError(f"lot {self.lot_id} has no current {kind} model in {lake.display('models')}")
        self.model, self.card = models.load(self.lot_id, kind, version)
        self.model.eval()
        self.version = version
        thresholds = models.read_extra(self.lot_id, kind, version, "thresholds.json")
        if thresholds is None or metric not in thresholds.get("thresholds", {}):
            raise FileNotFoundError(f"no calibrated {metric} threshold for lot {self.lot_id} model {version}: "
                                    "materialize scan_scores for the lot first")
        self.threshold = float(thresholds["thresholds"][metric])
        self.rule = thresholds.get("aggregation", "max")
        pre_cfg = lake.dataset_manifest(self.lot_id, "preprocessed")["metadata"].get("config", {})
        peel_cfg = lake.dataset_manifest(self.lot_id, "tiles")["metadata"].get("config", {})
        self.pre_cfg = PreprocessConfig.from_dict(pre_cfg)
        self.peel_cfg = PeelConfig.from_dict(peel_cfg)
        self.seg_cfg = SegmentConfig()
        n_threads = int(threads or torch.get_num_threads())
        self._pool = ThreadPoolExecutor(n_threads, thread_name_prefix="peelscan-line") if n_threads > 1 else None
        cal = {r["kind"]: np.array(frame_from_row(r)) for r in lake.read_dataset(self.lot_id, "calibration").to_pylist()}
        self.dark, self.flat = cal.get("dark"), cal.get("flat")

    def decide(self, scans: list[tuple[str, str, bytes]], timings: dict[str, float] | None = None) -> list[Decision]:
        """Decide a batch of ``(scan_id, source, file bytes)``.

        ``timings``, if given, accumulates seconds per stage (decode, preprocess, segment,
        peel, reconstruct+measures, decide) for profiling; the front-end stages (decode to
        peel) run on up to ``threads`` scans at once, so their seconds are summed over threads."""
        clock = StageClock(timings)
        from peelscan.metrics import anomaly_score
        from peelscan.peel import peel_scan
        from peelscan.preprocess import preprocess_scan
        from peelscan.scoring import score_tiles
        from peelscan.segment import segment_items
        from peelscan.xrayio import ScanRejected, decode_image

        t0 = time.perf_counter()
        out: list[Decision | None] = [None] * len(scans)
        pixels, owners = [], []

        def front(scan: tuple[str, str, bytes]):
            """decode -> preprocess -> segment -> peel of one scan: (tiles, n_items) or the rejection."""
            sid, src, data = scan
            try:
                raw = clock("decode", decode_image, data, src)
                att = clock("preprocess", preprocess_scan, raw, self.dark, self.flat, self.pre_cfg).attenuation
                found = clock("segment", segment_items, att, self.seg_cfg)
                tiles, _ = clock("peel", peel_scan, att, [it.full_mask(att.shape) for it in found], self.peel_cfg,
                                 None, whole=False)
            except ScanRejected as exc:
                return exc
            return tiles, len(found)

        # the scans of a batch go through the front end side by side (its kernels release the GIL)
        fronts = (list(self._pool.map(front, scans)) if self._pool is not None and len(scans) > 1
                  else [front(sc) for sc in scans])
        for i, ((sid, src, _), res) in enumerate(zip(scans, fronts)):
            if isinstance(res, ScanRejected):
                out[i] = Decision(sid, src, None, None, self.threshold, None, None, None, 0, 0, 0.0, res.reason)
                continue
            tiles, n_items = res
            pixels.append(tiles.pixels)
            owners.append((i, tiles, n_items))
        n = sum(len(p) for p in pixels)
        scores = (clock("reconstruct+measures", score_tiles, self.model, np.concatenate(pixels),
                        names=self.names)[self.metric] if n else np.zeros(0))
        t_decide = time.perf_counter()
        a_all = anomaly_score(self.metric, scores) if n else scores
        start = 0
        latency = (time.perf_counter() - t0) * 1000.0
        for i, tiles, n_items in owners:
            k = len(tiles.pixels)
            sid, src, _ = scans[i]
            if k == 0:
                out[i] = Decision(sid, src, None, None, self.threshold, None, None, None, n_items, 0, latency)
                continue
            a = a_all[start:start + k]
            start += k
            j = int(np.argmax(a))
            out[i] = Decision(sid, src, bool(a[j] > self.threshold), float(a[j]), self.threshold,
                              int(tiles.item_index[j]), int(tiles.tile_row[j]), int(tiles.tile_col[j]),
                              n_items, k, latency)
        if timings is not None:
            timings["decide"] = timings.get("decide", 0.0) + time.perf_counter() - t_decide
        return [d for d in out if d is not None]


def _iter_paths(args: argparse.Namespace) -> Iterator[Path]:
    seen: set[Path] = set()
    exts = {".tif", ".tiff", ".png", ".npy"}
    skip = {"dark", "flat"}

    def folder(p: Path) -> Iterable[Path]:
        return sorted(q for q in p.iterdir() if q.suffix.lower() in exts and q.stem not in skip)

    sources = args.paths or ["-"]
    while True:
        for s in sources:
            if s == "-":
                for line in sys.stdin:
                    p = Path(line.strip())
                    if line.strip() and p not in seen:
                        seen.add(p)
                        yield p
                continue
            p = Path(s)
            for q in (folder(p) if p.is_dir() else [p]):
                if q not in seen:
                    seen.add(q)
                    yield q
        if not args.watch:
            return
        time.sleep(0.2)


def main(args: argparse.Namespace) -> int:
    lake = Store(settings().lake_uri)
    scorer = LineScorer(lake, args.lot, metric=args.metric, all_metrics=args.all_metrics)
    print(f"# lot {scorer.lot_id} model {scorer.version} measure {scorer.metric} "
          f"threshold {scorer.threshold:.5f}", flush=True)
    batch: list[tuple[str, str, bytes]] = []
    n_anomalies = 0

    def flush() -> None:
        nonlocal n_anomalies
        for d in scorer.decide(batch):
            n_anomalies += bool(d.is_anomaly)
            print(d.line(), flush=True)
        batch.clear()

    for path in _iter_paths(args):
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"{path.stem}\tREJECTED\t{path}: cannot read: {exc.strerror}", flush=True)
            continue
        batch.append((path.stem, str(path), data))
        if len(batch) >= args.batch:
            flush()
    if batch:
        flush()
    return 0
