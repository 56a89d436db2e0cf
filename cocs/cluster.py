"""The context-cluster operation: the one implementation every module and chapter uses.

Points on an (H, W) grid are split into fold_w x fold_h regions. In each region, M =
proposal_w x proposal_h centres are proposed by average pooling; every point joins the centre
it is most similar to (cosine similarity, squashed by sigmoid(alpha * s + beta)); each cluster
aggregates its points' values together with the value-space centre,

    g_m = (v_m + sum_i s_i v_i) / (1 + sum_i s_i),

and dispatches the result back to its points, scaled by their similarity: p_i' = s_i g_m.

The core, :func:`cluster_groups`, works on groups of points with given centres; an image
forms its groups from regions of its grid and proposes their centres by pooling
(:func:`context_cluster`), a point cloud from neighbourhoods of anchors
(:func:`context_cluster_sets`, with :mod:`cocs.pointsets`).

Memory: the assignment is hard, so aggregation is a scatter-add and dispatch a gather. Nothing
of size (B * heads, M, N, D) is built: memory is O(B*N*D + B*M*N) (the similarity matrix).

Naming follows the authors' release: ``*_w`` is the first spatial axis (dim 2 of an NCHW
tensor, rows) and ``*_h`` the second (columns).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

SIMILARITIES = ("sigmoid", "cosine")


class ClusterOutput(NamedTuple):
    """What :func:`context_cluster` returns."""

    out: Tensor  # (B, H, W, heads * D) dispatched features
    assignment: Tensor  # (B, heads, H, W) int64: index of the centre each point joined
    similarity: Tensor  # (B, heads, H, W): each point's similarity to that centre (no grad)


def _check(points: Tensor, values: Tensor, heads: int, fold_w: int, fold_h: int) -> None:
    if points.dim() != 4:
        raise ValueError(
            f"points must be (B, H, W, C), got shape {tuple(points.shape)}; "
            "move channels last with x.permute(0, 2, 3, 1)"
        )
    if values.shape[:3] != points.shape[:3]:
        raise ValueError(
            f"values {tuple(values.shape)} and points {tuple(points.shape)} must share (B, H, W)"
        )
    for name, t in (("points", points), ("values", values)):
        if t.shape[-1] % heads:
            raise ValueError(
                f"{name} have {t.shape[-1]} channels, which {heads} heads cannot split evenly; "
                "use a channel count that is a multiple of heads"
            )
    _, H, W, _ = points.shape
    if fold_w < 1 or fold_h < 1 or H % fold_w or W % fold_h:
        raise ValueError(
            f"a {H}x{W} feature map cannot be split into fold_w x fold_h = {fold_w}x{fold_h} "
            "equal regions; resize the input so that every stage's feature map is divisible by "
            "its folds (the released ImageNet variants expect 224x224) or change fold_w / fold_h"
        )


def _similarity(centres: Tensor, x: Tensor, alpha, beta, similarity: str) -> Tensor:
    """Similarity of M centres (G, M, D) to N points (G, N, D): (G, M, N)."""
    sim = F.normalize(centres, dim=-1) @ F.normalize(x, dim=-1).transpose(1, 2)  # (G, M, N)
    if similarity == "sigmoid":
        sim = torch.sigmoid(beta + alpha * sim)
    return sim


def _flat_index(index: Tensor, M: int) -> Tensor:
    """Row of each point's centre among all G * M centres: index (G, N) -> (G * N,)."""
    G = index.shape[0]
    return (index + torch.arange(G, device=index.device).unsqueeze(1) * M).flatten()


def _aggregate(
    values: Tensor, centres: Tensor, weight: Tensor, index: Tensor, flat: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Similarity-weighted mean of each cluster's points plus its centre, and its denominator.

    values (G, N, D), centres (G, M, D), weight (G, N), index (G, N) -> (G, M, D), (G, M);
    ``flat`` is :func:`_flat_index` of ``index``, if already at hand. Whole rows are added
    with ``index_add`` (one index per point, not per element as a scatter-add reads), and a
    FLOP counter sees only the real multiply-adds.
    """
    G, N, D = values.shape
    M = centres.shape[1]
    flat = _flat_index(index, M) if flat is None else flat
    values, weight = values.to(centres.dtype), weight.to(centres.dtype)  # under autocast
    weighted = (values * weight.unsqueeze(-1)).reshape(-1, D)  # (G * N, D)
    num = centres.reshape(G * M, D).index_add(0, flat, weighted)  # (G * M, D)
    den = torch.ones_like(centres[..., 0]).scatter_add(1, index, weight)  # (G, M)
    return num.view(G, M, D) / den.unsqueeze(-1), den


def _take(t: Tensor, flat: Tensor) -> Tensor:
    """Rows of the per-group centres for each point: t (G, M, C), flat (G * N,) -> (G, N, C)."""
    G, _, C = t.shape
    return t.reshape(-1, C).index_select(0, flat).view(G, -1, C)


def _sum_into(src: Tensor, weight: Tensor) -> Tensor:
    """Sum each point's row, times its weight, into its centre: (G, N, C) -> (G, M, C).

    ``weight`` (G, N, M) holds one non-zero per point, at its centre (see :func:`_one_hot`).
    A batched matrix product does this faster on CPUs than a scatter-add, and builds nothing
    bigger than the (G, N, M) similarity matrix. The weights take the rows' dtype: under
    autocast the similarities are bfloat16 while the normalised points may be float32 (CUDA's
    autocast takes norms in float32), and the backward pass runs outside autocast.
    """
    return torch.bmm(weight.transpose(1, 2).to(src.dtype), src)


def _one_hot(idx: Tensor, value: Tensor, M: int) -> Tensor:
    """(G, N, M) zeros with ``value`` (G, N) at each point's centre ``idx`` (G, N)."""
    G, N = idx.shape
    out = torch.zeros(G, N, M, dtype=value.dtype, device=value.device)
    return out.scatter_(2, idx.unsqueeze(-1), value.unsqueeze(-1))


def _propose(t: Tensor, pw: int, ph: int) -> Tensor:
    """Average-pool (G, h, w, C) points over a pw x ph grid of cells: (G, pw * ph, C).

    Cells follow ``nn.AdaptiveAvgPool2d``: equal when pw, ph divide h, w, else overlapping.
    The channels-last view keeps this one pass of the pooling kernel.
    """
    pooled = F.adaptive_avg_pool2d(t.permute(0, 3, 1, 2), (pw, ph))  # (G, C, pw, ph)
    return pooled.flatten(2).transpose(1, 2)


class _ClusterGroups(torch.autograd.Function):
    """Assign, aggregate and dispatch in groups of points with given centres, with a
    hand-derived backward.

    Autograd would record some twenty small operations and keep their outputs; this keeps the
    normalised points, the values, the clusters and the (G, N) assignment, and computes the
    gradient with gathers and scatter-adds of the same size as the forward pass. Its equality
    with autograd's gradient is tested (tests/test_cluster.py, gradcheck in float64).

    x (G, N, D), values (G, N, Dv), centres (G, M, D), value_centres (G, M, Dv), alpha, beta
    (1,) -> out (G, N, Dv), index (G, N), and each point's similarity to its centre (G, N),
    returned for analysis without a gradient.
    """

    @staticmethod
    def forward(ctx, x, v, centres, value_centres, alpha, beta, use_sigmoid):
        G, N, D = x.shape
        M = centres.shape[1]
        x_norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (G, N, 1)
        c_norm = centres.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (G, M, 1)
        xn, cn = x / x_norm, centres / c_norm
        cos = torch.bmm(cn, xn.transpose(1, 2))  # (G, M, N)
        sim = torch.sigmoid(beta + alpha * cos) if use_sigmoid else cos
        s, idx = sim.max(dim=1)  # (G, N): each point joins its most similar centre
        cos_sel = cos.gather(1, idx.unsqueeze(1)).squeeze(1) if use_sigmoid else s
        flat = _flat_index(idx, M)  # (G * N,) row of each point's centre
        # the backward pass sums with the faster one-hot products of _sum_into
        clusters, den = _aggregate(v, value_centres, s, idx, flat)  # (G, M, Dv), (G, M)
        out = _take(clusters, flat).mul_(s.unsqueeze(-1))  # (G, N, Dv): dispatch
        ctx.save_for_backward(
            xn, x_norm, cn, c_norm, v, clusters, den, s, idx, flat, cos_sel, alpha
        )
        ctx.use_sigmoid = use_sigmoid
        ctx.mark_non_differentiable(idx, s)
        return out, idx, s

    @staticmethod
    def backward(ctx, d_out, _d_idx, _d_s):
        xn, x_norm, cn, c_norm, v, clusters, den, s, idx, flat, cos_sel, alpha = ctx.saved_tensors
        M = clusters.shape[1]
        # dispatch: out_i = s_i g_{m(i)}
        d_s = (d_out * _take(clusters, flat)).sum(-1)  # (G, N)
        d_g = _sum_into(d_out, _one_hot(idx, s, M))  # (G, M, Dv)
        # aggregation: g_m = num_m / den_m, num_m = vc_m + sum s_i v_i, den_m = 1 + sum s_i
        d_num = d_g / den.unsqueeze(-1)  # (G, M, Dv), also the gradient of the value centres
        d_den = -(d_num * clusters).sum(-1)  # (G, M)
        d_num_i = _take(d_num, flat)  # (G, N, Dv)
        d_s = d_s + (v * d_num_i).sum(-1) + d_den.gather(1, idx)
        d_v = d_num_i.mul_(s.unsqueeze(-1))
        # similarity: s_i = sigmoid(beta + alpha * cos_i), or s_i = cos_i
        d_alpha = d_beta = None
        if ctx.use_sigmoid:
            d_z = d_s * s * (1 - s)
            d_alpha, d_beta = (d_z * cos_sel).sum().reshape(1), d_z.sum().reshape(1)
            d_cos = d_z * alpha
        else:
            d_cos = d_s
        # cos_i = cn_{m(i)} . xn_i, then the normalisations
        # d/dx (x / |x|) applied to d_cos * cn: (cn - xn cos) d_cos / |x|, as cn . xn = cos
        d_cn = _sum_into(xn, _one_hot(idx, d_cos, M))  # (G, M, D)
        d_x = _take(cn, flat).addcmul_(xn, cos_sel.unsqueeze(-1), value=-1)  # (G, N, D)
        d_x.mul_(d_cos.unsqueeze(-1) / x_norm)
        d_c = (d_cn - cn * (d_cn * cn).sum(-1, keepdim=True)) / c_norm
        return d_x, d_v, d_c, d_num, d_alpha, d_beta, None


def cluster_groups(
    points: Tensor,
    values: Tensor,
    centres: Tensor,
    value_centres: Tensor,
    *,
    sim_alpha: Tensor | float = 1.0,
    sim_beta: Tensor | float = 0.0,
    similarity: str = "sigmoid",
    center_iters: int = 0,
    _autograd: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The context cluster on groups of points: every point joins its most similar centre of
    its group, each cluster aggregates its points' values with its value-space centre, and
    the result is dispatched back. This is the one implementation of assign, aggregate and
    dispatch; images (:func:`context_cluster`) and point sets (:func:`context_cluster_sets`)
    are ways of forming the groups and proposing their centres.

    Args:
        points: (G, N, D) features that decide the clustering, one group per row.
        values: (G, N, Dv) features that are aggregated and dispatched.
        centres, value_centres: (G, M, D) and (G, M, Dv), the proposed centres.
        sim_alpha, sim_beta, similarity, center_iters, _autograd: as in
            :func:`context_cluster`.
    Returns:
        out (G, N, Dv), index (G, N) of each point's centre, and each point's similarity to
        it (G, N), without a gradient.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity={similarity!r} is not one of {SIMILARITIES}")
    if center_iters < 0:
        raise ValueError(f"center_iters={center_iters} must be 0 (fixed centres) or positive")
    if center_iters == 0 and not _autograd:
        alpha, beta = (
            torch.as_tensor(t, dtype=values.dtype, device=values.device).reshape(1)
            for t in (sim_alpha, sim_beta)
        )
        return _ClusterGroups.apply(
            points, values.to(points.dtype), centres, value_centres.to(points.dtype), alpha,
            beta, similarity == "sigmoid",
        )  # fmt: skip
    for _ in range(center_iters):
        s, idx = _similarity(centres, points, sim_alpha, sim_beta, similarity).max(dim=1)
        centres, _ = _aggregate(points, centres, s, idx)
    if not _autograd:  # the moved centres, then the same final step as fixed ones
        return cluster_groups(points, values, centres, value_centres, sim_alpha=sim_alpha,
                              sim_beta=sim_beta, similarity=similarity)  # fmt: skip
    # hard assignment: each point keeps only its similarity to the centre it joins
    s, idx = _similarity(centres, points, sim_alpha, sim_beta, similarity).max(dim=1)  # (G, N)
    clusters, _ = _aggregate(values, value_centres, s, idx)  # (G, M, Dv)
    out = clusters.gather(1, idx.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    return out * s.unsqueeze(-1), idx, s.detach()


def context_cluster(
    points: Tensor,
    values: Tensor,
    *,
    heads: int,
    proposal_w: int,
    proposal_h: int,
    fold_w: int = 1,
    fold_h: int = 1,
    sim_alpha: Tensor | float = 1.0,
    sim_beta: Tensor | float = 0.0,
    similarity: str = "sigmoid",
    center_iters: int = 0,
    _autograd: bool = False,
) -> ClusterOutput:
    """Cluster points, aggregate each cluster and dispatch the result back to its points.

    Args:
        points: (B, H, W, heads * D) features that decide the clustering.
        values: (B, H, W, heads * Dv) features that are aggregated and dispatched.
        heads: independent clusterings, each over its own D channels.
        proposal_w, proposal_h: grid of centres proposed in each region (M = product).
        fold_w, fold_h: regions along the first and second spatial axis (1, 1: none). A fold
            of 1 along one axis and k > 1 along the other cuts the map into k strips. The
            authors' release partitions only when both folds exceed 1 (it tests
            ``fold_w > 1 and fold_h > 1``), so there a one-sided fold means no regions at all.
            Every released variant has equal folds, where the two agree; for the rest cocs does
            what the arguments say, because a fold that is silently ignored is a trap for
            anyone studying region shapes (chapter 6 varies them).
        sim_alpha, sim_beta: learnable scale and shift of the similarity (scalars or (1,)).
        similarity: "sigmoid" for sigmoid(alpha * cos + beta) as in the paper, "cosine" for the
            raw cosine similarity (an ablation; alpha and beta are then unused).
        center_iters: 0 keeps the proposed centres fixed (the paper); k > 0 moves the
            similarity-space centres k times to the weighted mean of their cluster,
            c <- (c + sum_i s_i x_i) / (1 + sum_i s_i), and re-assigns the points. The
            value-space centres stay the proposed ones.
        _autograd: compute fixed centres through autograd rather than the hand-derived
            backward of :class:`_ClusterGroups` (for tests; same result).
    Returns:
        ClusterOutput(out (B, H, W, heads * Dv), assignment (B, heads, H, W), similarity
        (B, heads, H, W)); similarity is each point's similarity to the centre it joined, the
        weight with which it enters that cluster's aggregate (without a gradient); assignment
        numbers the centres of region (r_w, r_h) as (r_w * fold_h + r_h) * M + m, with m in
        row-major order over the proposal grid.
    """
    _check(points, values, heads, fold_w, fold_h)
    B, H, W, _ = points.shape
    h, w = H // fold_w, W // fold_h
    M = proposal_w * proposal_h

    # one group per (batch, head, region): (G, h, w, D)
    regions = "b (f1 h) (f2 w) (e d) -> (b e f1 f2) h w d"
    x = rearrange(points, regions, e=heads, f1=fold_w, f2=fold_h)
    v = rearrange(values, regions, e=heads, f1=fold_w, f2=fold_h)
    # centre proposal: average pooling over a proposal_w x proposal_h grid in each region
    centres = _propose(x, proposal_w, proposal_h)  # (G, M, D)
    value_centres = _propose(v, proposal_w, proposal_h)  # (G, M, Dv)
    out, idx, s = cluster_groups(
        x.flatten(1, 2), v.flatten(1, 2), centres, value_centres, sim_alpha=sim_alpha,
        sim_beta=sim_beta, similarity=similarity, center_iters=center_iters, _autograd=_autograd,
    )  # fmt: skip

    out = rearrange(
        out, "(b e f1 f2) (h w) d -> b (f1 h) (f2 w) (e d)", e=heads, f1=fold_w, f2=fold_h, h=h
    )
    region = torch.arange(fold_w * fold_h, device=idx.device).view(1, 1, -1, 1) * M
    assignment = idx.view(B, heads, fold_w * fold_h, h * w) + region
    to_map = "b e (f1 f2) (h w) -> b e (f1 h) (f2 w)"
    assignment = rearrange(assignment, to_map, f1=fold_w, f2=fold_h, h=h)
    weights = rearrange(s.view(B, heads, fold_w * fold_h, h * w), to_map,
                        f1=fold_w, f2=fold_h, h=h)  # fmt: skip
    return ClusterOutput(out, assignment, weights)


def context_cluster_sets(
    points: Tensor,
    values: Tensor,
    *,
    heads: int,
    centre_index: Tensor | None = None,
    sim_alpha: Tensor | float = 1.0,
    sim_beta: Tensor | float = 0.0,
    similarity: str = "sigmoid",
    center_iters: int = 0,
) -> ClusterOutput:
    """The context cluster on groups of points that need not lie on a grid (point clouds).

    Args:
        points: (G, n, heads * D) features that decide the clustering: one group per row, such
            as an anchor's k nearest neighbours (:mod:`cocs.pointsets`).
        values: (G, n, heads * Dv) features that are aggregated and dispatched.
        heads: independent clusterings, each over its own D channels.
        centre_index: (G, M) members of each group that propose the M centres (for instance
            farthest-point samples); None proposes one centre per group, the mean of its
            points, as the point-cloud model of the authors' release does.
        sim_alpha, sim_beta, similarity, center_iters: as in :func:`context_cluster`.
    Returns:
        ClusterOutput(out (G, n, heads * Dv), assignment (G, heads, n) indices into the M
        centres, similarity (G, heads, n)).
    """
    if points.dim() != 3 or values.shape[:2] != points.shape[:2]:
        raise ValueError(
            f"points {tuple(points.shape)} and values {tuple(values.shape)} must be (G, n, C) "
            "with the same G groups of n points"
        )
    for name, t in (("points", points), ("values", values)):
        if t.shape[-1] % heads:
            raise ValueError(
                f"{name} have {t.shape[-1]} channels, which {heads} heads cannot split evenly; "
                "use a channel count that is a multiple of heads"
            )
    G, n, _ = points.shape
    x = rearrange(points, "g n (e d) -> (g e) n d", e=heads)
    v = rearrange(values, "g n (e d) -> (g e) n d", e=heads)
    if centre_index is None:
        centres, value_centres = x.mean(1, keepdim=True), v.mean(1, keepdim=True)  # (G', 1, .)
    else:
        idx = centre_index.repeat_interleave(heads, dim=0)  # (G * heads, M)
        centres = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        value_centres = v.gather(1, idx.unsqueeze(-1).expand(-1, -1, v.shape[-1]))
    out, idx, s = cluster_groups(
        x, v, centres, value_centres, sim_alpha=sim_alpha, sim_beta=sim_beta,
        similarity=similarity, center_iters=center_iters,
    )  # fmt: skip
    out = rearrange(out, "(g e) n d -> g n (e d)", e=heads)
    return ClusterOutput(out, idx.view(G, heads, n), s.view(G, heads, n))


class Cluster(nn.Module):
    """Context-cluster token mixer: projections around :func:`context_cluster`.

    Parameter names and shapes are those of the authors' release (``f``, ``v`` and ``proj`` are
    1x1 convolutions), so released state dicts load unchanged. The forward pass applies them as
    one fused channels-last matrix product for ``f`` and ``v``, which is the same arithmetic.

    Input and output: (B, dim, H, W) -> (B, out_dim, H, W). After a forward pass,
    ``last_assignment`` and ``last_similarity`` hold the (B, heads, H, W) assignment and each
    point's similarity to its centre when ``keep_assignment`` is set.
    """

    def __init__(
        self,
        *,
        dim: int,
        out_dim: int,
        heads: int = 4,
        head_dim: int = 24,
        proposal_w: int = 2,
        proposal_h: int = 2,
        fold_w: int = 2,
        fold_h: int = 2,
        similarity: str = "sigmoid",
        center_iters: int = 0,
    ):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.proposal_w, self.proposal_h = proposal_w, proposal_h
        self.fold_w, self.fold_h = fold_w, fold_h
        self.similarity, self.center_iters = similarity, center_iters
        self.f = nn.Conv2d(dim, heads * head_dim, kernel_size=1)  # similarity space
        self.v = nn.Conv2d(dim, heads * head_dim, kernel_size=1)  # value space
        self.proj = nn.Conv2d(heads * head_dim, out_dim, kernel_size=1)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))
        self.keep_assignment = False
        self.last_assignment: Tensor | None = None
        self.last_similarity: Tensor | None = None

    def _mix(self, points: Tensor, values: Tensor) -> Tensor:
        """Cluster, then project: (B, H, W, heads * head_dim) x 2 -> (B, H, W, out_dim)."""
        res = context_cluster(
            points,
            values,
            heads=self.heads,
            proposal_w=self.proposal_w,
            proposal_h=self.proposal_h,
            fold_w=self.fold_w,
            fold_h=self.fold_h,
            sim_alpha=self.sim_alpha,
            sim_beta=self.sim_beta,
            similarity=self.similarity,
            center_iters=self.center_iters,
        )
        if self.keep_assignment:
            self.last_assignment = res.assignment.detach()
            self.last_similarity = res.similarity
        return F.linear(res.out, self.proj.weight.flatten(1), self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        xl = x.permute(0, 2, 3, 1)  # (B, H, W, dim); a free view for channels-last inputs
        weight = torch.cat([self.f.weight, self.v.weight]).flatten(1)
        fv = F.linear(xl, weight, torch.cat([self.f.bias, self.v.bias]))
        points, values = fv.chunk(2, dim=-1)  # (B, H, W, heads * head_dim) each
        return self._mix(points, values).permute(0, 3, 1, 2)  # (B, out_dim, H, W)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, head_dim={self.head_dim}, "
            f"proposal={self.proposal_w}x{self.proposal_h}, fold={self.fold_w}x{self.fold_h}, "
            f"similarity={self.similarity}, center_iters={self.center_iters}"
        )
