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
# # Solutions: 7. Cluster maps: what do the clusters of a trained model look like?
#
# Worked solutions to the exercises at the end of chapter 7. Each ends with the checks of its
# expected outcome. They write nothing under `results/` (the sample photographs are extracted
# into `data/` on first use, as in the chapter).

# %% tags=["parameters"]
n_photos = 4  # sample photographs used
img_size = 64  # the side coc_imagenette sees
more_centres = 4  # centres per side of a region in exercise 2
seed = 0
results_dir = "results"  # unused: the solutions write nothing

# %%
import matplotlib.pyplot as plt
import torch

import cocs
from cocs.maps import (
    blend,
    centres_per_region,
    load_photo,
    photo_batch,
    sample_photos,
    stage_assignments,
)

torch.manual_seed(seed)
files = sample_photos()[:n_photos]
images = photo_batch([load_photo(p, img_size) for p in files], "imagenette")  # (B, 3, S, S)
model = cocs.create_model("coc_imagenette").eval()  # untrained: seed 0's initial weights
stages = stage_assignments(model, images)  # per stage (B, heads, H_s, W_s)
print(f"{[p.name for p in files]}: maps {[tuple(a.shape) for a in stages]}")


def regions_of(model: torch.nn.Module, stage: int, H: int, W: int) -> torch.Tensor:
    """The region of every point of a stage's H x W map, numbered row by row: (H, W)."""
    mixer = model.network[2 * stage][-1].token_mixer  # the layer stage_assignments reads
    rows = torch.arange(H) // (H // mixer.fold_w)  # fold_w cuts the rows
    cols = torch.arange(W) // (W // mixer.fold_h)
    return rows[:, None] * mixer.fold_h + cols[None, :]


# %% [markdown]
# ## Exercise 1: Regions never share a centre
#
# Read the maps of an untrained `coc_imagenette` on four sample photographs at 64 px and
# check that every point's centre belongs to the point's own region. *Expected:* maps of 16,
# 8, 4 and 2 points per side, and every centre in its point's region.

# %%
centres = centres_per_region(model)  # centres per region, per stage
own_region = []
for s, assignment in enumerate(stages):  # (B, heads, H, W)
    H, W = assignment.shape[-2:]
    region = regions_of(model, s, H, W)  # (H, W)
    own_region.append(bool((assignment // centres[s] == region).all()))
    print(f"stage {s + 1}: {H} x {W} points, {int(region.max()) + 1} region(s) of "
          f"{centres[s]} centres; every centre in its point's region: {own_region[-1]}")

# %% [markdown]
# The operation cuts each stage's map into `fold_w x fold_h` regions, proposes
# `proposal_w x proposal_h` centres inside each, and compares a point only with the centres
# of its own region, so a centre index, numbered region by region, divided by the centres per
# region gives back the point's region. The white lines of the chapter's maps are these
# borders: a colour never crosses one, whatever the weights. (The sides are the photo's
# 64 px divided by the stem's 4 and then halved by every reducer.)

# %%
assert [a.shape[-1] for a in stages] == [img_size // 4, img_size // 8, img_size // 16, img_size // 32]
assert all(own_region)

# %% [markdown]
# ## Exercise 2: The same weights, more centres
#
# Build `coc_imagenette` with 4 x 4 centres per region, load the state dict of the model
# above into it, and count the distinct centres that the points of each stage-1 region
# joined. *Expected:* the weights load as they are, and the maps with 16 centres per region
# are finer; with one centre per point, each point joins its own.

# %%
finer = cocs.create_model("coc_imagenette", proposal_w=more_centres, proposal_h=more_centres)
finer.load_state_dict(model.state_dict())  # strict: every tensor has the same name and shape
first = {"4 centres": stages[0], f"{more_centres ** 2} centres": stage_assignments(finer, images)[0]}
H, W = first["4 centres"].shape[-2:]
region = regions_of(model, 0, H, W).flatten()  # (N,)
used = {}
for label, assignment in first.items():  # (B, heads, H, W)
    flat = assignment.flatten(2)  # (B, heads, N)
    per_region = [len(torch.unique(flat[b, h, region == r]))
                  for b in range(flat.shape[0]) for h in range(flat.shape[1])
                  for r in range(int(region.max()) + 1)]  # fmt: skip
    used[label] = sum(per_region) / len(per_region)
    print(f"{label} per region: {used[label]:.2f} used on average")

fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
photo = load_photo(files[0], 4 * img_size)  # (3, S, S) for display
axes[0].imshow(photo.permute(1, 2, 0))
for ax, (label, assignment) in zip(axes[1:], first.items(), strict=True):
    ax.imshow(blend(photo, assignment[0, 0], centres=int(label.split()[0])))
    ax.set_title(f"stage 1, head 1: {label}", fontsize=8)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# Centres are not weights: each is the average of the points of one cell of the region's
# proposal grid, so the proposal grid can change after training and the state dict still
# fits. At 64 px a stage-1 region holds 4 x 4 points; with 4 x 4 proposals each cell is a
# single point, and since a point's cosine with itself is 1, the largest possible, each point
# joins the centre it proposed (up to ties between identical points). The map then gives
# every point a cluster of its own, which is no clustering at all; with 2 x 2 proposals, 4
# centres share 16 points. Between the two lies the trade of the chapter 6 ablations on centres per region.

# %%
label_4, label_more = first
assert used[label_more] > used[label_4], used
assert used[label_4] <= 4
assert used[label_more] > 15.5, f"one centre per point: each point joins its own ({used})"

# %% [markdown]
# ## Exercise 3: Grid or content?
#
# For the untrained model, count the stage-1 points that joined the centre proposed from the
# cell they lie in. *Expected:* many more than the 1 in 4 of chance.

# %%
mixer = model.network[0][-1].token_mixer
h, w = H // mixer.fold_w, W // mixer.fold_h  # points per region, per side
rows, cols = torch.arange(H)[:, None] % h, torch.arange(W)[None, :] % w  # within the region
cell = (rows // (h // mixer.proposal_w)) * mixer.proposal_h + cols // (w // mixer.proposal_h)
grid = regions_of(model, 0, H, W) * centres[0] + cell  # (H, W): the centre of the point's cell
agree = (stages[0] == grid).float().mean().item()
print(f"{agree:.1%} of the stage-1 points joined the centre of their own cell "
      f"(chance: 1 in {centres[0]})")

# %% [markdown]
# Each centre is the mean of a cell of points, the point itself among them, and neighbouring
# points of a photograph mostly share their colour; in an untrained model the features are
# close to a random projection of that local colour and position, so a point tends to resemble
# its own cell's mean more than the others: the untrained maps follow the proposal grid well
# above chance, and depart from it where a cell straddles an edge. Training is what turns the
# features into ones by which points of one object or part resemble each other across cells;
# whether the chapter's trained models depart from the grid more than untrained ones do is
# measured there ("Scene or grid? Measured", `agreement.csv`).

# %%
assert agree > 2 / centres[0], agree
