"""Trained weights that ship with the package: the handbook's small models, ready offline.

A chapter that trains one of the small models exports it with :func:`export`: its weights in
float16 (a few MB), their SHA-256, the model fingerprint and the metrics it reached go into
``cocs/weights/``, which is committed. ``timm.create_model(name, pretrained=True)`` after
``import cocs`` then loads them (:func:`load_shipped`), with no download, after checking the
weights' hash and, for the model it was trained as, the fingerprint.

Shipped files are packed safetensors files, ``<name>.safetensors.xz``: the safetensors bytes
with their data section split into two byte planes (every element's first bytes, then its
second bytes: the shuffle filter of HDF5 and Blosc), xz-compressed. In float16 the high byte
(sign, exponent, two bits of mantissa) of trained weights carries under 6 bits of information
and the low byte 8, so the planes compress to about 85% where the interleaved bytes barely
compress; that keeps every shipped file under 5 MiB. :func:`unpack` gives back the safetensors
file bit for bit (the SHA-256 in the manifest is that file's), e.g. for tools outside ``cocs``.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
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
    "unpack",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
PACKED = ".safetensors.xz"  # the suffix of a packed file (see the module's docstring)


def _planes(raw: bytes, *, split: bool) -> bytes:
    """Split a safetensors file's data section into its two byte planes (``split=True``), or
    interleave them back; the 8-byte length and the JSON header stay as they are."""
    start = 8 + int.from_bytes(raw[:8], "little")
    data = np.frombuffer(raw, np.uint8, offset=start)
    if split:
        return raw[:start] + data[0::2].tobytes() + data[1::2].tobytes()
    out = np.empty_like(data)
    half = (len(data) + 1) // 2  # the first plane holds the even offsets
    out[0::2], out[1::2] = data[:half], data[half:]
    return raw[:start] + out.tobytes()


def _write(path: Path, raw: bytes) -> None:
    """Write safetensors bytes to ``path``, packed when its name ends in ``.safetensors.xz``,
    atomically."""
    if path.name.endswith(PACKED):
        raw = lzma.compress(_planes(raw, split=True), preset=9 | lzma.PRESET_EXTREME)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, path)


def unpack(path: str | os.PathLike) -> bytes:
    """The safetensors bytes a weights file holds, packed (``.safetensors.xz``) or not."""
    path = Path(path)
    raw = path.read_bytes()
    if not path.name.endswith(PACKED):
        return raw
    try:
        return _planes(lzma.decompress(raw), split=False)
    except lzma.LZMAError as err:
        raise ValueError(
            f"{path} is damaged ({err}); restore it with `git checkout -- {path.name}` in its "
            "folder or export it again from its chapter"
        ) from err


def _checked(path: Path, sha256: str, fix: str) -> bytes:
    """The safetensors bytes of ``path`` after checking them against ``sha256``."""
    raw = unpack(path) if path.is_file() else b""
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(
            f"{path} is missing or does not match its recorded SHA-256 {sha256[:12]}...; {fix}"
        )
    return raw


def manifest(folder: str | os.PathLike = WEIGHTS_DIR) -> dict[str, dict]:
    """Every shipped model: ``{name: {file, sha256, fingerprint, num_classes, metrics, source}}``."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def shipped(name: str, folder: str | os.PathLike = WEIGHTS_DIR) -> dict | None:
    """The manifest entry of ``name``, or None when no weights ship for it."""
    return manifest(folder).get(name)


def save_float16(model: nn.Module, path: str | os.PathLike) -> str:
    """Write ``model``'s weights to ``path`` (safetensors; packed when the name ends in
    ``.safetensors.xz``) in float16, atomically; the SHA-256 of the safetensors bytes."""
    from safetensors.torch import save

    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    raw = save(state)
    _write(Path(path), raw)
    return hashlib.sha256(raw).hexdigest()


def load_float16(model: nn.Module, path: str | os.PathLike, sha256: str) -> nn.Module:
    """Load weights that :func:`save_float16` wrote into ``model`` (float16 -> the model's dtype),
    after checking the file against ``sha256``."""
    from safetensors.torch import load

    raw = _checked(Path(path), sha256, "restore it with `git checkout` or train its run again")
    model.load_state_dict(load(raw), strict=True)
    return model


def export(
    model: nn.Module,
    name: str,
    *,
    metrics: Mapping,
    source: str,
    folder: str | os.PathLike = WEIGHTS_DIR,
) -> dict:
    """Write ``model``'s weights as ``<folder>/<name>.safetensors.xz`` in float16 (packed: see
    the module's docstring) and record them.

    Args:
        name: the registered model name it loads as (``timm.create_model(name, pretrained=True)``).
        metrics: what it reached (e.g. ``{"test_acc": 80.9, "dataset": "cifar10"}``), kept in
            the manifest and checked by the tests.
        source: where it was trained: the results folder, relative to the repository.
    Returns the manifest entry.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{PACKED}"
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
    from safetensors.torch import load

    entry = shipped(name, folder)
    if entry is None:
        have = ", ".join(sorted(manifest(folder))) or "none yet"
        raise ValueError(
            f"pretrained=True: no trained weights ship for {name} (shipped: {have}); train it "
            "with its chapter (or cocs.train), or load the authors' release with "
            "cocs.load_official_checkpoint"
        )
    fix = "restore it with `git checkout -- cocs/weights` or export it again from its chapter"
    state = load(_checked(Path(folder) / entry["file"], entry["sha256"], fix))
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
