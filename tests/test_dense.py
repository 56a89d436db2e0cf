"""Dense heads on timm features_only backbones: Semantic FPN on a Context Cluster and on a
ResNet peer, and torchvision's Faster and Mask R-CNN with a Context Cluster through an FPN."""

import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the models)
from cocs.dense import SemanticFPN, build_detector


@pytest.mark.parametrize("name", ["coc_micro", "resnet18"])
def test_semantic_fpn_takes_any_features_only_backbone(name):
    backbone = timm.create_model(name, features_only=True, out_indices=(-4, -3, -2, -1))
    model = SemanticFPN(backbone, num_classes=12, fpn_dim=32, head_dim=32)
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 12, 64, 96) and out.isfinite().all()
    torch.nn.functional.cross_entropy(
        out, torch.randint(0, 12, (2, 64, 96)), ignore_index=11
    ).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_side_the_regions_do_not_divide_gets_the_clustering_error():
    backbone = timm.create_model("coc_micro", features_only=True)
    model = SemanticFPN(backbone, num_classes=3, fpn_dim=32, head_dim=32)
    with pytest.raises(ValueError, match="cannot be split into fold_w x fold_h"):
        model(torch.randn(1, 3, 66, 64))


@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_detectors_train_and_predict_on_a_context_cluster(kind):
    torch.manual_seed(0)
    backbone = timm.create_model("coc_micro", features_only=True)
    model = build_detector(backbone, num_classes=3, kind=kind, min_size=64, max_size=96)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = []
    for img in images:
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
        t = {"boxes": boxes, "labels": torch.tensor([1])}
        if kind == "mask":
            mask = torch.zeros(1, *img.shape[-2:], dtype=torch.uint8)
            mask[0, 6:50, 4:40] = 1
            t["masks"] = mask
        targets.append(t)
    model.train()
    losses = model(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert expected | ({"loss_mask"} if kind == "mask" else set()) == set(losses)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    assert ("masks" in out[0]) == (kind == "mask")
