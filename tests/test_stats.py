"""Paired differences over seeds: the two parts of the uncertainty, and the interval."""

import numpy as np
import pytest
import torch
from scipy import stats as st

from cocs.evaluate import mean_iou
from cocs.stats import (
    accuracy_interval,
    miou_interval,
    paired_difference,
    paired_miou_difference,
)


def _pair(n: int, p10: float, p01: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """a and b agree except on a fraction p10 (a right, b wrong) and p01 (a wrong, b right)."""
    u = rng.random(n)
    base = rng.random(n) < 0.7
    a = np.where(u < p10, True, np.where(u < p10 + p01, False, base))
    b = np.where(u < p10, False, np.where(u < p10 + p01, True, base))
    return a, b


def test_the_test_set_part_is_the_paired_binomial_error():
    rng = np.random.default_rng(0)
    a, b = _pair(20_000, 0.08, 0.05, rng)
    a, b = np.stack([a, a]), np.stack([b, b])  # two seeds with identical outcomes
    d = paired_difference(a, b)
    p10, p01 = (a[0] & ~b[0]).mean(), (~a[0] & b[0]).mean()
    analytic = 100 * np.sqrt((p10 + p01 - (p10 - p01) ** 2) / a.shape[1])
    assert d.se_seed == 0 and d.df == float("inf")
    assert d.se_test == pytest.approx(analytic, rel=0.08)
    assert d.mean == pytest.approx(100 * (p10 - p01))
    assert d.low == pytest.approx(d.mean - 1.959964 * d.se_test)
    assert d.detectable == pytest.approx((1.959964 + 0.841621) * d.se_test)


def test_one_models_accuracy_interval_is_the_binomial_one_and_widens_with_seeds():
    rng = np.random.default_rng(1)
    right = rng.random(20_000) < 0.88
    same = accuracy_interval(np.stack([right, right]))  # two seeds with identical outcomes
    half = 100 * 1.959964 * np.sqrt(right.mean() * (1 - right.mean()) / right.size)
    assert same.mean == pytest.approx(100 * right.mean())
    assert same.high - same.mean == pytest.approx(half, rel=0.08) and same.se_seed == 0
    other = right ^ (rng.random(20_000) < 0.02)  # a second seed that differs
    spread = accuracy_interval(np.stack([right, other]))
    assert spread.se_seed > 0 and spread.high - spread.low > same.high - same.low
    with pytest.raises(ValueError, match=r"correct \(20000,\) must be \(seeds, images\)"):
        accuracy_interval(right)


def test_the_seed_part_widens_the_interval_with_few_degrees_of_freedom():
    rng = np.random.default_rng(1)
    pairs = [_pair(10_000, p10, 0.05, rng) for p10 in (0.05, 0.07, 0.09)]
    a, b = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    d = paired_difference(a, b)
    per_seed = 100 * (a.mean(1) - b.mean(1))
    assert d.per_seed == pytest.approx(tuple(per_seed))
    assert d.se_seed == pytest.approx(per_seed.std(ddof=1) / np.sqrt(3))
    var = d.se_seed**2 + d.se_test**2
    assert d.df == pytest.approx(var**2 / (d.se_seed**4 / 2))
    assert 2 <= d.df < 10
    half = d.high - d.mean
    assert half == pytest.approx(st.t.ppf(0.975, d.df) * np.sqrt(var))
    assert half > 1.96 * np.sqrt(var), "few seeds: wider than a normal interval"


def test_the_interval_covers_the_truth_about_as_often_as_it_says():
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(200):
        a, b = _pair(2000, 0.06, 0.04, rng)  # true difference +2 points, test set only
        a2, b2 = _pair(2000, 0.06, 0.04, rng)
        d = paired_difference(np.stack([a, a2]), np.stack([b, b2]), boot=400)
        hits += d.low <= 2.0 <= d.high
    assert hits >= 180, f"a 95% interval covered the true difference {hits} times in 200"


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="at least 2 paired seeds"):
        paired_difference(np.ones((1, 5), bool), np.ones((1, 5), bool))
    with pytest.raises(ValueError, match="must both be"):
        paired_difference(np.ones((2, 5), bool), np.ones((2, 4), bool))


def test_class_accuracies_count_each_class_alone():
    from cocs.stats import class_accuracies

    acc = class_accuracies(np.array([0, 0, 1, 1, 1, 3]), np.array([0, 1, 1, 1, 0, 3]), 4)
    np.testing.assert_allclose(acc[[0, 1, 3]], [50.0, 200 / 3, 100.0])
    assert np.isnan(acc[2])


def test_one_seed_gives_the_test_set_interval_only_when_asked():
    rng = np.random.default_rng(3)
    a, b = _pair(5000, 0.07, 0.05, rng)
    d = paired_difference(a[None], b[None], allow_one_seed=True)
    assert d.se_seed == 0 and d.seeds == 1 and d.low < d.mean < d.high
    with pytest.raises(ValueError, match="at least 2 paired seeds"):
        paired_difference(a[None], b[None])


def _confusions(rng, images: int, classes: int, skill: float) -> np.ndarray:
    """(images, C, C) pixel counts of a model that labels a pixel right with prob. ``skill``."""
    out = np.zeros((images, classes, classes))
    for n in range(images):
        target = rng.integers(0, classes, 400)
        wrong = rng.integers(0, classes, 400)
        pred = np.where(rng.random(400) < skill, target, wrong)
        np.add.at(out[n], (target, pred), 1)
    return out


def test_the_miou_difference_is_that_of_the_summed_confusions():
    rng = np.random.default_rng(3)
    a, b = _confusions(rng, 40, 5, 0.8), _confusions(rng, 40, 5, 0.6)
    d = paired_miou_difference(a[None], b[None], allow_one_seed=True, boot=300)
    truth = mean_iou(torch.from_numpy(a.sum(0)))[0] - mean_iou(torch.from_numpy(b.sum(0)))[0]
    assert d.mean == pytest.approx(truth) and d.per_seed == pytest.approx((truth,))
    assert d.seeds == 1 and d.images == 40 and d.se_seed == 0


def test_the_miou_bootstrap_resamples_whole_images():
    """The same draws as a slow loop: resample images, sum their matrices, mean IoU of each."""
    rng = np.random.default_rng(4)
    a, b = _confusions(rng, 30, 4, 0.7), _confusions(rng, 30, 4, 0.5)
    d = paired_miou_difference(a[None], b[None], allow_one_seed=True, boot=700, seed=9)
    draws = np.random.default_rng(9)
    diffs = []
    for size in (500, 200):  # drawn in chunks of 500, as the library does
        for idx in draws.integers(0, 30, size=(size, 30)):
            ma = mean_iou(torch.from_numpy(a[idx].sum(0)))[0]
            diffs.append(ma - mean_iou(torch.from_numpy(b[idx].sum(0)))[0])
    assert d.se_test == pytest.approx(np.std(diffs, ddof=1))
    assert d.low == pytest.approx(d.mean - 1.959964 * d.se_test)
    assert d.low > 0, "a model right 70% of the time beats one right 50% on 30 images"


def test_identical_segmenters_differ_by_nothing_and_bad_shapes_are_named():
    a = _confusions(np.random.default_rng(5), 10, 3, 0.5)[None]
    d = paired_miou_difference(a, a, allow_one_seed=True, boot=100)
    assert (d.mean, d.low, d.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"\(seeds, images, C, C\)"):
        paired_miou_difference(a[0], a[0])
    with pytest.raises(ValueError, match="at least 2 paired seeds"):
        paired_miou_difference(a, a)


def test_one_models_miou_interval_is_the_bootstrap_of_whole_images():
    rng = np.random.default_rng(6)
    c = _confusions(rng, 25, 4, 0.6)
    miou, low, high = miou_interval(c, boot=600, seed=2)
    assert miou == pytest.approx(mean_iou(torch.from_numpy(c.sum(0)))[0])
    draws = np.random.default_rng(2)
    slow = [
        mean_iou(torch.from_numpy(c[idx].sum(0)))[0]
        for size in (500, 100)
        for idx in draws.integers(0, 25, size=(size, 25))
    ]
    assert high - miou == pytest.approx(1.959964 * np.std(slow, ddof=1))
    assert miou - low == pytest.approx(high - miou)
    with pytest.raises(ValueError, match=r"\(images, C, C\)"):
        miou_interval(c[0])
