"""Throughput of peelscan.metrics against the reference implementations.

In one run, on the same batch of tile pairs (default 1,024 pairs at 32x32 and at 64x64,
float32 in [0, 1]: smooth random tiles and noisy reconstructions), time

* each of the thirteen measures alone (``compute_measures(names=[m])``) and all thirteen
  together (``compute_measures``);
* piq 0.8.0 batched (``fsim(chromatic=False)``, ``gmsd``, ``ssim``) on the whole batch;
* image-similarity-measures 0.3.6 (``fsim``, which calls phasepack's ``phasecong``, and
  ``issm``, ``uiq``, ``ssim``), which work one pair at a time: a subset of ``--subset`` pairs is
  timed and the rate extrapolated to the batch (said so in the table);
* best of ``--repeats`` rounds, each round running every one of them once, so that each ratio
  compares ours and the reference in the same state of the shared machine;
* then FSIM on one thread with its time split by step (the FFT floor, docs/metrics.md).

Prints a table of pairs per second and speed-up ratios and writes it as markdown (``--out``).
Usage::

    python benchmarks/metrics.py --out docs/metrics_bench.md
    python benchmarks/metrics.py --n 128 --sizes 32      # quick check
    python benchmarks/metrics.py --profile fsim --sizes 64   # torch profiler table for FSIM

The thread count is torch's default unless ``--threads`` is given.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import math
import os
import platform
import sys
import time
import types
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peelscan import metrics as M  # noqa: E402


def load_piq():
    """piq's metric modules without piq/__init__.py (which imports torchvision); None if absent."""
    if "piq" not in sys.modules:
        spec = importlib.util.find_spec("piq")
        if spec is None or spec.submodule_search_locations is None:
            return None
        pkg = types.ModuleType("piq")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["piq"] = pkg
    return types.SimpleNamespace(
        fsim=importlib.import_module("piq.fsim").fsim,
        gmsd=importlib.import_module("piq.gmsd").gmsd,
        ssim=importlib.import_module("piq.ssim").ssim,
    )


def load_ism():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("image_similarity_measures.quality_metrics")
    except ImportError:
        return None


def make_batch(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random tiles (Gaussian-filtered noise, sigma 1.5 px) in [0, 1] and reconstructions
    with 5 % Gaussian noise, clipped; float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    k = torch.exp(-0.5 * (torch.arange(-4, 5, dtype=torch.float32) / 1.5) ** 2)
    k = k / k.sum()
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (4, 4, 0, 0), mode="reflect"), k.view(1, 1, 1, 9))
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, 4, 4), mode="reflect"), k.view(1, 1, 9, 1))
    x = x[:, 0]
    lo = x.amin(dim=(1, 2), keepdim=True)
    hi = x.amax(dim=(1, 2), keepdim=True)
    x = (x - lo) / (hi - lo)
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x.numpy(), y.numpy()


def best_times(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best wall time of each callable over ``repeats`` rounds; every round runs all of them
    once, in order, so ours and the references are timed side by side in the same state of the
    (shared, noisy) machine rather than minutes apart."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def run(n: int, sizes: list[int], subset: int, repeats: int) -> list[dict]:
    piq = load_piq()
    ism = load_ism()
    rows: list[dict] = []
    for size in sizes:
        x, y = make_batch(n, size)
        M.compute_measures(x[:4], y[:4])  # build the cached filters outside the timing
        # (measure, reference label or "" for ours, pairs per call, note, fn)
        timed: list[tuple[str, str, int, str, Callable[[], object]]] = []
        for name in M.MEASURE_NAMES:
            timed.append((name, "", n, "", functools.partial(M.compute_measures, x, y, names=[name])))
        timed.append(("all 13", "", n, "", functools.partial(M.compute_measures, x, y)))
        if piq is not None:
            tx, ty = torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None]
            piq_fns = {
                "fsim": lambda: piq.fsim(tx, ty, data_range=1.0, reduction="none", chromatic=False),
                "gmsd": lambda: piq.gmsd(tx, ty, data_range=1.0, reduction="none"),
                "ssim": lambda: piq.ssim(tx, ty, data_range=1.0, reduction="none"),
            }
            for name, fn in piq_fns.items():
                timed.append((name, "piq 0.8.0 (batched)", n, "whole batch", torch.no_grad()(fn)))
        if ism is not None:
            k = min(subset, n)
            # the library's conventions: (H, W, 1) arrays on a 12-bit scale (see docs/metrics.md)
            xs = [a[..., None].astype(np.float64) * 4095 for a in x[:k]]
            ys = [b[..., None].astype(np.float64) * 4095 for b in y[:k]]
            for name, fn in {"fsim": ism.fsim, "issm": ism.issm, "uiq": ism.uiq, "ssim": ism.ssim}.items():
                kk = k if name != "uiq" else max(1, k // 4)
                label = "image-similarity-measures 0.3.6" + (" / phasepack" if name == "fsim" else "")
                pairs = list(zip(xs[:kk], ys[:kk]))
                timed.append((name, label, kk, f"{kk} pairs timed, extrapolated",
                              lambda fn=fn, pairs=pairs: [fn(a, b) for a, b in pairs]))
        for *_, fn in timed:  # warm-up: numba compilation, torch and library caches
            fn()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best = best_times([fn for *_, fn in timed], repeats)
        rates = [(name, label, pairs / t, note) for (name, label, pairs, note, _), t in zip(timed, best)]
        ours = {name: rate for name, label, rate, _ in rates if not label}
        for name, rate in ours.items():
            refs = [(label, rr, note) for nm, label, rr, note in rates if label and nm == name]
            if not refs:
                rows.append({"size": size, "measure": name, "ours": rate, "ref": "", "ref_rate": None, "note": ""})
            for label, rr, note in refs:
                rows.append({"size": size, "measure": name, "ours": rate, "ref": label, "ref_rate": rr, "note": note})
    return rows


def to_markdown(rows: list[dict], n: int, threads: int) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    head = [
        "# peelscan.metrics throughput",
        "",
        f"Taken {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()} with "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {threads} torch thread(s), load average "
        f"{load[0]:.2f}. Batch: {n} tile pairs per size, float32 in [0, 1]. Pairs per second, "
        "best of the rounds (each round times every measure and every reference once, so each "
        "ratio compares the two in the same state of the machine); per-pair references timed on "
        "a subset and extrapolated.",
        "",
        "| size | measure | peelscan pairs/s | reference | reference pairs/s | speed-up | note |",
        "|---:|---|---:|---|---:|---:|---|",
    ]
    lines = []
    for r in rows:
        rr = r["ref_rate"]
        ref_rate = "" if rr is None else f"{rr:,.1f}"
        ratio = "" if rr is None else f"{r['ours'] / rr:,.1f}x"
        lines.append(
            f"| {r['size']} | {r['measure']} | {r['ours']:,.0f} | {r['ref']} | {ref_rate} | {ratio} | {r['note']} |"
        )
    return "\n".join(head + lines) + "\n"


def fsim_budget(n: int, sizes: list[int], repeats: int) -> list[dict]:
    """Where FSIM's time goes, on one thread: seconds per step of ``_fsim_pairs`` (its stage
    clock) for the benchmark batch, the best of ``repeats`` runs by wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for size in sizes:
            x, y = make_batch(n, size)
            x, y = np.ascontiguousarray(x * 255), np.ascontiguousarray(y * 255)
            M._fsim_pairs(x[:8], y[:8])
            best: tuple[float, dict[str, float]] | None = None
            for _ in range(repeats):
                stages: dict[str, float] = {}
                t = time.perf_counter()
                M._fsim_pairs(x, y, stages=stages)
                wall = time.perf_counter() - t
                if best is None or wall < best[0]:
                    best = (wall, stages)
            wall, stages = best  # type: ignore[misc]
            hw = size * size
            flop = 33 * 5 * hw * math.log2(hw)  # 1 forward + 32 inverse complex transforms per pair
            rows.append({
                "size": size, "wall_us": wall / n * 1e6,
                "stages_us": {k: v / n * 1e6 for k, v in stages.items()},
                "mflop": flop / 1e6, "gflops": flop * n / stages["transforms"] / 1e9,
            })
    finally:
        torch.set_num_threads(threads)
    return rows


def budget_markdown(rows: list[dict], n: int) -> str:
    order = ["transforms", "spectra", "phase congruency", "pack"]
    head = [
        "",
        "## Where FSIM's time goes (one thread)",
        "",
        f"`_fsim_pairs` on the same {n} pairs (0..255 scale, float32), one torch thread, best of the "
        "repeats; microseconds per pair per step. *transforms*: the forward and the 32 inverse FFTs "
        "(oneMKL through torch); *spectra*: the 32 filter products; *phase congruency*: amplitudes, "
        "energy, the eight noise medians, Scharr gradients and the pooled similarity; *pack*: x + i y.",
        "",
        "| size | FSIM µs/pair | " + " | ".join(order) + " | transforms MFLOP/pair | transforms GFLOP/s | FSIM / transforms |",
        "|---:|---:|" + "---:|" * len(order) + "---:|---:|---:|",
    ]
    lines = []
    for r in rows:
        st = r["stages_us"]
        cells = " | ".join(f"{st.get(k, 0.0):,.1f}" for k in order)
        lines.append(
            f"| {r['size']} | {r['wall_us']:,.1f} | {cells} | {r['mflop']:.2f} | {r['gflops']:.1f} | "
            f"{r['wall_us'] / st['transforms']:.2f}x |"
        )
    return "\n".join(head + lines) + "\n"


def profile_measure(name: str, n: int, size: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    x, y = make_batch(n, size)
    M.compute_measures(x[:4], y[:4], names=[name])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        M.compute_measures(x, y, names=[name])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="tile pairs per size (default 1024)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--subset", type=int, default=16, help="pairs timed for per-pair references")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the table as markdown here")
    ap.add_argument("--profile", default=None, help="print a torch profile of one measure instead")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.profile:
        profile_measure(a.profile, a.n, a.sizes[0])
        return 0
    rows = run(a.n, a.sizes, a.subset, a.repeats)
    md = to_markdown(rows, a.n, torch.get_num_threads())
    md += budget_markdown(fsim_budget(a.n, a.sizes, a.repeats), a.n)
    print(md)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
