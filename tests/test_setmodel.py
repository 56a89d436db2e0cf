"""coc_points: the image family's block on neighbourhoods of a set."""

import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the models)
from cocs.cluster import context_cluster_sets
from cocs.pointsets import farthest_point_sample, gather, knn
from cocs.setmodel import SetCluster


def test_coc_points_classifies_point_clouds_and_every_parameter_learns():
    model = timm.create_model("coc_points", num_classes=10)
    n_params = sum(p.numel() for p in model.parameters())
    assert 2_000_000 < n_params < 3_000_000, "about coc_cifar's size"
    out = model(torch.randn(2, 512, 3))
    assert out.shape == (2, 10) and out.isfinite().all()
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert "coc_points" not in cocs.variants(), "the image variants only"
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        model(torch.randn(2, 3, 256))


def test_one_region_holding_every_point_is_the_operation_on_the_whole_set():
    torch.manual_seed(0)
    mixer = SetCluster(dim=8, heads=2, head_dim=4, regions=1, centres=3, overlap=1.0)
    xyz, x = torch.randn(2, 20, 3), torch.randn(2, 20, 8)
    members = knn(xyz[:, :1], xyz, 20)  # (2, 1, 20): the single region, nearest first
    group_xyz = gather(xyz, members).flatten(0, 1)
    want = context_cluster_sets(
        gather(mixer.f(x), members).flatten(0, 1),
        gather(mixer.v(x), members).flatten(0, 1),
        heads=2,
        centre_index=farthest_point_sample(group_xyz, 3),
        sim_alpha=mixer.sim_alpha,
        sim_beta=mixer.sim_beta,
    ).out  # (2, 20, 8) in the region's order
    back = torch.empty_like(want).scatter_(1, members[:, 0].unsqueeze(-1).expand_as(want), want)
    torch.testing.assert_close(mixer(xyz, x), mixer.proj(back))


def test_overlapping_regions_average_what_they_dispatch_and_maps_are_recorded():
    torch.manual_seed(1)
    mixer = SetCluster(dim=8, heads=2, head_dim=4, regions=4, centres=2, overlap=2.0)
    mixer.keep_assignment = True
    xyz, x = torch.randn(3, 32, 3), torch.randn(3, 32, 8)
    out = mixer(xyz, x)
    assert out.shape == (3, 32, 8) and out.isfinite().all()
    a = mixer.last_assignment  # (3, heads, 32): region * centres + centre, -1 outside
    assert a.shape == (3, 2, 32) and a.max() < 4 * 2 and (a >= -1).all()
    assert (a >= 0).float().mean() > 0.5, "most points lie in some region"


def test_a_stage_groups_once_and_computes_what_each_block_grouping_for_itself_would():
    torch.manual_seed(2)
    model = timm.create_model("coc_points", num_classes=5, layer_scale=0.5).eval()
    xyz = torch.randn(2, 512, 3)

    def each_block_groups(xyz):  # the forward pass with every block sampling its own regions
        xyz, x = model.stem(xyz, xyz)
        for i, blocks in enumerate(model.stages):
            for block in blocks:
                x = block(xyz, x)  # regions=None: the mixer samples and groups by itself
            if i < len(model.reducers):
                xyz, x = model.reducers[i](xyz, x)
        x = torch.nn.functional.group_norm(x.transpose(1, 2), 1, model.norm.weight, model.norm.bias)
        return model.head(x.mean(-1))

    calls = []
    for blocks in model.stages:
        for block in blocks:
            block.token_mixer.register_forward_pre_hook(
                lambda m, args: calls.append(args[2] is not None)
            )
    with torch.no_grad():
        torch.testing.assert_close(model(xyz), each_block_groups(xyz))
    n_blocks = sum(len(blocks) for blocks in model.stages)
    assert calls[:n_blocks] == [True] * n_blocks, "the model hands each mixer its stage's regions"
    assert calls[n_blocks:] == [False] * n_blocks
