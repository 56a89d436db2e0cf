"""PointMLP-elite and its context-cluster variant: the release's parameter count, every
parameter learns, and the channels-last layers compute what the release's Conv1d layers do."""

import pytest
import timm
import torch
import torch.nn.functional as F

import cocs  # noqa: F401  (registers the models)
from cocs.pointmlp import LinearBN, PointCluster, PointMLP, ResBlock
from cocs.pointsets import farthest_point_sample


def test_the_elite_model_has_the_release_parameter_count():
    assert sum(p.numel() for p in timm.create_model("pointmlp_elite").parameters()) == 716_232
    coc = timm.create_model("pointmlp_elite_coc")
    blocks = [m for m in coc.modules() if isinstance(m, PointCluster)]
    assert len(blocks) == 5, "one before each of the (1, 1, 2, 1) local residual blocks"
    extra = sum(3 * b.fc1.in_features * b.head_dim + 2 * b.head_dim + b.fc1.in_features + 2
                for b in blocks)  # fmt: skip
    assert sum(p.numel() for p in coc.parameters()) == 716_232 + extra


@pytest.mark.parametrize("name", ["pointmlp_elite", "pointmlp_elite_coc"])
def test_shapes_and_every_parameter_learns(name):
    model = timm.create_model(name, num_classes=10, points=128, k=8)
    out = model(torch.randn(3, 128, 3))
    assert out.shape == (3, 10) and out.isfinite().all()
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        model(torch.randn(3, 3, 128))


def cbr(layer: LinearBN, x: torch.Tensor) -> torch.Tensor:
    """The release's Conv1d(kernel 1, no bias) + BatchNorm1d (+ ReLU) on (B', C, L)."""
    y = F.conv1d(x, layer.linear.weight.unsqueeze(-1))
    bn = layer.bn
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return y.relu() if isinstance(layer.act, torch.nn.ReLU) else y


def res(block: ResBlock, x: torch.Tensor) -> torch.Tensor:
    return (cbr(block.net2, cbr(block.net1, x)) + x).relu()


def release_forward(model: PointMLP, xyz: torch.Tensor) -> torch.Tensor:
    """The release's layout: features (B, C, N), groups (B * S, C, k), Conv1d layers."""
    x = cbr(model.embedding, xyz.transpose(1, 2))  # (B, C, N)
    for stage in model.stages:
        g = stage.grouper
        B, C, N = x.shape
        pts = x.transpose(1, 2)  # (B, N, C)
        idx = farthest_point_sample(xyz, g.anchors)  # (B, S)
        new_xyz = torch.stack([xyz[b, idx[b]] for b in range(B)])
        anchor = torch.stack([pts[b, idx[b]] for b in range(B)])  # (B, S, C)
        sq = (new_xyz.unsqueeze(2) - xyz.unsqueeze(1)).square().sum(-1)  # (B, S, N)
        near = sq.topk(g.k, dim=-1, largest=False).indices  # (B, S, k)
        grouped = torch.stack([pts[b][near[b]] for b in range(B)])  # (B, S, k, C)
        centred = grouped - anchor.unsqueeze(2)
        std = torch.std(centred.reshape(B, -1), dim=-1).view(B, 1, 1, 1)
        grouped = g.affine_alpha * centred / (std + 1e-5) + g.affine_beta
        grouped = torch.cat([grouped, anchor.unsqueeze(2).expand_as(grouped)], dim=-1)
        S, k = grouped.shape[1:3]
        y = cbr(stage.transfer, grouped.reshape(B * S, k, -1).transpose(1, 2))  # (B*S, C, k)
        for block in stage.pre:
            if isinstance(block, ResBlock):
                y = res(block, y)
            else:
                y = block(y.transpose(1, 2)).transpose(1, 2)
        y = F.adaptive_max_pool1d(y, 1).view(B, S, -1).transpose(1, 2)  # (B, C, S)
        for block in stage.pos:
            y = res(block, y)
        x, xyz = y, new_xyz
    return model.classifier(F.adaptive_max_pool1d(x, 1).flatten(1))


@pytest.mark.parametrize("coc", [False, True])
def test_channels_last_layers_compute_the_release_formulation(coc):
    torch.manual_seed(0)
    model = PointMLP(num_classes=7, points=64, k=8, coc=coc).eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    xyz = torch.randn(2, 64, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(xyz), release_forward(model, xyz), rtol=1e-4, atol=1e-4)
