"""The context-cluster operation against a slow loop written here, and its properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cocs.cluster import Cluster, context_cluster


def loop_cluster(
    points,
    values,
    *,
    heads,
    proposal_w,
    proposal_h,
    fold_w,
    fold_h,
    alpha,
    beta,
    similarity="sigmoid",
    center_iters=0,
):
    """The paper's equations, one point and one centre at a time."""
    B, H, W, C = points.shape
    D, Dv = C // heads, values.shape[-1] // heads
    h, w = H // fold_w, W // fold_h
    M = proposal_w * proposal_h
    out = torch.zeros(B, H, W, heads * Dv, dtype=torch.float64)
    assign = torch.zeros(B, heads, H, W, dtype=torch.long)
    weight = torch.zeros(B, heads, H, W, dtype=torch.float64)

    def sim_of(c, p):
        s = F.cosine_similarity(c, p, dim=0, eps=1e-12)
        return torch.sigmoid(beta + alpha * s) if similarity == "sigmoid" else s

    for b, e, r1, r2 in itertools.product(range(B), range(heads), range(fold_w), range(fold_h)):
        rows = range(r1 * h, (r1 + 1) * h)
        cols = range(r2 * w, (r2 + 1) * w)
        x = points[b, r1 * h : (r1 + 1) * h, r2 * w : (r2 + 1) * w, e * D : (e + 1) * D].double()
        v = values[b, r1 * h : (r1 + 1) * h, r2 * w : (r2 + 1) * w, e * Dv : (e + 1) * Dv].double()
        # adaptive average pooling: bin i covers [floor(i*n/k), ceil((i+1)*n/k))
        centres, vcentres = [], []
        for i, j in itertools.product(range(proposal_w), range(proposal_h)):
            a0, a1 = math.floor(i * h / proposal_w), math.ceil((i + 1) * h / proposal_w)
            b0, b1 = math.floor(j * w / proposal_h), math.ceil((j + 1) * w / proposal_h)
            centres.append(x[a0:a1, b0:b1].reshape(-1, D).mean(0))
            vcentres.append(v[a0:a1, b0:b1].reshape(-1, Dv).mean(0))
        pts = [(i, j) for i in range(h) for j in range(w)]

        def assign_all(centres, x=x, pts=pts):
            best = []
            for i, j in pts:
                sims = [sim_of(c, x[i, j]) for c in centres]
                m = max(range(M), key=sims.__getitem__)
                best.append((m, sims[m]))
            return best

        for _ in range(center_iters):
            best = assign_all(centres)
            new = []
            for m in range(M):
                num, den = centres[m].clone(), 1.0
                for (i, j), (k, s) in zip(pts, best, strict=True):
                    if k == m:
                        num, den = num + s * x[i, j], den + s
                new.append(num / den)
            centres = new
        best = assign_all(centres)
        for m in range(M):
            num, den = vcentres[m].clone(), 1.0
            for (i, j), (k, s) in zip(pts, best, strict=True):
                if k == m:
                    num, den = num + s * v[i, j], den + s
            g = num / den
            for (i, j), (k, s) in zip(pts, best, strict=True):
                if k == m:
                    out[b, rows[i], cols[j], e * Dv : (e + 1) * Dv] = s * g
                    assign[b, e, rows[i], cols[j]] = (r1 * fold_h + r2) * M + m
                    weight[b, e, rows[i], cols[j]] = s
    return out, assign, weight


CASES = [  # (H, W, heads, proposal_w, proposal_h, fold_w, fold_h)
    (4, 4, 1, 2, 2, 1, 1),
    (6, 4, 2, 2, 1, 2, 2),  # non-square map, several regions
    (6, 9, 3, 1, 3, 3, 1),  # non-square regions and centre grid
    (5, 7, 2, 2, 3, 1, 1),  # pooling bins that overlap (sizes not divisible)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("similarity", ["sigmoid", "cosine"])
@pytest.mark.parametrize("center_iters", [0, 2])
def test_matches_loop(case, similarity, center_iters):
    H, W, heads, pw, ph, fw, fh = case
    points = torch.randn(2, H, W, heads * 3)
    values = torch.randn(2, H, W, heads * 5)
    kw = dict(heads=heads, proposal_w=pw, proposal_h=ph, fold_w=fw, fold_h=fh)
    res = context_cluster(
        points,
        values,
        sim_alpha=1.7,
        sim_beta=-0.3,
        similarity=similarity,
        center_iters=center_iters,
        **kw,
    )
    want, want_assign, want_sim = loop_cluster(
        points, values, alpha=1.7, beta=-0.3, similarity=similarity, center_iters=center_iters, **kw
    )
    torch.testing.assert_close(res.out.double(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(res.assignment, want_assign)
    torch.testing.assert_close(res.similarity.double(), want_sim, atol=1e-5, rtol=1e-5)


def test_assignment_is_one_hot_within_its_region():
    B, H, W, heads, fw, fh, M = 2, 8, 6, 3, 2, 3, 4
    res = context_cluster(
        torch.randn(B, H, W, heads * 4),
        torch.randn(B, H, W, heads * 4),
        heads=heads,
        proposal_w=2,
        proposal_h=2,
        fold_w=fw,
        fold_h=fh,
    )
    onehot = F.one_hot(res.assignment, fw * fh * M)  # (B, heads, H, W, centres)
    assert onehot.sum(-1).eq(1).all()
    # a point joins one of the M centres of its own region
    rw = torch.arange(H).div(H // fw, rounding_mode="floor").view(H, 1)
    rh = torch.arange(W).div(W // fh, rounding_mode="floor").view(1, W)
    region = rw * fh + rh  # (H, W)
    assert res.assignment.div(M, rounding_mode="floor").eq(region).all()


def test_permuting_points_within_a_pooling_cell_permutes_the_output():
    # permuting points inside each proposal cell leaves the proposed centres as they are
    B, H, W, heads = 2, 8, 8, 2
    points, values = torch.randn(B, H, W, heads * 4), torch.randn(B, H, W, heads * 6)
    kw = dict(heads=heads, proposal_w=2, proposal_h=2, fold_w=2, fold_h=2)  # cells of 2x2 points
    cell = torch.randperm(4)
    idx = torch.arange(H * W).view(H // 2, 2, W // 2, 2).permute(0, 2, 1, 3).reshape(-1, 4)
    perm = torch.arange(H * W)
    perm[idx.flatten()] = idx[:, cell].flatten()  # the same shuffle inside every cell

    def shuffle(t):
        return t.reshape(B, H * W, -1)[:, perm].reshape(t.shape)

    base = context_cluster(points, values, **kw)
    moved = context_cluster(shuffle(points), shuffle(values), **kw)
    torch.testing.assert_close(moved.out, shuffle(base.out))
    assert torch.equal(moved.assignment.flatten(2), base.assignment.flatten(2)[:, :, perm])


def test_same_seed_same_output():
    def run():
        torch.manual_seed(7)
        layer = Cluster(dim=8, out_dim=8, heads=2, head_dim=4)
        return layer(torch.randn(2, 8, 8, 8))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_builds_a_points_by_centres_by_channels_tensor():
    B, H, W, heads, D, pw = 2, 16, 16, 2, 32, 4  # N = 256, M = 16
    points = torch.randn(B, H, W, heads * D, requires_grad=True)
    values = torch.randn(B, H, W, heads * D, requires_grad=True)
    with _LargestTensor() as mode:
        res = context_cluster(points, values, heads=heads, proposal_w=pw, proposal_h=pw)
        res.out.square().sum().backward()
    N, M = H * W, pw * pw
    assert mode.largest <= max(B * N * heads * D, B * heads * M * N)
    assert mode.largest < B * heads * M * N * D // 8


@pytest.mark.parametrize("similarity", ["sigmoid", "cosine"])
def test_hand_derived_backward_passes_gradcheck(similarity):
    # float64, two 3x5 regions whose 2x3 pooling cells overlap, two heads
    x = torch.randn(1, 6, 5, 2 * 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 6, 5, 2 * 3, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([1.7], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-0.3], dtype=torch.float64, requires_grad=True)

    def f(x, v, a, b):
        return context_cluster(
            x,
            v,
            heads=2,
            proposal_w=2,
            proposal_h=3,
            fold_w=2,
            sim_alpha=a,
            sim_beta=b,
            similarity=similarity,
        ).out

    assert torch.autograd.gradcheck(f, (x, v, a, b))


def test_the_backward_pass_takes_mixed_precision_from_autocast():
    # float32 points and bfloat16 values, clustered under autocast, differentiated outside it,
    # as the engine does: the similarities are bfloat16, the normalised points float32 (on
    # CUDA every stage is like this, since its autocast takes norms in float32)
    kw = dict(heads=2, proposal_w=2, proposal_h=2, fold_w=2, fold_h=2)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    v = torch.randn(2, 8, 8, 6, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = context_cluster(x, v, **kw)
    res.out.float().square().sum().backward()
    exact = context_cluster(x.detach(), v.detach().float(), _autograd=True, **kw)
    assert x.grad.dtype == torch.float32 and v.grad.dtype == torch.bfloat16
    assert x.grad.isfinite().all() and v.grad.isfinite().all()
    same = res.assignment == exact.assignment  # (B, heads, H, W); bfloat16 may flip a near tie
    assert same.float().mean() > 0.9
    kept = same.all(1)  # points that every head assigns as in float32
    torch.testing.assert_close(res.out.float()[kept], exact.out[kept], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("center_iters", [0, 2])  # 2: moved centres, then the same final step
def test_hand_derived_backward_equals_autograd(center_iters):
    kw = dict(heads=2, proposal_w=2, proposal_h=2, fold_w=2, fold_h=2, center_iters=center_iters)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    v = torch.randn(2, 8, 8, 6, requires_grad=True)
    a = torch.tensor([1.3], requires_grad=True)
    b = torch.tensor([0.2], requires_grad=True)
    w = torch.randn(2, 8, 8, 6)
    grads = []
    for autograd in (False, True):
        res = context_cluster(x, v, sim_alpha=a, sim_beta=b, _autograd=autograd, **kw)
        grads.append(
            [res.out, res.assignment, *torch.autograd.grad((res.out * w).sum(), (x, v, a, b))]
        )
    for fast, slow in zip(*grads, strict=True):
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(H=6, W=8, fold_w=4, fold_h=1), r"6x8 feature map cannot be split into .* 4x1"),
        (dict(C=10, heads=4), r"10 channels, which 4 heads"),
        (dict(similarity="dot"), r"similarity='dot' is not one of"),
        (dict(center_iters=-1), r"center_iters=-1"),
    ],
)
def test_bad_input_names_the_value(kwargs, match):
    H, W, C = kwargs.pop("H", 8), kwargs.pop("W", 8), kwargs.pop("C", 8)
    heads = kwargs.pop("heads", 2)
    x = torch.randn(1, H, W, C)
    with pytest.raises(ValueError, match=match):
        context_cluster(x, x, heads=heads, proposal_w=2, proposal_h=1, **kwargs)


# --- groups of points that need not lie on a grid ---------------------------------------------


def loop_sets(points, values, heads, centre_index, alpha, beta):
    """The paper's equations on point groups, one point and one centre at a time."""
    G, n, C = points.shape
    D, Dv = C // heads, values.shape[-1] // heads
    out = torch.zeros(G, n, heads * Dv, dtype=torch.float64)
    assign = torch.zeros(G, heads, n, dtype=torch.long)
    for g, e in itertools.product(range(G), range(heads)):
        x = points[g, :, e * D : (e + 1) * D].double()
        v = values[g, :, e * Dv : (e + 1) * Dv].double()
        if centre_index is None:
            cs, vcs = [x.mean(0)], [v.mean(0)]
        else:
            cs, vcs = [x[i] for i in centre_index[g]], [v[i] for i in centre_index[g]]
        best = []
        for j in range(n):
            sims = [torch.sigmoid(beta + alpha * F.cosine_similarity(c, x[j], dim=0)) for c in cs]
            m = max(range(len(cs)), key=sims.__getitem__)
            best.append((m, sims[m]))
        for m in range(len(cs)):
            members = [(j, s) for j, (k, s) in enumerate(best) if k == m]
            agg = (vcs[m] + sum((s * v[j] for j, s in members), torch.zeros(Dv))) / (
                1 + sum(s for _, s in members)
            )
            for j, s in members:
                out[g, j, e * Dv : (e + 1) * Dv] = s * agg
                assign[g, e, j] = m
    return out, assign


@pytest.mark.parametrize("sampled", [False, True], ids=["mean centre", "sampled centres"])
def test_point_groups_match_the_loop(sampled):
    from cocs.cluster import context_cluster_sets

    torch.manual_seed(3)
    points, values = torch.randn(5, 12, 2 * 4), torch.randn(5, 12, 2 * 3)
    centre_index = torch.stack([torch.randperm(12)[:3] for _ in range(5)]) if sampled else None
    res = context_cluster_sets(points, values, heads=2, centre_index=centre_index,
                               sim_alpha=1.3, sim_beta=0.2)  # fmt: skip
    want, want_assign = loop_sets(points, values, 2, centre_index, 1.3, 0.2)
    torch.testing.assert_close(res.out.double(), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(res.assignment, want_assign) and res.similarity.shape == (5, 2, 12)


def test_a_grid_region_with_one_centre_is_a_point_group_with_its_mean():
    from cocs.cluster import context_cluster_sets

    torch.manual_seed(4)
    points, values = torch.randn(2, 4, 6, 3 * 2), torch.randn(2, 4, 6, 3 * 5)
    grid = context_cluster(points, values, heads=3, proposal_w=1, proposal_h=1, fold_w=2, fold_h=3)
    # the same regions as groups: (b f1 f2) (h w) c
    to_groups = lambda t: t.view(2, 2, 2, 3, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(12, 4, -1)
    sets = context_cluster_sets(to_groups(points), to_groups(values), heads=3)
    torch.testing.assert_close(to_groups(grid.out), sets.out)


def test_point_groups_gradients_match_autograd():
    from cocs.cluster import cluster_groups

    torch.manual_seed(5)
    args = [torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)]  # fmt: skip
    a = torch.tensor([1.2], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-0.1], dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 7, 5, dtype=torch.float64)
    grads = []
    for autograd in (False, True):
        out, _, _ = cluster_groups(*args, sim_alpha=a, sim_beta=b, _autograd=autograd)
        grads.append(torch.autograd.grad((out * w).sum(), [*args, a, b]))
    for mine, ref in zip(*grads, strict=True):
        torch.testing.assert_close(mine, ref)
