"""Dense prediction on any timm ``features_only`` backbone: Semantic FPN, and torchvision's
Faster and Mask R-CNN.

The paper evaluates its backbones on ADE20K with Semantic FPN and on COCO with Mask R-CNN.
Both heads here take the four stage outputs of a backbone built with ``features_only=True``,
so a Context Cluster and a ResNet peer are compared through the same head (the pattern of
torchvision's ``BackboneWithFPN``). Input sides must let every stage's map be cut into its
regions: with the usual stem of stride 4 and regions (8, 4, 2, 1), multiples of 32 do; a side
that does not gets the clustering's error naming the sizes (``cocs.cluster``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn

__all__ = [
    "FPNBackbone",
    "SemanticFPN",
    "build_detector",
    "semantic_fpn",
    "shown_images",
    "shown_key",
]


def shown_images(test_images: int) -> list[int]:
    """The test images chapter 9's figures show: the first and the middle one."""
    return [0, test_images // 2]


def shown_key(run: Mapping) -> dict:
    """What chapter 9's figures draw from a finished segmentation run (kept in its
    ``shown.npz``, :func:`cocs.runs.write_kept`) depends on: the run's model, the test images
    shown (the first and the middle one), their size and the test set."""
    n = run["test_images"]
    return {"fingerprint": run["fingerprint"], "shown": shown_images(n),
            "img_size": run["config"]["img_size"], "test_images": n}  # fmt: skip


def _conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(32 if cout % 32 == 0 else 1, cout),
        nn.ReLU(inplace=True),
    )  # fmt: skip


class SemanticFPN(nn.Module):
    """Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019), the head of
    the paper's ADE20K results: lateral 1x1 convolutions bring the four stage outputs to
    ``fpn_dim`` channels, a top-down pathway adds each upsampled coarser level to the finer
    one, 3x3 convolutions smooth them; each level is then brought to the finest level's
    resolution by (3x3 conv, GroupNorm, ReLU, 2x upsampling) steps, the levels are summed, and
    a 1x1 convolution classifies every pixel, upsampled to the input.

    (B, 3, H, W) -> (B, num_classes, H, W) logits.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, fpn_dim: int = 128,
                 head_dim: int = 64):  # fmt: skip
        super().__init__()
        info = backbone.feature_info
        channels, reductions = info.channels(), info.reduction()
        if len(channels) < 2 or any(
            b != 2 * a for a, b in zip(reductions, reductions[1:], strict=False)
        ):
            raise ValueError(
                f"SemanticFPN needs a features_only backbone whose levels halve the resolution "
                f"each time; this one has reductions {reductions}"
            )  # fmt: skip
        self.backbone = backbone
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_dim, 1) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1) for _ in channels)
        self.scale_heads = nn.ModuleList()
        for level in range(len(channels)):  # level i is 2^i times coarser than level 0
            steps = [_conv_gn_relu(fpn_dim if j == 0 else head_dim, head_dim)
                     for j in range(max(level, 1))]  # fmt: skip
            self.scale_heads.append(nn.Sequential(*steps))
        self.classifier = nn.Conv2d(head_dim, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        feats = self.backbone(x)  # [(B, C_i, H / r_i, W / r_i)]
        laterals = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        levels = [conv(f) for conv, f in zip(self.smooth, laterals, strict=True)]
        out = 0
        for level, (head, f) in enumerate(zip(self.scale_heads, levels, strict=True)):
            for step in head:
                f = step(f)
                if level > 0:
                    f = F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False)
            out = out + F.interpolate(f, size=levels[0].shape[-2:], mode="bilinear",
                                      align_corners=False)  # fmt: skip
        logits = self.classifier(out)
        return F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)


class FPNBackbone(nn.Module):
    """A ``features_only`` backbone with torchvision's FPN (and its extra pooled level) on top,
    in the form torchvision's detectors take: ``out_channels`` and an OrderedDict of maps."""

    def __init__(self, backbone: nn.Module, out_channels: int = 256):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = backbone
        self.fpn = FeaturePyramidNetwork(
            backbone.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_detector(
    backbone: nn.Module, num_classes: int, *, kind: str = "mask", min_size: int = 800,
    max_size: int = 1333,
) -> nn.Module:  # fmt: skip
    """torchvision's Faster R-CNN (``kind="faster"``) or Mask R-CNN (``"mask"``) on a
    ``features_only`` backbone through an FPN. ``num_classes`` counts the background (COCO:
    91). Images are resized as torchvision does and padded to multiples of 32, which the
    region partition of the Context Cluster variants divides."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN

    if kind not in ("faster", "mask"):
        raise ValueError(f"kind={kind!r}: expected 'faster' or 'mask'")
    cls = MaskRCNN if kind == "mask" else FasterRCNN
    return cls(FPNBackbone(backbone), num_classes=num_classes, min_size=min_size,
               max_size=max_size)  # fmt: skip


@register_model
def semantic_fpn(
    pretrained: bool = False, *, backbone: str = "coc_imagenette", backbone_kwargs=None,
    num_classes: int = 11, fpn_dim: int = 128, head_dim: int = 64, drop_path_rate: float = 0.0,
    **kwargs,
) -> SemanticFPN:  # fmt: skip
    """Semantic FPN on the last four levels of ``backbone``, strides 4 to 32 (any timm name;
    ``backbone_kwargs`` are its arguments, such as ``{"proposal_w": 5, "proposal_h": 5}`` for
    25 centres per region).
    ``pretrained=True`` starts the backbone from the weights that ship with cocs for it."""
    import timm

    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's
        kwargs.pop(key, None)
    if kwargs:
        raise TypeError(f"semantic_fpn got unknown arguments {sorted(kwargs)}")
    extra = dict(backbone_kwargs or {})
    if drop_path_rate:
        extra["drop_path_rate"] = drop_path_rate
    # the last four levels, strides 4 to 32 as in the paper's Semantic FPN: a ResNet's stem
    # (stride 2) is a level of its own in timm, which the head would otherwise run at
    body = timm.create_model(backbone, pretrained=pretrained, features_only=True,
                             out_indices=(-4, -3, -2, -1), **extra)  # fmt: skip
    return SemanticFPN(body, num_classes, fpn_dim=fpn_dim, head_dim=head_dim)
