"""Point-set building blocks, each against a slow loop written here."""

import pytest
import torch

from cocs.pointsets import SetReducer, farthest_point_sample, gather, knn


def slow_fps(xyz: torch.Tensor, m: int, start: int) -> list[int]:
    """One set (N, 3): the textbook loop over chosen points and candidates."""
    chosen = [start]
    while len(chosen) < m:
        best, best_d = None, -1.0
        for j in range(len(xyz)):
            d = min(float(((xyz[j] - xyz[c]) ** 2).sum()) for c in chosen)
            if d > best_d:
                best, best_d = j, d
        chosen.append(best)
    return chosen


def test_farthest_point_sampling_matches_the_loop_and_is_deterministic():
    torch.manual_seed(0)
    xyz = torch.randn(3, 40, 3)
    idx = farthest_point_sample(xyz, 9, start=torch.tensor([0, 5, 39]))
    for b, s in enumerate((0, 5, 39)):
        assert idx[b].tolist() == slow_fps(xyz[b], 9, s)
    assert torch.equal(idx, farthest_point_sample(xyz, 9, start=torch.tensor([0, 5, 39])))
    assert farthest_point_sample(xyz, 40).sort(-1).values.eq(torch.arange(40)).all(), (
        "a permutation"
    )
    with pytest.raises(ValueError, match="m=41"):
        farthest_point_sample(xyz, 41)


def test_farthest_point_sampling_sums_distances_as_the_textbook_formula_rounds_them():
    """The coordinates-first loop takes exactly the samples of the squared distance
    ``(xyz - centre).square().sum(-1)``, rounding included, on coordinates stored in float16
    as ModelNet40's are (many equal values, so many near-equal distances), scaled per axis as
    training augments them."""
    torch.manual_seed(3)
    xyz = torch.rand(8, 500, 3).half().float() * torch.empty(8, 1, 3).uniform_(0.67, 1.5)
    xyz[:, 250:260] = xyz[:, 240:250]  # repeated points: exact ties
    B, N, _ = xyz.shape
    far, nearest, rows = (
        torch.zeros(B, dtype=torch.long),
        torch.full((B, N), float("inf")),
        torch.arange(B),
    )
    expected = []
    for _ in range(200):
        expected.append(far)
        nearest = torch.minimum(nearest, (xyz - xyz[rows, far].unsqueeze(1)).square().sum(-1))
        far = nearest.argmax(-1)
    assert torch.equal(farthest_point_sample(xyz, 200), torch.stack(expected, 1))
    # and the release's loop, the baseline of `make bench`, takes the same samples
    from cocs.bench import release_fps

    assert torch.equal(release_fps(xyz, 200), torch.stack(expected, 1))


def test_a_farthest_point_sample_samples_itself_as_its_first_points():
    """What ``ordered=True`` relies on: sampling a sample (in its order) takes its first points,
    down the stages of a model; and the loop, run on it, agrees."""
    torch.manual_seed(2)
    xyz = torch.rand(4, 300, 3) * torch.tensor([1.5, 0.7, 1.0])  # scaled, like augmented shapes
    for m in (120, 60, 25, 1):
        sample = gather(xyz, farthest_point_sample(xyz, 2 * m))  # (4, 2m, 3), in its order
        looped = farthest_point_sample(sample, m)
        assert torch.equal(looped, torch.arange(m).expand(4, m)), m
        assert torch.equal(farthest_point_sample(sample, m, ordered=True), looped)
        xyz = sample
    with pytest.raises(ValueError, match="start=3"):
        farthest_point_sample(xyz, 2, start=3, ordered=True)


def test_knn_and_gather_match_the_loop():
    torch.manual_seed(1)
    xyz, query = torch.randn(2, 30, 3), torch.randn(2, 7, 3)
    idx = knn(query, xyz, 5)  # (2, 7, 5)
    for b in range(2):
        for m in range(7):
            d = [float(((xyz[b, j] - query[b, m]) ** 2).sum()) for j in range(30)]
            assert idx[b, m].tolist() == sorted(range(30), key=d.__getitem__)[:5]
    feats = torch.randn(2, 30, 4, requires_grad=True)
    got = gather(feats, idx)  # (2, 7, 5, 4)
    assert got.shape == (2, 7, 5, 4)
    weight = torch.randn_like(got)
    (got * weight).sum().backward()
    grad = torch.zeros(2, 30, 4)
    for b in range(2):
        for m in range(7):
            for j in range(5):
                assert torch.equal(got[b, m, j], feats[b, idx[b, m, j]])
                grad[b, idx[b, m, j]] += weight[b, m, j]  # a point in several groups adds up
    torch.testing.assert_close(feats.grad, grad)
    with pytest.raises(ValueError, match="k=31"):
        knn(query, xyz, 31)


def test_the_set_reducer_concatenates_the_nearest_points_and_projects_them():
    torch.manual_seed(2)
    xyz, feats = torch.randn(2, 32, 3), torch.randn(2, 32, 6)
    reducer = SetReducer(in_chans=6, out_chans=8, k=4, reduction=4)
    anchors, out = reducer(xyz, feats)
    assert anchors.shape == (2, 8, 3) and out.shape == (2, 8, 8)
    for b in range(2):
        chosen = slow_fps(xyz[b], 8, 0)
        for m, a in enumerate(chosen):
            d = [float(((xyz[b, j] - xyz[b, a]) ** 2).sum()) for j in range(32)]
            near = sorted(range(32), key=d.__getitem__)[:4]
            row = torch.cat([torch.cat([feats[b, j], xyz[b, j] - xyz[b, a]]) for j in near])
            torch.testing.assert_close(out[b, m], reducer.proj(row))
            torch.testing.assert_close(anchors[b, m], xyz[b, a])
