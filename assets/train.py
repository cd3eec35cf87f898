"""Training stage: ``autoencoder`` (per lot) and its blocking quality check.

The asset trains on the lot's ``train`` split only (good or unlabelled scans); a slice of the
training scans, chosen by scan-id hash (``VAL_SALT``), is held out of the gradient steps for
early stopping, for the regression check and for threshold calibration. The new model is
saved as the lot's *candidate*; the blocking check ``autoencoder_no_regression`` promotes it
to *current* (the one scoring uses) only if it reconstructs the held-out good tiles no worse
than the model it replaces, within a margin.
"""


import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from assets._common import picture
from assets.peel import peeled_tiles
from peelscan.ids import validate_id
from peelscan.model import TrainConfig, normalise_tiles, reconstruct, reconstruction_error, train_autoencoder
from peelscan.peel import table_to_pixels
from peelscan.plots import loss_curves_png, recon_grid_png
from peelscan.splits import assign_split
from pipelines.partitions import lots_partitions
from resources import LakeResource, ModelStoreResource, WarehouseResource

MODEL_KINDS = ("tiles", "whole")
DATASET_OF_KIND = {"tiles": "tiles", "whole": "whole"}
VAL_SALT = "val"


def split_train_val(table, val_fraction: float):
    """(fit table, val table): the training split's tiles divided by scan-id hash, so that no
    scan has tiles on both sides."""
    train = table.filter(pc.equal(table["split"], "train"))
    scan_ids = train["scan_id"].to_pylist()
    is_val = np.array([assign_split(s, None, eval_fraction=val_fraction, salt=VAL_SALT) == "eval"
                       for s in scan_ids], dtype=bool)
    return train.filter(~is_val), train.filter(is_val)


class TrainAssetConfig(Config):
    model_kind: str = "tiles"
    """``tiles`` (peeled tiles, the method) or ``whole`` (whole-item images, the baseline arm)."""
    loss: str = "ssim"
    """``l2``, ``ssim`` or ``ssim_l2`` (Bergmann et al. 2019)."""
    epochs: int = 30
    """Epochs from scratch (early stopping may end sooner)."""
    warm_epochs: int = 8
    """Epochs when warm-starting from a previous or parent model: nightly retraining only adapts."""
    threads: int = 2
    """CPU threads torch may use for this training."""
    seed: int = 0
    warm_start: str = "previous"
    """``previous`` (this lot's current model, if any), ``parent`` (``parent_lot``'s current) or ``none``."""
    parent_lot: str | None = None
    val_fraction: float = 0.15
    """Share of training scans held out (by scan-id hash) for early stopping and calibration."""
    batch_size: int = 64
    """Tiles per gradient step for ``tiles``; the whole-image arm uses ``whole_batch_size``."""
    whole_batch_size: int = 16
    """Images per gradient step for ``whole`` (128×128 images: 16 of them are 256 tiles' pixels)."""
    min_steps: int = 600
    """At least this many gradient steps from scratch: a lot's few hundred whole-item images
    would otherwise get only a few dozen steps in ``epochs`` epochs and stay untrained."""
    force_retrain: bool = False
    """Retrain even when the lot's data, tiling and loss are unchanged since its current model
    (by default such a rerun keeps the model in service: reruns and backfills are idempotent)."""
    max_train_tiles: int = 20000
    """Cap on training tiles (a seeded subsample beyond it), to bound nightly training time."""


@asset(partitions_def=lots_partitions, group_name="lot_pipeline", deps=[peeled_tiles], kinds={"pytorch", "duckdb"},
       description="Convolutional autoencoder trained on the lot's good training tiles; saved as the candidate model.")
def autoencoder(context: AssetExecutionContext, config: TrainAssetConfig, lake: LakeResource,
                model_store: ModelStoreResource, warehouse: WarehouseResource) -> MaterializeResult:
    lot = validate_id(context.partition_key, "lot id")
    kind = config.model_kind
    if kind not in MODEL_KINDS:
        raise ValueError(f"model_kind must be one of {MODEL_KINDS}, got {kind!r}")
    store = lake.store()
    models = model_store.model_store()
    data_version = store.dataset_manifest(lot, "raw")["metadata"].get("content_version")
    tiles_config = store.dataset_manifest(lot, DATASET_OF_KIND[kind])["metadata"].get("config")
    if config.warm_start == "previous" and not config.force_retrain:
        cur = models.current(lot, kind)
        cur_card = models.card(lot, kind, cur) if cur is not None else {}
        if (cur is not None and data_version is not None and cur_card.get("training_data_version") == data_version
                and cur_card.get("tiles_config") == tiles_config and cur_card.get("loss") == config.loss):
            # a rerun or backfill of a lot whose data, tiling and loss are unchanged: nothing new
            # to learn, so the model in service stays, and the lot's tables come out identical
            models.set_candidate(lot, kind, cur)
            context.log.info(f"lot {lot}: data unchanged since model {cur}; kept (force_retrain to retrain)")
            return MaterializeResult(metadata={
                "model_version": cur, "model_kind": kind, "retrained": False,
                "reason": "training data, tiling and loss unchanged since the current model",
                "training_data_version": data_version})
    table = store.read_dataset(lot, DATASET_OF_KIND[kind])
    fit, val = split_train_val(table, config.val_fraction)
    if fit.num_rows == 0:
        raise ValueError(f"lot {lot}: no training tiles (no good or unlabelled scans in the train split)")
    fit_x = table_to_pixels(fit)
    if len(fit_x) > config.max_train_tiles:
        idx = np.sort(np.random.default_rng(config.seed).choice(len(fit_x), config.max_train_tiles, replace=False))
        fit_x = fit_x[idx]
    val_x = table_to_pixels(val) if val.num_rows else None

    parent_version, init_state, parent_desc = None, None, None
    if config.warm_start == "previous":
        v = models.current(lot, kind)
        if v is not None:
            model, card = models.load(lot, kind, v)
            init_state, parent_version, parent_desc = model.state_dict(), v, f"{lot}/{kind}/{v}"
    elif config.warm_start == "parent":
        parent = validate_id(config.parent_lot, "parent lot id")
        v = models.current(parent, kind)
        if v is None:
            raise ValueError(f"parent lot {parent} has no current {kind} model to warm-start from")
        model, card = models.load(parent, kind, v)
        init_state, parent_version, parent_desc = model.state_dict(), v, f"{parent}/{kind}/{v}"
    elif config.warm_start != "none":
        raise ValueError(f"warm_start must be previous, parent or none, got {config.warm_start!r}")

    epochs = config.warm_epochs if init_state is not None else config.epochs
    tcfg = TrainConfig(loss=config.loss, epochs=epochs, seed=config.seed, threads=config.threads,
                       batch_size=config.whole_batch_size if kind == "whole" else config.batch_size,
                       min_steps=0 if init_state is not None else config.min_steps)
    t0 = time.perf_counter()
    result = train_autoencoder(fit_x, tcfg, kind=kind, init_state=init_state, val_tiles=val_x)
    seconds = time.perf_counter() - t0
    tiles_version = store.current_version(lot, DATASET_OF_KIND[kind])
    card = {
        "lot_id": lot, "kind": kind, "tile_size": int(fit_x.shape[-1]),
        "normalisation": {"input": "attenuation / attenuation_scale, clipped to [0, 1] (peelscan.preprocess)",
                          "stretch": "clip((x - offset) / scale, 0, 1), fitted on the training tiles "
                                     "(0.5 / 99.5 percentiles; peelscan.model.fit_normalisation)",
                          **result.model.normalisation()},
        "loss": config.loss, "train_config": tcfg.as_dict(),
        "training_data_version": data_version, "tiles_config": tiles_config,
        "tiles_dataset_version": tiles_version,
        "parent_version": parent_version, "parent": parent_desc,
        "val_salt": VAL_SALT, "val_fraction": config.val_fraction,
        "metrics": {"train_loss": result.history["train_loss"][-1] if result.history["train_loss"] else None,
                    "val_loss": min(result.history["val_loss"]) if result.history.get("val_loss") else None,
                    "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                    "n_train": result.n_train, "n_val": result.n_val, "seconds": seconds},
        "trained_at": datetime.now(timezone.utc).isoformat(),
    }
    version = models.save(lot, kind, result.model, card)
    warehouse.warehouse().replace_lot_rows("training_runs", lot, pd.DataFrame([{
        "lot_id": lot, "model_version": version, "arch": f"{kind}:{result.model.__class__.__name__}",
        "n_train_tiles": result.n_train, "epochs": result.epochs_run,
        "train_loss": card["metrics"]["train_loss"], "val_loss": card["metrics"]["val_loss"],
        "seconds": seconds, "parent_version": parent_version, "trained_at": datetime.now(timezone.utc),
    }]), extra_key={"model_version": version})

    meta: dict = {"model_version": version, "model_kind": kind, "retrained": True, "n_train_tiles": result.n_train,
                  "n_val_tiles": result.n_val, "epochs_run": result.epochs_run, "seconds": round(seconds, 2),
                  "parent_version": parent_version or "none (from scratch)",
                  "val_loss": card["metrics"]["val_loss"]}
    meta.update(picture(lot, f"loss_curves_{kind}", loss_curves_png(result.history), f"{kind} autoencoder loss"))
    examples = _example_tiles(table, val_x)
    if examples is not None:
        x, titles = examples
        xn = normalise_tiles(result.model, x)
        meta.update(picture(lot, f"reconstructions_{kind}", recon_grid_png(xn, reconstruct(result.model, xn), titles),
                            "input, reconstruction, |difference| (good and anomalous tiles)"))
    return MaterializeResult(metadata=meta)


def _example_tiles(table, val_x):
    """Up to 4 held-out good tiles and 4 tiles of anomalous scans with most defect."""
    good = val_x[:4] if val_x is not None else np.zeros((0,))
    anom_t = table.filter(pc.and_(pc.equal(table["label"], "anomalous"),
                                  pc.greater(pc.fill_null(table["defect_fraction"], 0.0), 0.1)))
    if anom_t.num_rows:
        order = np.argsort(-anom_t["defect_fraction"].to_numpy(zero_copy_only=False))[:4]
        anom = table_to_pixels(anom_t.take(order))
        types = anom_t.take(order)["defect_type"].to_pylist()
    else:
        anom, types = np.zeros((0,) + good.shape[1:], dtype=np.float32), []
    if len(good) == 0 and len(anom) == 0:
        return None
    x = np.concatenate([good, anom]) if len(good) and len(anom) else (good if len(good) else anom)
    return x.astype(np.float32), ["good"] * len(good) + [str(t) for t in types]


def _dataset_unit_error(model, x) -> float:
    """Mean squared reconstruction error of ``x`` in dataset units (the models compared may
    normalise differently: the error in each model's space is scaled back by its scale²)."""
    xn = normalise_tiles(model, x)
    scale = float(model.normalisation()["scale"]) if hasattr(model, "normalisation") else 1.0
    return float(reconstruction_error(xn, reconstruct(model, xn)).mean()) * scale * scale


class RegressionCheckConfig(Config):
    margin: float = 0.10
    """A candidate whose mean reconstruction error on held-out good tiles exceeds the current
    model's by more than this fraction is refused."""


@asset_check(asset=autoencoder, blocking=True, partitions_def=lots_partitions,
             description="Promote the candidate model only if it reconstructs held-out good tiles "
                         "no worse than the model it replaces (within a margin).")
def autoencoder_no_regression(context: AssetCheckExecutionContext, config: RegressionCheckConfig,
                              lake: LakeResource, model_store: ModelStoreResource) -> AssetCheckResult:
    lot = validate_id(context.partition_key, "lot id")
    store = lake.store()
    models = model_store.model_store()
    verdicts: dict = {}
    passed = True
    for kind in MODEL_KINDS:
        cand = models.candidate(lot, kind)
        cur = models.current(lot, kind)
        if cand is None or cand == cur:
            continue
        cand_model, card = models.load(lot, kind, cand)
        _, val = split_train_val(store.read_dataset(lot, DATASET_OF_KIND[kind]), card.get("val_fraction", 0.15))
        if val.num_rows == 0:
            fit, _ = split_train_val(store.read_dataset(lot, DATASET_OF_KIND[kind]), 0.15)
            val = fit
        x = table_to_pixels(val)
        cand_err = _dataset_unit_error(cand_model, x)
        if cur is None:
            models.promote(lot, kind, cand)
            verdicts[kind] = {"candidate": cand, "replaces": None, "candidate_mse": cand_err, "promoted": True}
            continue
        cur_model, _ = models.load(lot, kind, cur)
        cur_err = _dataset_unit_error(cur_model, x)
        ok = cand_err <= cur_err * (1.0 + config.margin)
        if ok:
            models.promote(lot, kind, cand)
        passed &= ok
        verdicts[kind] = {"candidate": cand, "replaces": cur, "candidate_mse": cand_err,
                          "current_mse": cur_err, "margin": config.margin, "promoted": ok}
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR,
                            metadata={"verdicts": MetadataValue.json(verdicts)},
                            description=None if passed else "candidate model is worse than the current one; not promoted")
