"""Load the authors' released checkpoints into ``cocs`` models."""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Mapping

import timm
import torch
from timm.models._features import FeatureGetterNet
from torch import Tensor, nn

OFFICIAL_VARIANTS = (
    "coc_tiny",
    "coc_tiny2",
    "coc_tiny_plain",
    "coc_small",
    "coc_medium",
    "coc_base_dim64",
    "coc_base_dim96",
)


# Globals that complete training checkpoints hold besides tensors and plain containers: timm's
# CheckpointSaver (the authors' train.py) stores the command line as an argparse.Namespace.
# Only these are allowed through torch.load(weights_only=True); nothing falls back to
# unrestricted unpickling.
SAFE_GLOBALS = (argparse.Namespace,)


def _load_file(path: str) -> Mapping:
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path!r} holds Python objects that a weights-only load refuses ({err}). It is not "
            "a checkpoint of the kinds cocs reads (a state dict, or a dict with 'state_dict', "
            "'model' or 'state_dict_ema', as timm's CheckpointSaver writes); if you trust the "
            "file, load it yourself with torch.load(..., weights_only=False) and pass the state "
            "dict"
        ) from err


def _unwrap(ckpt: Mapping, use_ema: bool) -> dict[str, Tensor]:
    """The state dict inside a released file: bare, or under 'state_dict' / 'model' (or
    'state_dict_ema' with ``use_ema``, or when it is the only one), with an optional 'module.'
    prefix from DistributedDataParallel."""
    keys = ("state_dict_ema",) if use_ema else ("state_dict", "model", "state_dict_ema")
    if use_ema and not isinstance(ckpt.get("state_dict_ema"), Mapping):
        raise ValueError(
            f"use_ema=True, but the checkpoint has no 'state_dict_ema' (its keys: "
            f"{sorted(ckpt)[:8]}); pass use_ema=False"
        )
    for key in keys:
        if key in ckpt and isinstance(ckpt[key], Mapping):
            ckpt = ckpt[key]
            break
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _guess_variant(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The official variants whose parameter layout equals ``shapes``."""
    found = []
    for name in OFFICIAL_VARIANTS:
        with torch.device("meta"):
            candidate = timm.create_model(name)
        if _shapes(candidate) == shapes:
            found.append(name)
    return found


def load_official_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping,
    model: nn.Module | str,
    *,
    num_classes: int | None = None,
    use_ema: bool = False,
) -> nn.Module:
    """Load a released Context Cluster checkpoint with ``strict=True``.

    Args:
        path_or_state_dict: a file saved by the authors' training script (timm's
            CheckpointSaver: 'state_dict', 'state_dict_ema', 'optimizer', 'args', 'epoch'), a
            state dict bare or under 'state_dict', 'model' or 'state_dict_ema', or such a dict
            in memory. Files are read with ``torch.load(weights_only=True)``, which allows
            only :data:`SAFE_GLOBALS` besides tensors and plain containers.
        model: a ``cocs`` model (also ``features_only=True``, which takes every weight but the
            final norm and classifier), or the name of a registered variant to create.
        num_classes: with a model name, the classifier size (default: the checkpoint's).
        use_ema: load 'state_dict_ema', the moving average of the weights, as the authors'
            validate.py does with --use-ema. The default, False, loads 'state_dict' (their
            default too); a file with only 'state_dict_ema' loads that either way.
    Returns:
        the model with the weights loaded.
    Raises:
        ValueError naming the mismatching keys and the variant the checkpoint fits, if it does
        not fit ``model``.
    """
    if isinstance(path_or_state_dict, Mapping):
        state = _unwrap(path_or_state_dict, use_ema)
    else:
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no checkpoint at {path!r}; download a released checkpoint of the Context "
                "Cluster code release and pass its path"
            )
        state = _unwrap(_load_file(path), use_ema)
    if isinstance(model, str):
        if num_classes is None and "head.weight" in state:
            num_classes = state["head.weight"].shape[0]
        model = timm.create_model(model, num_classes=num_classes or 0)
    whole = {k: tuple(v.shape) for k, v in state.items()}  # for naming the variant it fits
    target = model.model if isinstance(model, FeatureGetterNet) else model
    if target is not model:  # a feature extractor: no final norm or classifier to load
        state = {k: v for k, v in state.items() if not k.startswith(("norm.", "head."))}
    want = _shapes(target)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        missing = sorted(set(want) - set(got))
        unexpected = sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        own = getattr(model, "pretrained_cfg", {}).get("architecture", "the given model")
        fits = [v for v in _guess_variant(whole) if v != own]
        hint = (
            f"it fits {', '.join(fits)}: create that variant instead"
            if fits
            else "it fits no other released variant; check that the file is a Context Cluster "
            "checkpoint and that num_classes matches its classifier"
        )
        raise ValueError(
            f"the checkpoint does not fit {type(model).__name__} ({own}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(wrong)} of another shape "
            f"{[(k, got[k], want[k]) for k in wrong[:3]]}; {hint}"
        )
    target.load_state_dict(state, strict=True)
    return model
