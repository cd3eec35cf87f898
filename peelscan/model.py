"""Convolutional autoencoders for peeled tiles and whole-item images, training, reconstruction.

Trained on good samples only; a tile it cannot reconstruct is suspect. Loss after Bergmann
et al. 2019 ("Improving unsupervised defect segmentation by applying structural similarity to
autoencoders"): plain L2 gives blurry reconstructions and misses defects of similar intensity;
an SSIM term (or SSIM mixed with L2) answers it. ``loss`` is configuration.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class ConvAutoencoder(nn.Module):
    """Strided-conv encoder to a ``latent``-channel bottleneck of size/8, transposed-conv
    decoder, sigmoid output in [0, 1]. Input/output ``(N, 1, S, S)`` float32."""

    def __init__(self, size: int = 32, channels: tuple[int, ...] = (16, 32, 32), latent: int = 8):
        super().__init__()
        if size % 8:
            raise ValueError(f"size must be a multiple of 8, got {size}")
        self.size, self.channels, self.latent = size, tuple(channels), latent
        c1, c2, c3 = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(c3, latent, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, c3, 1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1), nn.Sigmoid())

    def arch(self) -> dict[str, Any]:
        return {"size": self.size, "channels": list(self.channels), "latent": self.latent}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


ARCH_DEFAULTS = {"tiles": {"channels": (16, 32, 32), "latent": 8},
                 "whole": {"channels": (16, 32, 64), "latent": 16}}


def build_autoencoder(kind: str, size: int, **arch: Any) -> ConvAutoencoder:
    """The autoencoder of an arm: ``tiles`` (32 px peeled tiles; bottleneck 8×4×4 = 128
    values for 1,024 pixels) or ``whole`` (128 px whole items; 16×16×16)."""
    if kind not in ARCH_DEFAULTS:
        raise ValueError(f"kind must be tiles or whole, got {kind!r}")
    kw = {**ARCH_DEFAULTS[kind], **arch}
    kw["channels"] = tuple(kw["channels"])
    return ConvAutoencoder(size=size, **kw)


def _gauss(window: int, sigma: float) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Differentiable SSIM map (Wang et al. 2004) with a ``window``×``window`` Gaussian (7×7
    for 32 px tiles: an 11×11 window would be a third of the tile), valid convolution."""
    k = _gauss(window, sigma).to(x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = F.conv2d(x, k), F.conv2d(y, k)
    sxx = F.conv2d(x * x, k) - mx * mx
    syy = F.conv2d(y * y, k) - my * my
    sxy = F.conv2d(x * y, k) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


@dataclass
class TrainConfig:
    """Training settings. ``loss``: ``l2`` | ``ssim`` | ``ssim_l2`` (``ssim_weight``·(1−SSIM) +
    (1−``ssim_weight``)·L2/L2₀). ``threads``: CPU threads torch may use."""

    loss: str = "ssim_l2"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    threads: int = 1
    val_fraction: float = 0.1
    patience: int = 5
    ssim_weight: float = 0.5
    max_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_fn(name: str, x: torch.Tensor, y: torch.Tensor, ssim_weight: float = 0.5) -> torch.Tensor:
    l2 = F.mse_loss(y, x)
    if name == "l2":
        return l2
    s = 1.0 - ssim_map(x, y).mean()
    if name == "ssim":
        return s
    if name == "ssim_l2":
        # L2 of normalised attenuation is ~1e-4 for good reconstructions: scale it so both terms matter
        return ssim_weight * s + (1.0 - ssim_weight) * l2 * 100.0
    raise ValueError(f"loss must be l2, ssim or ssim_l2, got {name!r}")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use exactly ``n`` CPU threads inside the block, then restore."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class TrainResult:
    model: ConvAutoencoder
    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    seconds: float
    n_train: int
    n_val: int
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def _as_tensor(tiles: np.ndarray) -> torch.Tensor:
    a = np.asarray(tiles, dtype=np.float32)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"tiles must be (N, S, S), got {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a))[:, None]


def train_autoencoder(tiles: np.ndarray, config: TrainConfig, kind: str = "tiles",
                      init_state: dict[str, torch.Tensor] | None = None,
                      val_tiles: np.ndarray | None = None) -> TrainResult:
    """Train on ``tiles`` ``(N, S, S)`` float32 in [0, 1] (good samples only).

    Validation: ``val_tiles`` if given, else a seeded ``val_fraction`` of ``tiles``; early
    stopping after ``patience`` epochs without improvement, best weights restored. Seeded
    and repeatable on CPU (same data + seed → same weights); uses ``config.threads`` threads.
    ``init_state`` warm-starts from a previous model's weights.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    x = np.asarray(tiles, dtype=np.float32)
    if val_tiles is None or len(val_tiles) == 0:
        perm = rng.permutation(len(x))
        n_val = max(1, int(round(len(x) * config.val_fraction))) if len(x) > 1 else 0
        val_tiles, x = x[perm[:n_val]], x[perm[n_val:]]
    if len(x) == 0:
        raise ValueError("no training tiles")
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        model = build_autoencoder(kind, x.shape[-1])
        if init_state is not None:
            model.load_state_dict(init_state)
        xt, vt = _as_tensor(x), _as_tensor(val_tiles) if len(val_tiles) else None
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        hist: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        best, best_state, best_epoch, bad = float("inf"), None, 0, 0
        epoch = 0
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.from_numpy(rng.permutation(len(xt)))
            total = 0.0
            for i in range(0, len(xt), config.batch_size):
                b = xt[order[i:i + config.batch_size]]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(config.loss, b, model(b), config.ssim_weight)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            hist["train_loss"].append(total / len(xt))
            model.eval()
            with torch.inference_mode():
                if vt is not None:
                    v = sum(float(loss_fn(config.loss, vt[i:i + 512], model(vt[i:i + 512]), config.ssim_weight))
                            * len(vt[i:i + 512]) for i in range(0, len(vt), 512)) / len(vt)
                else:
                    v = hist["train_loss"][-1]
            hist["val_loss"].append(v)
            if v < best - 1e-6:
                best, best_epoch, bad = v, epoch, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
                if bad >= config.patience:
                    break
            if config.max_seconds and time.perf_counter() - t0 > config.max_seconds:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
    return TrainResult(model, hist, best_epoch, epoch, time.perf_counter() - t0, len(x), len(val_tiles),
                       {k: t.detach().clone() for k, t in model.state_dict().items()})


def reconstruct(model: nn.Module, tiles: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Reconstructions ``(N, S, S)`` float32 of ``tiles`` ``(N, S, S)``."""
    x = _as_tensor(tiles)
    out = np.empty(x.shape[:1] + x.shape[2:], dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out[i:i + batch_size] = model(x[i:i + batch_size])[:, 0].numpy()
    return out


def reconstruction_error(tiles: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Mean squared error per tile, ``(N,)`` float64."""
    d = np.asarray(tiles, np.float64) - np.asarray(recon, np.float64)
    return (d * d).reshape(len(d), -1).mean(axis=1)
