"""Testing a model: loss and accuracy (or mean IoU) over a split, and per-item predictions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import data as D

if TYPE_CHECKING:
    from .train import DataBundle


def evaluate(
    model: nn.Module,
    loader,
    *,
    device: torch.device,
    mean,
    std,
    amp_dtype: torch.dtype | None = None,
    flip: bool = False,
    ignore_index: int = -100,
    confusion: torch.Tensor | None = None,
) -> tuple[float, float, int]:
    """Mean cross-entropy, top-1 accuracy (%) and count over a loader (summed over processes).

    Targets may be one class per item (B,) or per pixel (B, H, W) against logits (B, C, H, W);
    targets equal to ``ignore_index`` count nowhere (segmentation's void). ``confusion``, a
    (C, C) tensor, is added the counts of (target, prediction) pairs, for mean IoU.
    ``flip=True`` is test-time augmentation by horizontal flips: the model sees each image and
    its mirror (whose per-pixel predictions are mirrored back), and the two predicted class
    distributions are averaged.
    """
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    with torch.no_grad():
        for x, y in loader:
            x, y = (
                D.normalize(x.to(device, non_blocking=True), mean, std),
                y.to(device, non_blocking=True),
            )
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
                mirrored = model(x.flip(3)) if flip else None
            log_p = logits.float().log_softmax(1)  # (B, classes) or (B, classes, H, W)
            if flip:  # the log of the mean of the two distributions
                mirrored = mirrored.flip(3) if mirrored.dim() == 4 else mirrored
                log_p = torch.logaddexp(log_p, mirrored.float().log_softmax(1)) - math.log(2)
            totals[0] += nn.functional.nll_loss(
                log_p, y, reduction="sum", ignore_index=ignore_index
            ).double()
            correct, count = _scores(log_p, y, ignore_index, confusion)
            totals[1] += correct
            totals[2] += count
    if dist.is_initialized():
        dist.all_reduce(totals)
        if confusion is not None:
            dist.all_reduce(confusion)
    loss, correct, n = totals.tolist()
    return loss / n, 100.0 * correct / n, int(n)


def _scores(logits: torch.Tensor, y: torch.Tensor, ignore_index: int, confusion=None):
    """Correct predictions and counted targets of a batch (targets at ``ignore_index`` left
    out), and the (target, prediction) counts added to ``confusion`` when given."""
    pred = logits.argmax(1)
    valid = y != ignore_index
    if confusion is not None:
        C = confusion.shape[0]
        pairs = y[valid] * C + pred[valid]
        confusion += torch.bincount(pairs, minlength=C * C).view(C, C).to(confusion.dtype)
    return ((pred == y) & valid).sum(), valid.sum()


def class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """Each class's intersection over union (%), TP / (TP + FP + FN), from confusion matrices
    (..., C, C) of (target, prediction) counts: (..., C); NaN for a class that occurs in
    neither the targets nor the predictions."""
    c = confusion.double()
    inter = c.diagonal(dim1=-2, dim2=-1)  # (..., C)
    union = c.sum(-2) + c.sum(-1) - inter
    return torch.where(union > 0, 100.0 * inter / union.clamp_min(1), torch.nan)


def mean_iou(confusion: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean intersection over union (%) and each class's IoU from a (C, C) confusion matrix of
    (target, prediction) counts; classes that occur in neither count as NaN and are left out."""
    iou = class_iou(confusion)
    return float(iou.nanmean()), iou


def predict(
    model: nn.Module,
    bundle: DataBundle,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch: int = 256,
    ignore_index: int = -100,
) -> dict[str, np.ndarray]:
    """Every test item's outcome, in the test split's order.

    Paired comparisons of two models on one test set (``cocs.stats``) need the per-item
    outcomes, not only the accuracies. For classification: ``label`` and ``pred``, int16
    arrays of length ``len(bundle.test)``; for segmentation (``ignore_index`` >= 0): each
    image's confusion matrix of (target, prediction) pixel counts, ``confusion`` (N, C, C).
    """
    model.eval()
    labels, preds, confusions = [], [], []
    C = len(bundle.classes)
    sampler = D.EpochBatchSampler(len(bundle.test), batch, shuffle=False, drop_last=False)
    with torch.no_grad():
        for x, y in D.make_loader(bundle.test, sampler, 0):
            x = D.normalize(x.to(device), bundle.mean, bundle.std)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = model(x).float().argmax(1).cpu()
            if ignore_index < 0:
                preds.append(pred)
                labels.append(y)
                continue
            for p_i, y_i in zip(pred, y, strict=True):  # (H, W) each
                valid = y_i != ignore_index
                pairs = y_i[valid] * C + p_i[valid]
                confusions.append(torch.bincount(pairs, minlength=C * C).view(C, C))
    if ignore_index >= 0:
        return {"confusion": torch.stack(confusions).numpy().astype(np.int32)}
    return {
        "label": torch.cat(labels).numpy().astype(np.int16),
        "pred": torch.cat(preds).numpy().astype(np.int16),
    }


def test_split(
    into: dict,
    prefix: str,
    which: nn.Module,
    flip: bool = False,
    *,
    bundle: DataBundle,
    batch: int,
    rank: int,
    world: int,
    num_workers: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    ignore_index: int,
) -> None:
    """Test loss and accuracy of ``which`` over the whole test split of ``bundle`` (this
    process's share of it; :func:`evaluate` sums over processes), written into ``into`` as
    ``<prefix>loss``, ``<prefix>acc`` and, for per-pixel classes, ``<prefix>miou``."""
    sampler = D.EpochBatchSampler(
        len(bundle.test), batch, shuffle=False, drop_last=False, rank=rank, world_size=world
    )
    loader = D.make_loader(bundle.test, sampler, num_workers, pin_memory=device.type == "cuda")
    C = len(bundle.classes)
    confusion = torch.zeros(C, C, dtype=torch.float64, device=device) if ignore_index >= 0 else None
    into[f"{prefix}loss"], into[f"{prefix}acc"], _ = evaluate(
        which,
        loader,
        device=device,
        mean=bundle.mean,
        std=bundle.std,
        amp_dtype=amp_dtype,
        flip=flip,
        ignore_index=ignore_index,
        confusion=confusion,
    )
    if confusion is not None:
        into[f"{prefix}miou"] = mean_iou(confusion)[0]
