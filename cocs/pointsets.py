"""Building blocks for point clouds: sampling anchors, grouping neighbours, reducing a set.

An image forms its groups by cutting a grid into regions; a point cloud forms them by sampling
anchors spread over the shape and gathering each anchor's k nearest points, as PointNet++ and
PointMLP do. Everything here is vectorised over the batch; ``xyz`` are coordinates (B, N, 3)
and features are channels-last (B, N, C).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SetReducer", "farthest_point_sample", "gather", "knn"]


def gather(x: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``x`` (B, N, C) at ``idx`` (B, ...) of indices into N: (B, ..., C).

    One ``index_select`` of whole rows of the flattened (B * N, C) features: an index per
    row, where ``torch.gather`` reads one per element (its backward, ``index_add``, likewise).
    """
    B, N, C = x.shape
    rows = idx.reshape(B, -1) + torch.arange(B, device=idx.device).unsqueeze(1) * N  # (B, K)
    return x.reshape(B * N, C).index_select(0, rows.view(-1)).view(*idx.shape, C)


def farthest_point_sample(
    xyz: Tensor, m: int, start: int | Tensor = 0, *, ordered: bool = False
) -> Tensor:
    """``m`` points spread over each set: each next one is the farthest from those chosen.

    Args:
        xyz: (B, N, 3) coordinates.
        m: points to choose (at most N).
        start: index of the first point, one for all sets or (B,) per set; the result is a
            deterministic function of the coordinates and ``start`` (ties go to the lowest
            index).
        ordered: ``xyz`` is itself a farthest point sample in the order it was chosen (as
            ``gather(xyz, farthest_point_sample(xyz, M))`` is), and ``start`` is 0. Its first
            ``m`` points are then its sample, returned without the loop: at every step, the
            point the sample chose next was the farthest of the whole set, so also of the
            sample, and every later point of the sample is at most as far and later in order.
            This holds whenever the set has at least ``m`` distinct points (with fewer, every
            point is at distance 0 and the tie goes elsewhere); tests/test_pointsets.py checks it.
    Returns (B, m) indices into N.
    """
    B, N, _ = xyz.shape
    if not 1 <= m <= N:
        raise ValueError(f"cannot sample m={m} points from sets of N={N}; use 1 <= m <= N")
    if ordered:
        if not (isinstance(start, int) and start == 0):
            raise ValueError(f"ordered=True takes a sample from its first point; got start={start}")
        return torch.arange(m, device=xyz.device).expand(B, m)
    idx = torch.empty(B, m, dtype=torch.long, device=xyz.device)
    far = torch.as_tensor(start, dtype=torch.long, device=xyz.device).expand(B).clone()  # (B,)
    nearest = torch.full((B, N), float("inf"), dtype=xyz.dtype, device=xyz.device)
    rows = torch.arange(B, device=xyz.device)
    # coordinates first: each step then works on three contiguous (B, N) rows, into buffers
    # of its own; the squared distance is summed x, y, z in turn, as a sum over the last
    # axis of (B, N, 3) sums them (a reduction over 3 values of a row is sequential), so the
    # samples are those of (xyz - centre).square().sum(-1), with fewer passes over memory
    coords = xyz.transpose(1, 2).contiguous()  # (B, 3, N)
    d, t = torch.empty_like(nearest), torch.empty_like(nearest)  # (B, N) each
    for i in range(m):  # m steps, each vectorised over the batch and the points
        idx[:, i] = far
        centre = coords[rows, :, far].unsqueeze(-1)  # (B, 3, 1)
        torch.sub(coords[:, 0], centre[:, 0], out=d).square_()
        for axis in (1, 2):
            d.add_(torch.sub(coords[:, axis], centre[:, axis], out=t).square_())
        torch.minimum(nearest, d, out=nearest)
        far = nearest.argmax(-1)  # the first of equal maxima
    return idx


def knn(query: Tensor, xyz: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` points of ``xyz`` (B, N, 3) nearest to each of ``query`` (B, M, 3),
    nearest first: (B, M, k)."""
    N = xyz.shape[1]
    if not 1 <= k <= N:
        raise ValueError(f"k={k} neighbours asked of sets of N={N} points; use 1 <= k <= N")
    d = torch.cdist(query, xyz)  # (B, M, N)
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


class SetReducer(nn.Module):
    """The paper's point reducer on a set: evenly spread anchors, each with its k nearest
    points, whose features and offsets to the anchor are concatenated and projected linearly.

    On a grid, with the k points of a window in a fixed order, this is the strided convolution
    of chapter 1; on a set, the neighbours are ordered by distance, nearest first.

    (B, N, 3), (B, N, C) -> anchors (B, M, 3), features (B, M, out_chans), M = N // reduction.
    """

    def __init__(self, *, in_chans: int, out_chans: int, k: int, reduction: int = 2):
        super().__init__()
        self.k, self.reduction = k, reduction
        self.proj = nn.Linear(k * (in_chans + 3), out_chans)

    def forward(self, xyz: Tensor, x: Tensor, ordered: bool = False) -> tuple[Tensor, Tensor]:
        """``ordered``: ``xyz`` is a farthest point sample in its order (as this reducer's own
        anchors are), so that its first M points are the anchors (see
        :func:`farthest_point_sample`). The anchors come out in that order."""
        B, N, _ = xyz.shape
        M = max(N // self.reduction, 1)
        anchors = gather(xyz, farthest_point_sample(xyz, M, ordered=ordered))  # (B, M, 3)
        near = knn(anchors, xyz, self.k)  # (B, M, k)
        offsets = gather(xyz, near) - anchors.unsqueeze(2)  # (B, M, k, 3)
        grouped = torch.cat([gather(x, near), offsets], dim=-1)  # (B, M, k, C + 3)
        return anchors, self.proj(grouped.flatten(2))  # (B, M, out_chans)

    def extra_repr(self) -> str:
        return f"k={self.k}, reduction={self.reduction}"
