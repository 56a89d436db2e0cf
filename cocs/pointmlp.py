"""PointMLP-elite for point-cloud classification, and the same with context-cluster blocks.

``pointmlp_elite``: PointMLP-elite as its paper (Ma et al., "Rethinking Network Design and
Local Geometry in Point Cloud: A Simple Residual MLP Framework", ICLR 2022) and its public
release (``pointMLPElite`` of ma-xu/pointMLP-pytorch, ModelNet40) describe it: an embedding
of 32 channels, four stages that each sample half the points by farthest point sampling,
group each anchor's 24 nearest neighbours, normalise them around the anchor with a learned
affine map (the geometric affine module), and apply residual point MLPs with bottleneck 0.25
before (on each group, then max-pooled) and after (on the anchors) the grouping: (1, 1, 2, 1)
blocks each; channels 64, 128, 256, 256; then a three-layer classifier. 716,232 parameters
for 40 classes, as the release.

``pointmlp_elite_coc``: the same with a context-cluster block (:class:`PointCluster`) before
each residual block of the local (pre-extraction) stages, as the Context Cluster release's
PointMLP-CoC places them: each neighbourhood is one group, with one centre, its mean.

The release applies Conv1d and BatchNorm1d to (B x groups, C, k) tensors; here every per-point
layer is a channels-last Linear on (..., C) and BatchNorm over all points of a channel, the
same function of the same parameters, without transposes (tests/test_pointmlp.py checks the
equality on shared weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

from .cluster import context_cluster_sets
from .pointsets import farthest_point_sample, gather, knn

__all__ = ["PointCluster", "PointMLP", "group_spread", "pointmlp_elite", "pointmlp_elite_coc"]


class LinearBN(nn.Module):
    """Linear (no bias) + BatchNorm over every point of a channel (+ ReLU): (..., C) -> (..., D).

    The release's Conv1d(kernel_size=1, bias=False) + BatchNorm1d + ReLU, channels-last."""

    def __init__(self, in_chans: int, out_chans: int, *, act: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_chans, out_chans, bias=False)
        self.bn = nn.BatchNorm1d(out_chans)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.linear(x).flatten(0, -2))  # (points, D): statistics per channel
        return self.act(y).view(*x.shape[:-1], -1)


class ResBlock(nn.Module):
    """relu(x + bn(linear(relu(bn(linear(x)))))) with a bottleneck of ``expansion * C``."""

    def __init__(self, dim: int, expansion: float = 0.25):
        super().__init__()
        hidden = int(dim * expansion)
        self.net1 = LinearBN(dim, hidden)
        self.net2 = LinearBN(hidden, dim, act=False)

    def forward(self, x: Tensor, act: bool = True) -> Tensor:
        """``act=False`` leaves the last ReLU to the caller (a max over neighbours commutes
        with it)."""
        y = self.net2(self.net1(x)) + x
        return torch.relu(y) if act else y


class PointCluster(nn.Module):
    """A context-cluster block on groups of points: (G, n, dim) -> (G, n, dim), residual.

    Points and values are linear maps of the input (``fc1``, ``fc_v``); each group clusters
    around ``centres`` proposed centres (the default, None: one, its mean) with
    :func:`cocs.cluster.context_cluster_sets`; ``fc2`` maps the result back, added to the input.
    """

    def __init__(self, dim: int, *, heads: int = 1, head_dim: int | None = None):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim or max(dim // 4, 32)
        inner = self.heads * self.head_dim
        self.fc1 = nn.Linear(dim, inner)
        self.fc_v = nn.Linear(dim, inner)
        self.fc2 = nn.Linear(inner, dim)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))
        self.keep_assignment = False
        self.last_assignment: Tensor | None = None

    def forward(self, x: Tensor, centre_index: Tensor | None = None) -> Tensor:
        res = context_cluster_sets(
            self.fc1(x), self.fc_v(x), heads=self.heads, centre_index=centre_index,
            sim_alpha=self.sim_alpha, sim_beta=self.sim_beta,
        )  # fmt: skip
        if self.keep_assignment:
            self.last_assignment = res.assignment
        return x + self.fc2(res.out)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}"


def group_spread(x: Tensor, idx: Tensor, near: Tensor) -> Tensor:
    """The unbiased standard deviation, per shape, of every neighbour's features minus its
    anchor's: ``(gather(x, near) - gather(x, idx).unsqueeze(2)).reshape(B, -1).std(-1)``,
    without forming that (B, S, k, d) tensor.

    Over the T = S * k * d differences c, var = (sum c^2 - (sum c)^2 / T) / (T - 1), where
    sum c^2 = sum_j |x_j|^2 - 2 sum_a x_a . (sum of a's neighbours) + k sum_a |x_a|^2 and the
    neighbour sums are one ``embedding_bag`` per anchor. The differences do not change when
    every point moves by the same vector, so x is first centred on its shape's mean, which
    keeps the three terms small; they are summed in float32 whatever x's dtype.
    x (B, N, d), idx (B, S), near (B, S, k) -> (B,), in x's dtype.
    """
    B, N, d = x.shape
    S, k = near.shape[1:]
    dtype, x = x.dtype, x.float()
    x = x - x.mean(dim=1, keepdim=True)  # the same differences, smaller sums
    rows = near + torch.arange(B, device=x.device).view(B, 1, 1) * N  # into (B * N)
    sums = F.embedding_bag(rows.view(B * S, k), x.reshape(B * N, d), mode="sum").view(B, S, d)
    anchor = gather(x, idx)  # (B, S, d)
    sq = x.square().sum(-1)  # (B, N): |x_j|^2
    total = S * k * d
    sum_c = sums.sum((1, 2)) - k * anchor.sum((1, 2))
    sum_c2 = (sq.gather(1, near.view(B, -1)).sum(1) - 2 * (anchor * sums).sum((1, 2))
              + k * sq.gather(1, idx).sum(1))  # fmt: skip
    var = (sum_c2 - sum_c.square() / total) / (total - 1)
    return var.clamp_min(0).sqrt().to(dtype)


class LocalGrouper(nn.Module):
    """Anchors by farthest point sampling, their k nearest points, normalised around the anchor.

    The release's geometric affine module: each neighbour's features minus the anchor's,
    divided by one standard deviation per shape (over all its groups and channels), through
    the affine map alpha * . + beta, with the anchor's own features concatenated beside:
    groups (B, S, k, 2d). :meth:`forward` builds them; :class:`Stage` computes the same
    thing fused with the linear layer that follows (see there).
    """

    def __init__(self, dim: int, anchors: int, k: int):
        super().__init__()
        self.anchors, self.k = anchors, k
        self.affine_alpha = nn.Parameter(torch.ones(1, 1, 1, dim))
        self.affine_beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def sample(
        self, xyz: Tensor, x: Tensor, ordered: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Anchor indices (B, S), neighbour indices (B, S, k), and the per-shape deviation
        (B, 1, 1, 1) of the neighbours' features from their anchors'. ``ordered``: ``xyz`` is
        a farthest point sample in its order, as every stage's anchors are (see
        :func:`cocs.pointsets.farthest_point_sample`): its first S points are the anchors."""
        idx = farthest_point_sample(xyz, self.anchors, ordered=ordered)  # (B, S)
        near = knn(gather(xyz, idx), xyz, self.k)  # (B, S, k)
        return idx, near, group_spread(x, idx, near).view(-1, 1, 1, 1)

    def forward(self, xyz: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, 3), (B, N, d) -> anchors (B, S, 3), groups (B, S, k, 2d)."""
        idx, near, std = self.sample(xyz, x)
        anchor = gather(x, idx)  # (B, S, d)
        centred = gather(x, near) - anchor.unsqueeze(2)
        normed = self.affine_alpha * (centred / (std + 1e-5)) + self.affine_beta
        return gather(xyz, idx), torch.cat([normed, anchor.unsqueeze(2).expand_as(normed)], -1)

    def extra_repr(self) -> str:
        return f"anchors={self.anchors}, k={self.k}"


class Stage(nn.Module):
    """Group, then residual MLPs on each group (max-pooled over k), then on the anchors.

    The grouping's output, [alpha * (x_j - x_a) / sigma + beta, x_a] for neighbour j of anchor
    a, goes straight into a linear layer W = [W1, W2]. By linearity that layer equals
    ((W1 alpha) x_j - (W1 alpha) x_a) / sigma + W1 beta + W2 x_a, in which the products are
    taken once per point and once per anchor and then gathered, instead of once per
    neighbour of every anchor (k = 24 times as many rows). The same function of the same
    weights, with about a third of the network's multiply-adds.
    """

    def __init__(self, *, in_dim: int, out_dim: int, anchors: int, k: int, pre: int, pos: int,
                 expansion: float, coc: bool):  # fmt: skip
        super().__init__()
        self.grouper = LocalGrouper(in_dim, anchors, k)
        self.transfer = LinearBN(2 * in_dim, out_dim)
        pre_blocks: list[nn.Module] = []
        for _ in range(pre):
            if coc:
                pre_blocks.append(PointCluster(out_dim))
            pre_blocks.append(ResBlock(out_dim, expansion))
        self.pre = nn.ModuleList(pre_blocks)
        self.pos = nn.Sequential(*[ResBlock(out_dim, expansion) for _ in range(pos)])

    def _transfer(self, x: Tensor, idx: Tensor, near: Tensor, std: Tensor) -> Tensor:
        """The transfer layer on the normalised groups, computed per point: (B, S, k, out)."""
        d = x.shape[-1]
        w1, w2 = self.transfer.linear.weight.split(d, dim=1)  # (out, d) each
        alpha, beta = self.grouper.affine_alpha.view(d), self.grouper.affine_beta.view(d)
        z = x @ (w1 * alpha).T / (std.view(-1, 1, 1) + 1e-5)  # (B, N, out): every point once
        per_anchor = gather(x, idx) @ w2.T + w1 @ beta - gather(z, idx)  # (B, S, out)
        y = gather(z, near) + per_anchor.unsqueeze(2)  # (B, S, k, out)
        bn = self.transfer.bn
        return self.transfer.act(bn(y.flatten(0, -2))).view(y.shape)

    def forward(self, xyz: Tensor, x: Tensor, ordered: bool = False) -> tuple[Tensor, Tensor]:
        """``ordered``: as :meth:`LocalGrouper.sample`; the anchors come out in that order."""
        idx, near, std = self.grouper.sample(xyz, x, ordered)
        y = self._transfer(x, idx, near, std)  # (B, S, k, out)
        B, S = idx.shape
        y = y.flatten(0, 1)  # (B * S, k, out): one group per row
        for i, block in enumerate(self.pre):  # the last ResBlock's ReLU waits for the max
            last = i == len(self.pre) - 1 and isinstance(block, ResBlock)
            y = block(y, act=False) if last else block(y)
        # max over the k neighbours, then the ReLU (they commute: one pass over S values
        # instead of S * k; without local blocks it is the transfer's ReLU again, a no-op);
        # the gradient goes to the first maximum, as the release's max pooling sends it
        # (amax would split it among ties, at several passes)
        y = torch.relu(y.max(dim=1).values).view(B, S, -1)  # (B, S, out)
        return gather(xyz, idx), self.pos(y)


class PointMLP(nn.Module):
    """PointMLP for classification: (B, N, 3) point clouds -> (B, num_classes) logits."""

    def __init__(self, *, num_classes: int = 40, points: int = 1024, embed_dim: int = 32,
                 expansion: float = 0.25, dim_expansion=(2, 2, 2, 1), pre_blocks=(1, 1, 2, 1),
                 pos_blocks=(1, 1, 2, 1), k: int = 24, reducers=(2, 2, 2, 2), coc: bool = False,
                 drop_rate: float = 0.5, **kwargs):  # fmt: skip
        super().__init__()
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's
            kwargs.pop(key, None)
        if kwargs.pop("drop_path_rate", 0.0):
            raise ValueError("PointMLP has no stochastic depth: use drop_path=0")
        if kwargs:
            raise TypeError(f"PointMLP got unknown arguments {sorted(kwargs)}")
        self.num_classes, self.points = num_classes, points
        self.embedding = LinearBN(3, embed_dim)
        stages, dim, anchors = [], embed_dim, points
        for i, reduce in enumerate(reducers):
            anchors //= reduce
            out = dim * dim_expansion[i]
            stages.append(Stage(in_dim=dim, out_dim=out, anchors=anchors, k=k, pre=pre_blocks[i],
                                pos=pos_blocks[i], expansion=expansion, coc=coc))  # fmt: skip
            dim = out
        self.stages = nn.ModuleList(stages)
        self.num_features = dim
        self.classifier = nn.Sequential(
            nn.Linear(dim, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
            nn.Linear(256, num_classes),
        )  # fmt: skip

    def forward_features(self, xyz: Tensor) -> Tensor:
        """(B, N, 3) -> the last stage's anchors' features (B, S, C)."""
        if xyz.dim() != 3 or xyz.shape[-1] != 3:
            raise ValueError(
                f"expected point clouds of shape (B, N, 3), got {tuple(xyz.shape)}; "
                "move the coordinates last with x.transpose(1, 2)"
            )
        x = self.embedding(xyz)  # (B, N, embed)
        for i, stage in enumerate(self.stages):  # after the first, xyz is a sample in order
            xyz, x = stage(xyz, x, ordered=i > 0)
        return x

    def forward(self, xyz: Tensor) -> Tensor:
        return self.classifier(self.forward_features(xyz).max(dim=1).values)


@register_model
def pointmlp_elite(pretrained: bool = False, **kwargs) -> PointMLP:
    """PointMLP-elite (Ma et al., ICLR 2022; ma-xu/pointMLP-pytorch, pointMLPElite)."""
    from .weights import load_shipped

    model = PointMLP(**kwargs)
    return load_shipped(model, "pointmlp_elite") if pretrained else model


@register_model
def pointmlp_elite_coc(pretrained: bool = False, **kwargs) -> PointMLP:
    """PointMLP-elite with a context-cluster block before each local residual block (the
    Context Cluster release's PointMLP-CoC, on the elite layout)."""
    from .weights import load_shipped

    model = PointMLP(coc=True, **kwargs)
    return load_shipped(model, "pointmlp_elite_coc") if pretrained else model
