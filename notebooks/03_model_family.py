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
# # 3. The model family: how big, how costly, how fast?
#
# *Terms such as point, centre, region, head or dispatch are defined in the
# [glossary](../GLOSSARY.md).*
#
# **Question.** Are the Context Cluster variants built here the paper's models, size for size
# and cost for cost, and what do they cost to run on the machine in front of you?
#
# **The paper's claim.** Table 1 of the paper lists, for each Context-Cluster size, its
# parameters, its GFLOPs at 224x224 and its throughput on the authors' GPU, beside ConvNets,
# vision transformers and MLPs of similar size: points clustered by context cost about as much
# as pixels convolved or patches attended to.
#
# This chapter counts every registered variant's parameters and multiply-accumulates, shows
# in which units the paper reports them, lists each stage's points, channels, heads, centres and
# regions, and times inference here. It writes, under `results/03_model_family/`:
#
# - `model_family.csv` and `model_family.md`: one row per variant, measured beside reported;
# - `stages.csv`: the shapes of every stage of every variant;
# - `model_family.png`: size against cost, and throughput.

# %% tags=["parameters"]
batch = 4  # images per timed forward pass
repeats = 5  # timed passes per variant; the median is reported
max_params_m = 60.0  # time only variants with at most this many million parameters
throughput = True  # False skips the timing altogether
seed = 0
results_dir = "results"

# %%
import statistics
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

import cocs
from cocs.bench import busy_percent, hardware_name, keep_quiet_timings
from cocs.handbook import atomic_write_text, results_path, save_figure, write_csv
from cocs.paper import numbers, table

torch.manual_seed(seed)
out = results_path(results_dir, "03_model_family")

# %% [markdown]
# ## The variants
#
# Importing `cocs` registers every variant with timm. The released ImageNet models share one
# layout, four stages at 1/4, 1/8, 1/16 and 1/32 of the image side, and differ in depth, width,
# heads and in how each stage's points are split into regions. Three small variants
# (`coc_cifar`, `coc_imagenette`, `coc_micro`) are this handbook's own, for small images and
# tests; the paper does not report them. Each model carries its native input size in
# `pretrained_cfg["input_size"]`.
#
# Counting parameters and operations, and reading off shapes, needs no weights: on PyTorch's
# `meta` device a model has tensors with shapes and no data, and a forward pass computes shapes
# only. So every variant, the large ones included, is built and traced in a moment; real weights
# are made only for the timing at the end.

# %%
with torch.device("meta"):
    models = {name: cocs.create_model(name).eval() for name in cocs.variants()}
params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
sizes = {name: tuple(m.pretrained_cfg["input_size"]) for name, m in models.items()}  # (C, H, W)
family = pd.DataFrame(
    {
        "variant": list(models),
        "params": [params[n] for n in models],
        "params_m": [params[n] / 1e6 for n in models],
        "params_2p20": [params[n] / 2**20 for n in models],
        "img_size": [sizes[n][-1] for n in models],
    }
)
family.round(3)

# %% [markdown]
# ## What the paper's "M" means
#
# The paper's parameter counts are in units of 2^20 (a "binary million"), not 10^6: the tiny
# model has about five and a half million parameters, which is a little over five *binary*
# millions. The authors' release states the exact counts; ours must equal them to the
# parameter, and rounding ours in the paper's unit must give the paper's Table 1.

# %%
reported = table("imagenet").set_index("model")
released = numbers()["released_params"]
for name, count in released.items():
    assert params[name] == count, f"{name}: {params[name]} parameters, release has {count}"
    print(
        f"{name:<11} {count:>11,} parameters = {count / 1e6:6.2f} x 10^6 "
        f"= {count / 2**20:6.2f} x 2^20; paper: {reported.loc[name, 'params_m']}M"
    )
for name in family["variant"]:
    if name in reported.index:
        assert round(params[name] / 2**20, 1) == reported.loc[name, "params_m"], name

# %% [markdown]
# The three tiny variants differ only in how points are split into regions and how many
# centres each region proposes. Those are pooling grids, not weights, so all three have the
# same parameters, tensor for tensor.

# %%
tiny = ["coc_tiny", "coc_tiny2", "coc_tiny_plain"]
shapes = {n: [(k, tuple(v.shape)) for k, v in models[n].state_dict().items()] for n in tiny}
assert shapes["coc_tiny"] == shapes["coc_tiny2"] == shapes["coc_tiny_plain"]
print(f"{len(shapes['coc_tiny'])} tensors, {params['coc_tiny']:,} parameters in each of {tiny}")

# %% [markdown]
# ## Counting the cost
#
# `torch.utils.flop_counter.FlopCounterMode` sees every matrix product and convolution that
# runs, and counts **2 FLOPs per multiply-accumulate** (one multiply, one add). The paper's
# "GFLOPs", like those of most vision papers, are multiply-accumulates (MACs), so we halve the
# counter's total. The counter ignores element-wise work (normalisation, GELU, the scatter-adds
# of aggregation): few operations, though not necessarily little time, as the timing below
# shows.
#
# And, like the parameters, the paper's "G" is binary: 2^30 MACs. The columns below split the
# MACs of one image at the native size into the 1x1 projections and MLPs (`mm`, matrix
# products), the point reducers (`convolution`) and the similarities between points and centres
# (`bmm`), the only part that belongs to clustering itself.

# %%
def count_macs(model, size) -> dict[str, float]:
    """Multiply-accumulates of one forward pass on one image of `size` (C, H, W), by op."""
    x = torch.empty(1, *size, device=next(model.parameters()).device)  # (1, C, H, W)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    macs: dict[str, float] = {}
    for op, n in counter.get_flop_counts()["Global"].items():
        op = str(op).removeprefix("aten.").replace("addmm", "mm")  # addmm: mm plus a bias
        macs[op] = macs.get(op, 0) + n / 2  # 2 FLOPs per MAC
    return macs


macs = pd.DataFrame({n: count_macs(m, sizes[n]) for n, m in models.items()}).T.fillna(0)
family["gmacs"] = family["variant"].map(macs.sum(axis=1)) / 1e9
family["gmacs_2p30"] = family["gmacs"] * 1e9 / 2**30
(macs / 1e9).round(4).rename(columns=lambda op: f"{op} GMACs")

# %% [markdown]
# The tiny variants share their weights, so their projections and reducers cost the same; they
# differ only in the similarity products. Each point is compared with the centres of its own
# region only, so the similarity cost of a block is N x (centres per region) x D per head,
# whatever the number of regions (checked against the stage table below).
#
# Rounded in the paper's unit, our counts must reproduce its GFLOPs column.

# %%
assert macs.loc[tiny, ["mm", "convolution"]].nunique().eq(1).all()
by_name = family.set_index("variant")
for name in by_name.index.intersection(reported.index):
    ours = by_name.loc[name]
    print(
        f"{name:<10} {2 * ours.gmacs:5.2f} GFLOPs (counter) = {ours.gmacs:5.2f} x 10^9 MACs "
        f"= {ours.gmacs_2p30:5.2f} x 2^30 MACs; paper: {reported.loc[name, 'gflops']}"
    )
    assert round(ours.gmacs_2p30, 1) == reported.loc[name, "gflops"], name

# %% [markdown]
# ## Stage by stage
#
# A stage works on a grid of H x W points, N = H * W, each with D channels. Its clustering
# layers split the grid into `fold_w x fold_h` regions and propose `proposal_w x proposal_h`
# centres in each (M per region): every point is compared with the M centres of its region
# only. The shapes come from `forward_intermediates`; the clustering settings from the
# modules themselves (`block.token_mixer`), checked to be the same in every block of a stage.

# %%
def stage_rows(name: str, model) -> list[dict]:
    """One row per stage: grid, points, channels and the clustering settings of its blocks."""
    x = torch.empty(1, *sizes[name], device=next(model.parameters()).device)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)  # [(1, D, H, W)] * 4
    rows = []
    for i, (f, info) in enumerate(zip(feats, model.feature_info, strict=True)):
        mixers = [block.token_mixer for block in model.network[2 * i]]
        settings = {(c.heads, c.head_dim, c.proposal_w, c.proposal_h, c.fold_w, c.fold_h)
                    for c in mixers}
        assert len(settings) == 1, f"{name} stage {i + 1} mixes settings {settings}"
        heads, head_dim, pw, ph, fw, fh = settings.pop()
        _, D, H, W = f.shape
        assert D == info["num_chs"] and H == sizes[name][1] // info["reduction"]
        rows.append(dict(
            variant=name, stage=i + 1, H=H, W=W, N=H * W, D=D, blocks=len(mixers), heads=heads,
            head_dim=head_dim, proposal=f"{pw}x{ph}", centres_per_region=pw * ph,
            fold=f"{fw}x{fh}", regions=fw * fh, points_per_region=H * W // (fw * fh),
        ))
    return rows


stages = pd.DataFrame([row for n, m in models.items() for row in stage_rows(n, m)])
stages["centres"] = stages["centres_per_region"] * stages["regions"]
assert (stages["points_per_region"] * stages["regions"] == stages["N"]).all()
# the similarity MACs counted above: blocks x heads x N x (centres per region) x head_dim
similarity = stages.eval("blocks * heads * N * centres_per_region * head_dim")
pd.testing.assert_series_equal(similarity.groupby(stages["variant"]).sum(), macs["bmm"],
                               check_dtype=False, check_names=False)
stages[stages["variant"].isin(tiny)].set_index(["variant", "stage"])

# %% [markdown]
# `coc_tiny` cuts every stage into regions of the same number of points, coarsening the
# partition as the grid shrinks until the last stage is clustered whole, with the same few
# centres per region throughout. `coc_tiny_plain` keeps every stage whole and proposes more
# centres instead; `coc_tiny2` mixes the two. The larger models keep `coc_tiny`'s partition and
# grow width, depth and heads:

# %%
tiny_layout = stages[stages["variant"] == "coc_tiny"]
assert tiny_layout["points_per_region"].nunique() == 1 and tiny_layout["regions"].iloc[-1] == 1
stages[~stages["variant"].isin(tiny)].pivot_table(
    index="variant", columns="stage", values=["N", "D", "blocks", "heads", "regions"],
    aggfunc="first",
)

# %% [markdown]
# ## Speed on this machine
#
# The paper's throughput was measured on the authors' GPU; ours is measured on this machine's
# CPU, for inference (`eval` mode, `torch.no_grad`), at each variant's native input size, now
# with real (randomly initialised) weights. The variants are timed round-robin, one batch each
# in turn, so that a busy neighbour slows them all alike, and the median of the repeats is
# kept. Absolute numbers say only how fast *this* machine is; the ratio between two variants is
# the part that can be set beside the paper's. On a machine shared with other work, one pass
# can take several times longer than the next: trust these numbers only as far as a re-run
# on a quiet machine reproduces them.

# %%
def seconds_per_batch(model, x) -> float:
    """Wall-clock seconds of one inference pass on the batch x (B, C, H, W)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - t0


timed = {n: cocs.create_model(n).eval() for n in models
         if throughput and params[n] / 1e6 <= max_params_m}
inputs = {n: torch.randn(batch, *sizes[n]) for n in timed}  # (B, C, H, W)
for n, model in timed.items():
    seconds_per_batch(model, inputs[n][:1])  # warm-up: first-call allocations
busy = busy_percent() if timed else float("nan")  # what the rest of the machine is doing
times = {n: [] for n in timed}
for _ in range(repeats):
    for n, model in timed.items():
        times[n].append(seconds_per_batch(model, inputs[n]))
img_s = {n: batch / statistics.median(t) for n, t in times.items()}
hardware, threads = hardware_name(), torch.get_num_threads()
print(f"{hardware}: {threads} threads, batch {batch}, median of {repeats}, other processes "
      f"using {busy:.0f}% of the CPUs; not timed: "
      f"{[n for n in models if n not in timed] or 'none'}")
pd.Series(img_s, name="images/s").round(2)

# %% [markdown]
# ## Measured here beside reported
#
# The paper's numbers come from `cocs/paper_numbers.yaml` (Table 1: parameters in units of
# 2^20, GFLOPs as MACs in units of 2^30, top-1 on ImageNet-1K, throughput on the authors' GPU);
# `release_top1` is the top-1 of the authors' retrained checkpoints. A variant that a source
# does not report gets NaN.

# %%
family["img_s"] = family["variant"].map(img_s)
family["threads"], family["hardware"], family["batch"] = threads, hardware, batch
paper = reported.rename(columns={"params_m": "paper_params_m", "gflops": "paper_gflops",
                                 "top1": "paper_top1", "img_s": "paper_img_s"})
family = family.join(
    paper[["paper_params_m", "paper_gflops", "paper_top1", "paper_img_s"]], on="variant"
)
family["release_top1"] = family["variant"].map(numbers()["retrained_top1"])
family["busy_percent"] = busy
family = family.sort_values("gmacs", ignore_index=True)
# timings of a busy machine never replace committed ones of a quiet machine: they go beside
family, busy_timings = keep_quiet_timings(
    family, out / "model_family.csv", key="variant", columns=["img_s", "batch"]
)
if busy_timings is not None:
    write_csv(busy_timings, out / "model_family.busy.csv")
    print(f"this machine was busy ({busy:.0f}% of the CPUs in other processes): the quiet "
          f"timings of model_family.csv are kept; these are in model_family.busy.csv")
    img_s = family.set_index("variant")["img_s"].dropna().to_dict()
write_csv(family, out / "model_family.csv")
write_csv(stages, out / "stages.csv")
family.round(3)

# %% [markdown]
# The same table as markdown, every column's provenance in its header.

# %%
shown = family[["variant", "params_2p20", "params_m", "gmacs_2p30", "gmacs", "img_s",
                "paper_params_m", "paper_gflops", "paper_img_s", "paper_top1"]]
shown = shown.round(2).astype(object).where(shown.notna(), "")
shown.columns = [
    "variant", "params (2^20)", "params (10^6)", "GMACs (2^30)", "GMACs (10^9)",
    f"img/s measured here (CPU, {threads} threads, batch {batch})",
    "params (2^20) reported (paper)", "GFLOPs reported (paper)", "img/s reported (paper, GPU)",
    "top-1 reported (paper)",
]
text = shown.to_markdown(index=False)
atomic_write_text(out / "model_family.md", f"Hardware: {hardware}\n\n{text}\n")
print(text)

# %% [markdown]
# ## Size, cost and speed in one figure
#
# Left: parameters against MACs of the ImageNet variants at 224x224, both in the paper's binary
# units so that our variants land on the paper's points, with the paper's other baselines for
# scale. Middle: images per second measured here. Right: throughput relative to `coc_tiny`,
# measured here and reported by the paper, the only comparison across different hardware that
# means something.

# %%
fig, (ax0, ax1, ax2) = plt.subplots(
    1, 3, figsize=(17, 5.5), gridspec_kw={"width_ratios": [1.3, 1, 1]}
)
coc = reported.index.str.startswith("coc")
ax0.scatter(reported.loc[coc, "params_m"], reported.loc[coc, "gflops"], s=170,
            facecolors="none", edgecolors="tab:red", label="Context Cluster, reported (paper)")
ax0.scatter(reported.loc[~coc, "params_m"], reported.loc[~coc, "gflops"], s=25, marker="s",
            color="grey", label="other models, reported (paper)")
imagenet = family[family["img_size"] == 224]
ax0.scatter(imagenet["params_2p20"], imagenet["gmacs_2p30"], s=30, color="tab:blue",
            label="Context Cluster, measured here", zorder=3)
for _, row in reported[~coc].iterrows():
    ax0.annotate(row["label"], (row["params_m"], row["gflops"]), fontsize=7, color="dimgrey",
                 xytext=(5, -3), textcoords="offset points")
offsets = {"coc_tiny": (8, -12), "coc_base_dim96": (-8, -12)}  # keep labels apart
for _, row in imagenet.drop_duplicates("params").iterrows():
    label = "coc_tiny, tiny2, tiny_plain" if row["variant"] in tiny else row["variant"]
    dx, dy = offsets.get(row["variant"], (-8, 4))
    ax0.annotate(label, (row["params_2p20"], row["gmacs_2p30"]), fontsize=8, color="tab:blue",
                 xytext=(dx, dy), textcoords="offset points", ha="left" if dx > 0 else "right")
ax0.set(xscale="log", yscale="log", ylim=(0.8, 14),
        xlabel="parameters, millions\n(2^20 for Context Clusters, 10^6 for the others)",
        ylabel="MACs per 224x224 image, billions\n(2^30 for Context Clusters, 10^9 for the others)",
        title="Size against cost (ImageNet variants),\nin the units the paper reports")
ax0.set_xticks([5, 10, 20, 50], ["5", "10", "20", "50"], minor=False)
ax0.set_yticks([1, 2, 5, 10], ["1", "2", "5", "10"], minor=False)
ax0.minorticks_off()
ax0.legend(loc="upper left", fontsize=8)

measured = family.dropna(subset=["img_s"])
sized = measured["variant"] + " (" + measured["img_size"].astype(int).astype(str) + " px)"
bars = ax1.barh(sized, measured["img_s"], color="tab:blue")  # each at its own input size
ax1.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
ax1.set(xscale="log", xlabel="images / s, each at the input size in its label (log scale)",
        title=f"Measured here (CPU, {threads} threads, batch {batch})")
ax1.tick_params(axis="x", which="minor", labelbottom=False)  # decades only: labels overlap
ax1.invert_yaxis()

both = family.dropna(subset=["paper_img_s"]).set_index("variant")
if "coc_tiny" in img_s:
    x = range(len(both))
    ax2.bar([i - 0.2 for i in x], both["img_s"] / img_s["coc_tiny"], 0.4,
            label="measured here (CPU)")
    ax2.bar([i + 0.2 for i in x], both["paper_img_s"] / both.loc["coc_tiny", "paper_img_s"],
            0.4, color="tab:red", label="reported (paper, GPU)")
    ax2.set_xticks(list(x), both.index)
    ax2.axhline(1, color="grey", lw=0.8)
    ax2.set_ylim(top=1.3 * ax2.get_ylim()[1])  # room for the legend
    ax2.legend(loc="upper right")
else:
    ax2.text(0.5, 0.5, "coc_tiny was not timed", ha="center", transform=ax2.transAxes)
ax2.set(ylabel="throughput / throughput of coc_tiny", title="Relative throughput")
fig.suptitle(f"Context Cluster variants on {hardware}, beside the paper's Table 1")
fig.tight_layout()
save_figure(fig, out / "model_family.png", dpi=120)
plt.show()

# %% [markdown]
# How far does time follow the MACs? Below, for each model of Table 1, its time per image
# relative to `coc_tiny`: measured here, reported by the paper, and predicted by MACs alone.
# Where the measured ratio departs from the MACs ratio, the difference lies in work the counter
# does not see: the element-wise operations, moving points into and out of regions, pooling
# the centres, and the scatter-adds of aggregation. Where the paper's ratio is near one though
# the MACs ratio is not, its GPU was probably bound by something other than arithmetic (data
# loading, or kernel launches at a small batch).

# %%
for name in [n for n in both.index if n in img_s]:
    here = img_s["coc_tiny"] / img_s[name]
    there = both.loc["coc_tiny", "paper_img_s"] / both.loc[name, "paper_img_s"]
    cost = both.loc[name, "gmacs"] / both.loc["coc_tiny", "gmacs"]
    print(f"{name:<10} time per image / coc_tiny's: x{here:4.2f} measured here, "
          f"x{there:4.2f} reported (paper, GPU), x{cost:4.2f} by MACs")

# %% [markdown]
# ## Exercises
#
# Each exercise runs in seconds on a laptop CPU. The worked solutions, with checks of the
# expected outcomes, are in `notebooks/solutions/03_model_family.py`: try first, then compare.
#
# 1. **The baselines' units.** Count the MACs of timm's `resnet18` and `deit_tiny_patch16_224`
#    at 224 x 224 on the `meta` device with `FlopCounterMode`, as `count_macs` does, and round
#    them to one decimal in units of $10^9$ and of $2^{30}$. *Expected:* in units of $10^9$ both
#    give the paper's GFLOPs (`cocs.paper.table("imagenet")`), in units of $2^{30}$ they do not:
#    the paper counts its own models in binary units and its baselines in decimal ones.
# 2. **What regions buy.** Count the similarity MACs (the counter's `bmm`) of `coc_tiny`, of
#    `coc_tiny` with `fold_w=1, fold_h=1` (one region per stage, the same centres per region)
#    and of `coc_tiny` with one region and `proposal_w = proposal_h = (16, 8, 4, 2)` (as many
#    centres as `coc_tiny` has in all). *Expected:* one region with the same centres costs
#    exactly what `coc_tiny` costs, since each point still meets 4 centres; one region with all
#    the centres multiplies each stage's similarity MACs by its number of regions, as blocks x
#    heads x N x centres per region x D predicts.
# 3. **Batch size.** Time inference of `coc_cifar` on random 32 x 32 images in batches of 1, 8
#    and 64, on one thread, in CPU seconds (`time.process_time`, which other programs on the
#    machine do not inflate), the fastest of 5 passes each. *Expected:* images per CPU second grow with the
#    batch, though far from in proportion: a single image leaves the CPU busy with the overhead
#    of each operation, which a batch shares.
