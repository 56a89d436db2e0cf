"""Trained weights that ship with the package: the handbook's small models, ready offline.

A chapter that trains one of the small models exports it with :func:`export`: its weights in
float16 (a few MB), their SHA-256, the model fingerprint and the metrics it reached go into
``cocs/weights/``, which is committed. ``timm.create_model(name, pretrained=True)`` after
``import cocs`` then loads them (:func:`load_shipped`), with no download, after checking the
file's hash and, for the model it was trained as, the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from timm.models._features import FeatureGetterNet
from torch import nn

from .fingerprint import model_fingerprint

__all__ = [
    "WEIGHTS_DIR",
    "export",
    "load_float16",
    "load_shipped",
    "manifest",
    "save_float16",
    "shipped",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: str | os.PathLike = WEIGHTS_DIR) -> dict[str, dict]:
    """Every shipped model: ``{name: {file, sha256, fingerprint, num_classes, metrics, source}}``."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def shipped(name: str, folder: str | os.PathLike = WEIGHTS_DIR) -> dict | None:
    """The manifest entry of ``name``, or None when no weights ship for it."""
    return manifest(folder).get(name)


def save_float16(model: nn.Module, path: str | os.PathLike) -> str:
    """Write ``model``'s weights to ``path`` (safetensors) in float16, atomically; their SHA-256."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    return _sha256(path)


def load_float16(model: nn.Module, path: str | os.PathLike, sha256: str) -> nn.Module:
    """Load weights that :func:`save_float16` wrote into ``model`` (float16 -> the model's dtype),
    after checking the file against ``sha256``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file() or _sha256(path) != sha256:
        raise ValueError(
            f"{path} is missing or does not match its recorded SHA-256 {sha256[:12]}...; restore "
            "it with `git checkout` or train its run again"
        )
    model.load_state_dict(load_file(str(path)), strict=True)
    return model


def export(
    model: nn.Module,
    name: str,
    *,
    metrics: Mapping,
    source: str,
    folder: str | os.PathLike = WEIGHTS_DIR,
) -> dict:
    """Write ``model``'s weights as ``<folder>/<name>.safetensors`` in float16 and record them.

    Args:
        name: the registered model name it loads as (``timm.create_model(name, pretrained=True)``).
        metrics: what it reached (e.g. ``{"test_acc": 80.9, "dataset": "cifar10"}``), kept in
            the manifest and checked by the tests.
        source: where it was trained: the results folder, relative to the repository.
    Returns the manifest entry.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    entry = {
        "file": path.name,
        "sha256": save_float16(model, path),
        "fingerprint": model_fingerprint(model),
        "num_classes": int(getattr(model, "num_classes", 0)),
        "dtype": "float16",
        "metrics": dict(metrics),
        "source": source,
    }
    table = manifest(folder) | {name: entry}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(dict(sorted(table.items())), indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return entry


def load_shipped(model: nn.Module, name: str, folder: str | os.PathLike = WEIGHTS_DIR) -> nn.Module:
    """Load the shipped weights of ``name`` into ``model`` (float16 -> the model's dtype).

    The file's SHA-256 must match the manifest, and a model with the shipped number of classes
    must have the recorded fingerprint. With another number of classes, the classifier keeps
    its fresh initial weights and everything else loads (timm's convention for fine-tuning).
    """
    from safetensors.torch import load_file

    entry = shipped(name, folder)
    if entry is None:
        have = ", ".join(sorted(manifest(folder))) or "none yet"
        raise ValueError(
            f"pretrained=True: no trained weights ship for {name} (shipped: {have}); train it "
            "with its chapter (or cocs.train), or load the authors' release with "
            "cocs.load_official_checkpoint"
        )
    path = Path(folder) / entry["file"]
    if not path.is_file() or _sha256(path) != entry["sha256"]:
        raise ValueError(
            f"{path} is missing or does not match the SHA-256 of its manifest entry; restore it "
            "with `git checkout -- cocs/weights` or export it again from its chapter"
        )
    state = load_file(str(path))
    if isinstance(model, FeatureGetterNet):  # features_only: every weight but norm and head
        inner = model.model
        inner.load_state_dict({k: state[k] for k in inner.state_dict()}, strict=True)
        return model
    own = model.state_dict()
    same_classes = int(getattr(model, "num_classes", -1)) == entry["num_classes"]
    if same_classes and model_fingerprint(model) != entry["fingerprint"]:
        raise ValueError(
            f"the shipped {name} weights were trained as model {entry['fingerprint']}, but this "
            f"{name} is {model_fingerprint(model)}: its architecture changed since; export the "
            "weights again from their chapter"
        )
    if not same_classes:  # a new classifier: keep its initial weights
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=same_classes)
    return model
