"""Convolutional autoencoders for peeled tiles and whole-item images: build, train, reconstruct.

The autoencoder is trained on good samples only; a tile it cannot reconstruct is suspect
(reconstruction-based anomaly detection). Two arms share one code path:

- ``tiles`` (the method): 32×32 peeled interior tiles (``peelscan.peel``), bottleneck 8×4×4.
- ``whole`` (the earlier research's baseline): 128×128 whole-item images, potato centred on a
  zero background, bottleneck 16×8×8.

Loss after Bergmann et al. 2019, "Improving unsupervised defect segmentation by applying
structural similarity to autoencoders" (VISAPP): plain L2 gives blurry reconstructions and
misses defects whose mean intensity is close to good tissue; an SSIM term (Wang et al. 2004,
"Image quality assessment: from error visibility to structural similarity") penalises lost
local structure. ``loss`` is configuration: ``l2``, ``ssim`` (the default) or ``ssim_l2``.
docs/model.md records the evidence behind the architecture, the loss and the defaults.

Everything here is CPU-first and deterministic for a seed: training seeds its own RNG streams
(a forked torch RNG and a numpy ``Generator``), runs torch's deterministic algorithms, and uses
exactly the configured number of threads, restoring all global torch state afterwards.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("tiles", "whole")
LOSSES = ("l2", "ssim", "ssim_l2")

#: Default architecture per arm (``build_autoencoder`` keyword arguments). One stride-2 conv
#: per entry of ``channels``; the bottleneck is ``latent`` × (size / 2**len(channels))².
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiles": {"channels": (16, 32, 32), "latent": 8},          # 32 px -> 8×4×4 = 128 values (1/8)
    "whole": {"channels": (16, 32, 64, 64), "latent": 16},     # 128 px -> 16×8×8 = 1,024 values (1/16)
}

#: SSIM window used by the loss: 7×7 Gaussian, σ = 1.5 px. The 11×11 window of Wang et al.
#: would leave only a 22×22 valid map on a 32 px tile (a third of the tile's width per window);
#: 7×7 keeps the σ = 1.5 weighting (99 % of the Gaussian's mass lies within ±3 px) and gives
#: a 26×26 valid map. See docs/model.md.
SSIM_WINDOW = 7
SSIM_SIGMA = 1.5


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder, input and output ``(N, 1, size, size)`` float32 in [0, 1].

    Encoder: one 3×3 stride-2 convolution (+ LeakyReLU 0.1) per entry of ``channels``, then a
    1×1 convolution to ``latent`` channels (linear: the bottleneck). Decoder: a 1×1
    convolution back to ``channels[-1]``, one 4×4 stride-2 transposed convolution per level
    (a kernel divisible by the stride: no checkerboard), a sigmoid on the output.

    Args:
        size: side of the square input in pixels; a multiple of ``2**len(channels)``.
        channels: encoder widths, one per stride-2 level (decoder mirrors them).
        latent: channels of the bottleneck.
    """

    def __init__(self, size: int = 32, channels: tuple[int, ...] | list[int] = (16, 32, 32), latent: int = 8):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or any(c <= 0 for c in channels) or int(latent) <= 0:
            raise ValueError(f"channels must be a non-empty tuple of positive widths and latent positive, "
                             f"got channels={channels}, latent={latent}")
        factor = 2 ** len(channels)
        if int(size) <= 0 or int(size) % factor:
            raise ValueError(f"size must be a positive multiple of {factor} (2**len(channels)), got {size}")
        self.size, self.channels, self.latent = int(size), channels, int(latent)
        enc: list[nn.Module] = []
        prev = 1
        for c in channels:
            enc += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.LeakyReLU(0.1)]
            prev = c
        enc.append(nn.Conv2d(prev, self.latent, 1))
        dec: list[nn.Module] = [nn.Conv2d(self.latent, prev, 1), nn.LeakyReLU(0.1)]
        outs = list(reversed(channels[:-1])) + [1]
        for c in outs:
            dec.append(nn.ConvTranspose2d(prev, c, 4, stride=2, padding=1))
            dec.append(nn.LeakyReLU(0.1) if c != 1 else nn.Sigmoid())
            prev = c
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        # The input normalisation of the lot (see fit_normalisation): saved with the weights.
        self.register_buffer("input_offset", torch.zeros(()))
        self.register_buffer("input_scale", torch.ones(()))

    @property
    def bottleneck_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the code."""
        s = self.size // 2 ** len(self.channels)
        return self.latent, s, s

    def arch(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this architecture (``build_autoencoder``)."""
        return {"size": self.size, "channels": list(self.channels), "latent": self.latent}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` ``(N, 1, size, size)``, already in the model's normalised space
        (:meth:`normalise`)."""
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for inference, with each 4x4 stride-2 transposed convolution run as
        its sub-pixel equivalent (:func:`subpixel_weights`: one 3x3 convolution to 4x the
        channels, then a 2x pixel shuffle; Shi et al., "Real-Time Single Image and Video
        Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016).
        Same sums in another order: equal to ``forward`` within float32 round-off, and 3-4x
        faster on CPU, where oneDNN has no fast path for small transposed convolutions."""
        h = self.encoder(x)
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, nn.ConvTranspose2d):
                w, b = self._subpixel(i, layer)
                h = nn.functional.pixel_shuffle(nn.functional.conv2d(h, w, b, padding=1), 2)
            else:
                h = layer(h)
        return h

    def _subpixel(self, i: int, layer: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`subpixel_weights` of decoder layer ``i``, cached until its parameters change
        (training steps bump the tensors' version counters) and kept in the weight's memory
        format."""
        cache = self.__dict__.setdefault("_subpixel_cache", {})
        key = tuple((t.data_ptr(), t._version) for t in (layer.weight, layer.bias) if t is not None)
        hit = cache.get(i)
        if hit is None or hit[0] != key:
            w, b = subpixel_weights(layer)
            if layer.weight.is_contiguous(memory_format=torch.channels_last):
                w = w.contiguous(memory_format=torch.channels_last)
            hit = cache[i] = (key, w, b)
        return hit[1], hit[2]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset units (attenuation / ``attenuation_scale``) -> the model's input space:
        ``clip((x - input_offset) / input_scale, 0, 1)``."""
        return ((x - self.input_offset) / self.input_scale).clamp_(0.0, 1.0)

    def set_normalisation(self, offset: float, scale: float) -> None:
        """Set the input normalisation (``scale`` > 0, in dataset units)."""
        if not (math.isfinite(offset) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"normalisation needs a finite offset and a positive scale, got {offset}, {scale}")
        self.input_offset.fill_(float(offset))
        self.input_scale.fill_(float(scale))

    def normalisation(self) -> dict[str, float]:
        """``{"offset": ..., "scale": ...}`` in dataset units (for the model card)."""
        return {"offset": float(self.input_offset), "scale": float(self.input_scale)}


# ConvTranspose2d(k=4, s=2, p=1): output row 2p + a takes input rows p + d with kernel row ky,
# for (d, ky) in _PHASE_TAPS[a]; the same holds for columns.
_PHASE_TAPS = {0: ((0, 1), (-1, 3)), 1: ((1, 0), (0, 2))}


def subpixel_weights(deconv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights of the 3x3 convolution (padding 1) whose output, pixel-shuffled by 2, equals a
    4x4 stride-2 padding-1 transposed convolution's.

    Args:
        deconv: ``nn.ConvTranspose2d`` with kernel 4, stride 2, padding 1, no groups/dilation;
            its weight is ``(C_in, C_out, 4, 4)``.

    Returns:
        ``(weight (4 C_out, C_in, 3, 3), bias (4 C_out,) or None)``: output channel
        ``4 o + 2 a + b`` computes the output pixels ``(2 p + a, 2 q + b)`` of channel ``o``
        (``torch.nn.functional.pixel_shuffle``'s channel order); 7 of its 9 taps per input
        channel are zero where the phase uses a 2x2 neighbourhood.
    """
    if (deconv.kernel_size, deconv.stride, deconv.padding, deconv.output_padding, deconv.groups,
            deconv.dilation) != ((4, 4), (2, 2), (1, 1), (0, 0), 1, (1, 1)):
        raise ValueError(f"subpixel_weights needs a 4x4 stride-2 padding-1 transposed convolution, got {deconv}")
    w = deconv.weight  # (C_in, C_out, 4, 4)
    c_in, c_out = w.shape[:2]
    k = w.new_zeros(c_out, 2, 2, c_in, 3, 3)
    for a, taps_r in _PHASE_TAPS.items():
        for b, taps_c in _PHASE_TAPS.items():
            for d_r, ky in taps_r:
                for d_c, kx in taps_c:
                    k[:, a, b, :, d_r + 1, d_c + 1] = w[:, :, ky, kx].T
    bias = None if deconv.bias is None else deconv.bias.repeat_interleave(4)
    return k.reshape(4 * c_out, c_in, 3, 3), bias


def build_autoencoder(kind: str, size: int, **arch: Any) -> ConvAutoencoder:
    """The autoencoder of an arm, with ``arch`` overriding :data:`ARCH_DEFAULTS`.

    Args:
        kind: ``tiles`` (peeled tiles, default 32 px: bottleneck 8×4×4 = 128 values for 1,024
            pixels) or ``whole`` (whole items, default 128 px: bottleneck 16×8×8 = 1,024 values
            for 16,384 pixels).
        size: input side in pixels.
        **arch: ``channels`` (tuple of encoder widths), ``latent`` (bottleneck channels).

    Returns:
        a :class:`ConvAutoencoder` in training mode, weights from torch's global RNG (seed it,
        or use :func:`train_autoencoder`, which does).
    """
    if kind not in ARCH_DEFAULTS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
    unknown = set(arch) - {"channels", "latent"}
    if unknown:
        raise ValueError(f"unknown architecture argument(s) {sorted(unknown)}; known: channels, latent")
    kw = {**ARCH_DEFAULTS[kind], **arch}
    return ConvAutoencoder(size=int(size), channels=tuple(kw["channels"]), latent=int(kw["latent"]))


# -- SSIM (differentiable) -----------------------------------------------------------------

def _gauss1d(window: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
             data_range: float = 1.0) -> torch.Tensor:
    """Differentiable SSIM map (Wang et al. 2004), Gaussian window, valid convolution.

    Args:
        x, y: ``(N, 1, H, W)`` float tensors (normalised attenuation, ``data_range`` wide).
        window: Gaussian window side (odd, ≤ H and W); default 7 (see :data:`SSIM_WINDOW`).
        sigma: Gaussian standard deviation in pixels.
        data_range: intensity range; K1 = 0.01, K2 = 0.03 as in the paper.

    Returns:
        ``(N, 1, H - window + 1, W - window + 1)`` SSIM values (1 = identical).

    The five local moments are filtered in one grouped, separable convolution (2 × ``window``
    taps instead of ``window``² per pixel): about 25× faster forward + backward than five 2-D
    convolutions on CPU, with the same values to float32 rounding.
    """
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"ssim_map: x and y must both be (N, 1, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
    if window % 2 == 0 or window > min(x.shape[-2:]):
        raise ValueError(f"ssim_map: window must be odd and at most the image side, got {window} for {tuple(x.shape)}")
    g = _gauss1d(window, sigma, x.dtype).to(x.device)
    z = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    z = F.conv2d(z, g.view(1, 1, 1, window).expand(5, 1, 1, window), groups=5)
    z = F.conv2d(z, g.view(1, 1, window, 1).expand(5, 1, window, 1), groups=5)
    mx, my, exx, eyy, exy = z.unbind(dim=1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mxy, mxx, myy = mx * my, mx * mx, my * my
    num = (2 * mxy + c1) * (2 * (exy - mxy) + c2)
    den = (mxx + myy + c1) * ((exx - mxx) + (eyy - myy) + c2)
    return (num / den).unsqueeze(1)


def loss_fn(name: str, x: torch.Tensor, y: torch.Tensor, ssim_weight: float = 0.5,
            l2_scale: float = 100.0) -> torch.Tensor:
    """The training loss between input ``x`` and reconstruction ``y`` (``(N, 1, H, W)``).

    - ``l2``: mean squared error.
    - ``ssim``: 1 − mean SSIM (Bergmann et al. 2019).
    - ``ssim_l2``: ``ssim_weight``·(1 − SSIM) + (1 − ``ssim_weight``)·``l2_scale``·MSE. The
      scale puts the two terms on one footing: good tiles vary by ~0.03 attenuation, so a
      good reconstruction's MSE is ~1e-4 while 1 − SSIM is ~0.1–0.3.
    """
    if name == "l2":
        return F.mse_loss(y, x)
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    s = 1.0 - ssim_map(x, y).mean()
    if name == "ssim":
        return s
    return ssim_weight * s + (1.0 - ssim_weight) * l2_scale * F.mse_loss(y, x)


# -- normalisation -------------------------------------------------------------------------

def fit_normalisation(tiles: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple[float, float]:
    """A lot's contrast stretch: ``(offset, scale)`` mapping the ``low_pct``..``high_pct``
    percentiles of the training tiles' pixels to 0..1.

    Peeled tissue occupies only about a quarter of the preprocessing's [0, 1] range
    (attenuation / ``attenuation_scale``), and SSIM's and FSIM's stabilising constants (K1,
    K2, T1, T2) are fixed fractions of the data range: at that contrast they swamp the
    tissue's structure. Stretching the lot's tissue to the full range restores it (docs/model.md
    gives the measured effect). Computed on good training tiles only; saved in the model.

    Args:
        tiles: ``(N, S, S)`` float, dataset units.

    Returns:
        ``(offset, scale)``; ``scale`` is at least 1e-3 so a flat lot cannot divide by ~0.
    """
    a = np.asarray(tiles, np.float32).reshape(-1)
    if a.size == 0:
        return 0.0, 1.0
    if a.size > 2_000_000:  # a fixed-stride sample: enough for two percentiles, repeatable
        a = a[:: a.size // 2_000_000 + 1]
    lo, hi = np.percentile(a, [low_pct, high_pct])
    return float(lo), float(max(hi - lo, 1e-3))


def normalise_tiles(model: nn.Module, tiles: np.ndarray) -> np.ndarray:
    """``tiles`` ``(N, S, S)`` in dataset units -> float32 in the model's input space (its
    :meth:`ConvAutoencoder.normalise`; unchanged for a model without one)."""
    x = np.ascontiguousarray(tiles, dtype=np.float32)
    if not hasattr(model, "normalise"):
        return x
    if not x.flags.writeable:  # a zero-copy view of an Arrow buffer
        x = x.copy()
    with torch.inference_mode():
        return model.normalise(torch.from_numpy(x)).numpy()


# -- training ------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Training settings (Adam; early stopping on a validation slice of good tiles).

    Attributes:
        loss: ``l2`` | ``ssim`` | ``ssim_l2`` (see :func:`loss_fn`).
        epochs: most epochs (early stopping may end sooner).
        batch_size: tiles per gradient step.
        lr: Adam learning rate; halved after ``lr_patience`` epochs without a new best
            validation loss (then ``patience`` decides when to stop).
        seed: seeds the weight initialisation, the validation split and the shuffling.
        threads: CPU threads torch uses while training (restored afterwards).
        val_fraction: share of ``tiles`` held out for validation when ``val_tiles`` is not given.
        patience: epochs without a new best validation loss before stopping.
        min_delta: relative improvement of the validation loss that counts as a new best.
        ssim_weight: weight of 1 − SSIM in ``ssim_l2``.
        l2_scale: factor on the MSE in ``ssim_l2``.
        max_seconds: wall-clock budget; training stops after the epoch that passes it.
        lr_patience: epochs without a new best before the learning rate is halved (0 = never).
        normalise: fit the lot's contrast stretch (:func:`fit_normalisation`) on the training
            tiles (a warm start keeps its parent's).
        min_steps: at least this many gradient steps (more epochs when the set is small, as
            for the whole-image arm's few hundred images).
    """

    loss: str = "ssim"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    threads: int = 1
    val_fraction: float = 0.1
    patience: int = 4
    ssim_weight: float = 0.5
    max_seconds: float | None = None
    l2_scale: float = 100.0
    min_delta: float = 1e-3
    lr_patience: int = 2
    normalise: bool = True
    min_steps: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1 or self.patience < 1:
            raise ValueError(f"TrainConfig: epochs, batch_size, threads and patience must be >= 1, got {self}")
        if not (self.lr > 0 and 0.0 <= self.val_fraction < 1.0 and 0.0 <= self.ssim_weight <= 1.0):
            raise ValueError(f"TrainConfig: need lr > 0, 0 <= val_fraction < 1, 0 <= ssim_weight <= 1, got {self}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """What :func:`train_autoencoder` returns.

    Attributes:
        model: the trained autoencoder (best validation weights, eval mode).
        history: ``train_loss`` and ``val_loss`` per epoch run (the configured loss), plus
            ``lr`` per epoch.
        best_epoch: 1-based epoch of the best validation loss (whose weights were kept); 0
            when a warm start's first weights stayed the best.
        epochs_run: epochs actually run.
        seconds: wall-clock training time.
        n_train, n_val: tiles used for gradient steps and for validation.
        state_dict: a detached copy of ``model``'s weights.
        stopped: why training ended: ``epochs``, ``early_stopping`` or ``max_seconds``.
    """

    model: ConvAutoencoder
    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    seconds: float
    n_train: int
    n_val: int
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    stopped: str = "epochs"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use exactly ``n`` CPU threads inside the block, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded torch RNG and deterministic algorithms inside the block; global state restored."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        torch.use_deterministic_algorithms(True, warn_only=True)
        # fine-tuning drives small gradients and Adam moments into denormal floats, which the
        # CPU handles in microcode (10-100x slower); flush them to zero while training
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(False)
            torch.use_deterministic_algorithms(was, warn_only=was_warn)


def _check_tiles(tiles: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(tiles)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"{what} must be (N, S, S) square images, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what} must be float normalised attenuation in [0, 1], got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not a.flags.writeable:  # e.g. a zero-copy view of an Arrow buffer: torch wants its own
        a = a.copy()
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{what}: {int((~np.isfinite(a)).sum())} pixel(s) are NaN or infinite")
    return a


def _mean_loss(model: nn.Module, x: torch.Tensor, cfg: TrainConfig, batch: int = 1024) -> float:
    total = 0.0
    for i in range(0, len(x), batch):
        b = x[i:i + batch]
        total += float(loss_fn(cfg.loss, b, model(b), cfg.ssim_weight, cfg.l2_scale)) * len(b)
    return total / len(x)


def train_autoencoder(tiles: np.ndarray, config: TrainConfig | None = None, kind: str = "tiles",
                      init_state: Mapping[str, torch.Tensor] | None = None,
                      val_tiles: np.ndarray | None = None, arch: Mapping[str, Any] | None = None) -> TrainResult:
    """Train an autoencoder on good tiles.

    Args:
        tiles: ``(N, S, S)`` float, dataset units (attenuation / ``attenuation_scale``, in
            [0, 1]), good (or unlabelled) samples only; S = the tile size (32) or the
            whole-item size (128). The model's input normalisation is fitted on them
            (``config.normalise``) and applied before every step.
        config: :class:`TrainConfig` (default ``TrainConfig()``).
        kind: ``tiles`` or ``whole`` (the architecture's defaults, :data:`ARCH_DEFAULTS`).
        init_state: weights to start from (warm start: the lot's previous model or a parent
            lot's); must match the architecture, else ``ValueError``.
        val_tiles: ``(M, S, S)`` held-out good tiles for early stopping; if None or empty,
            a seeded ``config.val_fraction`` of ``tiles`` is held out (none if N < 2).
        arch: architecture overrides (``channels``, ``latent``) for :func:`build_autoencoder`.

    Returns:
        :class:`TrainResult` with the best-validation weights restored.

    Repeatable: the same tiles, config and ``init_state`` give bit-identical weights on the
    same machine and torch build (seeded forked torch RNG, numpy ``Generator`` shuffling,
    deterministic algorithms, fixed thread count). Global torch state (RNG, threads,
    deterministic flag) is restored on return.
    """
    cfg = config or TrainConfig()
    t0 = time.perf_counter()
    x = _check_tiles(tiles, "training tiles")
    rng = np.random.default_rng(cfg.seed)
    if val_tiles is not None and len(val_tiles):
        v = _check_tiles(val_tiles, "validation tiles")
        if v.shape[1:] != x.shape[1:]:
            raise ValueError(f"validation tiles are {v.shape[1:]}, training tiles {x.shape[1:]}")
    else:
        n_val = 0
        if cfg.val_fraction > 0 and len(x) > 1:
            n_val = min(max(int(round(len(x) * cfg.val_fraction)), 1), len(x) - 1)
        perm = rng.permutation(len(x))
        v, x = x[np.sort(perm[:n_val])], x[np.sort(perm[n_val:])]
    if len(x) == 0:
        raise ValueError("no training tiles")
    with torch_threads(cfg.threads), _deterministic(cfg.seed):
        model = build_autoencoder(kind, x.shape[-1], **dict(arch or {}))
        if init_state is not None:
            try:
                model.load_state_dict(dict(init_state), strict=True)
            except RuntimeError as exc:
                raise ValueError(f"init_state does not fit the {kind} architecture {model.arch()}: "
                                 f"{str(exc).splitlines()[0]}") from exc
        elif cfg.normalise:
            model.set_normalisation(*fit_normalisation(x))
        with torch.no_grad():
            xt = model.normalise(torch.from_numpy(x))[:, None]
            vt = model.normalise(torch.from_numpy(v))[:, None] if len(v) else None
        steps_per_epoch = math.ceil(len(xt) / cfg.batch_size)
        epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        hist: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "lr": []}
        best, best_state, best_epoch, since_best, since_lr = math.inf, None, 0, 0, 0
        if init_state is not None and vt is not None:
            # a warm start competes with where it started: if no epoch beats the parent on the
            # validation tiles, the parent's weights come back (best_epoch 0)
            model.eval()
            with torch.inference_mode():
                best = _mean_loss(model, vt, cfg)
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        epoch, stopped = 0, "epochs"
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.from_numpy(rng.permutation(len(xt)))
            total = 0.0
            for i in range(0, len(xt), cfg.batch_size):
                b = xt[order[i:i + cfg.batch_size]]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(cfg.loss, b, model(b), cfg.ssim_weight, cfg.l2_scale)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            hist["train_loss"].append(total / len(xt))
            hist["lr"].append(opt.param_groups[0]["lr"])
            model.eval()
            with torch.inference_mode():
                val = _mean_loss(model, vt, cfg) if vt is not None else hist["train_loss"][-1]
            hist["val_loss"].append(val)
            if val < best * (1.0 - cfg.min_delta):
                best, best_epoch, since_best, since_lr = val, epoch, 0, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                since_best += 1
                since_lr += 1
                if since_best >= cfg.patience:
                    stopped = "early_stopping"
                    break
                if cfg.lr_patience and since_lr >= cfg.lr_patience:
                    for g in opt.param_groups:
                        g["lr"] *= 0.5
                    since_lr = 0
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                stopped = "max_seconds"
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    return TrainResult(model, hist, best_epoch, epoch, time.perf_counter() - t0, len(x), len(v), state, stopped)


# -- inference -----------------------------------------------------------------------------

def reconstruct(model: nn.Module, tiles: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Reconstructions of ``tiles``.

    Args:
        model: an autoencoder from this module (put in eval mode here).
        tiles: ``(N, S, S)`` float in the model's input space, i.e. already passed through
            :func:`normalise_tiles` (converted to float32).
        batch_size: tiles per forward pass.

    Returns:
        ``(N, S, S)`` float32 reconstructions in [0, 1]; ``(0, S, S)`` for no tiles.

    A :class:`ConvAutoencoder` runs through :meth:`ConvAutoencoder.infer`, and its weights are
    switched to the channels-last memory format on the way (same values; saving and training
    are unaffected).
    """
    x = _check_tiles(tiles, "tiles to reconstruct")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    size = getattr(model, "size", None)
    if size is not None and len(x) and x.shape[1] != size:
        raise ValueError(f"tiles are {x.shape[1]}×{x.shape[2]} px but the model was built for {size}×{size}")
    out = np.empty_like(x)
    model.eval()
    run = model
    xt = torch.from_numpy(x)[:, None]
    if isinstance(model, ConvAutoencoder):
        # channels-last weights and activations: oneDNN's fast layout for these small
        # convolutions (1.3-1.7x on 70-1,120 tiles, benchmarks in docs/throughput.md)
        model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
        run = model.infer
    with torch.inference_mode():
        for i in range(0, len(x), int(batch_size)):
            out[i:i + batch_size] = run(xt[i:i + batch_size])[:, 0].numpy()
    return out


def reconstruction_error(tiles: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Mean squared reconstruction error per tile.

    Args:
        tiles, recon: ``(N, S, S)`` arrays of the same shape (normalised attenuation).

    Returns:
        ``(N,)`` float64, in (normalised attenuation)².
    """
    a, b = np.asarray(tiles, np.float64), np.asarray(recon, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"tiles and reconstructions must both be (N, S, S) of one shape, got {a.shape} and {b.shape}")
    d = a - b
    return (d * d).reshape(len(d), -1).mean(axis=1)
