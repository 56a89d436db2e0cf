"""A Context Cluster backbone on point sets: the paper's thesis taken literally.

``coc_points`` is built from the parts of the image family, applied to a set instead of a
grid: the points carry their position as their first features (as an image's points carry
colour and position), point reducers on sets (:class:`cocs.pointsets.SetReducer`) make fewer,
wider points between stages, and each block is the image family's block (norm, context
cluster, norm, MLP, with layer scale) whose clustering happens in regions that are
neighbourhoods of the set: anchors spread by farthest point sampling, each with its nearest
points, and centres sampled among them.

Neighbourhoods of equal size overlap and need not cover every point (a grid's regions tile
it): a point in several neighbourhoods receives the mean of what they dispatch to it, and a
point in none receives nothing from the clustering (its residual path carries it on).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import register_model
from torch import Tensor, nn

from .cluster import context_cluster_sets
from .pointsets import SetReducer, farthest_point_sample, gather, knn

__all__ = ["CocPoints", "Regions", "SetCluster", "coc_points"]


class Regions(NamedTuple):
    """Neighbourhoods of a set: ``members`` (B, R, n) indices of each region's points, nearest
    its anchor first; ``centre_index`` (B * R, M) positions of each region's centres in it."""

    members: Tensor
    centre_index: Tensor


class SetCluster(nn.Module):
    """Context-cluster token mixer over neighbourhoods of a set: (B, N, dim) -> (B, N, dim).

    ``regions`` anchors by farthest point sampling, each with its ``overlap * N / regions``
    nearest points; in each, ``centres`` centres sampled by farthest point sampling among its
    points; ``heads`` clusterings of ``head_dim`` channels.
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int, regions: int, centres: int,
                 overlap: float = 2.0):  # fmt: skip
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.regions, self.centres, self.overlap = regions, centres, overlap
        self.f = nn.Linear(dim, heads * head_dim)  # similarity space
        self.v = nn.Linear(dim, heads * head_dim)  # value space
        self.proj = nn.Linear(heads * head_dim, dim)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))
        self.keep_assignment = False
        self.last_assignment: Tensor | None = None  # (B, heads, N): -1 outside every region

    def regions_of(self, xyz: Tensor, ordered: bool = False) -> Regions:
        """This mixer's neighbourhoods of the set ``xyz`` (B, N, 3); they depend on the
        positions only, so the blocks of a stage, which share positions, share them.
        ``ordered``: ``xyz`` is a farthest point sample in its order (see
        :func:`cocs.pointsets.farthest_point_sample`)."""
        B, N, _ = xyz.shape
        R = min(self.regions, N)
        n = min(N, math.ceil(self.overlap * N / R))
        anchors = gather(xyz, farthest_point_sample(xyz, R, ordered=ordered))  # (B, R, 3)
        members = knn(anchors, xyz, n)  # (B, R, n), nearest first
        group_xyz = gather(xyz, members).flatten(0, 1)  # (B * R, n, 3)
        centre_index = farthest_point_sample(group_xyz, min(self.centres, n))  # (B * R, M)
        return Regions(members, centre_index)

    def forward(self, xyz: Tensor, x: Tensor, regions: Regions | None = None) -> Tensor:
        """``regions``: from :meth:`regions_of` on the same ``xyz`` (computed here if None)."""
        B, N, _ = x.shape
        members, centre_index = regions if regions is not None else self.regions_of(xyz)
        R, n = members.shape[1:]
        res = context_cluster_sets(
            gather(self.f(x), members).flatten(0, 1), gather(self.v(x), members).flatten(0, 1),
            heads=self.heads, centre_index=centre_index, sim_alpha=self.sim_alpha,
            sim_beta=self.sim_beta,
        )  # fmt: skip
        # each point gets the mean of what the neighbourhoods that hold it dispatch
        flat = members.reshape(B, R * n)  # (B, R * n)
        out = torch.zeros(B, N, res.out.shape[-1], dtype=res.out.dtype, device=x.device)
        out = out.scatter_add(1, flat.unsqueeze(-1).expand(-1, -1, out.shape[-1]),
                              res.out.view(B, R * n, -1))  # fmt: skip
        count = torch.zeros(B, N, 1, dtype=out.dtype, device=x.device).scatter_add(
            1, flat.unsqueeze(-1), torch.ones(B, R * n, 1, dtype=out.dtype, device=x.device)
        )
        if self.keep_assignment:  # the centre each point joined in its nearest region
            offset = torch.arange(R, device=x.device).view(1, R, 1, 1) * self.centres
            a = res.assignment.view(B, R, self.heads, n) + offset  # (B, R, heads, n)
            first = torch.full((B, self.heads, N), -1, dtype=torch.long, device=x.device)
            for r in reversed(range(R)):  # the nearest anchor's region is written last
                first.scatter_(2, members[:, r].unsqueeze(1).expand(-1, self.heads, -1), a[:, r])
            self.last_assignment = first
        return self.proj(out / count.clamp_min(1))

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, head_dim={self.head_dim}, regions={self.regions}, "
                f"centres={self.centres}, overlap={self.overlap}")  # fmt: skip


class SetBlock(nn.Module):
    """The image family's block on a set: x + ls1 * mixer(norm(x)), x + ls2 * mlp(norm(x))."""

    def __init__(self, *, dim: int, mlp_ratio: float, drop_path: float, layer_scale: float,
                 **cluster_kwargs):  # fmt: skip
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = SetCluster(dim=dim, **cluster_kwargs)
        self.norm2 = nn.GroupNorm(1, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(layer_scale * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(layer_scale * torch.ones(dim))

    @staticmethod
    def _norm(norm: nn.GroupNorm, x: Tensor) -> Tensor:  # (B, N, C): over points and channels
        return norm(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, xyz: Tensor, x: Tensor, regions: Regions | None = None) -> Tensor:
        x = x + self.drop_path(
            self.layer_scale_1 * self.token_mixer(xyz, self._norm(self.norm1, x), regions)
        )
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self._norm(self.norm2, x)))


class CocPoints(nn.Module):
    """Context Cluster classifier for point clouds: (B, N, 3) -> (B, num_classes) logits."""

    def __init__(self, *, num_classes: int = 40, layers=(2, 2, 2, 2), embed_dims=(32, 64, 128, 256),
                 mlp_ratios=4.0, heads=(2, 2, 4, 4), head_dim: int = 32, regions=(16, 8, 4, 1),
                 centres=(4, 4, 4, 4), stem_k: int = 16, stem_reduction: int = 8, down_k: int = 16,
                 drop_path_rate: float = 0.0, layer_scale: float = 1e-5, **kwargs):  # fmt: skip
        super().__init__()
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"CocPoints got unknown arguments {sorted(kwargs)}")
        per = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * len(layers)  # noqa: E731
        mlp_ratios, heads, regions, centres = map(per, (mlp_ratios, heads, regions, centres))
        self.num_classes = num_classes
        # the points' first features are their positions, as an image's are colour and position
        self.stem = SetReducer(in_chans=3, out_chans=embed_dims[0], k=stem_k,
                               reduction=stem_reduction)  # fmt: skip
        total, depth = sum(layers), 0
        self.stages, self.reducers = nn.ModuleList(), nn.ModuleList()
        for i, n_blocks in enumerate(layers):
            self.stages.append(nn.ModuleList([
                SetBlock(dim=embed_dims[i], mlp_ratio=mlp_ratios[i], layer_scale=layer_scale,
                         drop_path=drop_path_rate * (depth + j) / max(total - 1, 1),
                         heads=heads[i], head_dim=head_dim, regions=regions[i],
                         centres=centres[i])
                for j in range(n_blocks)
            ]))  # fmt: skip
            depth += n_blocks
            if i < len(layers) - 1:
                self.reducers.append(SetReducer(in_chans=embed_dims[i], out_chans=embed_dims[i + 1],
                                                k=down_k, reduction=2))  # fmt: skip
        self.norm = nn.GroupNorm(1, embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, xyz: Tensor) -> Tensor:
        if xyz.dim() != 3 or xyz.shape[-1] != 3:
            raise ValueError(
                f"expected point clouds of shape (B, N, 3), got {tuple(xyz.shape)}; "
                "move the coordinates last with x.transpose(1, 2)"
            )
        xyz, x = self.stem(xyz, xyz)  # (B, N / 8, 3), (B, N / 8, C)
        # from here on, xyz is a farthest point sample in its order (each reducer's anchors
        # are), so that every later sample of it is its first points: no more sampling loops
        for i, blocks in enumerate(self.stages):
            # a stage's blocks share positions, so their regions: sampled and grouped once
            regions = blocks[0].token_mixer.regions_of(xyz, ordered=True) if len(blocks) else None
            for block in blocks:
                x = block(xyz, x, regions)
            if i < len(self.reducers):
                xyz, x = self.reducers[i](xyz, x, ordered=True)
        x = F.group_norm(x.transpose(1, 2), 1, self.norm.weight, self.norm.bias, self.norm.eps)
        return self.head(x.mean(-1))


@register_model
def coc_points(pretrained: bool = False, **kwargs) -> CocPoints:
    """Context Cluster on point sets: coc_cifar's stages (2, 2, 2, 2 blocks of 32-256 channels,
    heads of 32 channels, 4 centres per region), with set point reducers and neighbourhoods of
    the set as regions; 1,024 points in, 40 classes out. The stem keeps one point in eight
    (128 of 1,024; 16 points in each of the first stage's 16 overlapping regions), as the
    ImageNet variants' 4x4 stem keeps one pixel in sixteen: chapter 8 measures what this buys
    against one in four."""
    from .weights import load_shipped

    model = CocPoints(**kwargs)
    return load_shipped(model, "coc_points") if pretrained else model
