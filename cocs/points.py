"""Images as sets of points: colour plus normalised position.

This is the one place where an image becomes points and back. The coordinate convention is
the authors' release: two position channels in [-0.5, 0.5], the first varying along dim 2 of
an NCHW tensor (rows), the second along dim 3 (columns), built with
``torch.meshgrid(..., indexing="ij")``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor


def _axis(n: int, *, device=None, dtype=None) -> Tensor:
    """Positions of ``n`` points along one axis, evenly spaced in [-0.5, 0.5]."""
    if n == 1:  # the release divides by (n - 1); a single point sits at the centre
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.arange(n, device=device, dtype=dtype) / (n - 1.0) - 0.5


def coordinates(height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """Normalised positions of an image's pixels.

    Returns (2, height, width): channel 0 is the row position, channel 1 the column position.
    """
    rows = _axis(height, device=device, dtype=dtype)
    cols = _axis(width, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=0)


def with_positions(images: Tensor) -> Tensor:
    """Append the two position channels to a batch of images: (B, C, H, W) -> (B, C + 2, H, W)."""
    if images.dim() != 4:
        raise ValueError(
            f"expected a batch of images of shape (B, C, H, W), got shape {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0)"
        )
    B, _, H, W = images.shape
    pos = coordinates(H, W, device=images.device, dtype=images.dtype)
    return torch.cat([images, pos.unsqueeze(0).expand(B, -1, -1, -1)], dim=1)


def image_to_points(images: Tensor) -> tuple[Tensor, Tensor]:
    """Turn images into point sets.

    Args:
        images: (B, C, H, W).
    Returns:
        features (B, N, C) and coordinates (B, N, 2) with N = H * W, points in row-major order.
    """
    pts = with_positions(images)  # (B, C + 2, H, W)
    pts = rearrange(pts, "b c h w -> b (h w) c")
    return pts[..., :-2], pts[..., -2:]


def points_to_image(features: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`image_to_points` for features: (B, N, C) -> (B, C, H, W)."""
    B, N, _ = features.shape
    if N != height * width:
        raise ValueError(
            f"{N} points cannot fill a {height}x{width} grid ({height * width} points); "
            "pass the height and width of the image the points came from"
        )
    return rearrange(features, "b (h w) c -> b c h w", h=height, w=width)
