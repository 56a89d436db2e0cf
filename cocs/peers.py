"""Two CIFAR peers of ``coc_cifar`` with a similar parameter count, registered with timm.

``resnet_cifar``: a timm ResNet of BasicBlocks with the usual CIFAR stem (one 3x3 stride-1
convolution, no max-pool), so the four stages see 32, 16, 8 and 4 pixels per side.
``vit_cifar``: a timm VisionTransformer on 4x4 patches of a 32x32 image (8x8 = 64 tokens).
``resnet18_half``: ResNet-18 at half width with the ImageNet stem (stride 4), the peer of
``coc_imagenette`` on photographs and of its backbone in dense prediction.
Each register function holds only the variant's hyper-parameters; the builders below do the rest.
"""

from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["resnet18_half", "resnet_cifar", "vit_cifar"]


def _resnet(*, layers: tuple[int, ...], channels: tuple[int, ...], **kwargs) -> ResNet:
    """A BasicBlock ResNet whose stem keeps the 32x32 resolution (3x3 stride-1 conv, no pool)."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's, unused here
        kwargs.pop(key, None)
    model = ResNet(
        block=BasicBlock,
        layers=layers,
        channels=channels,
        # A "deep" stem of width channels[0] // 2 ends at channels[0]; its three convolutions
        # (the first of stride 2) are then replaced by the single CIFAR convolution below.
        stem_type="deep",
        stem_width=channels[0] // 2,
        **kwargs,
    )
    # CIFAR stem: one 3x3 stride-1 convolution, no max-pool; the strides recorded for features
    # (stem, then the four stages) follow.
    model.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    for info, reduction in zip(model.feature_info, (1, 1, 2, 4, 8), strict=True):
        info["reduction"] = reduction
    return model


def _vit(**kwargs) -> VisionTransformer:
    """A VisionTransformer built from keyword hyper-parameters (timm's defaults otherwise)."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return VisionTransformer(**kwargs)


def _shipped(name: str, model: nn.Module, pretrained: bool) -> nn.Module:
    """``model``, with the weights that ship with cocs for ``name`` when ``pretrained``."""
    if pretrained:
        from .weights import load_shipped

        load_shipped(model, name)
    return model


@register_model
def resnet_cifar(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 layout at half width (32-256 channels) with a CIFAR stem; about 2.8M params."""
    model = _resnet(
        **{"layers": (2, 2, 2, 2), "channels": (32, 64, 128, 256), "num_classes": 10} | kwargs
    )
    return _shipped("resnet_cifar", model, pretrained)


@register_model
def vit_cifar(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT on 4x4 patches of 32x32 images: 192 channels, 6 blocks, 3 heads; about 2.7M params."""
    model = _vit(
        **{
            "img_size": 32,
            "patch_size": 4,
            "embed_dim": 192,
            "depth": 6,
            "num_heads": 3,
            "mlp_ratio": 4.0,
            "global_pool": "avg",
            "class_token": False,
            "num_classes": 10,
        }
        | kwargs
    )
    return _shipped("vit_cifar", model, pretrained)


@register_model
def resnet18_half(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 layout at half width (32-256 channels) with a deep stem of stride 4 and a
    max-pool, as for ImageNet; about 2.8M params, like ``coc_imagenette``'s 3.0M."""
    from timm.models.resnet import _create_resnet

    args = dict(block=BasicBlock, layers=(2, 2, 2, 2), channels=(32, 64, 128, 256),
                stem_width=32, stem_type="deep", num_classes=10)  # fmt: skip
    model = _create_resnet("resnet18_half", pretrained=False, **(args | kwargs))
    return _shipped("resnet18_half", model, pretrained)
