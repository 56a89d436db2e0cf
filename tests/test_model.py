"""Every registered variant: shapes, finite outputs, gradients; the timm interface; errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import cocs
from cocs import capture_assignments, create_model
from cocs.model import Mlp

VARIANTS = cocs.variants()


def _small_input(model, batch=2):
    """A small input the variant's folds divide: 64 px for most ImageNet variants."""
    size = model.pretrained_cfg["input_size"][-1]
    size = 112 if model.pretrained_cfg["architecture"] == "coc_tiny2" else min(size, 64)
    return torch.randn(batch, 3, size, size)


def test_every_variant_is_registered():
    assert set(VARIANTS) >= set(cocs.OFFICIAL_VARIANTS) | {
        "coc_cifar",
        "coc_imagenette",
        "coc_micro",
    }


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains(name):
    model = timm.create_model(name, num_classes=7).train()
    x = _small_input(model)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 6])).backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()
    ]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"parameters whose gradient is zero: {zero[:5]}"


def test_small_image_variants_are_sized_for_them():
    for name, lo, hi in (("coc_cifar", 1e6, 3e6), ("coc_imagenette", 1e6, 6e6)):
        n = sum(p.numel() for p in timm.create_model(name).parameters())
        assert lo <= n <= hi, f"{name} has {n} parameters"


def test_features_only_gives_four_stages():
    model = timm.create_model("coc_tiny", features_only=True)
    feats = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == model.feature_info.channels() == [32, 64, 196, 320]
    assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    only = timm.create_model("coc_micro", features_only=True, out_indices=(1, 3))
    assert [f.shape[1] for f in only(torch.randn(1, 3, 32, 32))] == [16, 32]


def test_reset_classifier_and_pre_logits():
    model = timm.create_model("coc_micro")
    model.reset_classifier(5)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 5)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 32)
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)


def test_drop_path_is_random_in_training_only():
    model = timm.create_model("coc_micro", drop_path_rate=0.5, layer_scale_init_value=1.0)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_layer_scale_off_has_no_layer_scale():
    model = timm.create_model("coc_micro", use_layer_scale=False)
    assert not [n for n, _ in model.named_parameters() if "layer_scale" in n]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_channels_last_and_lean_mlp_compute_what_nchw_autograd_computes():
    torch.manual_seed(0)
    fast = timm.create_model("coc_micro", layer_scale_init_value=0.5, lean_mlp=True)
    slow = timm.create_model("coc_micro", layer_scale_init_value=0.5, channels_last=False)
    slow.load_state_dict(fast.state_dict())
    for m in slow.modules():
        if hasattr(m, "lean"):
            m.lean = False
    x = torch.randn(3, 3, 32, 32)
    y = torch.tensor([1, 2, 3])
    for m in (fast, slow):
        F.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(fast(x), slow(x))
    for (n, a), b in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=n, atol=1e-6, rtol=1e-4)


def test_lean_mlp_is_chosen_per_model():
    def lean(model):
        return {m.lean for m in model.modules() if isinstance(m, Mlp)}

    def per_stage(model):
        return [lean(model.network[i]) for i in range(0, len(model.network), 2)]

    # 224 px: the first two stages hold most of the activations and recompute; the later
    # stages store their few points' hidden layers
    assert per_stage(timm.create_model("coc_tiny")) == [{True}, {True}, {False}, {False}]
    assert per_stage(timm.create_model("coc_tiny", lean_mlp=(False, True, True, False))) == [
        {False},
        {True},
        {True},
        {False},
    ]
    with pytest.raises(ValueError, match="lean_mlp=.*one value per stage"):
        timm.create_model("coc_tiny", lean_mlp=(True, False))
    assert lean(timm.create_model("coc_cifar")) == {False}  # 32 px: speed matters
    assert lean(timm.create_model("coc_cifar", lean_mlp=True)) == {True}


def test_capture_assignments_reads_the_cluster_op():
    model = timm.create_model("coc_micro").eval()
    x = torch.randn(2, 3, 32, 32)
    with capture_assignments(model) as found:
        model(x)
    assert list(found) == [f"network.{2 * i}.0.token_mixer" for i in range(4)]
    first = found["network.0.0.token_mixer"]
    assert first.shape == (2, 2, 16, 16) and first.dtype == torch.long
    assert first.max() < 2 * 2 * 4  # two folds per side, 2x2 centres per region
    # after the context the layers keep nothing
    assert all(m.last_assignment is None for m in model.modules() if hasattr(m, "last_assignment"))


def test_variant_positions_ablation_takes_colour_only():
    model = timm.create_model("coc_micro", use_positions=False)
    assert model.patch_embed.proj.in_channels == 3
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    none = timm.create_model("coc_micro", mixer="none")
    assert not [n for n, _ in none.named_parameters() if "token_mixer" in n]


def test_same_seed_same_model_and_output():
    def run():
        torch.manual_seed(3)
        model = timm.create_model("coc_micro")
        return model(torch.randn(2, 3, 32, 32))

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


# bad input ----------------------------------------------------------------------------------
def test_wrong_channel_count_is_named():
    model = timm.create_model("coc_micro")
    with pytest.raises(
        ValueError, match=r"expected images of shape \(B, 3, H, W\), got \(1, 4, 32, 32\)"
    ):
        model(torch.randn(1, 4, 32, 32))


def test_size_the_folds_do_not_divide_is_named():
    model = timm.create_model("coc_tiny")
    with pytest.raises(ValueError, match=r"50x50 feature map cannot be split into .* 8x8"):
        model(torch.randn(1, 3, 200, 200))


def test_unknown_model_name_lists_the_variants():
    with pytest.raises(ValueError, match=r"unknown model 'coc_tinny'; did you mean coc_tiny"):
        create_model("coc_tinny")
    assert isinstance(create_model("coc_micro"), cocs.ContextCluster)


def test_pretrained_without_shipped_weights_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="no trained weights ship for coc_tiny.*load_official"):
        timm.create_model("coc_tiny", pretrained=True)
