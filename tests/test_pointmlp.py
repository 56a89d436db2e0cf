"""PointMLP-elite and its context-cluster variant: the release's parameter count, every
parameter learns, and the channels-last layers, with the grouping fused into the linear layer
after it, compute what the release's Conv1d layers do (cocs.bench.release_pointmlp, the
baseline of `make bench`)."""

import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the models)
from cocs.bench import paper_model, release_pointmlp
from cocs.pointmlp import PointCluster, PointMLP, group_spread
from cocs.pointsets import gather


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
    theirs = baseline(xyz)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # and the same gradients (the grouping's deviation included, which is computed without
    # forming the groups), to float32 rounding of the largest gradient: batch statistics over
    # 8 shapes make a few of them large. Not with context clusters: their hard assignment can
    # flip where two centres are nearly equally similar, and rounding differs between the two
    # formulations, so a flipped point changes the gradient by more than rounding
    if coc:
        return
    weight = torch.randn_like(ours)
    (ours * weight).sum().backward()
    (theirs * weight).sum().backward()
    release = dict(baseline.model.named_parameters())
    scale = max(float(p.grad.abs().max()) for p in release.values())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, release[name].grad, rtol=0, atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_group_spread_is_the_deviation_of_the_centred_groups(offset):
    """Without forming the groups, in float32 even when the features sit far from zero."""
    torch.manual_seed(0)
    B, N, S, k, d = 3, 50, 20, 6, 5
    x = (torch.randn(B, N, d, dtype=torch.float64) + offset).requires_grad_()
    idx, near = torch.randint(N, (B, S)), torch.randint(N, (B, S, k))
    centred = gather(x, near) - gather(x, idx).unsqueeze(2)
    expected = centred.reshape(B, -1).std(dim=-1)
    got = group_spread(x.float(), idx, near)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    x32 = x.detach().float().requires_grad_()
    group_spread(x32, idx, near).sum().backward()
    (grad,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(x32.grad.double(), grad, rtol=1e-3, atol=1e-6)


def test_stages_without_local_blocks_still_build_and_run():
    """pre_blocks=0: the max over neighbours takes the transfer layer's output directly."""
    model = PointMLP(num_classes=5, points=64, k=8, pre_blocks=(0, 1, 0, 1))
    out = model(torch.randn(2, 64, 3))
    assert out.shape == (2, 5) and out.isfinite().all()
