"""Decoding and validation of X-ray image files (TIFF, PNG, NPY) from their bytes.

:func:`decode_image` turns the bytes of one landing file into a 2-D ``(H, W)`` array of
``uint8``, ``uint16`` or ``float32`` (detector counts, or transmission for pre-corrected
8-bit PNGs), or raises :class:`ScanRejected` whose ``reason`` is one sentence a plant
engineer understands ("truncated TIFF: ...", "zero-byte file", "3-D stack of 5 frames").

The checks, in order (the first failing one is the reason):

1. the file is not empty and not larger than :attr:`ImageLimits.max_bytes`;
2. the extension is one of ``tif tiff png npy`` (case-insensitive) and the first bytes are that
   format's signature ("wrong magic" otherwise: a ``.png`` that is really a TIFF or a JPEG);
3. the header gives a shape and pixel type that are acceptable *before* the pixels are
   decoded (so a 50,000-pixel-wide or 3-D file is refused without allocating it):
   one 2-D frame (a ``(1, H, W)`` stack is squeezed; an RGB/RGBA image is accepted only when
   its colour channels are equal and an alpha channel is fully opaque); each side within
   ``[min_side, max_side]`` and at most ``max_pixels`` pixels;
4. the pixel type is ``uint8``, ``uint16`` or ``float32``; ``float64`` is converted to
   ``float32`` explicitly (values beyond float32's range are refused), every other type is
   refused (a signed or 32-bit integer image is not a detector frame this system knows how
   to calibrate, and guessing a rescale would silently change the physics);
5. the pixels decode completely (truncated data is refused);
6. float images hold no NaN or infinite values;
7. the frame carries a signal (``check_signal``): not (nearly) all zero, not (nearly) all at
   the detector's maximum (saturated), not constant. Dark frames are decoded with
   ``check_signal=False`` since a perfect dark frame may be all zero.

References: TIFF 6.0 specification (Adobe, 1992) and BigTIFF for the signatures; PNG
specification (ISO/IEC 15948:2004, W3C) for the signature and the IHDR chunk; the NPY format
(NEP 1, numpy.lib.format).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

SUPPORTED_EXTENSIONS = ("tif", "tiff", "png", "npy")
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NPY_SIGNATURE = b"\x93NUMPY"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


class ScanRejected(ValueError):
    """A file that cannot be used as an image. ``reason`` is a sentence for a person; the
    exception message is ``"<name>: <reason>"``."""

    def __init__(self, reason: str, name: str | None = None):
        self.reason = reason
        self.name = name
        super().__init__(f"{name}: {reason}" if name else reason)


@dataclass(frozen=True)
class ImageLimits:
    """Acceptance limits of :func:`decode_image`.

    ``min_side``/``max_side``: pixels per side; ``max_pixels``: H*W; ``max_bytes``: file
    size; ``max_zero_fraction``/``max_saturated_fraction``: the share of pixels at 0 or at the
    integer type's maximum (255, 65535) beyond which a frame carries no usable signal.
    """

    min_side: int = 16
    max_side: int = 16384
    max_pixels: int = 64 * 1024 * 1024
    max_bytes: int = 1024 * 1024 * 1024
    max_zero_fraction: float = 0.99
    max_saturated_fraction: float = 0.99


DEFAULT_LIMITS = ImageLimits()


def extension_of(name: str) -> str:
    """The lower-case extension of a file name without the dot ('' when there is none)."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[1].lower() if "." in base[1:] else ""


def sniff_format(data: bytes) -> str | None:
    """The format whose signature ``data`` starts with: 'tiff', 'png', 'npy', a few common
    others ('jpeg', 'gif', 'bmp', 'zip', 'pdf', 'text'), or None."""
    if data.startswith(TIFF_SIGNATURES):
        return "tiff"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(NPY_SIGNATURE):
        return "npy"
    for sig, fmt in ((b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"BM", "bmp"), (b"PK\x03\x04", "zip"),
                     (b"%PDF", "pdf")):
        if data.startswith(sig):
            return fmt
    head = data[:64]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return None


def _check_shape(h: int, w: int, limits: ImageLimits) -> None:
    if max(h, w) > limits.max_side:
        raise ScanRejected(f"image {w}×{h} (width×height) exceeds the maximum {limits.max_side} px per side")
    if min(h, w) < limits.min_side:
        raise ScanRejected(f"image {w}×{h} (width×height) is smaller than the minimum "
                           f"{limits.min_side}×{limits.min_side}")
    if h * w > limits.max_pixels:
        raise ScanRejected(f"image {w}×{h} has {h * w} pixels, more than the maximum {limits.max_pixels}")


def _frame_shape(shape: tuple[int, ...], channels_last_ok: bool) -> tuple[int, int, int]:
    """``(H, W, C)`` of an array shape, C = 0 for a plain 2-D frame; refuses stacks."""
    if len(shape) == 2:
        return shape[0], shape[1], 0
    if len(shape) == 3 and shape[0] == 1:
        return shape[1], shape[2], 0
    if len(shape) == 3 and channels_last_ok and shape[2] in (3, 4) and shape[0] > 4:
        return shape[0], shape[1], shape[2]
    if len(shape) == 3:
        raise ScanRejected(f"3-D stack of {shape[0]} frames of {shape[2]}×{shape[1]} (expected one 2-D frame)")
    raise ScanRejected(f"{len(shape)}-D array of shape {tuple(shape)} (expected one 2-D frame)")


def _merge_channels(arr: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3|4)`` image as grey when its colour channels are equal and any alpha
    channel is fully opaque; refuses it otherwise."""
    c = arr.shape[2]
    rgb = arr[..., :3]
    if c == 4:
        alpha = arr[..., 3]
        opaque = np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1.0
        if not np.all(alpha == opaque):
            raise ScanRejected("RGBA image with transparent pixels (expected a single-channel grey image)")
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        n = int(np.count_nonzero((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])))
        raise ScanRejected(f"RGB image with different channels in {n} pixels (expected a single-channel "
                           "grey image)")
    return np.ascontiguousarray(rgb[..., 0])


def _check_dtype(arr: np.ndarray) -> np.ndarray:
    dt = arr.dtype
    if dt.byteorder not in ("=", "|") and dt.itemsize > 1:
        arr = arr.astype(dt.newbyteorder("="))
        dt = arr.dtype
    if dt == np.float64:
        finite = arr[np.isfinite(arr)]
        if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
            raise ScanRejected("float64 values beyond the float32 range (expected uint8, uint16 or float32)")
        return arr.astype(np.float32)  # explicit: float64 is accepted and stored as float32
    if dt not in SUPPORTED_DTYPES:
        raise ScanRejected(f"unsupported pixel type {dt.name} (expected uint8, uint16 or float32)")
    return arr


def _decode_tiff(data: bytes, limits: ImageLimits) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            n_pages = len(tif.pages)
            if n_pages > 1:
                p0 = tif.pages[0]
                raise ScanRejected(f"3-D stack of {n_pages} frames of {p0.shape[-1]}×{p0.shape[0]} "
                                   "(expected one 2-D frame)")
            if not tif.series:
                raise ScanRejected("TIFF without an image")
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            samples_last = series.axes.endswith("S")
            h, w, _ = _frame_shape(shape, channels_last_ok=samples_last)
            _check_shape(h, w, limits)
            if np.dtype(series.dtype) not in SUPPORTED_DTYPES + (np.dtype(np.float64),):
                raise ScanRejected(f"unsupported pixel type {np.dtype(series.dtype).name} "
                                   "(expected uint8, uint16 or float32)")
            arr = series.asarray()
    except ScanRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on broken files
        raise ScanRejected(f"truncated or unreadable TIFF: {type(exc).__name__}: {_short(exc)}") from exc
    return arr


def _png_ihdr(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the PNG IHDR chunk."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ScanRejected("truncated or unreadable PNG: no IHDR header")
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, ctype


def _decode_png(data: bytes, limits: ImageLimits) -> np.ndarray:
    from PIL import Image

    w, h, depth, ctype = _png_ihdr(data)
    _check_shape(h, w, limits)
    if depth == 16 and ctype in (2, 6):
        raise ScanRejected("16-bit colour PNG (Pillow reduces it to 8 bits; expected a single-channel "
                           "grey image)")
    if depth not in (1, 2, 4, 8, 16):
        raise ScanRejected(f"PNG with an invalid bit depth {depth}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L"):
                arr = np.array(img, dtype=np.uint16)
            elif mode == "I":  # 16-bit grey as int32 in some Pillow versions
                a = np.array(img)
                if a.min() < 0 or a.max() > 65535:
                    raise ScanRejected("PNG pixel values outside 0..65535")
                arr = a.astype(np.uint16)
            elif mode in ("L", "1"):
                arr = np.array(img.convert("L"), dtype=np.uint8)
            elif mode == "LA":
                la = np.array(img, dtype=np.uint8)
                if not np.all(la[..., 1] == 255):
                    raise ScanRejected("grey PNG with transparent pixels (expected an opaque grey image)")
                arr = np.ascontiguousarray(la[..., 0])
            elif mode in ("RGB", "RGBA", "P", "PA"):
                rgba = np.array(img.convert("RGBA" if mode in ("RGBA", "PA") or "transparency" in img.info
                                            else "RGB"), dtype=np.uint8)
                arr = _merge_channels(rgba)
            else:
                raise ScanRejected(f"PNG in colour mode {mode} (expected a single-channel grey image)")
    except ScanRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError/ValueError/SyntaxError on broken files
        raise ScanRejected(f"truncated or unreadable PNG: {type(exc).__name__}: {_short(exc)}") from exc
    return arr


def _decode_npy(data: bytes, limits: ImageLimits) -> np.ndarray:
    from numpy.lib import format as npf

    buf = io.BytesIO(data)
    try:
        version = npf.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = npf.read_array_header_2_0(buf)
        else:
            shape, fortran, dtype = npf._read_array_header(buf, version)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001
        raise ScanRejected(f"truncated or unreadable NPY header: {type(exc).__name__}: {_short(exc)}") from exc
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ScanRejected("NPY holds Python objects (refused: loading it would need pickle, which can run code)")
    shape = tuple(int(s) for s in shape)
    h, w, _ = _frame_shape(shape, channels_last_ok=True)
    _check_shape(h, w, limits)
    if dtype.fields is not None or dtype.kind not in "uif":
        raise ScanRejected(f"unsupported pixel type {dtype} (expected uint8, uint16 or float32)")
    expected = int(np.prod(shape)) * dtype.itemsize
    available = len(data) - buf.tell()
    if available < expected:
        raise ScanRejected(f"truncated NPY: {available} bytes of pixel data, expected {expected}")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise ScanRejected(f"unreadable NPY: {type(exc).__name__}: {_short(exc)}") from exc
    return np.ascontiguousarray(arr)


def _short(exc: BaseException, n: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def check_signal(arr: np.ndarray, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Refuse a 2-D frame that carries no image: (nearly) all zero, (nearly) all at the
    integer type's maximum (a saturated detector), or constant. Raises :class:`ScanRejected`."""
    n = arr.size
    zeros = int(np.count_nonzero(arr == 0))
    if zeros == n:
        raise ScanRejected("all pixels are 0 (no signal)")
    if zeros > limits.max_zero_fraction * n:
        raise ScanRejected(f"{100.0 * zeros / n:.1f}% of pixels are 0 (no signal)")
    if arr.dtype.kind == "u":
        top = np.iinfo(arr.dtype).max
        sat = int(np.count_nonzero(arr == top))
        if sat > limits.max_saturated_fraction * n:
            share = "all pixels are" if sat == n else f"{100.0 * sat / n:.1f}% of pixels are"
            raise ScanRejected(f"saturated frame: {share} at the detector maximum {top}")
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise ScanRejected(f"constant frame: every pixel is {lo.item()!r} (no image content)")


def decode_image(data: bytes, name: str, limits: ImageLimits = DEFAULT_LIMITS, *,
                 signal: bool = True) -> np.ndarray:
    """Decode one image file's bytes into a validated 2-D frame.

    Parameters
    ----------
    data:
        The whole file content.
    name:
        The file name (or URI); its extension selects the format and is checked against the
        signature. Used only for the error message, never opened.
    limits:
        Size and signal limits (:class:`ImageLimits`).
    signal:
        Also refuse frames without signal (:func:`check_signal`); False for dark frames and
        masks, which may legitimately be all zero.

    Returns
    -------
    ``(H, W)`` C-contiguous array, dtype ``uint8``, ``uint16`` or ``float32``, values as
    stored (detector counts, or transmission for a pre-corrected 8-bit PNG).

    Raises
    ------
    ScanRejected
        With ``reason`` saying why, and ``name`` set.
    """
    try:
        return _decode(data, name, limits, signal)
    except ScanRejected as exc:
        if exc.name is None:
            raise ScanRejected(exc.reason, name) from exc.__cause__
        raise


def _decode(data: bytes, name: str, limits: ImageLimits, signal: bool) -> np.ndarray:
    if len(data) == 0:
        raise ScanRejected("zero-byte file")
    if len(data) > limits.max_bytes:
        raise ScanRejected(f"file of {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes")
    ext = extension_of(name)
    if ext not in SUPPORTED_EXTENSIONS:
        shown = f"'.{ext}'" if ext else "none"
        raise ScanRejected(f"unsupported file extension {shown} (expected tif, tiff, png or npy)")
    fmt = "tiff" if ext in ("tif", "tiff") else ext
    found = sniff_format(data)
    if found != fmt:
        what = f"looks like {found.upper() if found != 'text' else 'a text file'}" if found else "unknown signature"
        raise ScanRejected(f"wrong magic: a .{ext} file that does not start with the {fmt.upper()} signature "
                           f"({what}: {data[:8]!r})")
    if fmt == "tiff":
        arr = _decode_tiff(data, limits)
    elif fmt == "png":
        arr = _decode_png(data, limits)
    else:
        arr = _decode_npy(data, limits)
    h, w, c = _frame_shape(tuple(arr.shape), channels_last_ok=True)
    arr = arr.reshape(h, w, c) if c else arr.reshape(h, w)
    _check_shape(h, w, limits)
    if c:
        arr = _merge_channels(arr)
    arr = _check_dtype(np.asarray(arr))
    if arr.dtype.kind == "f":
        nan = int(np.count_nonzero(np.isnan(arr)))
        if nan:
            raise ScanRejected(f"contains {nan} NaN pixel{'s' if nan != 1 else ''}")
        inf = int(np.count_nonzero(np.isinf(arr)))
        if inf:
            raise ScanRejected(f"contains {inf} infinite pixel{'s' if inf != 1 else ''}")
    if signal:
        check_signal(arr, limits)
    return np.ascontiguousarray(arr)


def encode_tiff(arr: np.ndarray) -> bytes:
    """A 2-D array as TIFF bytes (tifffile, no compression): the inverse of :func:`decode_image`
    for tests, synthetic data and round trips."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(arr))
    return buf.getvalue()


def encode_png(arr: np.ndarray) -> bytes:
    """A 2-D ``uint8`` or ``uint16`` array as greyscale PNG bytes (Pillow)."""
    from PIL import Image

    a = np.ascontiguousarray(arr)
    if a.ndim != 2 or a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"a greyscale PNG holds a 2-D uint8 or uint16 array, got {a.dtype} {a.shape}")
    img = Image.fromarray(a)  # mode L for uint8, I;16 for uint16
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def encode_npy(arr: np.ndarray) -> bytes:
    """An array as NPY bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
