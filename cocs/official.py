"""Load the authors' released checkpoints into ``cocs`` models."""

from __future__ import annotations

import os
from collections.abc import Mapping

import timm
import torch
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


def _unwrap(ckpt: Mapping) -> dict[str, Tensor]:
    """The state dict inside a released file: bare, or under 'state_dict' / 'model' /
    'state_dict_ema', with an optional 'module.' prefix from DistributedDataParallel."""
    for key in ("state_dict", "model", "state_dict_ema"):
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
) -> nn.Module:
    """Load a released Context Cluster checkpoint with ``strict=True``.

    Args:
        path_or_state_dict: a file saved by the authors' training script (the state dict bare or
            under 'state_dict', 'model' or 'state_dict_ema'), or a state dict.
        model: a ``cocs`` model, or the name of a registered variant to create.
        num_classes: with a model name, the classifier size (default: the checkpoint's).
    Returns:
        the model with the weights loaded.
    Raises:
        ValueError naming the mismatching keys and the variant the checkpoint fits, if it does
        not fit ``model``.
    """
    if isinstance(path_or_state_dict, Mapping):
        state = _unwrap(path_or_state_dict)
    else:
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no checkpoint at {path!r}; download a released checkpoint of the Context "
                "Cluster code release and pass its path"
            )
        state = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    if isinstance(model, str):
        if num_classes is None and "head.weight" in state:
            num_classes = state["head.weight"].shape[0]
        model = timm.create_model(model, num_classes=num_classes or 0)
    want = _shapes(model)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        missing = sorted(set(want) - set(got))
        unexpected = sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        fits = _guess_variant(got)
        hint = (
            f"it fits {', '.join(fits)}: create that variant instead"
            if fits
            else "it fits no released variant; check that the file is a Context Cluster checkpoint"
        )
        raise ValueError(
            f"the checkpoint does not fit {type(model).__name__} "
            f"({getattr(model, 'pretrained_cfg', {}).get('architecture', 'given model')}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(wrong)} of another shape "
            f"{[(k, got[k], want[k]) for k in wrong[:3]]}; {hint}"
        )
    model.load_state_dict(state, strict=True)
    return model
