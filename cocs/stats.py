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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as st

__all__ = ["PairedDifference", "class_accuracies", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """Mean accuracy difference a - b (points) over seeds, with its uncertainty."""

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
    if S < 2 and not allow_one_seed:
        raise ValueError(
            f"{S} seed(s): the seed spread needs at least 2 paired seeds; train another seed"
        )
    per_seed = 100.0 * (a.mean(1) - b.mean(1))  # (S,)
    mean = float(per_seed.mean())
    se_seed = float(per_seed.std(ddof=1) / np.sqrt(S)) if S > 1 else 0.0
    per_image = 100.0 * (a - b).mean(0)  # (N,): the seed-averaged difference on each image
    rng = np.random.default_rng(seed)
    means = np.empty(boot)
    for i in range(0, boot, 500):  # resample images in chunks: (chunk, N) indices at a time
        idx = rng.integers(0, N, size=(min(500, boot - i), N))
        means[i : i + len(idx)] = per_image[idx].mean(1)
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
        images=N,
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
