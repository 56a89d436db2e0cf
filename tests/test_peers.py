"""The CIFAR peers of coc_cifar: registered by `import cocs`, of similar size, trainable."""

import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the peers)
from cocs.weights import shipped

PEERS = ["resnet_cifar", "vit_cifar"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PEERS)
def test_registered_and_similar_in_size(name):
    assert timm.is_model(name)
    model = timm.create_model(name)
    assert 1.5e6 <= n_params(model) <= 4e6, f"{name}: {n_params(model):,} parameters"
    ratio = n_params(model) / n_params(timm.create_model("coc_cifar"))
    assert 0.7 < ratio < 1.4, f"{name} is {ratio:.2f}x the size of coc_cifar"


@pytest.mark.parametrize("name", PEERS)
def test_output_shape_and_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, drop_path_rate=0.1).train()
    logits = model(torch.randn(2, 3, 32, 32))  # (B, classes)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    # (ResNet's last norm of each block starts at zero, so some gradients are zero at first.)
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.get_classifier().weight.grad.abs().sum() > 0


def test_resnet_keeps_cifar_resolution():
    model = timm.create_model("resnet_cifar").eval()
    stem = model.conv1
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    feats = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert [f.shape[-1] for f in feats] == [32, 32, 16, 8, 4]  # stem, then the four stages


def test_vit_sees_4x4_patches():
    model = timm.create_model("vit_cifar")
    assert model.patch_embed.grid_size == (8, 8)  # 64 tokens of 4x4 pixels
    assert model.global_pool == "avg"


@pytest.mark.parametrize("name", PEERS)
def test_pretrained_without_shipped_weights_says_so(name, monkeypatch):
    from cocs import weights

    monkeypatch.setattr(weights, "manifest", lambda folder=None: {})  # a package without them
    with pytest.raises(ValueError, match=f"no trained weights ship for {name}"):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize("name", [n for n in PEERS if shipped(n) is not None])
def test_pretrained_peers_load_their_shipped_weights(name):
    fresh, trained = timm.create_model(name), timm.create_model(name, pretrained=True)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), trained.state_dict().values(), strict=True)
    )
