"""Physically grounded synthetic X-ray line-scan images of potatoes, with defects and masks.

Real potato X-ray data is not available to this project, so this module is the embedded data
source. It models the object and the machine separately:

**Object** (:func:`make_phantom`): each tuber is an irregular 3-D body — an ellipsoid whose
radial function is modulated by a smooth random function on the sphere (a sum of a few
low-frequency cosines of ``û·v_k``, the analogue of low-order spherical harmonics), in a random
pose (any turn on the belt, a small tilt out of it, since a tuber rests on its flattest side).
It is projected along the beam (the ``z`` axis, parallel-beam geometry) *analytically* on the
pixel grid: for every pixel the ray's entry and exit points are solved from the quadratic
``|w(z)|² = s²`` (``w``: the point in the ellipsoid's normalised frame), with the outline set
by ``s`` at the ray's innermost point and the upper and lower surfaces moved by ``s`` where
they lie (see :meth:`_Body.interval`), giving the **path length in mm** through the tuber. Inside it: the
pith (medulla), an inner body of slightly lower density, and a fine density texture whose
projected amplitude grows with the square root of the path length (the line integral of a
random density field of correlation length ``ℓ`` over a path ``t`` has a standard deviation
``σ_ρ·sqrt(t·ℓ)``). Defects are unions of convex bodies (ellipsoids, cylinders, half-spaces)
in the tuber's frame whose chords are again solved analytically and clipped to the tuber's
own chord, and their path length is taken from the tissue (and pith) they replace, so the
projected mass stays exact. The defect's ground-truth mask is exactly the set of pixels where
its path length is positive.

**Machine** (:class:`Machine`, :func:`render_counts`): polychromatic Beer–Lambert transmission
``T = Σ_e w_e exp(-Σ_m ρ_m μ_m(E_e) t_m)`` over four energy bins (30/40/60/80 keV) with linear
attenuation coefficients from NIST XCOM mass attenuation data (Hubbell & Seltzer, *Tables of
X-Ray Mass Attenuation Coefficients*, NIST Standard Reference Database 126, 2004) — so
``-ln T`` grows less than linearly with thickness (beam hardening); the anode heel effect
(intensity ramp across the detector line; Bushberg et al., *The Essential Physics of Medical
Imaging*, 3rd ed., ch. 6); motion blur along the belt during integration; Poisson quantum
noise; a per-column gain and dark offset of the line-scan detector (its modules and pixels);
Gaussian read noise; 16-bit clipping. Dark and flat (open-beam) frames of the same machine
are rendered per lot.

Rows are the belt direction (time), columns are detector pixels across the belt. Units: mm,
keV, 1/mm for linear attenuation, detector counts. Everything is deterministic for a seed:
:func:`write_landing` seeds each lot and each scan with its own
:class:`numpy.random.SeedSequence` (``spawn_key`` = lot index, scan index), so a scan does not
depend on the order or the number of scans generated before it.

See ``docs/synth.md`` for the physics modelled and what is left out.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from peelscan.ids import validate_id

__all__ = [
    "DEFECT_TYPES", "DEFECT_MATERIAL", "ENERGY_BINS_KEV", "MATERIALS", "Machine", "LotParams", "Phantom",
    "machine_for_lot", "lot_params", "make_phantom", "transmission", "render_counts", "render_flat",
    "render_dark", "heel_profile", "scan_mask", "flat_correct", "write_landing",
]

DEFECT_TYPES: tuple[str, ...] = ("hollow_heart", "stone", "glass", "metal", "bruise", "wireworm", "growth_crack")
"""The defect types, in the order :func:`write_landing` cycles through them."""

ENERGY_BINS_KEV: np.ndarray = np.array([30.0, 40.0, 60.0, 80.0])
"""Energy bins [keV] of the polychromatic model; :data:`MATERIALS` holds ``μ`` at these."""

# Mass attenuation coefficients μ/ρ [cm²/g] at 30/40/60/80 keV (NIST XCOM, total with
# coherent scattering; rounded; starch from its elements C 44.4 %, H 6.2 %, O 49.4 %).
_MU_RHO = {
    "water": (0.3756, 0.2683, 0.2059, 0.1837),
    "starch": (0.3226, 0.2413, 0.1940, 0.1740),
    "oxygen": (0.3779, 0.2585, 0.2007, 0.1800),
    "silicon": (1.4360, 0.7012, 0.3207, 0.2228),
    "calcium": (4.1000, 1.8300, 0.6605, 0.3734),
    "sodium": (0.5800, 0.3200, 0.1900, 0.1700),
    "magnesium": (0.7600, 0.4000, 0.2300, 0.1900),
    "iron": (8.1760, 3.6290, 1.2050, 0.5952),
    "air": (0.3538, 0.2485, 0.1875, 0.1662),
}


def _mix(parts: dict[str, float]) -> np.ndarray:
    """μ/ρ of a mixture from mass fractions (Bragg additivity)."""
    return sum(w * np.asarray(_MU_RHO[k]) for k, w in parts.items())


_QUARTZ = _mix({"silicon": 0.4674, "oxygen": 0.5326})
_TISSUE = _mix({"water": 0.79, "starch": 0.21}) * 1.07 / 10.0  # potato ρ ≈ 1.07 g/cm³; /10: 1/cm -> 1/mm
_GLASS = (0.73 * _QUARTZ
          + 0.14 * _mix({"sodium": 0.742, "oxygen": 0.258})
          + 0.09 * _mix({"calcium": 0.715, "oxygen": 0.285})
          + 0.04 * _mix({"magnesium": 0.603, "oxygen": 0.397}))

PITH_DENSITY_NOMINAL = 0.97
"""Pith (medulla) density relative to the surrounding tissue (it holds more water, less starch)."""
BRUISE_DENSITY_NOMINAL = 1.10
"""Bruised / blackheart tissue density relative to sound tissue (+5–10 %)."""

MATERIALS: dict[str, np.ndarray] = {
    "tissue": _TISSUE,                                    # ≈ 0.039 / 0.028 / 0.022 / 0.019 per mm
    "pith": _TISSUE * PITH_DENSITY_NOMINAL,
    "bruise": _TISSUE * BRUISE_DENSITY_NOMINAL,
    "air": np.asarray(_MU_RHO["air"]) * 0.001205 / 10.0,  # ≈ 3e-5 per mm: a void
    "stone": _QUARTZ * 2.65 / 10.0,                       # quartz, ρ 2.65 g/cm³: 0.23 / 0.12 / 0.068 / 0.053
    "glass": _GLASS * 2.5 / 10.0,                         # soda-lime glass, ρ 2.5: 0.25 / 0.13 / 0.068 / 0.052
    "iron": np.asarray(_MU_RHO["iron"]) * 7.87 / 10.0,    # steel/iron, ρ 7.87: 6.4 / 2.9 / 0.95 / 0.47
}
"""Linear attenuation coefficient ``μ`` [1/mm] per material at :data:`ENERGY_BINS_KEV`."""
for _k, _v in MATERIALS.items():
    MATERIALS[_k] = np.asarray(_v, dtype=np.float64)
    MATERIALS[_k].setflags(write=False)

DEFECT_MATERIAL: dict[str, str] = {
    "hollow_heart": "air", "stone": "stone", "glass": "glass", "metal": "iron",
    "bruise": "bruise", "wireworm": "air", "growth_crack": "air",
}
"""The material that fills each defect (voids are air)."""

_BASE_SPECTRUM = np.array([0.15, 0.30, 0.35, 0.20])
"""Detected-signal weights of the energy bins for a ~100 kVp tungsten tube with ~2 mm Al."""
_TEXTURE_CORR_MM = 1.0
_FOREVER = 1e9  # an "empty" interval endpoint


# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------
@dataclass
class Machine:
    """An X-ray line scanner.

    ``energies_kev`` (E,) bin energies [keV] (must be :data:`ENERGY_BINS_KEV`); ``spectrum``
    (E,) weights of the detected signal per bin (sum 1); ``source_counts`` mean open-beam
    counts above dark of a pixel with gain 1 at the heel profile's mean (one count per
    detected quantum, so Poisson variance = counts); ``heel_strength`` relative intensity
    drop across the detector line from the cathode to the anode side (its sign says which
    side is the anode: positive = intensity falls towards high column indices);
    ``column_gain`` (W,) per-column gain (≈ 1 ± a few %); ``dark_level`` (W,) mean dark
    counts per column; ``read_noise`` Gaussian read-noise sigma [counts]; ``motion_blur_px``
    belt travel during one line's integration [px along rows]; ``pixel_mm`` pixel size [mm].
    """

    energies_kev: np.ndarray
    spectrum: np.ndarray
    source_counts: float
    heel_strength: float
    column_gain: np.ndarray
    dark_level: np.ndarray
    read_noise: float
    motion_blur_px: float
    pixel_mm: float = 0.5

    @property
    def width(self) -> int:
        return int(self.column_gain.shape[0])


def heel_profile(machine: Machine, width: int | None = None) -> np.ndarray:
    """The anode heel intensity factor across the detector line, ``(W,)`` float64, mean 1.

    The intensity falls off towards the anode side, faster near it (``1 - h·x^1.5`` for the
    position ``x ∈ [0, 1]`` across the line; ``h = |heel_strength|``)."""
    w = machine.width if width is None else int(width)
    x = np.linspace(0.0, 1.0, w)
    if machine.heel_strength < 0:
        x = x[::-1]
    prof = 1.0 - abs(machine.heel_strength) * x ** 1.5
    return prof / prof.mean()


def machine_for_lot(rng: np.random.Generator, width: int, pixel_mm: float = 0.5) -> Machine:
    """A random machine state for one lot: spectrum (tube voltage), source intensity, heel,
    detector gain pattern (modules of 64 px with their own gain and dark, plus per-pixel
    scatter), dark level, read noise and belt motion blur.

    ``width``: detector pixels (columns); ``pixel_mm``: pixel size [mm]."""
    if int(width) < 16:
        raise ValueError(f"machine_for_lot: width must be at least 16 pixels, got {width}")
    if not pixel_mm > 0:
        raise ValueError(f"machine_for_lot: pixel_mm must be positive, got {pixel_mm}")
    width = int(width)
    kvp = rng.uniform(-1.0, 1.0)  # lower or higher tube voltage / filtration than nominal
    spectrum = _BASE_SPECTRUM * np.exp(0.25 * kvp * np.array([-1.5, -1.0, 0.0, 1.0]))
    spectrum /= spectrum.sum()
    n_mod = -(-width // 64)
    module = np.repeat(rng.normal(0.0, 0.012, n_mod), 64)[:width]
    smooth = ndimage.gaussian_filter1d(rng.normal(0.0, 1.0, width), width / 8.0, mode="nearest")
    smooth *= 0.01 / max(float(smooth.std()), 1e-12)
    pixel = np.clip(rng.normal(0.0, 0.012, width), -0.04, 0.04)
    gain = 1.0 + module + smooth + pixel
    dark_base = rng.uniform(80.0, 300.0)
    dark = dark_base + np.repeat(rng.normal(0.0, 10.0, n_mod), 64)[:width] + rng.normal(0.0, 4.0, width)
    return Machine(
        energies_kev=ENERGY_BINS_KEV.copy(),
        spectrum=spectrum,
        source_counts=float(rng.uniform(12000.0, 30000.0)),
        heel_strength=float(rng.uniform(0.04, 0.15) * rng.choice([-1.0, 1.0])),
        column_gain=gain,
        dark_level=np.maximum(dark, 20.0),
        read_noise=float(rng.uniform(2.0, 8.0)),
        motion_blur_px=float(rng.uniform(0.3, 1.2)),
        pixel_mm=float(pixel_mm),
    )


# ---------------------------------------------------------------------------------------------
# lots and phantoms
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LotParams:
    """Tuber population of one lot (variety, field, storage).

    ``length_mm`` mean and ``length_sd_mm`` of the tuber length; ``width_ratio`` mean
    width/length; ``thickness_ratio`` mean thickness/width; ``density`` tissue density
    relative to the nominal 1.07 g/cm³; ``pith_density`` pith density relative to the
    lot's tissue; ``pith_fraction`` pith size relative to the tuber; ``roughness`` amplitude
    of the surface deformation (relative radius); ``texture`` relative density fluctuation
    of the tissue (correlation length 1 mm)."""

    length_mm: float = 80.0
    length_sd_mm: float = 8.0
    width_ratio: float = 0.72
    thickness_ratio: float = 0.78
    density: float = 1.0
    pith_density: float = PITH_DENSITY_NOMINAL
    pith_fraction: float = 0.55
    roughness: float = 0.1
    texture: float = 0.06


def lot_params(rng: np.random.Generator) -> LotParams:
    """Random :class:`LotParams` for one lot."""
    return LotParams(
        length_mm=float(rng.uniform(68.0, 95.0)),
        length_sd_mm=float(rng.uniform(5.0, 10.0)),
        width_ratio=float(rng.uniform(0.62, 0.82)),
        thickness_ratio=float(rng.uniform(0.70, 0.88)),
        density=float(rng.uniform(0.975, 1.03)),
        pith_density=float(rng.uniform(0.955, 0.985)),
        pith_fraction=float(rng.uniform(0.45, 0.62)),
        roughness=float(rng.uniform(0.07, 0.13)),
        texture=float(rng.uniform(0.04, 0.08)),
    )


@dataclass
class Phantom:
    """What the beam sees in one frame.

    ``path_mm``: material -> ``(H, W)`` float32 path length [mm] along the ray (tissue
    includes the density texture as equivalent thickness); ``object_mask`` ``(H, W)`` bool,
    pixels behind a tuber; ``defect_mask`` ``(H, W)`` bool, pixels whose defect path length
    is > 0 (all False for a good frame); ``defect_type`` one of :data:`DEFECT_TYPES` or None;
    ``n_objects``; ``density`` material -> density relative to :data:`MATERIALS`' (missing =
    1); ``labels`` ``(H, W)`` int16, the object index + 1 behind each pixel (0 = none, the
    later object where two overlap); ``pixel_mm``."""

    path_mm: dict[str, np.ndarray]
    object_mask: np.ndarray
    defect_mask: np.ndarray
    defect_type: str | None
    n_objects: int
    density: dict[str, float] = field(default_factory=dict)
    labels: np.ndarray | None = None
    pixel_mm: float = 0.5

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.object_mask.shape)  # type: ignore[return-value]


def _rotation(rng: np.random.Generator, tilt_deg: float) -> np.ndarray:
    """Any turn about the beam axis, a small tilt out of the belt plane (``tilt_deg`` sigma),
    and a random roll of the tuber about its long axis limited to the same tilt."""
    th = rng.uniform(0.0, 2 * math.pi)
    a, b = np.deg2rad(rng.normal(0.0, tilt_deg, 2))
    rz = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ ry @ rx


def _random_unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    v = rng.normal(size=(3,) if n is None else (n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class _Body:
    """A star-shaped body ``|w| <= s(w/|w|)`` with ``w = G p`` (``G = diag(1/axes) R^T``) and
    ``s(u) = 1 + Σ_k a_k cos(ω_k u·v_k + φ_k)``: an ellipsoid (semi-axes ``axes`` [mm], pose
    ``R``, centre at the origin) with a smooth random radial deformation."""

    def __init__(self, axes: np.ndarray, rot: np.ndarray, amp: np.ndarray, omega: np.ndarray,
                 phase: np.ndarray, dirs: np.ndarray):
        self.axes = np.asarray(axes, float)
        self.rot = np.asarray(rot, float)
        self.g = np.diag(1.0 / self.axes) @ self.rot.T
        self.amp, self.omega, self.phase, self.dirs = amp, omega, phase, dirs
        self.s_max = 1.0 + float(np.abs(amp).sum())

    @classmethod
    def random(cls, rng: np.random.Generator, axes: np.ndarray, rot: np.ndarray, roughness: float,
               k: int = 6) -> "_Body":
        amp = rng.normal(0.0, roughness, k) / math.sqrt(k) * 1.6
        total = np.abs(amp).sum()
        if total > 0.3:
            amp *= 0.3 / total
        return cls(axes, rot, amp, rng.uniform(0.8, 3.5, k), rng.uniform(0, 2 * math.pi, k), _random_unit(rng, k))

    def scaled(self, f: float, amp_f: float = 1.0) -> "_Body":
        return _Body(self.axes * f, self.rot, self.amp * amp_f, self.omega, self.phase, self.dirs)

    def half_extent_mm(self) -> tuple[float, float]:
        """Half extents of the projection along x (columns) and y (rows) [mm]."""
        m = self.rot * self.axes[None, :]
        return (self.s_max * float(np.sqrt((m[0] ** 2).sum())), self.s_max * float(np.sqrt((m[1] ** 2).sum())))

    def interval(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entry and exit ``z`` [mm] of the rays through ``(x, y)`` [mm] (arrays of one shape),
        float32; where a ray misses, ``lo = hi`` (a huge value).

        Along a ray ``|w(z)|² = a (z - z_m)² + d²``, with ``d`` the smallest normalised radius
        on the ray (at ``z_m``). The outline and the half chord ``h = sqrt((s_m² - d²)/a)`` come
        from the radial factor ``s_m`` at the ray's innermost point; the upper and lower
        surfaces are then moved out or in by the radial factor where they lie,
        ``z = z_m ± h · s(û(z_m ± h)) / s_m``. Both surfaces are smooth functions of ``(x, y)``
        that meet at the outline, so this is an exact solid (a body between two height fields)
        whose chords are computed, not approximated, with three evaluations of ``s``."""
        shape = np.shape(x)
        xf, yf = np.ravel(x).astype(np.float32), np.ravel(y).astype(np.float32)
        g = self.g
        dz = g[:, 2]
        a = float(dz @ dz)
        # |w|² restricted to the ray's closest point: a quadratic form in (x, y)
        gx, gy = g[:, 0], g[:, 1]
        qxx = float(gx @ gx - (gx @ dz) ** 2 / a)
        qxy = float(gx @ gy - (gx @ dz) * (gy @ dz) / a)
        qyy = float(gy @ gy - (gy @ dz) ** 2 / a)
        d2 = qxx * xf * xf + 2.0 * qxy * xf * yf + qyy * yf * yf
        bx, by = float(gx @ dz), float(gy @ dz)
        lo = np.full(xf.shape, _FOREVER, np.float32)
        hi = np.full(xf.shape, _FOREVER, np.float32)
        cand = np.nonzero(d2 < self.s_max ** 2)[0]
        if cand.size == 0:
            return lo.reshape(shape), hi.reshape(shape)
        xc, yc = xf[cand], yf[cand]
        zm = -(bx * xc + by * yc) / a
        d2c = d2[cand]
        terms = []
        for amp, om, ph, v in zip(self.amp, self.omega, self.phase, self.dirs):
            gv = g.T @ v  # w·v = x (g[:,0]·v) + y (g[:,1]·v) + z (g[:,2]·v)
            terms.append((float(amp), float(om * gv[0]), float(om * gv[1]), float(om * gv[2]), float(ph)))

        def s_at(z: np.ndarray) -> np.ndarray:
            inv = 1.0 / np.sqrt(np.maximum(a * (z - zm) ** 2 + d2c, 1e-12))
            s = np.ones_like(z)
            for amp, px, py, pz, ph in terms:
                s += amp * np.cos((px * xc + py * yc + pz * z) * inv + ph)
            return s

        s0 = s_at(zm)
        inside = d2c < s0 * s0
        h = np.sqrt(np.maximum(s0 * s0 - d2c, 0.0) / a)
        lo[cand] = np.where(inside, zm - h * s_at(zm - h) / s0, _FOREVER)
        hi[cand] = np.where(inside, zm + h * s_at(zm + h) / s0, _FOREVER)
        return lo.reshape(shape), hi.reshape(shape)


# -- convex pieces: an ellipsoid/cylinder (p-c)^T Q (p-c) <= 1 intersected with half-spaces n·p <= d
@dataclass
class _Convex:
    quadrics: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    planes: list[tuple[np.ndarray, float]] = field(default_factory=list)

    def interval(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.full(x.shape, -_FOREVER)
        hi = np.full(x.shape, _FOREVER)
        for q, c in self.quadrics:
            dx, dy = x - c[0], y - c[1]
            a = max(float(q[2, 2]), 1e-12)
            b = q[2, 0] * dx + q[2, 1] * dy
            cc = q[0, 0] * dx * dx + 2 * q[0, 1] * dx * dy + q[1, 1] * dy * dy
            disc = b * b - a * (cc - 1.0)
            r = np.sqrt(np.maximum(disc, 0.0))
            miss = disc <= 0
            lo = np.maximum(lo, np.where(miss, _FOREVER, c[2] + (-b - r) / a))
            hi = np.minimum(hi, np.where(miss, -_FOREVER, c[2] + (-b + r) / a))
        for n, d in self.planes:
            rhs = d - n[0] * x - n[1] * y
            if abs(n[2]) < 1e-12:
                hi = np.where(rhs >= 0, hi, -_FOREVER)
            elif n[2] > 0:
                hi = np.minimum(hi, rhs / n[2])
            else:
                lo = np.maximum(lo, rhs / n[2])
        return lo, hi


def _ellipsoid(center, axes, rot) -> tuple[np.ndarray, np.ndarray]:
    rot = np.asarray(rot, float)
    q = rot @ np.diag(1.0 / np.asarray(axes, float) ** 2) @ rot.T
    return q, np.asarray(center, float)


def _cylinder(center, direction, radius) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    return (np.eye(3) - np.outer(d, d)) / radius ** 2, np.asarray(center, float)


def _capsule(a: np.ndarray, b: np.ndarray, r: float) -> list[_Convex]:
    d = b - a
    d = d / np.linalg.norm(d)
    return [_Convex([_cylinder(a, d, r)], [(d, float(d @ b)), (-d, float(-d @ a))]),
            _Convex([_ellipsoid(a, (r, r, r), np.eye(3))]),
            _Convex([_ellipsoid(b, (r, r, r), np.eye(3))])]


def _union_length(lo: np.ndarray, hi: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Length of the union of K intervals ``[lo_k, hi_k]`` (arrays ``(K, N)``) intersected with
    ``[a, b]`` (``(N,)``), per column."""
    lo = np.maximum(lo, a[None])
    hi = np.minimum(hi, b[None])
    empty = hi <= lo
    lo = np.where(empty, _FOREVER, lo)
    hi = np.where(empty, _FOREVER, hi)
    if lo.shape[0] == 1:
        return hi[0] - lo[0]
    order = np.argsort(lo, axis=0)
    lo = np.take_along_axis(lo, order, 0)
    hi = np.take_along_axis(hi, order, 0)
    total = np.zeros(lo.shape[1])
    cur_lo, cur_hi = lo[0].copy(), hi[0].copy()
    for k in range(1, lo.shape[0]):
        gap = lo[k] > cur_hi
        total += np.where(gap, cur_hi - cur_lo, 0.0)
        cur_lo = np.where(gap, lo[k], cur_lo)
        cur_hi = np.where(gap, hi[k], np.maximum(cur_hi, hi[k]))
    return total + (cur_hi - cur_lo)


def _frame(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation whose third column is ``normal`` (first two random in its plane)."""
    n = normal / np.linalg.norm(normal)
    t = _random_unit(rng)
    e1 = t - (t @ n) * n
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(n, e1), n], axis=1)


class _Tuber:
    """One tuber in its own frame (mm, origin at its centre, z along the beam)."""

    def __init__(self, rng: np.random.Generator, lot: LotParams, max_half_mm: tuple[float, float]):
        length = max(rng.normal(lot.length_mm, lot.length_sd_mm), 0.55 * lot.length_mm)
        width = length * float(np.clip(rng.normal(lot.width_ratio, 0.05), 0.5, 0.95))
        thick = width * float(np.clip(rng.normal(lot.thickness_ratio, 0.05), 0.6, 1.0))
        axes = np.array([length, width, thick]) / 2.0
        body = _Body.random(rng, axes, _rotation(rng, 10.0), lot.roughness)
        hx, hy = body.half_extent_mm()
        self.scale = min(1.0, max_half_mm[0] / hx, max_half_mm[1] / hy)
        if self.scale < 1.0:
            body = body.scaled(self.scale)
        self.body = body
        self.pith = _Body(body.axes * lot.pith_fraction * np.array([1.0, 0.9, 0.85]), body.rot,
                          body.amp * 0.5, body.omega, body.phase, body.dirs)
        self.lot = lot

    def interior_point(self, rng: np.random.Generator, radius: float) -> np.ndarray:
        """A point whose normalised radius keeps it (and a ball of ``radius`` mm) well inside."""
        r_max = max(0.7 - radius / float(self.body.axes.min()), 0.1)
        u = _random_unit(rng) * r_max * rng.uniform(0.0, 1.0) ** (1 / 3)
        return self.body.rot @ (self.body.axes * u)

    def surface_z(self, x: float, y: float, top: bool) -> float:
        lo, hi = self.body.interval(np.array([x]), np.array([y]))
        return float(hi[0] if top else lo[0])


# -- defect geometries: (pieces, centre xy [mm], bounding radius [mm])
def _defect_hollow_heart(rng, t: _Tuber, f: float):
    # a central lens-shaped cavity, or a star: the union of 2-3 thin lenses turned in one plane
    # the lens lies roughly in the tuber's length/width plane (its normal near the thickness axis)
    u = _random_unit(rng) * np.array([0.35, 0.35, 0.0]) + np.array([0.0, 0.0, 1.0])
    frame = _frame(t.body.rot @ u, rng)
    c = t.interior_point(rng, 0) * 0.25
    n_lobes = int(rng.choice([1, 2, 3]))
    length = rng.uniform(5.0, 8.5) * f
    width = length * (rng.uniform(0.25, 0.45) if n_lobes > 1 else rng.uniform(0.5, 0.8))
    thick = rng.uniform(1.5, 3.5) * f
    pieces, phi0 = [], rng.uniform(0, math.pi)
    for i in range(n_lobes):
        phi = phi0 + i * math.pi / n_lobes + rng.normal(0, 0.1)
        rz = np.array([[math.cos(phi), -math.sin(phi), 0], [math.sin(phi), math.cos(phi), 0], [0, 0, 1]])
        lf = rng.uniform(0.8, 1.1)
        pieces.append(_Convex([_ellipsoid(c, (length * lf, width, thick), frame @ rz)]))
    return pieces, c[:2], length * 1.15


def _defect_stone(rng, t: _Tuber, f: float):
    r = rng.uniform(2.5, 6.0) * f
    axes = r * rng.uniform(0.6, 1.0, 3)
    c = t.interior_point(rng, r)
    rot = _frame(_random_unit(rng), rng)
    q = _ellipsoid(c, axes, rot)
    planes = []
    for _ in range(int(rng.integers(2, 6))):  # flat facets: a worn, angular pebble
        n = _random_unit(rng)
        planes.append((n, float(n @ c) + rng.uniform(0.55, 0.85) * float(np.abs(rot.T @ n) @ axes)))
    pieces = [_Convex([q], planes)]
    if rng.random() < 0.5:  # a second lobe for an irregular outline
        c2 = c + rot @ (axes * _random_unit(rng) * 0.5)
        pieces.append(_Convex([_ellipsoid(c2, axes * rng.uniform(0.5, 0.8, 3), _frame(_random_unit(rng), rng))]))
    return pieces, c[:2], float(axes.max()) * 1.6


def _polygon_prism(c: np.ndarray, frame: np.ndarray, verts2d: np.ndarray, thick: float) -> _Convex:
    """A flat convex prism: the polygon ``verts2d`` (counter-clockwise, in the frame's e1/e2
    plane, [mm]) of thickness ``thick`` along e3, centred on ``c``."""
    e1, e2, n = frame[:, 0], frame[:, 1], frame[:, 2]
    planes = [(n, float(n @ c) + thick / 2), (-n, float(-n @ c) + thick / 2)]
    k = len(verts2d)
    for i in range(k):
        p, q = verts2d[i], verts2d[(i + 1) % k]
        edge = q - p
        out2 = np.array([edge[1], -edge[0]]) / np.linalg.norm(edge)  # outward for CCW
        m = out2[0] * e1 + out2[1] * e2
        planes.append((m, float(m @ (c + p[0] * e1 + p[1] * e2))))
    return _Convex([], planes)


def _shard_outline(rng, length: float, width: float, k: int) -> np.ndarray:
    ang = (2 * math.pi * (np.arange(k) + rng.uniform(-0.3, 0.3, k)) / k + rng.uniform(0, 2 * math.pi))
    pts = np.stack([np.cos(ang) * length / 2, np.sin(ang) * width / 2], axis=1)
    pts *= rng.uniform(0.75, 1.0, (k, 1))
    return _convex_hull(pts)


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull of 2-D points (Andrew's monotone chain)."""
    p = sorted(map(tuple, pts))
    def half(seq):
        out: list = []
        for q in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (q[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (q[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(q)
        return out
    lower, upper = half(p), half(p[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _defect_glass(rng, t: _Tuber, f: float):
    length = rng.uniform(6.0, 14.0) * f
    width = length * rng.uniform(0.3, 0.6)
    c = t.interior_point(rng, length / 3)
    frame = _frame(_random_unit(rng) + np.array([0, 0, 0.8]), rng)
    verts = _shard_outline(rng, length, width, int(rng.integers(3, 6)))
    return [_polygon_prism(c, frame, verts, rng.uniform(1.2, 3.0) * f)], c[:2], length * 0.6 + 2.0


def _defect_metal(rng, t: _Tuber, f: float):
    c = t.interior_point(rng, 3.0)
    if rng.random() < 0.5:  # a piece of wire
        d = _random_unit(rng) * np.array([1.0, 1.0, 0.5])
        d /= np.linalg.norm(d)
        half = rng.uniform(2.5, 5.0) * f
        r = rng.uniform(0.4, 0.8)
        return _capsule(c - d * half, c + d * half, r), c[:2], half + r + 0.5
    sides = rng.uniform([1.5, 1.5, 0.6], [4.0, 3.0, 1.5]) * f  # a chip or flake
    frame = _frame(_random_unit(rng), rng)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.5 * sides[:2]
    verts = _convex_hull(corners * rng.uniform(0.6, 1.0, (4, 1)) + rng.normal(0, 0.15, (4, 2)) * sides[:2])
    return [_polygon_prism(c, frame, verts, sides[2])], c[:2], float(np.linalg.norm(sides)) / 2 + 0.5


def _defect_bruise(rng, t: _Tuber, f: float):
    axes = rng.uniform([5.0, 4.0, 5.0], [8.0, 6.5, 9.0]) * f
    if rng.random() < 0.6:  # impact bruise just under the top or bottom skin
        xy = (t.body.rot @ (t.body.axes * _random_unit(rng) * np.array([0.4, 0.4, 0.0])))[:2]
        top = bool(rng.random() < 0.5)
        zs = t.surface_z(xy[0], xy[1], top)
        depth = axes[2] * rng.uniform(0.6, 0.9) + 1.0
        c = np.array([xy[0], xy[1], zs - depth if top else zs + depth])
    else:  # blackheart: internal, near the centre
        c = t.interior_point(rng, 0) * 0.4
    rot = _rotation(rng, 20.0)
    pieces = [_Convex([_ellipsoid(c, axes, rot)])]
    c2 = c + rot @ (axes * _random_unit(rng) * np.array([0.6, 0.6, 0.2]))
    pieces.append(_Convex([_ellipsoid(c2, axes * rng.uniform(0.5, 0.8, 3), rot)]))
    return pieces, c[:2], float(axes.max()) * 1.7


def _defect_wireworm(rng, t: _Tuber, f: float):
    # a bore of 2-3 mm opening at the skin, curving inward as the larva turns
    xy = (t.body.rot @ (t.body.axes * _random_unit(rng) * np.array([0.45, 0.45, 0.0])))[:2]
    top = bool(rng.random() < 0.5)
    r = rng.uniform(1.0, 1.6)  # the larva, not the tuber, sets the bore
    inward = np.array([0.0, 0.0, -1.0 if top else 1.0])
    p = np.array([xy[0], xy[1], t.surface_z(xy[0], xy[1], top)]) + 0.5 * r * inward
    towards_centre = -np.array([xy[0], xy[1], 0.0]) / max(float(np.hypot(*xy)), 1e-6)
    d = inward + 0.6 * towards_centre + _random_unit(rng) * np.array([0.8, 0.8, 0.0])
    d /= np.linalg.norm(d)
    pieces, pts = [], [p[:2]]
    for _ in range(int(rng.integers(4, 8))):
        if d @ inward < 0.35:  # keeps burrowing inward, not back out through the skin
            d = d + (0.35 - d @ inward) * inward
            d /= np.linalg.norm(d)
        q = p + d * rng.uniform(2.5, 4.0) * f
        pieces.extend(_capsule(p, q, r))
        pts.append(q[:2])
        p = q
        d = d + _random_unit(rng) * 0.5
        d /= np.linalg.norm(d)
    pts = np.array(pts)
    centre = (pts.min(0) + pts.max(0)) / 2
    return pieces, centre, float(np.linalg.norm(pts - centre, axis=1).max()) + r + 1.0


def _defect_growth_crack(rng, t: _Tuber, f: float):
    # a V-shaped split from the skin inward: open by `gap` at the surface, closing at `depth`
    xy = (t.body.rot @ (t.body.axes * _random_unit(rng) * np.array([0.35, 0.35, 0.0])))[:2]
    top = bool(rng.random() < 0.5)
    c = np.array([xy[0], xy[1], t.surface_z(xy[0], xy[1], top)])
    along = np.array([*_random_unit(rng)[:2], 0.0])
    along /= np.linalg.norm(along)
    tilt = np.deg2rad(rng.uniform(-20, 20))  # the split runs roughly along the beam
    inward = np.array([0.0, 0.0, -1.0 if top else 1.0])
    across = np.cross(along, inward)
    inward, across = (math.cos(tilt) * inward + math.sin(tilt) * across,
                      math.cos(tilt) * across - math.sin(tilt) * inward)
    half_len = rng.uniform(5.0, 10.0) * f
    depth = rng.uniform(6.0, 14.0) * f
    tan_a = rng.uniform(1.0, 2.5) / 2.0 / depth  # surface opening 1-2.5 mm
    q = _ellipsoid(c, (half_len, depth, 1e3), np.stack([along, inward, across], axis=1))
    m1, m2 = across + tan_a * inward, -across + tan_a * inward
    planes = [(m1, float(m1 @ c) + depth * tan_a), (m2, float(m2 @ c) + depth * tan_a)]
    return [_Convex([q], planes)], c[:2], max(half_len, depth) + 2.0


_DEFECT_MAKERS = {
    "hollow_heart": _defect_hollow_heart, "stone": _defect_stone, "glass": _defect_glass,
    "metal": _defect_metal, "bruise": _defect_bruise, "wireworm": _defect_wireworm,
    "growth_crack": _defect_growth_crack,
}


@dataclass
class _Patch:
    """One rendered tuber on its own pixel canvas."""

    paths: dict[str, np.ndarray]
    mask: np.ndarray
    defect: np.ndarray | None


def _render_tuber(t: _Tuber, rng: np.random.Generator, defect_rng: np.random.Generator | None,
                  defect: str | None, pixel_mm: float, sub: tuple[float, float]) -> _Patch:
    hx, hy = t.body.half_extent_mm()
    pw, ph = 2 * int(math.ceil(hx / pixel_mm)) + 3, 2 * int(math.ceil(hy / pixel_mm)) + 3
    xs = ((np.arange(pw) - (pw - 1) / 2 - sub[0]) * pixel_mm)
    ys = ((np.arange(ph) - (ph - 1) / 2 - sub[1]) * pixel_mm)
    x, y = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
    lo, hi = t.body.interval(x, y)
    total = np.maximum(hi - lo, 0.0)
    mask = total > 0
    plo, phi = t.pith.interval(x, y)
    plo, phi = np.maximum(plo, lo), np.minimum(phi, hi)
    pith = np.maximum(phi - plo, 0.0)
    tissue = total - pith
    paths: dict[str, np.ndarray] = {"tissue": tissue, "pith": pith}
    # texture: line integral of a random density field (σ_ρ, correlation 1 mm) over the path
    s1, s2 = 0.8 * _TEXTURE_CORR_MM / pixel_mm, 3.0 * _TEXTURE_CORR_MM / pixel_mm
    white = rng.standard_normal((2, ph, pw), dtype=np.float32)
    n = (0.8 * ndimage.gaussian_filter(white[0], s1, truncate=3.0) * (2 * math.sqrt(math.pi) * s1)
         + 0.6 * ndimage.gaussian_filter(white[1], s2, truncate=3.0) * (2 * math.sqrt(math.pi) * s2))
    tissue += np.where(mask, t.lot.texture * np.sqrt(total * _TEXTURE_CORR_MM) * n, 0.0)
    dmask = None
    if defect is not None:
        assert defect_rng is not None
        f = min(1.0, max(t.scale, 0.5))
        for _attempt in range(20):
            pieces, cxy, rad = _DEFECT_MAKERS[defect](defect_rng, t, f)
            j0 = max(int((cxy[0] - rad) / pixel_mm + (pw - 1) / 2 + sub[0]) - 1, 0)
            j1 = min(int((cxy[0] + rad) / pixel_mm + (pw - 1) / 2 + sub[0]) + 3, pw)
            i0 = max(int((cxy[1] - rad) / pixel_mm + (ph - 1) / 2 + sub[1]) - 1, 0)
            i1 = min(int((cxy[1] + rad) / pixel_mm + (ph - 1) / 2 + sub[1]) + 3, ph)
            if j1 <= j0 or i1 <= i0:
                continue
            sl = (slice(i0, i1), slice(j0, j1))
            bx, by = x[sl].ravel(), y[sl].ravel()
            ivs = [pc.interval(bx, by) for pc in pieces]
            dlo, dhi = np.stack([v[0] for v in ivs]), np.stack([v[1] for v in ivs])
            d_all = _union_length(dlo, dhi, lo[sl].ravel(), hi[sl].ravel())
            d_pith = _union_length(dlo, dhi, plo[sl].ravel(), phi[sl].ravel())
            d_all = np.maximum(d_all, 0.0).reshape(i1 - i0, j1 - j0)
            d_pith = np.minimum(np.maximum(d_pith, 0.0).reshape(d_all.shape), d_all)
            if np.count_nonzero(d_all > 1e-6) < 4:
                continue  # the defect missed the tuber: draw again
            d_all = np.where(d_all > 1e-6, d_all, 0.0)
            d_pith = np.where(d_all > 0, d_pith, 0.0)
            material = DEFECT_MATERIAL[defect]
            dpath = np.zeros_like(total)
            dpath[sl] = d_all
            paths["pith"][sl] -= d_pith
            paths["tissue"][sl] -= d_all - d_pith
            paths[material] = paths.get(material, np.zeros_like(total)) + dpath
            dmask = dpath > 0
            break
        else:
            raise RuntimeError(f"could not place a {defect!r} defect inside the tuber after 20 draws")
    for k in ("tissue", "pith"):
        np.maximum(paths[k], 0.0, out=paths[k])
    return _Patch({k: v.astype(np.float32) for k, v in paths.items()}, mask, dmask)


def _trim(p: _Patch) -> _Patch:
    rows, cols = np.nonzero(p.mask.any(1))[0], np.nonzero(p.mask.any(0))[0]
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return _Patch({k: v[sl] for k, v in p.paths.items()}, p.mask[sl],
                  None if p.defect is None else p.defect[sl])


def make_phantom(rng: np.random.Generator, shape: tuple[int, int] = (256, 256), pixel_mm: float = 0.5,
                 n_objects: int = 1, defect: str | None = None, touching: bool = False,
                 lot: LotParams | None = None) -> Phantom:
    """A frame of ``n_objects`` tubers (one of them holding ``defect``), as path lengths.

    Parameters
    ----------
    rng:
        The scan's generator. The tubers, the texture and the defect draw from separate
        child streams, so the same ``rng`` state with ``defect=None`` gives the same tubers
        without the defect (the basis of the mask test).
    shape:
        ``(H, W)`` pixels. ``pixel_mm``: pixel size [mm].
    n_objects:
        Tubers in the frame, laid out in a grid of slots (side by side across the belt,
        then along it); a tuber too large for its slot is scaled down to fit.
    defect:
        One of :data:`DEFECT_TYPES`, or None for a good frame.
    touching:
        Push the tubers of each slot row together until their outlines touch (0-2 px overlap).
    lot:
        The lot's tuber population (:class:`LotParams`); default: nominal.

    Returns
    -------
    :class:`Phantom`, path lengths float32 [mm] on the ``(H, W)`` grid.
    """
    h, w = (int(shape[0]), int(shape[1]))
    if h < 16 or w < 16:
        raise ValueError(f"make_phantom: shape must be at least 16×16 pixels, got {shape}")
    if not pixel_mm > 0:
        raise ValueError(f"make_phantom: pixel_mm must be positive, got {pixel_mm}")
    if int(n_objects) < 1:
        raise ValueError(f"make_phantom: n_objects must be at least 1, got {n_objects}")
    if defect is not None and defect not in DEFECT_TYPES:
        raise ValueError(f"make_phantom: unknown defect type {defect!r}; expected one of {', '.join(DEFECT_TYPES)}")
    lot = lot or LotParams()
    n_objects = int(n_objects)
    seeds = rng.integers(0, 2**63, size=4)
    shape_rng, tex_rng, place_rng = (np.random.default_rng(int(s)) for s in seeds[:3])
    defect_rng = np.random.default_rng(int(seeds[3]))
    n_cols = math.ceil(math.sqrt(n_objects))
    n_rows = math.ceil(n_objects / n_cols)
    slot_w, slot_h = w / n_cols, h / n_rows
    margin = 2.0  # px kept free at each slot edge
    max_half = ((slot_w / 2 - margin) * pixel_mm, (slot_h / 2 - margin) * pixel_mm)
    defect_obj = int(defect_rng.integers(0, n_objects)) if defect is not None else -1
    patches = []
    for k in range(n_objects):
        t = _Tuber(shape_rng, lot, max_half)
        sub = (float(place_rng.uniform(-0.5, 0.5)), float(place_rng.uniform(-0.5, 0.5)))
        p = _render_tuber(t, tex_rng, defect_rng if k == defect_obj else None,
                          defect if k == defect_obj else None, pixel_mm, sub)
        patches.append(_trim(p))
    # placement: top-left corners (row, col) in the frame
    corners: list[tuple[int, int]] = []
    for k, p in enumerate(patches):
        sr, sc = divmod(k, n_cols)
        ph, pw = p.mask.shape
        free_r, free_c = max(slot_h - ph, 0.0), max(slot_w - pw, 0.0)
        jr = place_rng.uniform(0.15, 0.85) if not touching else 0.5
        jc = place_rng.uniform(0.1, 0.9)
        corners.append((int(sr * slot_h + free_r * jr), int(sc * slot_w + free_c * jc)))
    if touching and n_objects > 1:
        for sr in range(n_rows):
            row = [k for k in range(n_objects) if k // n_cols == sr]
            for a, b in zip(row, row[1:]):
                corners[b] = (corners[b][0], _touch_col(patches[a], corners[a], patches[b], corners[b])
                              - int(place_rng.integers(0, 3)))
            left = min(corners[k][1] for k in row)
            right = max(corners[k][1] + patches[k].mask.shape[1] for k in row)
            shift = int((w - (right - left)) * place_rng.uniform(0.3, 0.7)) - left
            for k in row:
                corners[k] = (corners[k][0], corners[k][1] + shift)
    paths: dict[str, np.ndarray] = {}
    obj = np.zeros((h, w), bool)
    dmask = np.zeros((h, w), bool)
    labels = np.zeros((h, w), np.int16)
    for k, (p, (r0, c0)) in enumerate(zip(patches, corners)):
        ph, pw = p.mask.shape
        r0, c0 = min(max(r0, 0), h - ph), min(max(c0, 0), w - pw)
        sl = (slice(r0, r0 + ph), slice(c0, c0 + pw))
        for m, v in p.paths.items():
            if m not in paths:
                paths[m] = np.zeros((h, w), np.float32)
            paths[m][sl] += v
        obj[sl] |= p.mask
        labels[sl][p.mask] = k + 1
        if p.defect is not None:
            dmask[sl] |= p.defect
    density = {"tissue": lot.density, "pith": lot.density * lot.pith_density / PITH_DENSITY_NOMINAL,
               "bruise": lot.density}
    return Phantom(paths, obj, dmask, defect, n_objects, density, labels, float(pixel_mm))


def _touch_col(pa: _Patch, ca: tuple[int, int], pb: _Patch, cb: tuple[int, int]) -> int:
    """The left column for patch b so that it touches patch a (to its left) in some row."""
    best = None
    for r in range(max(ca[0], cb[0]), min(ca[0] + pa.mask.shape[0], cb[0] + pb.mask.shape[0])):
        ra, rb = pa.mask[r - ca[0]], pb.mask[r - cb[0]]
        if ra.any() and rb.any():
            right_a = ca[1] + int(np.nonzero(ra)[0][-1])
            left_b_off = int(np.nonzero(rb)[0][0])
            need = right_a + 1 - left_b_off
            best = need if best is None else max(best, need)
    return cb[1] if best is None else best


# ---------------------------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------------------------
def _mu_table(machine: Machine) -> np.ndarray:
    e = np.asarray(machine.energies_kev, float)
    if e.shape != ENERGY_BINS_KEV.shape or not np.allclose(e, ENERGY_BINS_KEV):
        raise ValueError(f"Machine.energies_kev must be {ENERGY_BINS_KEV.tolist()} (the bins MATERIALS is "
                         f"tabulated at), got {e.tolist()}")
    s = np.asarray(machine.spectrum, float)
    if s.shape != e.shape or (s < 0).any() or not s.sum() > 0:
        raise ValueError(f"Machine.spectrum must be {e.shape[0]} non-negative weights, got {s.tolist()}")
    return s / s.sum()


def transmission(phantom: Phantom, machine: Machine) -> np.ndarray:
    """Noise-free polychromatic transmission ``I/I0`` of a phantom, ``(H, W)`` float32 in (0, 1].

    ``T = Σ_e w_e exp(-Σ_m ρ_m μ_m(E_e) t_m)`` with the machine's spectrum weights ``w_e``
    (nothing else of the machine: no heel, gain, blur or noise). Because low-energy quanta
    are absorbed first, ``-ln T`` grows less than linearly with thickness (beam hardening)."""
    weights = _mu_table(machine)
    att = np.zeros((len(weights),) + phantom.shape, np.float32)
    for m, t in phantom.path_mm.items():
        if m not in MATERIALS:
            raise ValueError(f"phantom path for unknown material {m!r}; known: {', '.join(MATERIALS)}")
        mu = MATERIALS[m] * phantom.density.get(m, 1.0)
        for e in range(len(weights)):
            att[e] += np.float32(mu[e]) * t
    out = np.zeros(phantom.shape, np.float32)
    for e, wgt in enumerate(weights):
        out += np.float32(wgt) * np.exp(-att[e])
    return out


def _blur_kernel(length_px: float) -> np.ndarray:
    """Row weights of the belt's motion blur: the line samples the (linearly interpolated)
    object at positions uniformly spread over ``length_px`` rows during its integration, so
    the kernel is a box of that length convolved with the interpolation's triangle;
    ``[1]`` for no motion, ``[0.5, 0.5]`` for one row."""
    length = max(float(length_px), 0.0)
    if length < 1e-6:
        return np.ones(1)
    s = (np.arange(256) + 0.5) / 256 * length
    taps = np.arange(int(math.ceil(length)) + 1)
    wts = np.clip(1.0 - np.abs(s[None, :] - taps[:, None]), 0.0, None).mean(1)
    wts = wts[wts > 1e-12]
    return wts / wts.sum()


def _motion_blur(img: np.ndarray, length_px: float) -> np.ndarray:
    k = _blur_kernel(length_px)
    if k.size == 1:
        return img
    out = img * np.float32(k[0])
    for i in range(1, k.size):  # the object moves on: a row integrates the previous rows too
        out[i:] += np.float32(k[i]) * img[:-i]
        out[:i] += np.float32(k[i]) * img[:1]
    return out


def scan_mask(phantom: Phantom, machine: Machine) -> np.ndarray:
    """The defect mask of the *rendered* scan: :attr:`Phantom.defect_mask` spread along the
    belt by the motion blur's footprint, so it covers every pixel the defect changed in the
    counts. ``(H, W)`` bool."""
    k = _blur_kernel(machine.motion_blur_px)
    m = phantom.defect_mask.copy()
    for i in range(1, k.size):
        m[i:] |= phantom.defect_mask[:-i]
    return m


def _check_width(machine: Machine, w: int, what: str) -> None:
    if machine.column_gain.shape != (w,) or machine.dark_level.shape != (w,):
        raise ValueError(f"{what}: frame width {w} does not match the machine's {machine.column_gain.shape[0]} "
                         "detector columns")


def _to_uint16(sig: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(sig), 0, 65535).astype(np.uint16)


def render_counts(phantom: Phantom, machine: Machine, rng: np.random.Generator, *, noise: bool = True) -> np.ndarray:
    """Raw detector counts of a phantom, ``(H, W)`` uint16.

    ``counts = gain_c · Poisson(I0 · heel_c · blur_rows(T)) + dark_c + N(0, read_noise)``,
    rounded and clipped to [0, 65535]. ``noise=False`` gives the expected counts (no Poisson
    or read noise; used by tests)."""
    h, w = phantom.shape
    _check_width(machine, w, "render_counts")
    t = transmission(phantom, machine)
    lam = _motion_blur(t, machine.motion_blur_px)
    lam *= (machine.source_counts * heel_profile(machine, w)).astype(np.float32)[None, :]
    if noise:
        q = rng.poisson(lam).astype(np.float32)
    else:
        q = lam
    sig = q * machine.column_gain.astype(np.float32)[None, :] + machine.dark_level.astype(np.float32)[None, :]
    if noise:
        sig += np.float32(machine.read_noise) * rng.standard_normal((h, w), dtype=np.float32)
    return _to_uint16(sig)


def render_flat(machine: Machine, rng: np.random.Generator, shape: tuple[int, int], n_average: int = 16) -> np.ndarray:
    """Open-beam (flat) frame, ``shape = (rows, W)`` uint16: each row the average of
    ``n_average`` detector lines with the beam on and nothing on the belt."""
    h, w = int(shape[0]), int(shape[1])
    _check_width(machine, w, "render_flat")
    lam = np.broadcast_to(machine.source_counts * heel_profile(machine, w) * n_average, (h, w))
    q = rng.poisson(lam) / n_average
    sig = q * machine.column_gain[None, :] + machine.dark_level[None, :]
    sig = sig + machine.read_noise / math.sqrt(n_average) * rng.standard_normal((h, w))
    return _to_uint16(sig)


def render_dark(machine: Machine, rng: np.random.Generator, shape: tuple[int, int], n_average: int = 16) -> np.ndarray:
    """Dark frame (beam off), ``shape = (rows, W)`` uint16, each row an average of
    ``n_average`` lines."""
    h, w = int(shape[0]), int(shape[1])
    _check_width(machine, w, "render_dark")
    sig = machine.dark_level[None, :] + machine.read_noise / math.sqrt(n_average) * rng.standard_normal((h, w))
    return _to_uint16(sig)


def flat_correct(raw: np.ndarray, dark: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Flat-field correction ``(raw - dark) / (flat - dark)`` with the frames reduced to their
    per-column mean (line-scan detector), ``(H, W)`` float32 transmission (not clipped)."""
    d = dark.astype(np.float64).mean(0)
    f = flat.astype(np.float64).mean(0)
    if raw.shape[1] != d.shape[0] or raw.shape[1] != f.shape[0]:
        raise ValueError(f"flat_correct: scan width {raw.shape[1]} differs from dark {d.shape[0]} / flat {f.shape[0]}")
    return ((raw.astype(np.float64) - d) / np.maximum(f - d, 1.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the landing zone
# ---------------------------------------------------------------------------------------------
def _scan_rng(seed: int, lot_index: int, scan_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(lot_index, 1, scan_index)))


def write_landing(root: str, lots: int = 3, scans: int = 50, anomaly_rate: float = 0.2, seed: int = 0,
                  size: int = 256, pixel_mm: float = 0.5, png8: bool = False, objects_per_scan: int = 1,
                  lot_prefix: str = "lot", touching_rate: float = 0.3, frame_rows: int = 32) -> list[str]:
    """Write synthetic lots that follow the landing contract (shared/DESIGN.md).

    ``<root>/<lot_prefix>-NNN/scan-NNNN.tif`` (uint16 raw counts, ``size``×``size``) with
    ``dark.tif`` and ``flat.tif`` (``frame_rows`` × ``size``), or with ``png8=True``
    ``scan-NNNN.png`` (uint8 flat-corrected transmission × 255, no frames);
    ``labels.csv`` (``scan_id,label,defect_type``; label good|anomalous, defect_type empty for
    good scans) and ``masks/<scan_id>.png`` (uint8 0/255, :func:`scan_mask`) for each
    anomalous scan. ``round(anomaly_rate × scans)`` scans per lot are anomalous (chosen at
    random); their defect types cycle through :data:`DEFECT_TYPES` in order, so a lot with at
    least 7 anomalies has every type. With ``objects_per_scan > 1`` a share ``touching_rate``
    of the scans has touching tubers. ``root`` is a local path or ``s3://`` URI (written
    through :class:`peelscan.lake.Store`). Each lot has its own machine
    (:func:`machine_for_lot`) and tuber population (:func:`lot_params`); every lot and scan
    is seeded from ``(seed, lot index, scan index)`` alone. Returns the lot ids.
    """
    from peelscan.lake import Store
    from peelscan.xrayio import encode_png, encode_tiff

    for name, v, lo in (("lots", lots, 1), ("scans", scans, 1), ("size", size, 16),
                        ("objects_per_scan", objects_per_scan, 1), ("frame_rows", frame_rows, 16)):
        if int(v) < lo:
            raise ValueError(f"write_landing: {name} must be at least {lo}, got {v}")
    if not 0.0 <= float(anomaly_rate) <= 1.0:
        raise ValueError(f"write_landing: anomaly_rate must be in [0, 1], got {anomaly_rate}")
    if not pixel_mm > 0:
        raise ValueError(f"write_landing: pixel_mm must be positive, got {pixel_mm}")
    store = Store(str(root))
    lot_ids = []
    for li in range(int(lots)):
        lot_id = validate_id(f"{lot_prefix}-{li:03d}", "lot id")
        lot_ids.append(lot_id)
        lot_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(li, 0)))
        machine = machine_for_lot(lot_rng, size, pixel_mm)
        lot = lot_params(lot_rng)
        n_anom = int(round(float(anomaly_rate) * int(scans)))
        anomalous = np.sort(lot_rng.permutation(int(scans))[:n_anom])
        defect_of = {int(j): DEFECT_TYPES[k % len(DEFECT_TYPES)] for k, j in enumerate(anomalous)}
        frame_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(li, 2)))
        dark = render_dark(machine, frame_rng, (frame_rows, size))
        flat = render_flat(machine, frame_rng, (frame_rows, size))
        if not png8:
            store.write_bytes(encode_tiff(dark), lot_id, "dark.tif")
            store.write_bytes(encode_tiff(flat), lot_id, "flat.tif")
        rows = []
        for j in range(int(scans)):
            scan_id = f"scan-{j:04d}"
            rng = _scan_rng(seed, li, j)
            defect = defect_of.get(j)
            touching = objects_per_scan > 1 and rng.random() < touching_rate
            ph = make_phantom(rng, (size, size), pixel_mm, objects_per_scan, defect, touching, lot)
            raw = render_counts(ph, machine, rng)
            if png8:
                tr = np.clip(flat_correct(raw, dark, flat), 0.0, 1.0)
                store.write_bytes(encode_png(np.rint(tr * 255.0).astype(np.uint8)), lot_id, f"{scan_id}.png")
            else:
                store.write_bytes(encode_tiff(raw), lot_id, f"{scan_id}.tif")
            if defect is not None:
                store.write_bytes(encode_png(scan_mask(ph, machine).astype(np.uint8) * 255), lot_id, "masks",
                                  f"{scan_id}.png")
            rows.append((scan_id, "anomalous" if defect else "good", defect or ""))
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\n")
        wr.writerow(["scan_id", "label", "defect_type"])
        wr.writerows(rows)
        store.write_bytes(buf.getvalue().encode(), lot_id, "labels.csv")
    return lot_ids
