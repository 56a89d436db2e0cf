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
# # 1. An image as a set of points
#
# *Terms such as point, centre, region, head or dispatch are defined in the
# [glossary](../GLOSSARY.md).*
#
# **What does it mean to treat an image as a set of points, and what does the network do to
# that set?** Context Clusters (Ma et al., ICLR 2023) start from one claim: an image need not be
# a grid of pixels (as for a ConvNet) or a sequence of patches (as for a ViT); it can be an
# *unordered set of points*, each point carrying its colour and its position, five numbers in
# all. The network then shrinks the set with *point reducers*, which in the paper's
# description pick evenly spaced anchors, concatenate the nearest points around each and
# project them linearly; on a regular grid, it notes, this is a strided convolution.
#
# This chapter makes both statements concrete on a real photograph:
#
# 1. a photo becomes a set of 5-D points, and back, exactly;
# 2. the coordinate convention is checked in code;
# 3. the gather-concatenate-project description of the point reducer is written out by hand and
#    shown equal to the model's convolutions;
# 4. the number of points and channels in each stage of Context-Cluster-Ti at 224 x 224 is read
#    off the model itself.
#
# It writes, under `results/01_image_as_points/`: `points.csv` (the photo's point set),
# `points_per_stage.csv`, and the figures `point_cloud.png`, `points_2d.png` and
# `points_per_stage.png`.

# %% tags=["parameters"]
img_size = 64  # width of the photo in pixels; the height follows its aspect ratio
model_name = "coc_tiny"  # the model whose point reducers and stages we inspect
model_size = 224  # side of the square input for the points-per-stage table
seed = 0  # the model's random initial weights (the identities below hold for any weights)
results_dir = "results"

# %%
import matplotlib.cbook
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

import cocs
from cocs.handbook import results_path, save_figure, write_csv
from cocs.points import image_to_points, points_to_image

out = results_path(results_dir, "01_image_as_points")
torch.manual_seed(seed)

# %% [markdown]
# ## A photo, offline
#
# The photo is the portrait of Grace Hopper that ships with matplotlib's sample data (a
# public-domain U.S. Navy photograph), so the chapter needs no download. We shrink it to a few
# thousand pixels, keeping its aspect ratio: the image is taller than wide, so any mix-up of
# rows and columns below would show up as a wrong shape, not pass silently.

# %%
photo_file = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
photo = Image.open(photo_file).convert("RGB")
W = img_size
H = round(img_size * photo.height / photo.width)
small = photo.resize((W, H), Image.Resampling.BICUBIC)  # PIL sizes are (width, height)
image = torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).float() / 255  # (3, H, W)
image = image.unsqueeze(0)  # (B, 3, H, W), B = 1
print(f"{photo.height} x {photo.width} photo (H x W) -> {H} x {W} image")

# %% [markdown]
# ## From pixels to points
#
# Each pixel becomes one point: its three colour values, plus its position, two numbers in
# $[-0.5, 0.5]$. The paper writes the result as $P \in \mathbb{R}^{5 \times N}$ with
# $N = H W$. `cocs.points.image_to_points` is the one place in the library where this happens;
# it returns the colours and the positions separately.

# %%
features, coords = image_to_points(image)  # (B, N, 3), (B, N, 2)
points = torch.cat([features, coords], dim=-1)  # (B, N, 5): r, g, b, row, column
B, N, D = points.shape
assert (B, N, D) == (1, H * W, 5)
print(f"B = {B}, N = {N} points (= {H} x {W}), D = {D} numbers per point")

# %% [markdown]
# The positions follow the authors' release: the first position channel varies along the
# rows (dim 2 of an NCHW tensor), the second along the columns, and both run exactly from
# $-0.5$ at one edge to $+0.5$ at the other. The checks below pin that down: the first
# coordinate is the same across a row and grows down the image; the second is the same down a
# column and grows to the right.

# %%
pos = rearrange(coords, "b (h w) c -> b c h w", h=H, w=W)[0]  # (2, H, W)
row_pos, col_pos = pos
assert coords.min() == -0.5 and coords.max() == 0.5
assert (row_pos == row_pos[:, :1]).all() and (row_pos[1:, 0] > row_pos[:-1, 0]).all()
assert (col_pos == col_pos[:1, :]).all() and (col_pos[0, 1:] > col_pos[0, :-1]).all()
assert row_pos.unique().numel() == H and col_pos.unique().numel() == W
torch.testing.assert_close(pos, cocs.coordinates(H, W))
print(
    f"row positions: {H} values, step {(row_pos[1, 0] - row_pos[0, 0]).item():.4f}; "
    f"column positions: {W} values, step {(col_pos[0, 1] - col_pos[0, 0]).item():.4f}"
)

# %% [markdown]
# The point set, described column by column, is what `points.csv` records.

# %%
names = ["r", "g", "b", "row", "column"]
summary = {"image": "grace_hopper.jpg", "H": H, "W": W, "N": N, "D": D}
for j, name in enumerate(names):
    summary[f"{name}_min"] = points[0, :, j].min().item()
    summary[f"{name}_max"] = points[0, :, j].max().item()
points_table = pd.DataFrame([summary])
write_csv(points_table, out / "points.csv")
points_table

# %% [markdown]
# ## Back again, exactly
#
# Nothing is lost: `points_to_image` puts the colours back on the grid, and the result is the
# photo, bit for bit. In the 2-D scatter below, every point is drawn at its own position in
# its own colour; no grid is involved, yet the portrait appears.

# %%
assert torch.equal(points_to_image(features, H, W), image)

rgb = points[0, :, :3].numpy()  # (N, 3)
fig, (ax_img, ax_pts) = plt.subplots(1, 2, figsize=(9.5, 5.2), layout="constrained")
ax_img.imshow(image[0].permute(1, 2, 0).numpy())
ax_img.set(
    title=f"the image:\na grid of H x W = {H} x {W} pixels",
    xlabel="column index",
    ylabel="row index",
)
size = (270 / W) ** 2  # square markers about one pixel wide at this figure size
ax_pts.scatter(points[0, :, 4], points[0, :, 3], c=rgb, s=size, marker="s", lw=0)
ax_pts.set(
    title=f"the point set:\nN = {N} points, each drawn at its position",
    xlabel="column position",
    ylabel="row position",
    aspect=(H - 1) / (W - 1),
)
ax_pts.invert_yaxis()  # rows grow downwards, as in the image
fig.suptitle("Grace Hopper as pixels and as points")
save_figure(fig, out / "points_2d.png")
plt.show()

# %% [markdown]
# A set has no order. Shuffle the points and the picture is the same, because each point
# carries its own position; conversely the positions alone put the shuffled points back in
# place. That is the whole difference from a sequence of patches: there, order (or a learned
# positional embedding) says where a token was; here, the point says so itself.

# %%
shuffled = points[0, torch.randperm(N)]  # (N, 5), a new order
row_index = ((shuffled[:, 3] + 0.5) * (H - 1)).round().long()  # (N,)
col_index = ((shuffled[:, 4] + 0.5) * (W - 1)).round().long()  # (N,)
restored = torch.zeros(3, H, W)
restored[:, row_index, col_index] = shuffled[:, :3].T
assert torch.equal(restored, image[0])
print("the shuffled points, placed by their own positions, give the photo back exactly")

# %% [markdown]
# ## The paper's view: a cloud of points
#
# Plotting the points in three dimensions makes the "set" reading vivid. The horizontal axes
# are the two positions, the vertical axis the point's luminance (the Rec. 601 weighting of
# its colour), and each point keeps its colour. Bright skin and the white collar rise above
# the dark uniform and background: the structure that the clustering stages will group.

# %%
luminance = points[0, :, :3] @ torch.tensor([0.299, 0.587, 0.114])  # (N,)
fig = plt.figure(figsize=(7.5, 6.5))
ax = fig.add_subplot(projection="3d")
ax.scatter(points[0, :, 4], points[0, :, 3], luminance, c=rgb, s=4, depthshade=False)
ax.set(
    xlabel="column position",
    ylabel="row position",
    zlabel="luminance",
    title=f"{N} points: position (x, y) and colour; height = luminance",
)
ax.set_ylim(0.5, -0.5)  # top row of the photo at the back, as when reading the image
ax.view_init(elev=35, azim=-65)
save_figure(fig, out / "point_cloud.png")
plt.show()

# %% [markdown]
# ## The point reducer is a strided convolution
#
# The network does not cluster all the points of the photo at once. Its first layer, and
# the layer between any two stages, is a *point reducer*. In the paper's words: choose evenly
# spaced anchors, take the points nearest to each anchor, concatenate their features and fuse
# them with a linear projection. Each anchor becomes one new point.
#
# First, "nearest points" on a grid is a square window. In the stem of Context-Cluster-Ti the
# anchors sit at the centres of 4 x 4 blocks of pixels; measured in pixel steps, the 16
# points nearest to each anchor are exactly that block.

# %%
model = cocs.create_model(model_name).eval()
stem = model.patch_embed.proj  # Conv2d(5, D1, kernel_size=k, stride=s)
k, s = stem.kernel_size[0], stem.stride[0]
grid_xy = torch.stack([(coords[0, :, 0] + 0.5) * (H - 1), (coords[0, :, 1] + 0.5) * (W - 1)], 1)
anchors = torch.cartesian_prod(
    torch.arange(H // s) * s + (k - 1) / 2, torch.arange(W // s) * s + (k - 1) / 2
)  # (M, 2) in pixel steps
nearest = torch.cdist(anchors, grid_xy).topk(k * k, largest=False).indices  # (M, k*k)
block = rearrange(
    torch.arange(N).view(H, W)[: H // s * s, : W // s * s], "(i u) (j v) -> (i j) (u v)", u=k, v=k
)  # (M, k*k) the k x k windows
assert torch.equal(nearest.sort(1).values, block.sort(1).values)
print(f"{len(anchors)} anchors: the {k * k} nearest points of each = its {k} x {k} window")

# %% [markdown]
# Now the reducer itself, written out as the paper describes it, on the point set: gather the
# $k \times k$ neighbours of every anchor, concatenate their features into one long vector,
# multiply by a matrix. A reducer with padding treats the points beyond the border as zeros,
# as its convolution does. The matrix is the convolution's weight, reshaped: a
# $(D_\text{out}, D_\text{in}, k, k)$ kernel is a $D_\text{out} \times (D_\text{in} k^2)$
# linear map on concatenated neighbours.


# %%
def reduce_points(points, H, W, conv):
    """A point reducer by hand: (B, N, D_in) points on an H x W grid -> (B, M, D_out), M anchors."""
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    grid = F.pad(rearrange(points, "b (h w) c -> b c h w", h=H, w=W), (p, p, p, p))
    rows = torch.arange(0, H + 2 * p - k + 1, s)[:, None] + torch.arange(k)  # (H', k)
    cols = torch.arange(0, W + 2 * p - k + 1, s)[:, None] + torch.arange(k)  # (W', k)
    windows = grid[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (B, D_in, H', W', k, k)
    concat = rearrange(windows, "b c i j u v -> b (i j) (c u v)")  # (B, M, D_in * k * k)
    matrix = conv.weight.reshape(conv.out_channels, -1)  # (D_out, D_in * k * k)
    return concat @ matrix.T + conv.bias, (len(rows), len(cols))


# %% [markdown]
# The first reducer, on the photo's 5-D points, against the model's own embedding of the
# photo (which appends the positions itself, then applies `patch_embed`). The weights are the
# model's random initial ones: the identity is linear algebra and holds for any weights.

# %%
with torch.no_grad():
    by_hand, (H1, W1) = reduce_points(points, H, W, stem)  # (B, M, D1)
    by_model = model.forward_embeddings(image)  # (B, D1, H1, W1)
torch.testing.assert_close(by_hand, rearrange(by_model, "b d h w -> b (h w) d"))
print(
    f"stem: {k} x {k} windows, stride {s}: {N} points x {D} -> "
    f"{H1 * W1} points x {stem.out_channels}; equal to model.patch_embed"
)

# %% [markdown]
# The reducer between stage 1 and stage 2 takes 3 x 3 windows with stride 2 and one point of
# zero padding, so its windows overlap. We feed it the photo's stage-1 points, taken from the
# model's forward pass. The stages in between cluster within a grid of regions (8 x 8 regions
# in the first stage of this model), so the forward pass needs an input whose sides divide
# evenly: we stretch the photo to the square ImageNet input size, `model_size`.

# %%
square = F.interpolate(image, size=(model_size, model_size), mode="bilinear", align_corners=False)
with torch.no_grad():
    stages = model.forward_intermediates(square, intermediates_only=True)  # [(B, D_i, H_i, W_i)]
stage1 = stages[0]  # (B, D1, H1, W1)
down = model.network[1].proj  # Conv2d(D1, D2, kernel_size=3, stride=2, padding=1)
with torch.no_grad():
    stage1_points = rearrange(stage1, "b d h w -> b (h w) d")  # (B, N1, D1)
    by_hand, (H2, W2) = reduce_points(stage1_points, *stage1.shape[2:], down)  # (B, N2, D2)
    by_model = model.network[1](stage1)  # (B, D2, H2, W2)
torch.testing.assert_close(by_hand, rearrange(by_model, "b d h w -> b (h w) d"))
print(
    f"network[1]: {down.kernel_size[0]} x {down.kernel_size[1]} windows, stride "
    f"{down.stride[0]}, padding {down.padding[0]}: {stage1_points.shape[1]} points x "
    f"{down.in_channels} -> {H2 * W2} points x {down.out_channels}; equal to the model's reducer"
)

# %% [markdown]
# ## Points per stage
#
# Reducers shrink the set by a fixed factor between stages while the channels grow, the
# pyramid familiar from ConvNets. The table reads the sizes off the forward pass above, not
# off a hand-written list: $N$ is the number of points each stage clusters, $D$ the channels
# of each point, and the reduction is the model's own record of how much each side shrank.

# %%
rows = [
    dict(
        stage="input points",
        module="",
        points_N=model_size**2,
        channels_D=D,
        grid=f"{model_size} x {model_size}",
        reduction=1,
    )
]
for i, (x, info) in enumerate(zip(stages, model.feature_info, strict=True)):
    _, d, h, w = x.shape
    assert d == info["num_chs"]
    assert model_size % model.feature_info[-1]["reduction"] or h * info["reduction"] == model_size
    rows.append(
        dict(
            stage=f"stage {i + 1}",
            module=info["module"],
            points_N=h * w,
            channels_D=d,
            grid=f"{h} x {w}",
            reduction=info["reduction"],
        )
    )
per_stage = pd.DataFrame(rows)
write_csv(per_stage, out / "points_per_stage.csv")
per_stage

# %%
fig, ax = plt.subplots(figsize=(7, 4))
bars = ax.bar(per_stage["stage"], per_stage["points_N"], color="tab:blue")
ax.bar_label(
    bars,
    labels=[
        f"N={n}\nD={d}" for n, d in zip(per_stage["points_N"], per_stage["channels_D"], strict=True)
    ],
    fontsize=8,
)
ax.set_yscale("log")
ax.set_ylim(top=per_stage["points_N"].max() * 8)
ax.set(
    ylabel="points N (log scale)",
    title=f"{model_name} at {model_size} x {model_size}: points and channels per stage",
)
save_figure(fig, out / "points_per_stage.png")
plt.show()
first, last = per_stage.iloc[1], per_stage.iloc[-1]
print(
    f"stage 1 clusters {first.points_N} points of {first.channels_D} channels; the last "
    f"stage {last.points_N} points of {last.channels_D} channels "
    f"({first.points_N // last.points_N}x fewer points)"
)

# %% [markdown]
# ## Exercises
#
# Each exercise runs in seconds on a laptop CPU. The worked solutions, with checks of the
# expected outcomes, are in `notebooks/solutions/01_image_as_points.py`: try first, then compare.
#
# 1. **Forget the positions.** With `img_size = 64`, set the two position columns of `points`
#    to zero, shuffle the points and put them back by their positions, as in the shuffle
#    experiment above. Then build `cocs.create_model("coc_tiny", use_positions=False)` beside
#    `cocs.create_model("coc_tiny")` (on PyTorch's `meta` device: shapes, no data) and compare
#    their parameters. *Expected:* every point lands on the same pixel, so no picture is left,
#    yet the set still holds every colour as often as the photo does (its colour histogram);
#    the model without positions has fewer parameters by exactly the stem's weights for two
#    input channels, $2 D_1 k^2$. (The paper reports that this ablation failed to train;
#    chapter 6 trains it on CIFAR-10.)
# 2. **Anchors and neighbours.** Write the point reducer as gather, concatenate and project with
#    `torch.nn.functional.unfold` (which gathers every $k \times k$ window), and check it
#    against `torch.nn.Conv2d(5, 8, kernel_size=2, stride=2)` on the photo's points; then
#    against `kernel_size=3, stride=2, padding=1`, and find the anchors whose windows reach past
#    the border. *Expected:* both agree with the convolutions to 1e-5; the windows that reach
#    past the border are those of the first row and the first column of anchors, and of the last
#    row (or column) where that side of the photo has an odd number of points; the convolution
#    fills what lies outside with zeros.
# 3. **Other sizes.** Read the four stage grids of `coc_tiny` at `model_size` 160, 96 and 100,
#    and of `coc_tiny_plain` at 100, from `forward_intermediates` on the `meta` device.
#    *Expected:* `coc_tiny` takes 160 and 96, with grids of a quarter, an eighth, a sixteenth
#    and a thirty-second of the side, and refuses 100 with an error that names the regions:
#    each stage's grid must split evenly into its regions (8, 4, 2 and 1 per side), so the side
#    must be a multiple of 32. `coc_tiny_plain` has no regions and takes 100; its grids follow
#    $\lfloor (n + 2p - k) / s \rfloor + 1$ per side, so the stem divides exactly and the padded
#    reducers round an odd side up.
