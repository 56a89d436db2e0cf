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
# # Solutions: 2. The context-cluster operation, step by step
#
# Worked solutions to the exercises at the end of chapter 2. Each ends with the checks of its
# expected outcome. They write no files.

# %% tags=["parameters"]
img_size = 64  # the photo becomes img_size x img_size points
proposal = 4  # centres per side of the one region of exercises 1 and 2 (16 centres)
bench_side = 64  # side of the random map of exercise 3
bench_heads = 4
bench_head_dim = 24
seed = 0
results_dir = "results"  # unused: the solutions write nothing

# %%
import matplotlib.cbook
import torch
import torch.nn.functional as F
from einops import rearrange

import cocs
from cocs.bench import cpu_peak_mib, paper_cluster
from cocs.cluster import context_cluster
from cocs.data import IMAGENET_MEAN, IMAGENET_STD, normalize
from cocs.maps import load_photo

torch.manual_seed(seed)
photo = load_photo(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), img_size)
image = normalize(photo.unsqueeze(0), IMAGENET_MEAN, IMAGENET_STD)  # (1, 3, H, W)
x = rearrange(cocs.with_positions(image), "b c h w -> b h w c").double()  # (1, H, W, 5)
_, H, W, _ = x.shape
one_region = dict(heads=1, proposal_w=proposal, proposal_h=proposal)
print(f"{H} x {W} points of 5 channels; {proposal * proposal} centres in one region")

# %% [markdown]
# ## Exercise 1: A negative scale
#
# Cluster the photo's 5-D points (one head, one region, 4 x 4 centres) with
# `sim_alpha = -1.0`, in float64, and compare the assignment with the cosines to the proposed
# centres computed by hand. *Expected:* every point joins the centre it is least similar to:
# the assignment equals the arg-min of the cosines, point for point.

# %%
flipped = context_cluster(x, x, sim_alpha=-1.0, sim_beta=0.0, **one_region).assignment  # (1, 1, H, W)
usual = context_cluster(x, x, sim_alpha=1.0, sim_beta=0.0, **one_region).assignment

centres = F.adaptive_avg_pool2d(rearrange(x, "b h w c -> b c h w"), proposal)  # (1, 5, p, p)
centres = rearrange(centres, "b c pw ph -> b (pw ph) c")  # (1, M, 5), row-major as the library
cosine = F.normalize(centres, dim=-1) @ F.normalize(x.flatten(1, 2), dim=-1).transpose(1, 2)
least = cosine.argmin(1).view(1, 1, H, W)  # (1, 1, H, W)
most = cosine.argmax(1).view(1, 1, H, W)
print(f"alpha = -1: {(flipped == least).float().mean():.1%} of the points join their least "
      f"similar centre; alpha = +1: {(usual == most).float().mean():.1%} their most similar")

# %% [markdown]
# The assignment takes the centre of highest *similarity*, sigmoid($\alpha \cos + \beta$). For
# $\alpha > 0$ the sigmoid rises with the cosine, so the most similar centre wins; for
# $\alpha < 0$ it falls, and the centre pointing most *away* from the point wins. The
# clusters then gather points that share a dissimilarity, which makes little sense as a
# grouping. The network does not end up there: $\alpha$ starts at 1 and learns through the
# similarity weights $s_i$ of aggregation and dispatch (the arg-max that picks the centre has
# no gradient), and to turn negative it would have to pass through zero, where every
# similarity is sigmoid($\beta$) and the weights carry no information about the point;
# training has no reason to go there from a start at 1.

# %%
assert torch.equal(flipped, least), "alpha < 0: each point joins its least similar centre"
assert torch.equal(usual, most)

# %% [markdown]
# ## Exercise 2: Position against colour
#
# Multiply the position channels by 0, 1 and 4 before clustering, and measure how far, on
# average, a point lies from the mean position of its cluster. *Expected:* the more weight the
# positions carry, the more compact the clusters; times 4 is clearly more compact than the
# paper's points, and colour alone the least compact.

# %%
positions = x[..., 3:].reshape(-1, 2)  # (N, 2): the unscaled positions


def spread(weight: float) -> float:
    """Mean distance of a point from the mean position of its cluster, positions x weight."""
    scaled = torch.cat([x[..., :3], weight * x[..., 3:]], dim=-1)  # (1, H, W, 5)
    cluster = context_cluster(scaled, scaled, **one_region).assignment.flatten()  # (N,)
    M = int(cluster.max()) + 1
    size = torch.bincount(cluster, minlength=M).clamp_min(1).unsqueeze(1).double()  # (M, 1)
    mean = torch.zeros(M, 2, dtype=x.dtype).index_add_(0, cluster, positions) / size  # (M, 2)
    return (positions - mean[cluster]).norm(dim=1).mean().item()


spreads = {weight: spread(weight) for weight in (0.0, 1.0, 4.0)}
for weight, value in spreads.items():
    print(f"positions x {weight:g}: a point lies {value:.3f} from its cluster's mean position")

# %% [markdown]
# The similarity is a cosine over all five channels, so each channel's share of a point's
# direction decides how much it counts. The standardised colours spread over a few units,
# the positions over one, so in the paper's points colour dominates and a cluster gathers
# similar colours from anywhere in the photo. Scaled by 4, the positions outweigh the colours
# and clusters shrink to neighbourhoods; at 0 only colour is left. (Being a cosine, the
# position part compares *directions* from the photo's centre, not distances, so the clusters
# become wedges around the middle rather than round blobs.) In the network, the 1x1
# projection `f` before the similarity learns this balance: the raw 5-D points only fix
# where it starts.

# %%
assert spreads[4.0] < 0.9 * spreads[1.0], spreads
assert spreads[1.0] < spreads[0.0], spreads

# %% [markdown]
# ## Exercise 3: Regions in the benchmark
#
# The same 16 centres on a 64 x 64 map of random points and values (4 heads of 24 channels),
# in one region or in 2 x 2 regions of 4 centres each: peak tensor memory of a forward and
# backward pass, the paper's formulation against `context_cluster`. *Expected:* the two agree;
# regions cut the paper formulation's memory by more than half, while the library's changes
# little and stays below the paper's.

# %%
nchw = "b h w (e d) -> (b e) d h w"  # paper_cluster's layout


def run(impl: str, p: int, fold: int, xb, vb):
    """One forward and backward pass of `impl` with p x p centres in each of fold x fold regions."""
    mixer = cocs.Cluster(dim=1, out_dim=1, heads=bench_heads, head_dim=bench_head_dim,
                         proposal_w=p, proposal_h=p, fold_w=fold, fold_h=fold)  # fmt: skip
    if impl == "paper":
        out = paper_cluster(rearrange(xb, nchw, e=bench_heads), rearrange(vb, nchw, e=bench_heads),
                            mixer)  # fmt: skip
        out = rearrange(out, "(b e) d h w -> b h w (e d)", e=bench_heads)
    else:
        out = context_cluster(xb, vb, heads=bench_heads, proposal_w=p, proposal_h=p,
                              fold_w=fold, fold_h=fold, sim_alpha=mixer.sim_alpha,
                              sim_beta=mixer.sim_beta).out  # fmt: skip
    out.sum().backward()
    return out.detach()


shape = (1, bench_side, bench_side, bench_heads * bench_head_dim)  # (B, H, W, heads * D)
xb, vb = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
settings = {"one region, 4 x 4 centres": (4, 1), "2 x 2 regions, 2 x 2 centres each": (2, 2)}
peak, largest_difference = {}, 0.0
for label, (p, fold) in settings.items():
    outputs = {impl: run(impl, p, fold, xb, vb) for impl in ("paper", "cocs")}
    largest_difference = max(largest_difference,
                             (outputs["paper"] - outputs["cocs"]).abs().max().item())  # fmt: skip
    for impl in ("paper", "cocs"):
        peak[impl, label] = cpu_peak_mib(lambda impl=impl, p=p, fold=fold: run(impl, p, fold, xb, vb))
        print(f"{impl:<5} {label}: peak {peak[impl, label]:.1f} MiB")
one, four = settings
ratio = {impl: peak[impl, four] / peak[impl, one] for impl in ("paper", "cocs")}
print(f"with regions / without: paper {ratio['paper']:.2f}, cocs {ratio['cocs']:.2f}; "
      f"outputs differ by at most {largest_difference:.1e}")

# %% [markdown]
# Written as in the paper, aggregation and dispatch broadcast a tensor of shape
# (B · heads · regions, M, N / regions, D): its size is $M N D$ with $M$ the centres *per
# region*, so the broadcast of the same 16 centres takes four times less memory once they are
# spread over four regions, each point meeting 4 centres instead of 16; what remains is the
# tensors of the points' size that both settings need. The library never builds the broadcast;
# what it keeps for the backward pass is mostly of the size of the points ($N D$), plus the
# $(M, N)$ similarities that regions shrink. Cutting the map into regions costs it a copy of
# the points into groups, which is why its peak can even grow a little: a small change, from
# an amount far below the paper formulation's. Time follows the same pattern, less reliably on
# a shared machine, which is why the exercise measures memory: tensors counted one by one do
# not depend on the machine's load.

# %%
assert largest_difference < 1e-4
assert ratio["paper"] < 0.5, ratio
assert 0.5 < ratio["cocs"] < 2, ratio
assert all(peak["cocs", label] < peak["paper", label] for label in settings)
