"""Decoding (peelscan.xrayio), splits (peelscan.splits) and lot ingestion (peelscan.ingest).

The bad-input corpus of issue #9 is built as files in one lot folder next to good scans; every
bad file must be quarantined with a reason that says what is wrong, the good scans must be
ingested, and every file must be accounted for exactly once.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from peelscan.ingest import ingest_lot
from peelscan.lake import Store
from peelscan.splits import assign_split, split_fraction
from peelscan.xrayio import ImageLimits, ScanRejected, decode_image, encode_npy, encode_png, encode_tiff

H, W = 64, 80


def potato_counts(seed: int, shape: tuple[int, int] = (H, W), empty: bool = False, i0: float = 20000.0) -> np.ndarray:
    """A small raw scan: one ellipsoidal 'potato' (mu = 0.02/mm, 0.5 mm pixels) in open beam,
    Poisson counts plus a dark offset of 100, uint16."""
    rng = np.random.default_rng(seed)
    h, w = shape
    r, c = np.mgrid[:h, :w]
    q = 1 - ((r - h / 2) / (0.35 * h)) ** 2 - ((c - w / 2) / (0.3 * w)) ** 2
    att = 0.0 if empty else 0.02 * 2 * 0.5 * 0.3 * w * np.sqrt(np.clip(q, 0, None))
    lam = i0 * np.exp(-att) + np.zeros(shape)
    return np.clip(rng.poisson(lam) + 100, 0, 65535).astype(np.uint16)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# decode_image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("fmt", ["tif", "tiff", "png", "npy"])
def test_decode_round_trip(fmt, dtype):
    a = potato_counts(1)
    a = (a >> 8).astype(np.uint8) if dtype == np.uint8 else a.astype(dtype)
    if fmt == "png" and dtype == np.float32:
        with pytest.raises(ValueError):
            encode_png(a)
        return
    enc = {"tif": encode_tiff, "tiff": encode_tiff, "png": encode_png, "npy": encode_npy}[fmt]
    out = decode_image(enc(a), f"scan.{fmt}")
    assert out.dtype == a.dtype and out.shape == (H, W)
    np.testing.assert_array_equal(out, a)


def test_decode_accepts_grey_rgb_and_float64_and_upper_case_extension():
    a8 = (potato_counts(2) >> 8).astype(np.uint8)
    out = decode_image(png_bytes(np.stack([a8] * 3, axis=-1)), "x.png")
    assert out.shape == (H, W) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, a8)
    out = decode_image(encode_tiff(np.stack([a8] * 3, axis=-1)), "x.TIF")
    np.testing.assert_array_equal(out, a8)
    f64 = potato_counts(2).astype(np.float64)
    out = decode_image(encode_npy(f64), "x.npy")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, f64.astype(np.float32))
    # a (1, H, W) stack is one frame
    out = decode_image(encode_npy(potato_counts(2)[None]), "x.npy")
    assert out.shape == (H, W)


def _reject(data: bytes, name: str, **kw) -> str:
    with pytest.raises(ScanRejected) as info:
        decode_image(data, name, **kw)
    assert info.value.name == name and name in str(info.value)
    return info.value.reason


def test_decode_reasons():
    a = potato_counts(3)
    tif = encode_tiff(a)
    assert _reject(b"", "a.tif") == "zero-byte file"
    assert _reject(tif[: len(tif) // 2], "a.tif").startswith("truncated or unreadable TIFF")
    png = encode_png(a)
    assert _reject(png[: len(png) // 2], "a.png").startswith("truncated or unreadable PNG")
    npy = encode_npy(a)
    assert _reject(npy[: len(npy) - 100], "a.npy").startswith("truncated NPY")
    assert _reject(png, "a.tif").startswith("wrong magic")
    assert "JPEG" in _reject(b"\xff\xd8\xff\xe0" + bytes(200), "a.png")
    assert _reject(a.tobytes(), "a.npy").startswith("wrong magic")
    assert _reject(tif, "a.jpg").startswith("unsupported file extension")
    assert _reject(encode_tiff(np.stack([a] * 5)), "s.tif").startswith("3-D stack of 5 frames")
    assert _reject(encode_npy(np.stack([a] * 2)), "s.npy").startswith("3-D stack of 2 frames")
    assert _reject(encode_npy(np.zeros((2, 3, 4, 5), np.uint16)), "s.npy").startswith("4-D array")
    assert "smaller than the minimum 16×16" in _reject(encode_tiff(np.ones((1, 1), np.uint16)), "one.tif")
    assert "exceeds the maximum 16384" in _reject(encode_tiff(np.ones((10, 50000), np.uint8)), "wide.tif")
    rgb = np.stack([(a >> 8).astype(np.uint8)] * 3, axis=-1)
    rgb[5, 5, 2] ^= 1
    assert _reject(png_bytes(rgb), "c.png").startswith("RGB image with different channels")
    f = a.astype(np.float32)
    f[:3, :4] = np.nan
    assert _reject(encode_npy(f), "n.npy") == "contains 12 NaN pixels"
    f = a.astype(np.float32)
    f[0, 0] = np.inf
    assert _reject(encode_tiff(f), "i.tif") == "contains 1 infinite pixel"
    assert _reject(encode_npy(np.zeros((H, W), np.uint16)), "z.npy") == "all pixels are 0 (no signal)"
    assert _reject(encode_tiff(np.full((H, W), 65535, np.uint16)), "s.tif").startswith("saturated frame")
    assert _reject(encode_png(np.full((H, W), 255, np.uint8)), "s.png").startswith("saturated frame")
    assert _reject(encode_npy(np.full((H, W), 7, np.uint16)), "k.npy").startswith("constant frame")
    assert _reject(encode_npy(a.astype(np.int32)), "t.npy").startswith("unsupported pixel type int32")
    assert _reject(encode_tiff(a.astype(np.int16)), "t.tif").startswith("unsupported pixel type int16")
    obj = np.array([[{"a": 1}] * 20] * 20, dtype=object)
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    assert "pickle" in _reject(buf.getvalue(), "p.npy")
    # an all-zero frame is fine where no signal is needed (a dark frame, a mask)
    assert decode_image(encode_png(np.zeros((H, W), np.uint8)), "m.png", signal=False).max() == 0
    # limits are configurable
    assert "exceeds the maximum 32" in _reject(encode_tiff(a), "a.tif", limits=ImageLimits(max_side=32))


def test_decode_refuses_a_png_bomb_before_decoding():
    """The IHDR says 100000×100000: refused from the header, nothing allocated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")
    assert "exceeds the maximum" in _reject(data, "bomb.png")


# ---------------------------------------------------------------------------------------------
# splits


def test_assign_split_is_deterministic_and_anomalous_go_to_eval():
    ids = [f"scan-{i:04d}" for i in range(2000)]
    splits = [assign_split(s, None, 0.3) for s in ids]
    assert splits == [assign_split(s, "good", 0.3) for s in ids]
    share = splits.count("eval") / len(ids)
    assert 0.26 < share < 0.34
    assert all(assign_split(s, "anomalous", 0.0) == "eval" for s in ids[:50])
    assert all(assign_split(s, "good", 0.0) == "train" for s in ids[:50])
    assert all(assign_split(s, "good", 1.0) == "eval" for s in ids[:50])
    # the salt changes the draw, and the draw is sha256(salt + id)
    assert [assign_split(s, None, 0.3, salt="x") for s in ids] != splits
    assert split_fraction("a", "b") == split_fraction("ba")
    with pytest.raises(ValueError):
        assign_split("a", "maybe")
    with pytest.raises(ValueError):
        assign_split("a", None, 1.5)


# ---------------------------------------------------------------------------------------------
# ingest_lot: the bad-input corpus


def _write(root: Path, rel: str, data: bytes | str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _by_name(ing, lot_dir: Path) -> dict[str, str]:
    """quarantine reasons by path relative to the lot folder (files and label rows)."""
    out: dict[str, str] = {}
    for q in ing.quarantine:
        rel = q.source_uri.split(str(lot_dir) + "/", 1)[1]
        out[rel] = out[rel] + " || " + q.reason if rel in out else q.reason
    return out


def test_bad_input_corpus_is_quarantined_and_the_rest_ingested(tmp_path):
    lot = tmp_path / "landing" / "lot-A"
    a = potato_counts(10)
    good = {"good-1.tif": encode_tiff(potato_counts(11)), "good-2.png": encode_png(potato_counts(12)),
            "good-3.npy": encode_npy(potato_counts(13)), "good-4.tiff": encode_tiff(potato_counts(14)),
            "bad-5.tif": encode_tiff(potato_counts(15)),
            "empty-frame.tif": encode_tiff(potato_counts(16, empty=True)),
            "grey-rgb.png": png_bytes(np.stack([(a >> 8).astype(np.uint8)] * 3, axis=-1)),
            "as-float64.npy": encode_npy(a.astype(np.float64)),
            "as-float32.tif": encode_tiff(a.astype(np.float32))}
    rgb = np.stack([(a >> 8).astype(np.uint8)] * 3, axis=-1)
    rgb[..., 0] = 0
    nan = a.astype(np.float32)
    nan[10:12, 10:16] = np.nan
    inf = a.astype(np.float32)
    inf[3, 3] = -np.inf
    tif = encode_tiff(a)
    png = encode_png(a)
    # file name -> (bytes, expected words of the reason)
    bad = {
        "trunc-tif.tif": (tif[:300], "truncated or unreadable TIFF"),
        "trunc-png.png": (png[: len(png) - 200], "truncated or unreadable PNG"),
        "trunc-npy.npy": (encode_npy(a)[:500], "truncated NPY"),
        "zero.tif": (b"", "zero-byte file"),
        "magic-png.png": (tif, "wrong magic"),
        "magic-tif.tif": (b"this is not an image at all, just text\n", "wrong magic"),
        "rgb.png": (png_bytes(rgb), "RGB image with different channels"),
        "stack.tif": (encode_tiff(np.stack([a] * 5)), "3-D stack of 5 frames"),
        "onepixel.png": (encode_png(np.ones((1, 1), np.uint16)), "smaller than the minimum 16×16"),
        "wide.tif": (encode_tiff(np.ones((10, 50000), np.uint8)), "exceeds the maximum 16384"),
        "nan.npy": (encode_npy(nan), "contains 12 NaN pixels"),
        "inf.tif": (encode_tiff(inf), "contains 1 infinite pixel"),
        "black.tif": (encode_tiff(np.zeros((H, W), np.uint16)), "all pixels are 0 (no signal)"),
        "saturated.png": (encode_png(np.full((H, W), 65535, np.uint16)), "saturated frame"),
        "int32.npy": (encode_npy(a.astype(np.int32)), "unsupported pixel type int32"),
        "narrow.tif": (encode_tiff(potato_counts(17, shape=(H, 60))), "does not match the calibration frames' width 80"),
        "dup.tif": (encode_tiff(potato_counts(18)), "duplicate scan id 'dup'"),
        "dup.png": (encode_png(potato_counts(18)), "duplicate scan id 'dup'"),
        "a..b.tif": (tif, "invalid scan id 'a..b'"),
        "with space.tif": (tif, "invalid scan id 'with space'"),
        "kartoffel-ä.tif": (tif, "invalid scan id"),
        "comma,id.tif": (tif, "invalid scan id 'comma,id'"),
        "pipe|id.tif": (tif, "invalid scan id 'pipe|id'"),
        ".hidden.tif": (tif, "invalid scan id '.hidden'"),
        "notes.txt": (b"operator notes", "unknown file type ('.txt'"),
        "README": (b"readme", "unknown file type (no extension"),
        "photo.jpg": (b"\xff\xd8\xff\xe0" + bytes(100), "unknown file type ('.jpg'"),
        "sub/x.tif": (tif, "unexpected subfolder 'sub/'"),
        "masks/deeper/good-1.png": (encode_png(np.zeros((H, W), np.uint8)), "unexpected subfolder 'masks/deeper/'"),
        "masks/ghost.png": (encode_png(np.zeros((H, W), np.uint8)), "mask for scan 'ghost', which is not in the lot"),
        "masks/trunc-tif.png": (encode_png(np.zeros((H, W), np.uint8)), "mask for scan 'trunc-tif', which was quarantined"),
        "masks/good-2.png": (encode_png(np.zeros((H // 2, W), np.uint8)), "does not match its scan's 80×64"),
        "masks/good-3.tif": (encode_tiff(np.zeros((H, W), np.uint8)), "mask is not a PNG"),
    }
    for name, data in good.items():
        _write(lot, name, data)
    for name, (data, _) in bad.items():
        _write(lot, name, data)
    dark = np.clip(np.random.default_rng(1).normal(100, 2, (8, W)), 0, None).astype(np.uint16)
    flat = np.clip(np.random.default_rng(2).normal(20100, 150, (8, W)), 0, None).astype(np.uint16)
    _write(lot, "dark.tif", encode_tiff(dark))
    _write(lot, "flat.npy", encode_npy(flat))
    mask = np.zeros((H, W), np.uint8)
    mask[20:30, 30:40] = 255
    _write(lot, "masks/good-1.png", encode_png(mask))
    labels = ("\ufeffscan_id,label,defect_type\n"      # BOM tolerated
              "good-1,anomalous,stone\n"              # row 2
              "good-2,good,\n"                        # row 3
              "good-3,Good\n"                         # row 4 (case-insensitive, short row)
              "good-4,maybe,\n"                       # row 5 unknown label
              "missing-scan,good,\n"                  # row 6 names no scan
              "good-2,good,\n"                        # row 7 duplicate (same label): ignored
              "bad-5,good,\n"                         # row 8 conflicting with row 9
              "bad-5,anomalous,glass\n"               # row 9
              "empty-frame,good,bruise\n"             # row 10 defect type on a good scan
              "grey-rgb,anomalous,alien\n"            # row 11 unknown defect type
              "a..b,good,\n"                          # row 12 invalid id
              "trunc-tif,good,\n")                    # row 13 a quarantined scan: no entry
    _write(lot, "labels.csv", labels)

    store = Store(str(tmp_path / "landing"))
    ing = ingest_lot(store, "lot-A", eval_fraction=0.5)

    n_files = len(good) + len(bad) + 2 + 1 + 1  # + dark, flat, mask of good-1, labels.csv
    assert ing.n_files == n_files
    assert ing.counts_add_up, ing.accounting()
    ing.check_counts()
    acc = ing.accounting()
    assert acc["files"] == acc["scans"] + acc["quarantined_files"] + acc["auxiliary_files"]

    reasons = _by_name(ing, lot)
    for name, (_, words) in bad.items():
        assert name in reasons, f"{name} not quarantined"
        assert words in reasons[name], (name, reasons[name])
    assert "conflicting labels in labels.csv rows 8, 9" in reasons["bad-5.tif"]
    scans = {s.scan_id: s for s in ing.scans}
    assert set(scans) == {"good-1", "good-2", "good-3", "good-4", "empty-frame", "grey-rgb", "as-float64",
                          "as-float32"}
    # row-level label problems name the row and are not files
    assert "unknown label 'maybe'" in reasons["labels.csv#row=5"]
    assert "'missing-scan', which does not exist" in reasons["labels.csv#row=6"]
    assert "duplicate row for scan 'good-2' (first given in row 3)" in reasons["labels.csv#row=7"]
    assert "labelled differently" in reasons["labels.csv#row=8"] and "labelled differently" in reasons["labels.csv#row=9"]
    assert "defect type is dropped" in reasons["labels.csv#row=10"]
    assert "unknown defect_type 'alien'" in reasons["labels.csv#row=11"]
    assert "invalid scan id 'a..b'" in reasons["labels.csv#row=12"]
    assert "labels.csv#row=13" not in reasons
    assert not any(q.is_file for q in ing.quarantine if "#row=" in q.source_uri)
    assert "labels.csv" not in reasons and ing.labels_uri == store.display("lot-A", "labels.csv")

    # labels, defect types, masks and splits of the accepted scans
    assert (scans["good-1"].label, scans["good-1"].defect_type, scans["good-1"].split) == ("anomalous", "stone", "eval")
    assert scans["good-1"].mask is not None and scans["good-1"].mask.sum() == 100
    assert scans["good-1"].mask_uri == store.display("lot-A", "masks/good-1.png")
    assert scans["good-2"].label == "good" and scans["good-2"].mask is None
    assert scans["good-3"].label == "good"
    assert scans["good-4"].label is None
    assert (scans["empty-frame"].label, scans["empty-frame"].defect_type) == ("good", None)
    assert (scans["grey-rgb"].label, scans["grey-rgb"].defect_type) == ("anomalous", None)
    for s in ing.scans:
        assert s.split == assign_split(s.scan_id, s.label, 0.5)
        assert s.lot_id == "lot-A" and s.source_uri.startswith(str(lot))
        assert (s.height, s.width) == s.array.shape == (H, W) and s.dtype == str(s.array.dtype)
    assert scans["grey-rgb"].dtype == "uint8" and scans["as-float64"].dtype == "float32"
    np.testing.assert_array_equal(scans["good-1"].array, potato_counts(11))
    # the calibration frames were accepted
    cal = ing.calibration_frames()
    assert set(cal) == {"dark", "flat"}
    np.testing.assert_array_equal(cal["flat"][0], flat)
    assert cal["dark"][1] == store.display("lot-A", "dark.tif")


def test_labels_file_without_required_columns_is_quarantined_and_scans_stay_unlabelled(tmp_path):
    lot = tmp_path / "lot-B"
    _write(lot, "s1.tif", encode_tiff(potato_counts(1)))
    _write(lot, "s2.tif", encode_tiff(potato_counts(2)))
    _write(lot, "labels.csv", "scan,quality\ns1,good\n")
    ing = ingest_lot(Store(str(tmp_path)), "lot-B")
    assert [s.label for s in ing.scans] == [None, None]
    (q,) = ing.quarantine
    assert q.source_uri.endswith("lot-B/labels.csv") and q.is_file
    assert "lacks column(s) scan_id, label" in q.reason
    assert ing.counts_add_up and ing.n_files == 3

    for content, words in [(b"\xff\xfe\x00garbage", "not UTF-8"), (b"", "zero-byte file"),
                           (b"\n\n", "is empty"), (b"scan_id,label,label\ns1,good,bad\n", "repeats column")]:
        _write(lot, "labels.csv", content)
        ing = ingest_lot(Store(str(tmp_path)), "lot-B")
        assert words in ing.quarantine[0].reason and ing.counts_add_up


def test_bad_calibration_frames_are_quarantined_and_the_lot_proceeds_without_them(tmp_path):
    lot = tmp_path / "lot-C"
    _write(lot, "s1.tif", encode_tiff(potato_counts(1)))
    _write(lot, "dark.tif", encode_tiff(np.full((4, W + 4), 100, np.uint16) + np.arange(W + 4, dtype=np.uint16)))
    _write(lot, "flat.tif", encode_tiff(potato_counts(3, shape=(4, W), empty=True)))
    ing = ingest_lot(Store(str(tmp_path)), "lot-C")
    assert ing.dark is None and ing.flat is None and [s.scan_id for s in ing.scans] == ["s1"]
    assert len(ing.quarantine) == 2 and all("differs from flat frame width" in q.reason for q in ing.quarantine)
    assert ing.counts_add_up

    # a truncated flat: refused, the dark kept; a flat darker than the dark: refused
    _write(lot, "dark.tif", encode_tiff(np.full((4, W), 100, np.uint16) + np.arange(W, dtype=np.uint16)))
    _write(lot, "flat.tif", encode_tiff(potato_counts(3, shape=(4, W), empty=True))[:200])
    ing = ingest_lot(Store(str(tmp_path)), "lot-C")
    assert ing.dark is not None and ing.flat is None and len(ing.scans) == 1
    assert "flat frame refused, the lot proceeds without it: truncated" in ing.quarantine[0].reason
    _write(lot, "flat.tif", encode_tiff(np.full((4, W), 90, np.uint16) + np.arange(W, dtype=np.uint16)))
    ing = ingest_lot(Store(str(tmp_path)), "lot-C")
    assert ing.flat is None and "not brighter than the dark frame in 80 of 80 columns" in ing.quarantine[0].reason
    # two flat frames: both refused
    _write(lot, "flat.tif", encode_tiff(potato_counts(3, shape=(4, W), empty=True)))
    _write(lot, "flat.png", encode_png(potato_counts(4, shape=(4, W), empty=True)))
    ing = ingest_lot(Store(str(tmp_path)), "lot-C")
    assert ing.flat is None and sum("2 flat frames" in q.reason for q in ing.quarantine) == 2
    assert ing.counts_add_up and ing.n_files == 4


def test_lot_without_scans_and_lot_with_only_anomalous_labels(tmp_path):
    lot = tmp_path / "lot-D"
    _write(lot, "labels.csv", "scan_id,label\n")
    _write(lot, "notes.txt", "nothing today")
    ing = ingest_lot(Store(str(tmp_path)), "lot-D")
    assert ing.scans == [] and ing.n_files == 2 and ing.counts_add_up
    # a missing lot folder is an empty lot, not an error
    ing = ingest_lot(Store(str(tmp_path)), "lot-none")
    assert ing.n_files == 0 and ing.scans == [] and ing.counts_add_up

    lot = tmp_path / "lot-E"
    for i in range(4):
        _write(lot, f"s{i}.tif", encode_tiff(potato_counts(i)))
    _write(lot, "labels.csv", "scan_id,label,defect_type\n" + "".join(f"s{i},anomalous,metal\n" for i in range(4)))
    ing = ingest_lot(Store(str(tmp_path)), "lot-E", eval_fraction=0.0)
    assert [s.split for s in ing.scans] == ["eval"] * 4
    assert {s.defect_type for s in ing.scans} == {"metal"} and ing.quarantine == []
    assert ing.counts_add_up


def test_invalid_lot_id_is_refused_before_touching_a_path(tmp_path):
    from peelscan.ids import InvalidIdError

    for bad in ("../etc", "a b", "lot|x", "lot,x", ""):
        with pytest.raises(InvalidIdError):
            ingest_lot(Store(str(tmp_path)), bad)


def test_oversized_file_is_refused_from_its_listed_size(tmp_path):
    lot = tmp_path / "lot-F"
    _write(lot, "big.tif", encode_tiff(potato_counts(1)))
    _write(lot, "small.tif", encode_tiff(potato_counts(2, shape=(16, 16))))
    ing = ingest_lot(Store(str(tmp_path)), "lot-F", limits=ImageLimits(max_bytes=2000))
    assert [s.scan_id for s in ing.scans] == ["small"]
    assert "exceeds the limit of 2000 bytes (not read)" in ing.quarantine[0].reason


def test_ingest_reads_only_through_the_store():
    """No local-file shortcut that S3 would not take: no os/pathlib/open in peelscan.ingest."""
    import ast

    import peelscan.ingest as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] in ("os", "pathlib", "glob", "shutil") for n in names), names
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open"


# ---------------------------------------------------------------------------------------------
# lots written by peelscan.synth (the landing contract), with bad files dropped in


@pytest.mark.parametrize("png8", [False, True])
def test_synth_lot_with_bad_files_added(tmp_path, png8):
    from peelscan.preprocess import preprocess_scan
    from peelscan.synth import write_landing

    landing = tmp_path / "landing"
    (lot,) = write_landing(str(landing), lots=1, scans=8, anomaly_rate=0.5, seed=3, size=96, png8=png8)
    folder = landing / lot
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    some_scan = next(n for n in written if n.startswith("scan-"))
    data = (folder / some_scan).read_bytes()
    _write(folder, "scan-trunc." + some_scan.rsplit(".", 1)[1], data[: len(data) // 3])
    _write(folder, "scan bad.tif", data)
    _write(folder, "masks/scan-9999.png", encode_png(np.zeros((96, 96), np.uint8)))
    (folder / "labels.csv").write_text((folder / "labels.csv").read_text() + "scan-9999,good,\nscan-0000,ok,\n")
    ing = ingest_lot(Store(str(landing)), lot)
    ing.check_counts()
    assert ing.n_files == len(written) + 3
    assert len(ing.scans) == 8
    assert {q.source_uri.rsplit("/", 1)[1] for q in ing.quarantine if q.is_file} == {
        "scan-trunc." + some_scan.rsplit(".", 1)[1], "scan bad.tif", "scan-9999.png"}
    rows = sorted(q.reason for q in ing.quarantine if not q.is_file)
    assert len(rows) == 2
    assert any("'scan-9999', which does not exist" in r for r in rows)
    assert any("unknown label 'ok' for scan 'scan-0000'" in r for r in rows)
    anomalous = [s for s in ing.scans if s.label == "anomalous"]
    assert len(anomalous) == 4 and all(s.split == "eval" and s.defect_type and s.mask is not None for s in anomalous)
    assert all(s.label == "good" and s.mask is None for s in ing.scans if s not in anomalous)
    if png8:
        assert ing.dark is None and ing.flat is None and {s.dtype for s in ing.scans} == {"uint8"}
    else:
        assert ing.dark is not None and ing.flat is not None and {s.dtype for s in ing.scans} == {"uint16"}
    cal = ing.calibration_frames()
    dark, flat = cal.get("dark", (None,))[0], cal.get("flat", (None,))[0]
    kinds = {preprocess_scan(s.array, dark, flat).calibration for s in ing.scans}
    assert kinds == ({"pre-corrected"} if png8 else {"frames"})
