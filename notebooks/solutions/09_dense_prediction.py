# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Solutions: 9. Dense prediction: Context Cluster backbones for semantic segmentation
#
# Worked solutions to the exercises at the end of chapter 9. Each ends with the checks of its
# expected outcome. They need no data set and write no files.

# %% tags=["parameters"]
img_size = 128  # rows of the random scenes of exercise 1 (4:3)
backbone = "coc_imagenette"
peer = "resnet18_half"
label_side = 64  # side of the label map of exercise 2
void_share = 0.1  # share of void pixels in it
centres = "2,5,7"  # centres per side of a region in exercise 3
cost_size = 352  # rows of the scene of exercise 3 (352 x 480, the chapter's)
seed = 0
results_dir = "results"  # unused: the solutions write nothing

# %%
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import cocs  # noqa: F401  (registers semantic_fpn and the backbones)
from cocs.camvid import CLASSES
from cocs.train import mean_iou, segmentation_size

torch.manual_seed(seed)
C = len(CLASSES)  # 11 classes; label 11 is void

# %% [markdown]
# ## Exercise 1: One head, any backbone
#
# `semantic_fpn` on `coc_imagenette` and on `resnet18_half`, on two random scenes of
# `segmentation_size(128)`. *Expected:* logits of shape (2, 11, H, W) for both, and lateral
# layers that take the widths of the levels each backbone's `feature_info` declares: four each,
# at strides 4 to 32.

# %%
H, W = segmentation_size(img_size)
scenes = torch.randn(2, 3, H, W)  # (B, 3, H, W)
shapes, widths = {}, {}
for body in (backbone, peer):
    model = timm.create_model("semantic_fpn", backbone=body).eval()
    with torch.no_grad():
        shapes[body] = tuple(model(scenes).shape)
    declared = model.backbone.feature_info.channels()
    widths[body] = (declared, [conv.in_channels for conv in model.lateral])
    print(f"{body:<15} logits {shapes[body]}; stage widths {declared}, reductions "
          f"{model.backbone.feature_info.reduction()}")  # fmt: skip

# %% [markdown]
# The head never looks inside the backbone: it asks timm's `features_only` interface for the
# maps of the last four levels, whose widths and reductions `feature_info` declares (timm
# counts the ResNet's stem, at stride 2, as a level too; there the head would run on four
# times as many positions as at stride 4, where the paper's Semantic FPN starts), brings each
# to the same width with a 1x1 lateral convolution, adds the coarser levels to the finer
# ones, brings everything to the finest level's resolution,
# classifies every position, and upsamples the scores to the input's size. Any backbone whose
# levels halve the resolution from one to the next fits, which is how the chapter compares a
# Context Cluster and a ResNet through one head.

# %%
for body in shapes:
    assert shapes[body] == (2, C, H, W), shapes
    declared, lateral = widths[body]
    assert lateral == declared and len(declared) == 4, widths

# %% [markdown]
# ## Exercise 2: Mean IoU by hand
#
# A 64 x 64 label map of random classes 0-9 with some void pixels, a random prediction of
# classes 0-9; the confusion matrix of the non-void pixels by hand, each class's
# TP / (TP + FP + FN) and their mean, against `cocs.train.mean_iou`. *Expected:* agreement to
# 1e-9; class 10, in neither map, left out of the mean.

# %%
generator = torch.Generator().manual_seed(seed)
labels = torch.randint(0, 10, (label_side, label_side), generator=generator)
labels[torch.rand(label_side, label_side, generator=generator) < void_share] = C  # void
prediction = torch.randint(0, 10, (label_side, label_side), generator=generator)
valid = labels != C
confusion = torch.zeros(C, C, dtype=torch.long)  # (target, prediction)
for t, p in zip(labels[valid].tolist(), prediction[valid].tolist(), strict=True):
    confusion[t, p] += 1
by_hand = {}
for c in range(C):
    tp = confusion[c, c].item()
    fp, fn = confusion[:, c].sum().item() - tp, confusion[c, :].sum().item() - tp
    if tp + fp + fn:  # a class in neither map has no IoU
        by_hand[CLASSES[c]] = 100 * tp / (tp + fp + fn)
miou_by_hand = sum(by_hand.values()) / len(by_hand)
miou, iou = mean_iou(confusion)
print(f"{int(valid.sum())} non-void pixels; mean IoU by hand {miou_by_hand:.6f}%, "
      f"cocs.train.mean_iou {miou:.6f}%; {CLASSES[10]}: {iou[10].item()}")

# %% [markdown]
# Intersection over union is, for each class, the pixels both maps give it (TP) over the
# pixels either gives it (TP + FP + FN); void pixels count in neither. A class that occurs in
# neither the labels nor the prediction has 0 / 0: it is left out of the mean rather than
# counted as a failure (0) or a success (100), so the mean runs over the ten classes present.
# A random prediction of ten classes gets each about one pixel in nineteen right in this
# sense, which is why chance-level mean IoU is so low; the chapter's models are far above it.

# %%
assert abs(miou - miou_by_hand) < 1e-9
assert torch.isnan(iou[10]) and len(by_hand) == C - 1
for c, value in by_hand.items():
    assert abs(iou[CLASSES.index(c)].item() - value) < 1e-9

# %% [markdown]
# ## Exercise 3: Centres per region, and their cost
#
# MACs of `semantic_fpn` on `coc_imagenette` with 4, 25 and 49 centres per region on one
# 352 x 480 scene, split into the similarities (`bmm`) and the rest. *Expected:* the
# similarities grow in exact proportion to the centres, the rest not at all.

# %%
shape = (1, 3, *segmentation_size(cost_size))  # (1, 3, 352, 480)
cost = {}
for side in (int(c) for c in centres.split(",")):
    with torch.device("meta"):
        model = timm.create_model("semantic_fpn", backbone=backbone,
                                  backbone_kwargs={"proposal_w": side, "proposal_h": side})  # fmt: skip
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(torch.empty(shape))
    ops = {str(op).removeprefix("aten."): n / 2 for op, n in counter.get_flop_counts()["Global"].items()}
    similarity = ops.pop("bmm", 0.0)
    cost[side * side] = (similarity, sum(ops.values()))
    print(f"{side * side:>2} centres per region: similarities {similarity / 1e6:7.1f} M MACs, "
          f"the rest {sum(ops.values()) / 1e9:.3f} G MACs")  # fmt: skip
fewest, most = min(cost), max(cost)
growth = sum(cost[most]) / sum(cost[fewest])
print(f"{most} instead of {fewest} centres: the whole model x{growth:.3f}")

# %% [markdown]
# Each point is compared with the centres of its own region, so the similarity costs
# points x centres per region x channels, linear in the centres; nothing else in the backbone
# depends on them (centres are pooled, not learned), and the FPN head never sees them. Even
# with twelve times the centres, the similarities remain a small part of the model's MACs.
# That fits the paper's report (Semantic FPN on ADE20K, `cocs/paper_numbers.yaml`) that 4, 25
# or 49 centres give about the same mean IoU; chapter 9 measures what they cost here in
# epochs of a fixed budget, and finds 49 centres lower than 4 (`comparisons.csv`). The
# scatter-adds of aggregation and dispatch, which the counter does not see, grow with the
# points, not with the centres.

# %%
for m, (similarity, rest) in cost.items():
    assert similarity * fewest == cost[fewest][0] * m, (m, similarity)
    assert rest == cost[fewest][1]
assert growth < 1.2, growth
