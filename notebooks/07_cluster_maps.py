# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Cluster maps: what do the clusters of a trained model look like?
#
# *Terms such as point, centre, region, head or dispatch are defined in the
# [glossary](../GLOSSARY.md).*
#
# **Question.** A Context Cluster groups the points of an image around a few centres in every
# layer. On real photographs, after training, which points end up together: pixels of one
# object, of one colour, of one place? How does that differ between stages and between heads,
# and how does it change while the model learns?
#
# **The paper's claim.** The paper's visualisations show clusters that follow objects and
# parts rather than fixed windows, increasingly so in deeper stages, which it reads as evidence
# that clustering gives the model some interpretability.
#
# This chapter reads the hard assignment that `cocs.cluster.context_cluster` returns to every
# layer (through `cocs.capture_assignments`, wrapped by `cocs.maps.stage_assignments`), from one
# ordinary forward pass: no part of the model is re-implemented here. The models are the
# `coc_cifar` of chapter 4, the `coc_imagenette` of chapter 5 with one checkpoint per epoch,
# and, for readers who have them, the authors' released ImageNet checkpoints. It writes, under
# `results/07_cluster_maps/`:
#
# - `<model>_grid.png`: one photograph, its maps for every stage (rows) and head (columns);
# - `<model>_photos.png`: several photographs, one head, every stage;
# - `evolution.png` and `evolution.gif`: one map of `coc_imagenette` after successive epochs;
# - `maps.csv`: per model and stage, how many distinct centres the points of each photo joined;
# - `agreement.csv`: per model, stage and head, the adjusted Rand index against the grid and
#   against the untrained model; `grid_shift.csv`: per photograph, how far training moved the
#   clustering off the grid; `regrouping.csv`: the share of points that changed centre between
#   successive epochs.

# %% tags=["parameters"]
photos = ""  # comma-separated image files or folders; empty: the sample photographs
n_photos = 6  # photographs in the overview figures
grid_photo = 0  # index (in sorted order) of the photograph of the stage x head grids
max_heads = 4  # heads shown per stage in the grids
display_size = 224  # side of the drawn photographs (a multiple of every map's side)
cifar = True  # maps of chapter 4's coc_cifar (needs its checkpoint)
imagenette = True  # maps and evolution of chapter 5's coc_imagenette (needs its checkpoints)
evolution_frames = 8  # epochs shown in the evolution strip and GIF (evenly spaced)
official_checkpoint = ""  # a released ImageNet checkpoint file; empty: skipped
official_variant = "coc_tiny"  # the variant of official_checkpoint
results_dir = "results"

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import timm
import torch

import cocs
from cocs.handbook import repo_root, results_path, save_figure, write_csv
from cocs.maps import (
    adjusted_rand_index,
    blend,
    centres_per_region,
    grid_assignment,
    load_photo,
    photo_batch,
    sample_photos,
    save_gif,
    stage_assignments,
    stage_layouts,
)
from cocs.train import TrainConfig, load_trained, resolve_ckpt_dir
from cocs.weights import shipped

out = results_path(results_dir, "07_cluster_maps")
paths = sample_photos(photos)
shown = paths[:n_photos]
grid_path = paths[grid_photo % len(paths)]
print(f"{len(paths)} photographs; overview: {[p.name for p in shown]}; grid: {grid_path.name}")


# %% [markdown]
# ## The trained models
#
# A model comes with the data set it was trained on, which fixes its input size and the
# normalisation of its pixels. The chapters that trained them left their checkpoints in the
# git-ignored `checkpoints/` folder; without them this chapter says which chapter to run.


# %%
def trained_run(chapter: str, name: str, sub: str = "") -> tuple[torch.nn.Module, str, int]:
    """The final model of a training chapter's run, its data set and input size: from its
    checkpoint, or else from the weights that ship with the package (`cocs.weights`)."""
    run_dir = results_path(results_dir, chapter, create=False) / sub
    ckpt = resolve_ckpt_dir(TrainConfig(out_dir=str(run_dir))) / "last.pt"
    if ckpt.is_file():
        net, cfg = load_trained(ckpt)
        return net, cfg.dataset, cfg.img_size
    if (entry := shipped(name)) is not None:
        print(f"{name}: no checkpoint at {ckpt}; drawing the weights shipped in cocs/weights")
        meta = entry["metrics"]
        return timm.create_model(name, pretrained=True).eval(), meta["dataset"], meta["img_size"]
    raise FileNotFoundError(
        f"no checkpoint at {ckpt} and no shipped weights for {name}: train it first with "
        f"`python -m cocs.handbook run {chapter}` (results_dir={results_dir!r}), "
        f"or set {'cifar' if chapter.startswith('04') else 'imagenette'} = False"
    )


models = {}  # name -> (model, data set, input size)
if cifar:
    models["coc_cifar"] = trained_run("04_cifar10", "coc_cifar", "coc_cifar")
if imagenette:
    models["coc_imagenette"] = trained_run("05_imagenette", "coc_imagenette")
if official_checkpoint:
    net = cocs.load_official_checkpoint(official_checkpoint, official_variant).eval()
    models[f"{official_variant} (released)"] = (net, "imagenet", 224)
print({name: f"{data}, {size}px" for name, (_, data, size) in models.items()})


# %% [markdown]
# ## Stages and heads
#
# Each layer splits its points into regions (outlined in white) and its channels into heads;
# within a region and a head, every point joins exactly one centre. Within a region a colour
# stands for one centre, and the same few colours repeat in every region, so a colour that
# covers an object's part of a region means the layer put those points together. The maps
# shown are those of the last block of each stage; deeper stages have fewer, coarser points.


# %%
def maps_of(name: str, files) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Display photos (3, S, S), per stage the assignments (B, heads, H_s, W_s) of ``files``,
    and per stage the centres per region."""
    net, data, size = models[name]
    inputs = photo_batch([load_photo(p, size) for p in files], data)  # (B, 3, size, size)
    photos = [load_photo(p, display_size) for p in files]
    return photos, stage_assignments(net, inputs), centres_per_region(net)


def draw_grid(name: str) -> plt.Figure:
    """Rows: stages; columns: the photo, then up to ``max_heads`` heads."""
    (photo,), stages, centres = maps_of(name, [grid_path])
    heads = min(max_heads, max(a.shape[1] for a in stages))
    fig, axes = plt.subplots(len(stages), heads + 1, figsize=(2 * (heads + 1), 2 * len(stages)))
    for s, assignment in enumerate(stages):  # (1, heads, H, W)
        axes[s, 0].imshow(photo.permute(1, 2, 0))
        axes[s, 0].set_ylabel(f"stage {s + 1}\n{assignment.shape[2]}x{assignment.shape[3]} points")
        for h in range(heads):
            ax = axes[s, h + 1]
            if h < assignment.shape[1]:
                ax.imshow(blend(photo, assignment[0, h], centres=centres[s]))
                ax.set_title(f"head {h + 1}", fontsize=8)
            else:
                ax.set_visible(False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{name}: {grid_path.name}")
    fig.tight_layout()
    return fig


for name in models:
    fig = draw_grid(name)
    save_figure(fig, out / f"{name.split(' ')[0]}_grid.png")
    plt.show()

# %% [markdown]
# ## Several photographs
#
# The first head of every stage, for each photograph: does the grouping follow the scene, or
# the fixed grid of regions and centres it starts from?

# %%
rows = []
for name in models:
    photos_shown, stages, centres = maps_of(name, shown)
    fig, axes = plt.subplots(len(shown), len(stages) + 1, figsize=(2 * (len(stages) + 1), 2 * len(shown)), squeeze=False)  # fmt: skip
    for i, photo in enumerate(photos_shown):
        axes[i, 0].imshow(photo.permute(1, 2, 0))
        axes[i, 0].set_ylabel(shown[i].stem.split("_", 1)[-1], fontsize=8)
        for s, assignment in enumerate(stages):
            axes[i, s + 1].imshow(blend(photo, assignment[i, 0], centres=centres[s]))
            if i == 0:
                axes[i, s + 1].set_title(f"stage {s + 1}, head 1", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(name)
    fig.tight_layout()
    save_figure(fig, out / f"{name.split(' ')[0]}_photos.png")
    plt.show()
    for s, assignment in enumerate(stages):  # (B, heads, H, W)
        B, heads, H, W = assignment.shape
        used = [len(torch.unique(assignment[b, h])) for b in range(B) for h in range(heads)]
        rows.append({"model": name, "stage": s + 1, "points": H * W, "heads": heads,
                     "centres_used_mean": float(np.mean(used)), "photos": B})  # fmt: skip
maps = pd.DataFrame(rows)
write_csv(maps, out / "maps.csv")
maps

# %% [markdown]
# ## Scene or grid? Measured
#
# The eye is easily fooled by colour maps, so the question is also answered by a number. For
# each stage and head, the adjusted Rand index (ARI: 1 for the same partition of the points,
# about 0 for unrelated ones, whatever the labels) compares the trained model's assignment
# with two references on the same photographs: the *grid*, the partition that positions
# alone would give (each point in the proposal cell of its region that contains it), and the
# same architecture with *untrained* weights (seed 0). A trained layer that keeps to the grid
# scores near 1 against it; one that follows the scene departs from it. The untrained model's
# own agreement with the grid (`ari_grid_of_untrained`) is the baseline that training is judged
# against: untrained features are mostly local colour (exercise 3), and whether training moves
# the clustering away from the grid is the difference of the two, per photograph (a direction
# is claimed only when every photograph agrees). A stage with one centre per region and one
# region, or as many centres as points, has only one possible partition: it is marked trivial
# and has no ARI.

# %%
rows, shifts = [], []  # shifts: per photo, trained minus untrained ARI with the grid
for name, (net, data, size) in models.items():
    inputs = photo_batch([load_photo(p, size) for p in shown], data)
    trained = stage_assignments(net, inputs)
    torch.manual_seed(0)
    fresh = stage_assignments(timm.create_model(name.split(" ")[0]), inputs)
    for s, (assignment, layout) in enumerate(zip(trained, stage_layouts(net), strict=True)):
        B, heads, H, W = assignment.shape
        grid = grid_assignment(H, W, *layout)  # layout: fold_w, fold_h, proposal_w, proposal_h
        clusters = len(torch.unique(grid))
        trivial = clusters in (1, H * W)
        for h in range(heads):
            rows.append({
                "model": name, "stage": s + 1, "head": h + 1, "points": H * W,
                "clusters_possible": clusters, "trivial": trivial,
                "ari_grid": np.nan if trivial else np.mean(
                    [adjusted_rand_index(assignment[b, h], grid) for b in range(B)]),
                "ari_untrained": np.nan if trivial else np.mean(
                    [adjusted_rand_index(assignment[b, h], fresh[s][b, h]) for b in range(B)]),
                "ari_grid_of_untrained": np.nan if trivial else np.mean(
                    [adjusted_rand_index(fresh[s][b, h], grid) for b in range(B)]),
                "photos": B,
            })  # fmt: skip
            if not trivial:
                shifts += [{"model": name, "photo": b, "stage": s + 1, "head": h + 1,
                           "difference": adjusted_rand_index(assignment[b, h], grid)
                           - adjusted_rand_index(fresh[s][b, h], grid)} for b in range(B)]  # fmt: skip
agreement = pd.DataFrame(rows)
write_csv(agreement, out / "agreement.csv")
ari = ["ari_grid", "ari_grid_of_untrained", "ari_untrained"]
by_stage = agreement.groupby(["model", "stage"])[ari].mean()
trivial_stages = agreement.loc[agreement["trivial"], ["model", "stage"]].drop_duplicates()
for _, t in trivial_stages.iterrows():
    print(f"{t['model']}, stage {t['stage']}: trivial by construction (one possible partition)")
# per photograph, over its non-trivial stages and heads: did training move it off the grid?
per_photo = pd.DataFrame(shifts).groupby(["model", "photo"], sort=False)["difference"].mean()
write_csv(per_photo.reset_index(), out / "grid_shift.csv")
for name, d in per_photo.groupby(level="model", sort=False):
    away, toward = int((d < 0).sum()), int((d > 0).sum())
    word = ("away from the grid" if away == len(d) else "towards the grid" if toward == len(d)
            else "in no consistent direction")  # fmt: skip
    print(f"{name}: trained minus untrained ARI with the grid, per photograph: mean "
          f"{d.mean():+.2f} (from {d.min():+.2f} to {d.max():+.2f}); lower in {away} of "
          f"{len(d)} photographs: training moved the clustering {word}")  # fmt: skip
by_stage.round(2)

# %% [markdown]
# ## How the clustering forms during training
#
# Chapter 5 kept the weights after every epoch. Here the same photograph goes through
# `coc_imagenette` after successive epochs, and the first head of the first stage is drawn each
# time. Whether points regroup as the features learn, and in which stages, is measured rather
# than read off the strip: `regrouping.csv` holds, for each pair of consecutive frames and each
# stage and head, the fraction of the photograph's points that changed centre.

# %%
listing = pd.DataFrame()
if imagenette:
    listing = pd.read_csv(
        results_path(results_dir, "05_imagenette", create=False) / "checkpoints.csv"
    )
    have = listing["path"].map(lambda p: (repo_root() / p).is_file())
    if not have.all():  # a fresh clone: the per-epoch checkpoints are git-ignored
        print(f"{(~have).sum()} of chapter 5's per-epoch checkpoints are not on this machine: "
              "the evolution needs them (run chapter 5); the committed figures stay as they are")
        listing = listing[have]
if len(listing) >= 2:
    picks = np.unique(np.linspace(0, len(listing) - 1, min(evolution_frames, len(listing))).round().astype(int))  # fmt: skip
    frames, titles, changes, previous = [], [], [], None
    for _, row in listing.iloc[picks].iterrows():
        path = repo_root() / row["path"]  # relative to the repository root, or absolute
        net, cfg = load_trained(path)
        photo_in = photo_batch([load_photo(grid_path, cfg.img_size)], cfg.dataset)
        stages_now = stage_assignments(net, photo_in)  # per stage (1, heads, H, W)
        photo = load_photo(grid_path, display_size)
        frames.append(blend(photo, stages_now[0][0, 0], centres=centres_per_region(net)[0]))
        titles.append(f"epoch {row['epoch']}\n{row['test_acc']:.1f}% val.")
        if previous is not None:
            for s, (before, now) in enumerate(zip(previous[1], stages_now, strict=True)):
                for h in range(now.shape[1]):
                    changes.append({"model": cfg.model, "from_epoch": previous[0],
                                    "to_epoch": int(row["epoch"]), "stage": s + 1, "head": h + 1,
                                    "changed": float((before[0, h] != now[0, h]).float().mean())})  # fmt: skip
        previous = (int(row["epoch"]), stages_now)
    regrouping = pd.DataFrame(changes)
    write_csv(regrouping, out / "regrouping.csv")
    moved = regrouping[regrouping["head"] == 1].groupby("stage")["changed"]  # pairs in order
    for stage, first_step, last_step in zip(
        moved.first().index, moved.first(), moved.last(), strict=True
    ):
        print(f"stage {stage}: {100 * first_step:.0f}% of the points changed centre between the "
              f"first two frames, {100 * last_step:.0f}% between the last two (head 1)")  # fmt: skip
    fig, axes = plt.subplots(1, len(frames), figsize=(2 * len(frames), 2.8), squeeze=False)
    for ax, frame, title in zip(axes[0], frames, titles, strict=True):
        ax.imshow(frame)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{cfg.model}, stage 1, head 1: {grid_path.name}")
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # room for the title above the epochs
    save_figure(fig, out / "evolution.png")
    save_gif(frames, out / "evolution.gif")
    plt.show()

# %% [markdown]
# Read the maps with their limits in mind. The regular tiling of the first stages is the region
# partition itself: points of different regions never share a centre.
# A 32x32 CIFAR model sees a photograph as a thumbnail; its maps are coarse by construction.
# And a map shows which points share a centre, not why: the similarity is computed on learned
# features, which mix colour, position and, in deeper layers, context.

# %% [markdown]
# ## Exercises
#
# Each exercise runs in seconds on a laptop CPU, on an untrained model: none needs the
# checkpoints of chapters 4 and 5. The worked solutions, with checks of the expected outcomes,
# are in `notebooks/solutions/07_cluster_maps.py`: try first, then compare.
#
# 1. **Regions never share a centre.** Read the maps of an untrained `coc_imagenette` (seed 0)
#    on the first four sample photographs at 64 px with `cocs.maps.stage_assignments`, and
#    check for every point, stage and head that the centre it joined belongs to its own region
#    (`cocs.maps.centres_per_region` gives the centres of a region; centres are numbered region
#    by region). *Expected:* the maps have 16, 8, 4 and 2 points per side, and every point's
#    centre lies in the point's own region.
# 2. **The same weights, more centres.** Build `coc_imagenette` with
#    `proposal_w = proposal_h = 4`, 16 centres per region instead of 4, and load into it the
#    state dict of the model of exercise 1. Count, for every region of stage 1, the distinct centres
#    its points joined, in both models. *Expected:* the weights load as they are (centres are
#    pooled from the points, not learned), and the maps with 16 centres per region are finer:
#    a stage-1 region at 64 px holds 16 points, so each of its 16 centres is one point, which
#    that point joins.
# 3. **Grid or content?** For the untrained model of exercise 1, count the stage-1 points that
#    joined the centre proposed from the very cell they lie in, which is the assignment a fixed
#    grid would make. *Expected:* many more than the 1 in 4 that chance would give: untrained
#    features are mostly local colour, neighbouring points look alike, and a centre pooled from
#    a cell resembles the cell's points. How far the chapter's trained models keep to this
#    grid is measured in "Scene or grid? Measured" (`agreement.csv`).
#
# **Further (long), not part of the workshop** (they need trained models):
#
# - Your own photographs: `photos = "path/to/photo.jpg,path/to/folder"`.
# - With a released checkpoint of the authors (for example `coc_tiny`), set
#   `official_checkpoint` to its path: do the maps of an ImageNet-trained model follow objects
#   more closely than those of the small models trained here?
# - Chapter 5 with `keep_epoch_ckpts` at a larger `img_size`: do finer maps form earlier?
