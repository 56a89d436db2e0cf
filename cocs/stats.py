"""Paired comparisons of two models on one test set, over several training seeds.

Two sources of uncertainty stand between a measured accuracy difference and the true one: the
training seed (initial weights, data order, augmentation) and the test set, a sample of the
images the models could meet. :func:`paired_difference` accounts for both. For seed ``s`` the
two models, trained with the same seed, are compared image by image; the mean difference over
seeds has

- a seed part, the spread of the per-seed differences (standard error ``sd / sqrt(S)``), and
- a test-set part, from a paired bootstrap over test images: the same resampled images for
  both models and every seed, so the shared difficulty of an image cancels out.

The two variances add (which slightly over-counts, as the seed spread is itself measured on a
finite test set: the interval errs on the wide side). The interval uses Student's t with the
Welch-Satterthwaite degrees of freedom, in which the seed part, estimated from only ``S``
numbers, has ``S - 1`` and the bootstrap part many: with few seeds and a large seed spread, the
interval widens accordingly.

:func:`paired_miou_difference` does the same for segmentation's mean IoU, from each test
image's confusion matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats as st

from .evaluate import class_iou

__all__ = [
    "PairedDifference",
    "accuracy_interval",
    "class_accuracies",
    "miou_interval",
    "paired_difference",
    "paired_miou_difference",
]


@dataclass(frozen=True)
class PairedDifference:
    """Mean difference a - b (points of accuracy or mean IoU) over seeds, with its uncertainty."""

    mean: float
    low: float  # confidence interval of the mean difference
    high: float
    se_seed: float  # standard error from the spread over seeds
    se_test: float  # standard error from the test set (paired bootstrap)
    df: float  # Welch-Satterthwaite degrees of freedom of the t interval
    detectable: float  # the smallest true difference found with 80% power at this level
    seeds: int
    images: int
    per_seed: tuple[float, ...]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["per_seed"] = " ".join(f"{x:+.2f}" for x in self.per_seed)
        return d


def paired_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    level: float = 0.95,
    power: float = 0.8,
    boot: int = 4000,
    seed: int = 0,
    allow_one_seed: bool = False,
) -> PairedDifference:
    """Accuracy of ``a`` minus accuracy of ``b`` in points, with a ``level`` interval.

    Args:
        correct_a, correct_b: (S, N) booleans, whether model a (b) trained with seed ``s``
            classified test image ``n`` correctly; row ``s`` of both comes from the same seed.
        level: confidence level of the two-sided interval.
        power: the power at which ``detectable`` is computed.
        boot: bootstrap resamples of the test images.
        seed: seed of the bootstrap's generator (the result is reproducible).
        allow_one_seed: accept a single seed; the interval then covers the test set's
            variation only, not the seed's (say so wherever it is shown).
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"correct_a {a.shape} and correct_b {b.shape} must both be (seeds, images); "
            "pass one row per seed, the same seeds in the same order for both models"
        )
    S, N = a.shape
    _check_seeds(S, allow_one_seed)
    per_seed = 100.0 * (a.mean(1) - b.mean(1))  # (S,)
    per_image = 100.0 * (a - b).mean(0)  # (N,): the seed-averaged difference on each image
    means = _bootstrap(lambda idx: per_image[idx].mean(1), N, boot, seed)
    return _interval(per_seed, means, images=N, level=level, power=power)


def accuracy_interval(correct: np.ndarray, **kwargs) -> PairedDifference:
    """One model's accuracy in points, averaged over seeds, with the interval of
    :func:`paired_difference` (the seeds' spread and the test set's): its difference from a
    model that is never right. ``correct``: (S, N) booleans, one row per seed; ``kwargs`` as
    :func:`paired_difference`'s. ``detectable`` has no meaning here."""
    a = np.asarray(correct, dtype=bool)
    if a.ndim != 2:
        raise ValueError(f"correct {a.shape} must be (seeds, images), one row per seed")
    return paired_difference(a, np.zeros_like(a), **kwargs)


def paired_miou_difference(
    confusion_a: np.ndarray,
    confusion_b: np.ndarray,
    *,
    level: float = 0.95,
    power: float = 0.8,
    boot: int = 2000,
    seed: int = 0,
    allow_one_seed: bool = False,
) -> PairedDifference:
    """Mean IoU of ``a`` minus mean IoU of ``b`` in points, with a ``level`` interval.

    As :func:`paired_difference`, for segmentation. Mean IoU is not a mean over images (each
    class's IoU is a ratio of pixel counts summed over the whole test set), so each bootstrap
    resample draws test images with replacement, sums their confusion matrices, weighted by
    how often each was drawn, and computes both models' mean IoU from the sums.

    Args:
        confusion_a, confusion_b: (S, N, C, C) pixel counts (target, prediction) of model a
            (b) trained with seed ``s`` on test image ``n``, as ``predictions.npz`` holds them
            (one seed: add a leading axis); the same seeds in the same order for both.
        level, power, boot, seed, allow_one_seed: as :func:`paired_difference`.
    """
    a = np.asarray(confusion_a, dtype=np.float64)
    b = np.asarray(confusion_b, dtype=np.float64)
    if a.ndim != 4 or a.shape != b.shape or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"confusion_a {a.shape} and confusion_b {b.shape} must both be (seeds, images, C, C); "
            "add a leading axis for one seed: confusion[None]"
        )
    S, N = a.shape[:2]
    _check_seeds(S, allow_one_seed)
    per_seed = _miou(a.sum(1)) - _miou(b.sum(1))  # (S,)

    def difference(idx: np.ndarray) -> np.ndarray:  # (n, N) resampled images -> (n,)
        counts = _counts(idx, N)  # (n, N): how often each image was drawn
        ca = np.einsum("rn,sncd->srcd", counts, a)  # (S, n, C, C): each resample's sums
        cb = np.einsum("rn,sncd->srcd", counts, b)
        return (_miou(ca) - _miou(cb)).mean(0)

    means = _bootstrap(difference, N, boot, seed)
    return _interval(per_seed, means, images=N, level=level, power=power)


def miou_interval(
    confusion: np.ndarray, *, level: float = 0.95, boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """One model's mean IoU (%) and its ``level`` interval over the test set's variation.

    ``confusion``: (N, C, C) each test image's pixel counts. The interval is the mean IoU
    plus and minus the normal quantile times the bootstrap's standard error, images resampled
    as in :func:`paired_miou_difference`; it says nothing about another training seed.
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 3 or c.shape[-1] != c.shape[-2]:
        raise ValueError(f"confusion {c.shape} must be (images, C, C), one matrix per image")
    N = len(c)

    def resampled(idx: np.ndarray) -> np.ndarray:  # (n, N) resampled images -> (n,)
        return _miou(np.einsum("rn,ncd->rcd", _counts(idx, N), c))

    se = float(_bootstrap(resampled, N, boot, seed).std(ddof=1))
    miou, z = float(_miou(c.sum(0))), float(st.norm.ppf(0.5 + level / 2))
    return miou, miou - z * se, miou + z * se


def _counts(idx: np.ndarray, images: int) -> np.ndarray:
    """How often each image was drawn in each resample: (n, images) from (n, images) indices."""
    counts = np.zeros((len(idx), images))
    np.add.at(counts, (np.arange(len(idx))[:, None], idx), 1.0)
    return counts


def _miou(confusion: np.ndarray) -> np.ndarray:
    """Mean IoU (%) of confusion matrices (..., C, C): (...,), by :func:`cocs.evaluate.class_iou`."""
    return np.nanmean(class_iou(torch.from_numpy(confusion)).numpy(), axis=-1)


def _check_seeds(seeds: int, allow_one_seed: bool) -> None:
    if seeds < 2 and not allow_one_seed:
        raise ValueError(
            f"{seeds} seed(s): the seed spread needs at least 2 paired seeds; train another seed"
        )


def _bootstrap(statistic, images: int, boot: int, seed: int) -> np.ndarray:
    """``statistic`` of ``boot`` resamples of the test images: (boot,). ``statistic`` maps
    (n, images) indices, each row one resample drawn with replacement, to (n,) values; the
    resamples are drawn 500 at a time from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    means = np.empty(boot)
    for i in range(0, boot, 500):
        idx = rng.integers(0, images, size=(min(500, boot - i), images))
        means[i : i + len(idx)] = statistic(idx)
    return means


def _interval(
    per_seed: np.ndarray, means: np.ndarray, *, images: int, level: float, power: float
) -> PairedDifference:
    """The interval of the mean of ``per_seed`` differences, from their spread and the test
    set's (``means``: the bootstrap's seed-averaged differences), as the module explains."""
    S = len(per_seed)
    mean = float(per_seed.mean())
    se_seed = float(per_seed.std(ddof=1) / np.sqrt(S)) if S > 1 else 0.0
    se_test = float(means.std(ddof=1))
    var = se_seed**2 + se_test**2
    df = var**2 / (se_seed**4 / (S - 1)) if se_seed > 0 else float("inf")
    se = np.sqrt(var)
    t = float(st.t.ppf(0.5 + level / 2, df))
    detectable = (t + float(st.t.ppf(power, df))) * se
    return PairedDifference(
        mean=mean,
        low=mean - t * se,
        high=mean + t * se,
        se_seed=se_seed,
        se_test=se_test,
        df=float(df),
        detectable=float(detectable),
        seeds=S,
        images=images,
        per_seed=tuple(float(x) for x in per_seed),
    )


def class_accuracies(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """Accuracy (%) on each class's test items: (classes,), NaN for a class with none.

    Their mean is the "mean class accuracy" (mAcc) of point-cloud benchmarks, beside the
    overall accuracy (OA) over all items."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    total = np.bincount(labels, minlength=classes).astype(float)
    right = np.bincount(labels[labels == preds], minlength=classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * right / total, np.nan)
