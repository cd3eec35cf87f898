"""The autoencoder learns good tissue from synthetic tiles, reconstructs defects worse,
is repeatable for a seed, saves and loads exactly, and refuses damaged model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peelscan.lake import Store
from peelscan.model import (TrainConfig, build_autoencoder, fit_normalisation, normalise_tiles, reconstruct,
                            reconstruction_error, train_autoencoder)
from peelscan.modelstore import ModelFileError, ModelStore
from peelscan.peel import PeelConfig, peel_scan
from peelscan.preprocess import preprocess_scan
from peelscan.segment import segment_items
from peelscan.synth import machine_for_lot, make_phantom, render_counts, render_dark, render_flat

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth_tiles():
    """Peeled 32 px tiles of synthetic scans: good ones, and tiles with a defect in them."""
    rng = np.random.default_rng(5)
    machine = machine_for_lot(rng, 256)
    dark, flat = render_dark(machine, rng, (32, 256)), render_flat(machine, rng, (32, 256))
    good, bad = [], []
    cfg = PeelConfig()
    defects = ["stone", "metal", "glass", "hollow_heart", "wireworm", "growth_crack"]
    for i in range(30):
        defect = defects[i % len(defects)] if i >= 20 else None
        ph = make_phantom(rng, defect=defect)
        att = preprocess_scan(render_counts(ph, machine, rng), dark, flat).attenuation
        items = segment_items(att)
        tiles, _ = peel_scan(att, [it.full_mask(att.shape) for it in items], cfg, ph.defect_mask, whole=False)
        if defect is None:
            good.append(tiles.pixels)
        elif tiles.defect_fraction is not None and len(tiles.pixels):
            bad.append(tiles.pixels[tiles.defect_fraction > 0.02])
    return np.concatenate(good), np.concatenate(bad)


def test_training_lowers_the_loss_and_defects_reconstruct_worse(synth_tiles):
    good, bad = synth_tiles
    assert len(good) > 200 and len(bad) > 5
    train, held = good[: len(good) * 3 // 4], good[len(good) * 3 // 4:]
    res = train_autoencoder(train, TrainConfig(epochs=15, seed=0, threads=1, patience=15))
    assert res.history["train_loss"][-1] < res.history["train_loss"][0]
    held, bad = normalise_tiles(res.model, held), normalise_tiles(res.model, bad)
    err_good = reconstruction_error(held, reconstruct(res.model, held)).mean()
    err_bad = reconstruction_error(bad, reconstruct(res.model, bad)).mean()
    assert err_bad > err_good, (err_bad, err_good)


def test_same_seed_same_weights_and_warm_start(synth_tiles):
    good, _ = synth_tiles
    x = good[:256]
    a = train_autoencoder(x, TrainConfig(epochs=2, seed=3, threads=1))
    b = train_autoencoder(x, TrainConfig(epochs=2, seed=3, threads=1))
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    trained = train_autoencoder(x, TrainConfig(epochs=12, seed=3, threads=1, min_steps=300, patience=100))
    warm = train_autoencoder(x, TrainConfig(epochs=2, seed=4, threads=1), init_state=trained.state_dict)
    cold = train_autoencoder(x, TrainConfig(epochs=2, seed=4, threads=1))
    assert warm.history["val_loss"][0] < cold.history["val_loss"][0]
    assert warm.model.normalisation() == trained.model.normalisation()  # a warm start keeps its parent's


def test_threads_are_restored():
    before = torch.get_num_threads()
    train_autoencoder(np.random.default_rng(0).random((64, 32, 32), dtype=np.float32),
                      TrainConfig(epochs=1, threads=2))
    assert torch.get_num_threads() == before


def test_save_load_reconstruct_identical_and_damaged_files_refused(tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder("tiles", 32)
    store = Store(str(tmp_path))
    ms = ModelStore(store)
    v = ms.save("lot-1", "tiles", model, {"tile_size": 32, "loss": "ssim_l2"})
    assert ms.candidate("lot-1", "tiles") == v and ms.current("lot-1", "tiles") is None
    ms.promote("lot-1", "tiles", v)
    loaded, card = ms.load("lot-1", "tiles")
    x = np.random.default_rng(1).random((8, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(reconstruct(model, x), reconstruct(loaded, x))
    assert card["version"] == v and v == ms.save("lot-1", "tiles", model, {"tile_size": 32, "loss": "ssim_l2"})

    weights = store.path("models", "lot-1", "tiles", v, "model.safetensors")
    data = store.fs.cat_file(weights)
    store.fs.pipe_file(weights, data[: len(data) // 2])  # truncated
    with pytest.raises(ModelFileError, match="model.safetensors"):
        ms.load("lot-1", "tiles")
    tampered = bytearray(data)
    tampered[-10] ^= 0xFF
    store.fs.pipe_file(weights, bytes(tampered))
    with pytest.raises(ModelFileError, match="checksum"):
        ms.load("lot-1", "tiles")
    store.fs.pipe_file(weights, data)
    card_path = store.path("models", "lot-1", "tiles", v, "card.json")
    store.fs.pipe_file(card_path, store.fs.cat_file(card_path).replace(b'"ssim_l2"', b'"l2"'))
    with pytest.raises(ModelFileError, match="altered"):
        ms.load("lot-1", "tiles")


def test_mismatched_architecture_is_a_clear_error(tmp_path):
    ms = ModelStore(Store(str(tmp_path)))
    v = ms.save("lot-1", "tiles", build_autoencoder("tiles", 32).state_dict(),
                {"tile_size": 32, "arch": {"size": 32, "channels": [8, 8, 8], "latent": 4}})
    with pytest.raises(ModelFileError, match="do not match the architecture"):
        ms.load("lot-1", "tiles", v)


def test_normalisation_is_fitted_saved_and_applied(tmp_path, synth_tiles):
    """The lot's contrast stretch maps the training tiles' 0.5–99.5 % range onto [0, 1], travels
    with the weights, and score_tiles applies it before reconstructing."""
    from peelscan.scoring import score_tiles

    good, _ = synth_tiles
    offset, scale = fit_normalisation(good)
    lo, hi = np.percentile(good, [0.5, 99.5])
    assert offset == pytest.approx(lo, rel=1e-6) and scale == pytest.approx(hi - lo, rel=1e-6)
    res = train_autoencoder(good[:256], TrainConfig(epochs=1, seed=0, threads=1))
    norm = res.model.normalisation()
    assert norm["offset"] == pytest.approx(fit_normalisation(res_fit := good[:256])[0], abs=0.02)
    assert 0 < norm["scale"] < 1
    xn = normalise_tiles(res.model, good[:8])
    np.testing.assert_allclose(xn, np.clip((good[:8] - norm["offset"]) / norm["scale"], 0, 1), atol=1e-6)
    store = ModelStore(Store(str(tmp_path)))
    loaded, _ = store.load("lot-n", "tiles", store.save("lot-n", "tiles", res.model, {"tile_size": 32}))
    assert loaded.normalisation() == pytest.approx(norm)
    out = score_tiles(loaded, good[:8], names=["rmse"])
    r = reconstruct(loaded, xn)
    np.testing.assert_allclose(out["recon_mse"], ((xn.astype(np.float64) - r) ** 2).mean(axis=(1, 2)), rtol=1e-5)
    assert res_fit.shape[0] == 256
    with pytest.raises(ValueError, match="positive scale"):
        res.model.set_normalisation(0.1, 0.0)


def test_inference_path_equals_forward_and_follows_weight_updates():
    """``infer`` (sub-pixel convolutions, channels-last in ``reconstruct``) computes what
    ``forward`` does, for both architectures, and picks up changed weights (training steps)."""
    from peelscan.model import build_autoencoder, subpixel_weights

    torch.manual_seed(3)
    for kind, size, n in (("tiles", 32, 40), ("whole", 128, 3)):
        model = build_autoencoder(kind, size).eval()
        x = torch.rand(n, 1, size, size)
        with torch.no_grad():
            ref = model(x)
            assert torch.allclose(model.infer(x), ref, atol=2e-6)
            got = reconstruct(model, x[:, 0].numpy())
            assert np.allclose(got, ref[:, 0].numpy(), atol=2e-6)
            for p in model.parameters():  # an optimiser step changes the weights in place
                p.add_(0.01 * torch.randn_like(p))
            assert torch.allclose(model.infer(x), model(x), atol=2e-6)
    with pytest.raises(ValueError, match="4x4 stride-2"):
        subpixel_weights(torch.nn.ConvTranspose2d(4, 4, 3, stride=1, padding=1))
