"""PointMLP-elite and its context-cluster variant: the release's parameter count, every
parameter learns, and the channels-last layers, with the grouping fused into the linear layer
after it, compute what the release's Conv1d layers do (cocs.bench.release_pointmlp, the
baseline of `make bench`)."""

import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the models)
from cocs.bench import paper_model, release_pointmlp
from cocs.pointmlp import PointCluster, PointMLP


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
        torch.testing.assert_close(model(xyz), release_pointmlp(model, xyz), rtol=1e-4, atol=1e-4)
    # and in training mode (batch statistics), the benchmark's baseline with shared weights
    # (8 shapes: the classifier's batch statistics over 2 would magnify rounding differences)
    model.train()
    baseline, xyz = paper_model(model), torch.randn(8, 64, 3)
    torch.manual_seed(1)  # the same dropout masks in the classifier
    ours = model(xyz)
    torch.manual_seed(1)
    torch.testing.assert_close(ours, baseline(xyz), rtol=1e-4, atol=1e-4)
