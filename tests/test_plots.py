"""peelscan.plots: every picture is a valid PNG of a sensible size; bad input is refused.

Set ``PEELSCAN_PLOTS_DIR`` to keep the pictures for a look."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from peelscan.metrics import MEASURE_NAMES
from peelscan.plots import (heatmap_png, loss_curves_png, recon_grid_png, roc_curves_png, scan_before_after_png,
                            score_distributions_png)
from peelscan.roc import auroc, roc_curve

RNG = np.random.default_rng(5)


def _check_png(png: bytes, name: str, min_w: int = 400, min_h: int = 250) -> Image.Image:
    assert isinstance(png, bytes) and png[:8] == b"\x89PNG\r\n\x1a\n", name
    assert 5_000 < len(png) < 3_000_000, (name, len(png))
    img = Image.open(io.BytesIO(png))
    img.load()  # decodes the whole image: a truncated file fails here
    assert img.format == "PNG" and img.width >= min_w and img.height >= min_h, (name, img.size)
    assert img.width <= 3000 and img.height <= 3000, (name, img.size)
    px = np.asarray(img.convert("L"))
    assert px.std() > 5, f"{name}: the picture is blank"
    keep = os.environ.get("PEELSCAN_PLOTS_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / f"{name}.png").write_bytes(png)
    return img


def _scan_scores() -> tuple[pd.DataFrame, dict, dict]:
    rows, curves, aucs = [], {}, {}
    for k, m in enumerate(MEASURE_NAMES):
        sep = 0.3 + 0.15 * k
        good = RNG.gamma(4, 0.05, 60)
        anom = RNG.gamma(4, 0.05, 20) + sep * 0.2
        y = np.r_[np.zeros(60, bool), np.ones(20, bool)]
        s = np.r_[good, anom]
        rows.append(pd.DataFrame({"metric": m, "anomaly_score": s,
                                  "label": np.where(y, "anomalous", "good"), "model_kind": "tiles"}))
        fpr, tpr, _ = roc_curve(y, s)
        curves[m], aucs[m] = (fpr, tpr), auroc(y, s)
    return pd.concat(rows, ignore_index=True), curves, aucs


def test_score_distributions_and_roc_curves():
    df, curves, aucs = _scan_scores()
    img = _check_png(score_distributions_png(df), "score_distributions", 1000, 800)
    assert img.width > img.height * 0.9  # the 4 x 4 grid
    # unlabelled scans and one measure only are fine too
    one = df[df["metric"] == "fsim"].copy()
    one.loc[one.index[:5], "label"] = None
    _check_png(score_distributions_png(one), "score_distributions_one", 250, 200)
    aucs["sam"] = None
    _check_png(roc_curves_png(curves, aucs), "roc_curves", 500, 450)
    with pytest.raises(ValueError, match="needs columns"):
        score_distributions_png(df.drop(columns=["label"]))
    with pytest.raises(ValueError, match="no finite"):
        score_distributions_png(df.assign(anomaly_score=np.nan))
    with pytest.raises(ValueError, match="no curve"):
        roc_curves_png({}, {})


def _potato(h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w]
    mask = ((rr - h / 2) / (h * 0.4)) ** 2 + ((cc - w / 2) / (w * 0.35)) ** 2 < 1
    att = np.where(mask, 0.55 + 0.05 * rng.standard_normal((h, w)), 0.02).astype(np.float32)
    return att, mask


def test_heatmap():
    panels = []
    for i in range(4):
        att, mask = _potato(seed=i)
        rows, cols = np.meshgrid(np.arange(16, 80, 8), np.arange(24, 104, 8), indexing="ij")  # overlapping tiles
        rows, cols = rows.ravel(), cols.ravel()
        a = 0.05 + 0.02 * RNG.random(rows.size)
        a[(np.abs(rows - 40) < 10) & (np.abs(cols - 60) < 10)] += 0.3 * (i + 1) / 4  # a defect
        panels.append((att, rows, cols, 16, a, f"scan-{i} (anomalous, stone)"))
    _check_png(heatmap_png(panels), "heatmap", 600, 400)
    _check_png(heatmap_png(panels[:1]), "heatmap_one", 250, 200)
    with pytest.raises(ValueError, match="3 rows, 2 cols"):
        heatmap_png([(panels[0][0], [0, 1, 2], [0, 1], 16, [1, 2, 3], "x")])
    with pytest.raises(ValueError, match="2-D image"):
        heatmap_png([(np.zeros(5), [], [], 16, [], "x")])


def test_loss_curves_and_reconstructions():
    epochs = np.arange(1, 41)
    hist = {"train_loss": list(0.02 * np.exp(-epochs / 8) + 0.001),
            "val_loss": list(0.022 * np.exp(-epochs / 9) + 0.0013 + 0.00002 * epochs), "lr": [1e-3] * 40}
    _check_png(loss_curves_png(hist), "loss_curves")
    _check_png(loss_curves_png({"train_loss": [0.5]}), "loss_curves_one")
    with pytest.raises(ValueError, match="no non-empty loss"):
        loss_curves_png({"train_loss": [], "lr": [1.0]})
    x = np.clip(0.5 + 0.1 * RNG.standard_normal((6, 32, 32)), 0, 1)
    x[3, 10:16, 10:16] = 0.95  # a stone
    r = np.clip(x + 0.03 * RNG.standard_normal(x.shape), 0, 1)
    r[3, 10:16, 10:16] = 0.5
    _check_png(recon_grid_png(x, r, ["good"] * 3 + ["stone", "bruise", "good"]), "recon_grid", 500, 300)
    with pytest.raises(ValueError, match="6 tiles but 2 titles"):
        recon_grid_png(x, r, ["a", "b"])
    with pytest.raises(ValueError, match="same shape"):
        recon_grid_png(x, r[:2])


def test_scan_before_after():
    att, mask = _potato(120, 200)
    other = np.zeros_like(mask)
    other[20:50, 10:40] = True
    counts = (50000 * np.exp(-3 * att)).astype(np.uint16)
    _check_png(scan_before_after_png(counts, att, [mask, other]), "scan_before_after", 800, 250)
    _check_png(scan_before_after_png(counts, att, []), "scan_before_after_empty", 800, 250)
    with pytest.raises(ValueError, match="item mask 0 has shape"):
        scan_before_after_png(counts, att, [mask[:10]])


def test_plots_never_import_pyplot():
    import subprocess
    out = subprocess.run([sys.executable, "-c", "import sys, peelscan.plots; print('matplotlib.pyplot' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-1000:]
