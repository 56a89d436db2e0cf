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
# # Solutions: 1. An image as a set of points
#
# Worked solutions to the exercises at the end of chapter 1. Each ends with the checks of its
# expected outcome. They write no files.

# %% tags=["parameters"]
img_size = 64  # width of the photo in pixels; the height follows its aspect ratio
seed = 0
results_dir = "results"  # unused: the solutions write nothing

# %%
import matplotlib.cbook
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

import cocs
from cocs.points import image_to_points

torch.manual_seed(seed)
photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
W, H = img_size, round(img_size * photo.height / photo.width)
pixels = np.asarray(photo.resize((W, H), Image.Resampling.BICUBIC)).copy()  # (H, W, 3)
image = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255  # (1, 3, H, W)
features, coords = image_to_points(image)  # (1, N, 3), (1, N, 2)
points = torch.cat([features, coords], dim=-1)  # (1, N, 5): r, g, b, row, column
N = H * W
print(f"{H} x {W} photo, {N} points")


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# %% [markdown]
# ## Exercise 1: Forget the positions
#
# With `img_size = 64`, set the two position columns of `points` to zero, shuffle the points
# and put them back by their positions. Then compare the parameters of `coc_tiny` with and
# without positions. *Expected:* every point lands on the same pixel, yet the set still holds
# every colour as often as the photo does; the model without positions has fewer parameters by
# exactly $2 D_1 k^2$.

# %%
blind = points.clone()
blind[..., 3:] = 0  # (1, N, 5): colours, and no positions
shuffled = blind[0, torch.randperm(N)]  # (N, 5)
row_index = ((shuffled[:, 3] + 0.5) * (H - 1)).round().long()  # (N,)
col_index = ((shuffled[:, 4] + 0.5) * (W - 1)).round().long()  # (N,)
landed = set(zip(row_index.tolist(), col_index.tolist(), strict=True))
print(f"the {N} points land on {len(landed)} pixel(s): {sorted(landed)}")

colours, counts = torch.unique(shuffled[:, :3], dim=0, return_counts=True)
photo_colours, photo_counts = torch.unique(features[0], dim=0, return_counts=True)
print(f"{len(colours)} distinct colours in the shuffled set, {len(photo_colours)} in the photo")

# %%
with torch.device("meta"):  # shapes only: no weights are drawn
    with_positions = cocs.create_model("coc_tiny")
    without_positions = cocs.create_model("coc_tiny", use_positions=False)
stem = with_positions.patch_embed.proj  # Conv2d(5, D1, k, stride k)
D1, k = stem.out_channels, stem.kernel_size[0]
difference = parameters(with_positions) - parameters(without_positions)
print(
    f"coc_tiny: {parameters(with_positions):,} parameters with positions, "
    f"{parameters(without_positions):,} without; difference {difference:,} = 2 x {D1} x {k}^2"
)

# %% [markdown]
# With both positions at zero, every point claims the same place, the pixel at the middle of
# the grid: a shuffled set of colour-only points keeps *what* colours the photo has and how
# many of each, and nothing of *where*. That is all a network without positions receives at
# its input. Yet the set is not entirely blind once it sits on a grid: the point reducers are
# strided convolutions whose windows see their neighbours and the zero padding at the borders
# (chapter 6 trains both variants). In parameters, dropping the positions only shrinks the
# stem: its kernel has two input channels fewer, each of $D_1 \times k \times k$ weights.

# %%
assert len(landed) == 1, "every colour-only point should claim the same pixel"
assert torch.equal(colours, photo_colours) and torch.equal(counts, photo_counts)
assert difference == 2 * D1 * k * k

# %% [markdown]
# ## Exercise 2: Anchors and neighbours
#
# Write the point reducer as gather, concatenate and project with
# `torch.nn.functional.unfold`, check it against `Conv2d(5, 8, kernel_size=2, stride=2)` and
# `Conv2d(5, 8, kernel_size=3, stride=2, padding=1)` on the photo's points, and find the
# anchors whose windows reach past the border. *Expected:* agreement to 1e-5; the windows past
# the border are those of the first row and column of anchors, and of the last row or column
# where that side is odd; what lies outside is zero.

# %%
def reduce_by_hand(points: torch.Tensor, H: int, W: int, conv: torch.nn.Conv2d):
    """Gather each anchor's window, concatenate, project: (B, N, C) -> (B, M, D_out), (H', W')."""
    grid = rearrange(points, "b (h w) c -> b c h w", h=H, w=W)
    windows = F.unfold(grid, conv.kernel_size, padding=conv.padding, stride=conv.stride)
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    out_h, out_w = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    # windows: (B, C * k * k, M), each column one anchor's concatenated neighbours
    return windows.transpose(1, 2) @ conv.weight.flatten(1).T + conv.bias, (out_h, out_w)


agreement = {}
for conv in (torch.nn.Conv2d(5, 8, 2, stride=2), torch.nn.Conv2d(5, 8, 3, stride=2, padding=1)):
    with torch.no_grad():
        mine, (out_h, out_w) = reduce_by_hand(points, H, W, conv)  # (1, M, 8)
        theirs = conv(rearrange(points, "b (h w) c -> b c h w", h=H, w=W))  # (1, 8, H', W')
    theirs = rearrange(theirs, "b d h w -> b (h w) d")
    agreement[conv.kernel_size[0]] = (mine - theirs).abs().max().item()
    print(f"{conv}: {out_h} x {out_w} anchors, largest difference {agreement[conv.kernel_size[0]]:.1e}")

# %%
inside = F.unfold(torch.ones(1, 1, H, W), 3, padding=1, stride=2)  # (1, 9, M): 1 in the photo
past = (inside < 1).any(1).view(out_h, out_w)  # (H', W'): the window leaves the photo
rows, cols = torch.meshgrid(torch.arange(out_h), torch.arange(out_w), indexing="ij")
predicted = (rows == 0) | (cols == 0) | ((rows == out_h - 1) & (H % 2 == 1))
predicted |= (cols == out_w - 1) & (W % 2 == 1)
print(f"{int(past.sum())} of {past.numel()} anchors reach past the border ({H} rows: "
      f"{'odd' if H % 2 else 'even'}, {W} columns: {'odd' if W % 2 else 'even'})")

# %% [markdown]
# `unfold` *is* the gather: it lays each anchor's $k \times k$ window of $C$ channels out as
# one column of $C k^2$ numbers, in the order of the convolution's weight
# `(D_out, C, k, k)`, so one matrix product with the flattened weight projects every anchor at
# once. With padding 1 and stride 2, the anchor of output row $i$ looks at input rows
# $2i - 1$ to $2i + 1$: the first row of anchors always reaches above the photo, and the last
# one reaches below it only when the number of rows is odd; the same holds for the columns.
# `unfold` fills the missing points with zeros, as the padded convolution does, which is why
# the two agree also on the border.

# %%
assert max(agreement.values()) < 1e-5, agreement
assert torch.equal(past, predicted)

# %% [markdown]
# ## Exercise 3: Other sizes
#
# Read the stage grids of `coc_tiny` at 160, 96 and 100, and of `coc_tiny_plain` at 100, on
# the `meta` device. *Expected:* `coc_tiny` takes 160 and 96 (grids of a quarter to a
# thirty-second of the side) and refuses 100 with an error that names the regions, since its
# side must be a multiple of 32; `coc_tiny_plain` takes 100, with grids that follow
# $\lfloor (n + 2p - k) / s \rfloor + 1$.

# %%
def stage_sides(name: str, size: int) -> list[int]:
    """The side of each stage's square grid for a (1, 3, size, size) input, shapes only."""
    with torch.device("meta"), torch.no_grad():
        model = cocs.create_model(name)
        stages = model.forward_intermediates(torch.empty(1, 3, size, size), intermediates_only=True)
    return [x.shape[-1] for x in stages]


sides = {size: stage_sides("coc_tiny", size) for size in (160, 96)}
print(f"coc_tiny: {sides}")
try:
    stage_sides("coc_tiny", 100)
    refusal = None
except ValueError as err:
    refusal = str(err)
print(f"coc_tiny at 100: {refusal}")

# %%
with torch.device("meta"):
    plain = cocs.create_model("coc_tiny_plain")
formula = [100]
for conv in [plain.patch_embed.proj] + [plain.network[i].proj for i in (1, 3, 5)]:
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    formula.append((formula[-1] + 2 * p - k) // s + 1)
plain_sides = stage_sides("coc_tiny_plain", 100)
print(f"coc_tiny_plain at 100: {plain_sides}; by the formula: {formula[1:]}")

# %% [markdown]
# The stem of `coc_tiny` cuts 4 x 4 patches and every reducer halves the side, so the four
# grids are the side divided by 4, 8, 16 and 32. Each stage then cuts its grid into
# `fold_w x fold_h` regions, 8, 4, 2 and 1 per side: at 224 that is 56 / 8, 28 / 4, 14 / 2 and
# 7 / 1 points, and in general side / 32 in every stage, which is why any multiple of 32 works
# and 100 does not (its first grid of 25 points per side cannot be cut into 8 equal strips).
# Without regions, `coc_tiny_plain` takes any side that its stem and reducers can shrink: the
# stem's 4 x 4 windows fit 25 times into 100, and a padded 3 x 3 reducer with stride 2 turns
# an odd side $n$ into $(n + 1) / 2$, rounding up, because the extra zero row lets the last
# window start on the last real row.

# %%
assert all(s == [size // 4, size // 8, size // 16, size // 32] for size, s in sides.items())
assert refusal is not None and "regions" in refusal and "fold" in refusal
assert plain_sides == formula[1:] and plain_sides[1] == (plain_sides[0] + 1) // 2
