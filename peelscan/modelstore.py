"""The model store: safetensors weights + a JSON card per version, in the lake (local or S3).

Layout: ``models/<lot>/<kind>/<version>/model.safetensors`` and ``card.json``; pointers
``models/<lot>/<kind>/CANDIDATE`` (last trained) and ``CURRENT`` (promoted, in use). The
version is a content hash: sha256 of the safetensors bytes and the canonical card, first 16
hex digits. Weights never travel as pickles; a damaged, tampered or mismatched file raises
:class:`ModelFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from peelscan.ids import validate_id
from peelscan.lake import Store
from peelscan.model import build_autoencoder

KINDS = ("tiles", "whole")


class ModelFileError(RuntimeError):
    """A model file is missing, truncated, tampered with or does not match its card."""


def _canonical(card: dict[str, Any]) -> bytes:
    return json.dumps(card, sort_keys=True, separators=(",", ":"), default=str).encode()


def content_version(weights: bytes, card: dict[str, Any]) -> str:
    return hashlib.sha256(weights + b"\0" + _canonical(card)).hexdigest()[:16]


class ModelStore:
    def __init__(self, store: Store):
        self.store = store

    def _key(self, lot_id: str, kind: str) -> tuple[str, str, str]:
        if kind not in KINDS:
            raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
        return "models", validate_id(lot_id, "lot id"), kind

    def save(self, lot_id: str, kind: str, model: torch.nn.Module | dict[str, torch.Tensor],
             card: dict[str, Any]) -> str:
        """Save weights + card as a new version, set it as the lot's CANDIDATE; returns the version."""
        base = self._key(lot_id, kind)
        state = model.state_dict() if isinstance(model, torch.nn.Module) else model
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        arch = model.arch() if hasattr(model, "arch") else card.get("arch", {})
        card = {**card, "kind": kind, "arch": arch, "torch_version": torch.__version__}
        weights = st_save(state)
        version = content_version(weights, card)
        card_with = {**card, "version": version, "weights_sha256": hashlib.sha256(weights).hexdigest()}
        self.store.write_bytes(weights, *base, version, "model.safetensors")
        self.store.write_json(card_with, *base, version, "card.json")
        self.store.write_json({"version": version}, *base, "CANDIDATE")
        return version

    def _pointer(self, lot_id: str, kind: str, name: str) -> str | None:
        base = self._key(lot_id, kind)
        if not self.store.exists(*base, name):
            return None
        return self.store.read_json(*base, name)["version"]

    def candidate(self, lot_id: str, kind: str) -> str | None:
        return self._pointer(lot_id, kind, "CANDIDATE")

    def current(self, lot_id: str, kind: str) -> str | None:
        return self._pointer(lot_id, kind, "CURRENT")

    def set_candidate(self, lot_id: str, kind: str, version: str) -> None:
        """Point CANDIDATE at an existing version (e.g. the current one, when a rerun keeps it)."""
        base = self._key(lot_id, kind)
        if not self.store.exists(*base, validate_id(version, "model version"), "card.json"):
            raise ModelFileError(f"no model {self.store.display(*base, version)}")
        self.store.write_json({"version": version}, *base, "CANDIDATE")

    def promote(self, lot_id: str, kind: str, version: str) -> None:
        base = self._key(lot_id, kind)
        if not self.store.exists(*base, validate_id(version, "model version"), "card.json"):
            raise ModelFileError(f"cannot promote {self.store.display(*base, version)}: no such version")
        self.store.write_json({"version": version}, *base, "CURRENT")

    def card(self, lot_id: str, kind: str, version: str) -> dict[str, Any]:
        base = self._key(lot_id, kind)
        path = self.store.display(*base, version, "card.json")
        try:
            return self.store.read_json(*base, validate_id(version, "model version"), "card.json")
        except FileNotFoundError as exc:
            raise ModelFileError(f"model card {path} is missing") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"model card {path} is damaged: {exc}") from exc

    def current_card(self, lot_id: str, kind: str) -> dict[str, Any] | None:
        v = self.current(lot_id, kind)
        return None if v is None else self.card(lot_id, kind, v)

    def write_extra(self, lot_id: str, kind: str, version: str, name: str, obj: Any) -> None:
        """A JSON file beside a version (e.g. the calibrated thresholds)."""
        self.store.write_json(obj, *self._key(lot_id, kind), validate_id(version, "model version"), name)

    def read_extra(self, lot_id: str, kind: str, version: str, name: str) -> Any | None:
        base = self._key(lot_id, kind)
        if not self.store.exists(*base, version, name):
            return None
        return self.store.read_json(*base, version, name)

    def load(self, lot_id: str, kind: str, version: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The model (eval mode) and its card; ``version`` None = CURRENT, else CANDIDATE."""
        version = version or self.current(lot_id, kind) or self.candidate(lot_id, kind)
        base = self._key(lot_id, kind)
        if version is None:
            raise ModelFileError(f"no {kind} model for lot {lot_id} in {self.store.display(*base)}")
        card = self.card(lot_id, kind, version)
        path = self.store.display(*base, version, "model.safetensors")
        try:
            weights = self.store.read_bytes(*base, version, "model.safetensors")
        except FileNotFoundError as exc:
            raise ModelFileError(f"model weights {path} are missing") from exc
        if hashlib.sha256(weights).hexdigest() != card.get("weights_sha256"):
            raise ModelFileError(f"model weights {path} do not match their card's checksum "
                                 "(truncated or tampered with)")
        bare = {k: v for k, v in card.items() if k not in ("version", "weights_sha256")}
        if content_version(weights, bare) != version:
            raise ModelFileError(f"model card {self.store.display(*base, version, 'card.json')} was altered "
                                 "(content hash does not match the version)")
        try:
            state = st_load(weights)
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise ModelFileError(f"model weights {path} cannot be read as safetensors: {exc}") from exc
        arch = card.get("arch") or {}
        model = build_autoencoder(kind, int(arch.get("size", card.get("tile_size", 32))),
                                  **{k: v for k, v in arch.items() if k != "size"})
        if "input_offset" not in state and "input_scale" not in state:
            # a model saved before input normalisation existed: identity normalisation
            state = {**state, "input_offset": torch.zeros(()), "input_scale": torch.ones(())}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(f"model weights {path} do not match the architecture on the card: "
                                 f"{str(exc).splitlines()[0]}") from exc
        model.eval()
        return model, card
