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
# # 2. The context-cluster operation, step by step
#
# *Terms such as point, centre, region, head or dispatch are defined in the
# [glossary](../GLOSSARY.md).*
#
# **What exactly does one context-cluster step compute, and what does it cost?** The paper
# (Ma et al., ICLR 2023, Sec. 3.2) replaces convolution and attention with one operation on a
# set of points: propose a few centres, put every point in the cluster of the centre it is most
# similar to, aggregate each cluster into one feature, and dispatch that feature back to the
# cluster's points. The claim is that this simple rule, applied in regions and with several
# heads, is all the token mixing the network needs.
#
# This chapter rebuilds the operation from the paper's equations, one short cell per step, on
# the points of a real photo, and proves that the result is identical to
# `cocs.cluster.context_cluster`, the single implementation that every other chapter uses. It is
# the only place in the handbook where the operation is written a second time. Then it shows
# what the clusters look like on the photo, what moving the centres changes, and how time and
# memory grow with the number of points $N$ and of centres $M$, for the paper's broadcast
# formulation and for the library's.
#
# It writes, under `results/02_context_clustering/`: the figures `steps.png`,
# `assignments.png`, `iterations.png` and `scaling.png`, and the tables `assignments.csv` and
# `scaling.csv`.

# %% tags=["parameters"]
img_size = 64  # the photo becomes img_size x img_size points
proposal_w = 4  # centres proposed along the rows of a region (the step-by-step demo)
proposal_h = 4  # centres proposed along the columns of a region
sim_alpha = 1.0  # similarity scale alpha (learnable in the network; this is its initial value)
sim_beta = 0.0  # similarity shift beta (idem)
heads = 4  # heads of the multi-head check
head_dim = 8  # channels D per head of the random projection
center_iters = 3  # centre updates of the iterated variant
bench_sides = (
    "16,24,32,48,64,96,128"  # sides S of the square maps of the scaling benchmark (N: S * S points)
)
bench_proposals = "2,4,8"  # proposal grids p x p of the benchmark (M: p * p centres)
bench_heads = 4  # heads of the benchmark (the released models' default)
bench_head_dim = 24  # channels D per head of the benchmark (idem)
repeats = 3  # timed repeats per setting and implementation; the median is kept
threads = (
    1  # CPU threads for torch (0: the default); one thread keeps timings steady on a busy machine
)
seed = 0
results_dir = "results"

# %%
import itertools
import time

import matplotlib.cbook
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle
from PIL import Image

import cocs
import cocs.paper
from cocs.bench import busy_percent, cpu_peak_mib, hardware_name, keep_quiet_timings, paper_cluster
from cocs.cluster import context_cluster
from cocs.data import IMAGENET_MEAN, IMAGENET_STD, normalize
from cocs.handbook import results_path, save_figure, write_csv

out = results_path(results_dir, "02_context_clustering")
torch.manual_seed(seed)
if threads:
    torch.set_num_threads(threads)

# %% [markdown]
# ## The points of a photo
#
# The photo is the portrait of Grace Hopper from matplotlib's sample data (a public-domain U.S.
# Navy photograph), centre-cropped to the requested aspect ratio and resized. Its colours are
# standardised with the ImageNet mean and deviation, as the data pipeline does before the
# network sees them, and `cocs.with_positions` appends the two position channels: each pixel
# becomes a 5-D point (r, g, b, row, column), exactly the points the network's first layer
# receives (chapter 1).
#
# Standardising matters here because the similarity below is a cosine: raw colours in
# $[0, 1]$ all point into the same corner of colour space, so every pair of points would look
# alike. Centred colours spread out in direction.


# %%
def load_photo(height: int, width: int) -> torch.Tensor:
    """The portrait, centre-cropped to the aspect height:width and resized: (1, 3, H, W) uint8."""
    im = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    w0, h0 = im.size  # PIL sizes are (width, height)
    cw, ch = min(w0, round(h0 * width / height)), min(h0, round(w0 * height / width))
    box = ((w0 - cw) // 2, (h0 - ch) // 2, (w0 + cw) // 2, (h0 + ch) // 2)
    im = im.crop(box).resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).unsqueeze(0)


def photo_points(height: int, width: int) -> torch.Tensor:
    """The photo's 5-D points, channels last: (1, H, W, 5) = standardised r, g, b, row, column."""
    image = normalize(load_photo(height, width), IMAGENET_MEAN, IMAGENET_STD)  # (1, 3, H, W)
    return rearrange(cocs.with_positions(image), "b c h w -> b h w c")


photo = load_photo(img_size, img_size)  # (1, 3, H, W) uint8, for display
x = photo_points(img_size, img_size)  # (B, H, W, D) with B = 1, D = 5
B, H, W, D = x.shape
N = H * W
print(f"B = {B}, N = {N} points on a {H} x {W} grid, D = {D} channels per point")

# %% [markdown]
# ## The equations, one group at a time
#
# The paper's operation works inside a *group*: the points of one image, one head and one
# region. Heads and regions only decide how the points are split into groups, so we first
# derive the steps for one group, here the whole photo with one head, and write the group as a
# leading dimension `G` ($G = 1$ for now). Every step is a function of a few lines, used
# unchanged when we assemble the full operation.
#
# **Step 1: centre proposal.** The paper proposes centres evenly in space and computes each
# centre's feature as the average of its $k$ nearest points. On a grid, the points nearest to
# evenly spaced centres are the cells of a `proposal_w x proposal_h` partition of the region,
# so the proposal is an average pooling to that grid, $M$ = `proposal_w * proposal_h`
# centres. When the sides do not divide evenly, neighbouring cells may share a row or column:
# cell $i$ of $k$ over $n$ points covers
# $[\lfloor i n / k \rfloor, \lceil (i + 1) n / k \rceil)$, which is `adaptive_avg_pool2d`.
# (Following the authors' release, `*_w` counts along the first spatial axis, the rows.)


# %%
def propose(t: torch.Tensor, proposal_w: int, proposal_h: int) -> torch.Tensor:
    """Centres by average pooling: (G, h, w, D) -> (G, M, D), M = proposal_w * proposal_h."""
    pooled = F.adaptive_avg_pool2d(rearrange(t, "g h w d -> g d h w"), (proposal_w, proposal_h))
    return rearrange(pooled, "g d pw ph -> g (pw ph) d")  # row-major over the proposal grid


centres = propose(x, proposal_w, proposal_h)  # (G, M, D)
M = proposal_w * proposal_h
cell_h, cell_w = H // proposal_w, W // proposal_h
torch.testing.assert_close(centres[0, 0], x[0, :cell_h, :cell_w].mean(dim=(0, 1)))
torch.testing.assert_close(centres[0, -1], x[0, -cell_h:, -cell_w:].mean(dim=(0, 1)))
print(f"M = {M} centres, each the mean of a {cell_h} x {cell_w} cell of points")

# %% [markdown]
# **Step 2: cosine similarity.** Every point is compared with every centre of its group by
# the cosine of the angle between their feature vectors,
# $\cos(c_m, p_i) = c_m \cdot p_i / (\lVert c_m \rVert \lVert p_i \rVert)$: an $M \times N$
# matrix per group.


# %%
def cosine(c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of M centres to N points: (G, M, D), (G, N, D) -> (G, M, N)."""
    return F.normalize(c, dim=-1) @ F.normalize(t, dim=-1).transpose(1, 2)


flat = rearrange(x, "g h w d -> g (h w) d")  # (G, N, D)
cos = cosine(centres, flat)  # (G, M, N)
assert cos.shape == (1, M, N) and cos.abs().max() <= 1 + 1e-6
i, m = 1234 % N, 3 % M
torch.testing.assert_close(cos[0, m, i], F.cosine_similarity(centres[0, m], flat[0, i], dim=0))
print(f"cosine similarities: {tuple(cos.shape)}, from {cos.min():.3f} to {cos.max():.3f}")

# %% [markdown]
# **Step 3: the similarity.** The paper does not use the cosine directly: it rescales it,
# $s = \sigma(\alpha \cos + \beta)$, with a learnable scale $\alpha$ and shift $\beta$ (initial
# values 1 and 0), so that similarities lie in $(0, 1)$ and act as weights. The sigmoid is
# increasing when $\alpha > 0$: it changes the weights but never which centre is the most
# similar.


# %%
def similarity(c: torch.Tensor, t: torch.Tensor, alpha, beta) -> torch.Tensor:
    """The paper's similarity sigmoid(alpha * cos + beta): (G, M, D), (G, N, D) -> (G, M, N)."""
    return torch.sigmoid(alpha * cosine(c, t) + beta)


sim = similarity(centres, flat, sim_alpha, sim_beta)  # (G, M, N)
assert ((sim > 0) & (sim < 1)).all()
assert sim_alpha <= 0 or torch.equal(sim.argmax(dim=1), cos.argmax(dim=1))
print(
    f"similarities in ({sim.min():.3f}, {sim.max():.3f}) for alpha = {sim_alpha}, beta = {sim_beta}"
)

# %% [markdown]
# **Step 4: hard assignment.** Each point is allocated to its most similar centre only. A
# point keeps one number, its similarity $s_i$ to its own centre, and one index, $m_i$: the
# clusters partition the group.

# %%
s, m_of = sim.max(dim=1)  # (G, N) similarity to, and index of, each point's centre
sizes = torch.bincount(m_of[0], minlength=M)  # (M,) points per cluster
assert sizes.sum() == N
print(f"cluster sizes: {sizes.tolist()}")

# %% [markdown]
# **Step 5: aggregation.** Each cluster becomes one feature, a similarity-weighted mean of its
# points' *values* $v_i$ (in the network, a second projection of the points), to which the
# centre's own value $v_c$ (the same average pooling, in value space) is added with weight 1:
#
# $$g = \frac{1}{C}\Big(v_c + \sum_{i=1}^{m} s_i v_i\Big), \qquad C = 1 + \sum_{i=1}^{m} s_i .$$
#
# The paper adds $v_c$ for numerical stability: an empty cluster still has a defined feature,
# and the denominator is never zero. Writing cluster membership as a one-hot $(M, N)$ matrix
# turns both sums into matrix products. Here the values are the points themselves.


# %%
def aggregate(v: torch.Tensor, vc: torch.Tensor, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Cluster features g: values (G, N, Dv), centre values (G, M, Dv), s and m (G, N)."""
    member = F.one_hot(m, vc.shape[1]).transpose(1, 2).to(v.dtype)  # (G, M, N)
    numerator = vc + member @ (s.unsqueeze(-1) * v)  # (G, M, Dv)
    denominator = 1 + member @ s.unsqueeze(-1)  # (G, M, 1)
    return numerator / denominator


value_centres = propose(x, proposal_w, proposal_h)  # (G, M, Dv) with values = points
g = aggregate(flat, value_centres, s, m_of)  # (G, M, Dv)
k = int(sizes.argmax())  # the largest cluster, written out with a mask
mine = m_of[0] == k
g_k = (value_centres[0, k] + (s[0, mine, None] * flat[0, mine]).sum(0)) / (1 + s[0, mine].sum())
torch.testing.assert_close(g[0, k], g_k)
print(f"cluster features: {tuple(g.shape)}; cluster {k} ({int(sizes[k])} points) checked by hand")

# %% [markdown]
# **A piece of the release's history.** The denominator $C = 1 + \sum_i s_i$ is what the paper
# writes, but not what the code first released computed: it divided by $1 + m$, the number of
# points in the cluster (a sum of the membership mask instead of the similarities). The
# authors fixed it in June 2023 ("fix a bug mask.sum to sim.sum", in the release's issue
# tracker, ma-xu/Context-Cluster #20) and retrained the models; the release's README reports
# the retrained accuracies. `cocs` follows the fixed code, which is what `tests/test_parity.py`
# matches; the paper's Table 1 accuracies come from the earlier one. Both, as reported:

# %%
paper_top1 = {r["model"]: r["top1"] for r in cocs.paper.numbers()["imagenet"]}
retrained = cocs.paper.numbers()["retrained_top1"]
history = pd.DataFrame(
    [{"model": m, "paper (count-normalised code)": paper_top1.get(m), "release (retrained)": t}
     for m, t in retrained.items()]
).set_index("model")  # fmt: skip
history

# %% [markdown]
# **Step 6: dispatch.** The cluster feature goes back to every point of the cluster, scaled by
# the point's similarity, $p_i' = s_i\, g$: points close to their centre receive more of the
# shared feature. In the network a linear projection and a residual connection follow.


# %%
def dispatch(g: torch.Tensor, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Each cluster's feature back to its points: g (G, M, Dv), s and m (G, N) -> (G, N, Dv)."""
    return s.unsqueeze(-1) * g.gather(1, m.unsqueeze(-1).expand(-1, -1, g.shape[-1]))


p_out = dispatch(g, s, m_of)  # (G, N, Dv)
torch.testing.assert_close(p_out[0, i], s[0, i] * g[0, m_of[0, i]])
print(f"dispatched features: {tuple(p_out.shape)}, one per point")

# %% [markdown]
# The six steps on the photo, in one picture: the proposed centres (their colour, on the
# proposal grid), one centre's similarity to every point, the assignment, and the output, whose
# colour channels we map back to RGB. The output is a mosaic of cluster colours, dimmed where a
# point is far from its centre (its similarity, and so its share of $g$, is small). Note that
# clusters need not be connected: points join by feature, and colour dominates the 5-D points.


# %%
def to_rgb(t: torch.Tensor) -> np.ndarray:
    """Standardised colour channels (..., 3) back to displayable RGB in [0, 1]."""
    return (t * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)).clamp(0, 1).numpy()


palette = np.random.default_rng(seed).uniform(0.15, 0.95, size=(4096, 3))  # one colour per centre
fig, axes = plt.subplots(1, 5, figsize=(16, 3.8))
panels = [
    (photo[0].permute(1, 2, 0).numpy(), "the photo", {}),
    (
        to_rgb(rearrange(centres[0, :, :3], "(pw ph) c -> pw ph c", pw=proposal_w)),
        f"step 1: {M} proposed centres\n(their colour)",
        {},
    ),
    (sim[0, k].view(H, W).numpy(), f"step 3: similarity s\nto centre {k}", {"cmap": "viridis"}),
    (
        m_of[0].view(H, W).numpy(),
        "step 4: assignment\n(one colour per centre)",
        {"cmap": ListedColormap(palette[:M]), "vmin": -0.5, "vmax": M - 0.5},
    ),
    (
        to_rgb(p_out[0, :, :3]).reshape(H, W, 3),
        "step 6: dispatched output\n(its colour channels)",
        {},
    ),
]
for ax, (img, title, kw) in zip(axes, panels, strict=True):
    ax.imshow(img, interpolation="nearest", **kw)
    ax.set(title=title, xticks=[], yticks=[])
fig.colorbar(axes[2].images[0], ax=axes[2], fraction=0.046, pad=0.03)
axes[1].add_patch(  # centre k on the proposal grid, whose similarities panel 3 shows
    Rectangle((k % proposal_h - 0.5, k // proposal_h - 0.5), 1, 1, fill=False, ec="gold", lw=2.5)
)
fig.suptitle(f"One context-cluster step on the 5-D points of a {H} x {W} photo, one head")
save_figure(fig, out / "steps.png")
plt.show()

# %% [markdown]
# ## Heads and regions
#
# Two more ideas complete the operation, and both only regroup points.
#
# - **Heads.** The features are divided into heads and the points are clustered for each head
#   independently, as in multi-head attention: the channels are split into `heads` slices
#   of $D$ channels, and each slice is one group with its own centres and assignment.
# - **Regions.** Clustering all $N$ points against all $M$ centres costs $O(NM)$; with centres
#   proposed in proportion to $N$ that is quadratic. The paper therefore splits the points into
#   `fold_w x fold_h` local regions, and clusters each region on its own, with its own $M$
#   centres. A region is, once more, a group.
#
# So the full operation reshapes (batch, heads, regions) into one group axis, runs the steps,
# and reshapes back. Centres are numbered globally, region by region: the centre $m$ of
# region $(r_w, r_h)$ gets the index $(r_w \cdot$ `fold_h` $+ r_h) M + m$, as in
# `context_cluster`. The optional `center_iters` moves the similarity-space centres to the
# weighted mean of their cluster, which is step 5 applied to the points, and re-assigns; the
# paper keeps the centres fixed (`center_iters = 0`).


# %%
def cluster_step_by_step(
    points,
    values,
    *,
    heads,
    proposal_w,
    proposal_h,
    fold_w=1,
    fold_h=1,
    alpha=1.0,
    beta=0.0,
    center_iters=0,
):
    """Steps 1-6 for every (batch, head, region) group.

    points (B, H, W, heads * D), values (B, H, W, heads * Dv) ->
    out (B, H, W, heads * Dv), assignment (B, heads, H, W).
    """
    B, H, W, _ = points.shape
    h, M = H // fold_w, proposal_w * proposal_h  # rows of a region, centres of a region
    groups = "b (f1 h) (f2 w) (e d) -> (b e f1 f2) h w d"  # one group per (batch, head, region)
    x = rearrange(points, groups, e=heads, f1=fold_w, f2=fold_h)  # (G, h, w, D)
    v = rearrange(values, groups, e=heads, f1=fold_w, f2=fold_h)  # (G, h, w, Dv)
    c, vc = propose(x, proposal_w, proposal_h), propose(v, proposal_w, proposal_h)  # (G, M, .)
    x, v = rearrange(x, "g h w d -> g (h w) d"), rearrange(v, "g h w d -> g (h w) d")
    for _ in range(center_iters):
        c = aggregate(x, c, *similarity(c, x, alpha, beta).max(dim=1))  # (G, M, D)
    s, m = similarity(c, x, alpha, beta).max(dim=1)  # (G, N) per group
    p = dispatch(aggregate(v, vc, s, m), s, m)  # (G, N, Dv)
    out = rearrange(
        p, "(b e f1 f2) (h w) d -> b (f1 h) (f2 w) (e d)", e=heads, f1=fold_w, f2=fold_h, h=h
    )
    region = torch.arange(m.shape[0]).unsqueeze(1) % (fold_w * fold_h)  # (G, 1) region of a group
    assignment = rearrange(
        m + region * M, "(b e f1 f2) (h w) -> b e (f1 h) (f2 w)", e=heads, f1=fold_w, f2=fold_h, h=h
    )
    return out, assignment


# %% [markdown]
# ## The proof: equal to the library
#
# We compare the assembly with `context_cluster` in several settings: the photo's 5-D points
# with one head; several heads and regions; a non-square photo with a non-square proposal grid
# whose pooling cells overlap, a single fold along one axis, and other $\alpha$ and $\beta$; and
# iterated centres. With more than one head, the points need more than five channels: as in the
# network, the points and values are 1x1 projections `f` and `v` of the 5-D points, here the
# fixed random initial weights of a `cocs.Cluster` module, which is exactly what an untrained
# block computes. The comparison runs in float64, so that a rounding difference between two
# summation orders cannot flip a near-tie in the assignment.


# %%
def projected(points: torch.Tensor, heads: int, head_dim: int):
    """Points and values of an untrained Cluster block: (B, H, W, 5) -> 2 x (B, H, W, heads * D)."""
    mixer = cocs.Cluster(
        dim=points.shape[-1], out_dim=points.shape[-1], heads=heads, head_dim=head_dim
    ).double()
    f, v = (F.linear(points, conv.weight.flatten(1), conv.bias) for conv in (mixer.f, mixer.v))
    return f, v


settings = [  # name, photo (H, W), heads (0: raw 5-D points, one head), keyword arguments
    (
        "5-D points, 1 head",
        (img_size, img_size),
        0,
        dict(proposal_w=proposal_w, proposal_h=proposal_h, alpha=sim_alpha, beta=sim_beta),
    ),
    (
        f"{heads} heads, 2 x 2 regions",
        (img_size, img_size),
        heads,
        dict(proposal_w=2, proposal_h=2, fold_w=2, fold_h=2, alpha=sim_alpha, beta=sim_beta),
    ),
    (
        "non-square photo and grid",
        (img_size, 3 * img_size // 4),
        2,
        dict(proposal_w=3, proposal_h=2, fold_w=2, fold_h=1, alpha=2.0, beta=-1.0),
    ),
    (
        f"{heads} heads, {center_iters} centre updates",
        (img_size, img_size),
        heads,
        dict(
            proposal_w=proposal_w,
            proposal_h=proposal_h,
            fold_w=2,
            fold_h=2,
            center_iters=center_iters,
        ),
    ),
]
rows = []
for name, (h, w), e, kw in settings:
    pts = photo_points(h, w).double()  # (1, h, w, 5)
    f, v = (pts, pts) if e == 0 else projected(pts, e, head_dim)  # (1, h, w, heads * D)
    mine_out, mine_assign = cluster_step_by_step(f, v, heads=max(e, 1), **kw)
    lib_kw = {("sim_" + k if k in ("alpha", "beta") else k): val for k, val in kw.items()}
    lib = context_cluster(f, v, heads=max(e, 1), **lib_kw)
    torch.testing.assert_close(mine_out, lib.out)
    torch.testing.assert_close(mine_assign, lib.assignment)
    rows.append(
        dict(
            setting=name,
            points=f"{h} x {w}",
            heads=max(e, 1),
            channels=f.shape[-1],
            max_abs_diff=(mine_out - lib.out).abs().max().item(),
            same_assignment=bool(torch.equal(mine_assign, lib.assignment)),
        )
    )
pd.DataFrame(rows)

# %% [markdown]
# The library computes the gradient of the fixed-centre operation by hand (a custom backward
# pass that stores much less than autograd would). Autograd through the step-by-step version
# gives the reference, so we check that too, for the points, the values, $\alpha$ and $\beta$.

# %%
pts = photo_points(img_size, img_size).double()
f, v = (t.detach().requires_grad_() for t in projected(pts, heads, head_dim))
alpha, beta = (
    torch.tensor([val], dtype=torch.float64, requires_grad=True) for val in (sim_alpha, sim_beta)
)
grad_out = torch.randn(1, img_size, img_size, heads * head_dim, dtype=torch.float64)
kw = dict(heads=heads, proposal_w=2, proposal_h=2, fold_w=2, fold_h=2)
mine = torch.autograd.grad(
    (cluster_step_by_step(f, v, alpha=alpha, beta=beta, **kw)[0] * grad_out).sum(),
    (f, v, alpha, beta),
)
lib = torch.autograd.grad(
    (context_cluster(f, v, sim_alpha=alpha, sim_beta=beta, **kw).out * grad_out).sum(),
    (f, v, alpha, beta),
)
for name, a, b in zip(("points", "values", "alpha", "beta"), mine, lib, strict=True):
    torch.testing.assert_close(a, b, msg=f"the gradients of the {name} differ")
print("gradients of points, values, alpha and beta: the library's equal autograd's")

# %% [markdown]
# ## What the clusters look like
#
# Now the library's own assignment (the index that `context_cluster` returns), for the
# photo's 5-D points with one head, as the number of proposed centres and of regions grows.
# Each colour is one centre; white lines mark the regions. With one region, a cluster gathers
# points of similar colour from anywhere in the photo; regions confine each cluster to its
# window, so the partition becomes local, the trade the paper makes for linear cost.

# %%
grids, folds = (2, 4, 8), (1, 2, 4)
fig, axes = plt.subplots(len(folds), len(grids), figsize=(3.3 * len(grids), 3.5 * len(folds)))
summary = []
for (r, fold), (c, p) in itertools.product(enumerate(folds), enumerate(grids)):
    a = context_cluster(
        x,
        x,
        heads=1,
        proposal_w=p,
        proposal_h=p,
        fold_w=fold,
        fold_h=fold,
        sim_alpha=sim_alpha,
        sim_beta=sim_beta,
    ).assignment[0, 0]  # (H, W)
    total = p * p * fold * fold
    sizes = torch.bincount(a.flatten(), minlength=total)  # (centres,)
    summary.append(
        dict(
            setting=f"proposal {p}x{p}, fold {fold}x{fold}",
            M=p * p,
            folds=fold,
            centres_total=total,
            center_iters=0,
            clusters_used=int((sizes > 0).sum()),
            largest_fraction=sizes.max().item() / N,
            changed_fraction=0.0,
        )
    )
    ax = axes[r, c]
    ax.imshow(
        a.numpy(),
        cmap=ListedColormap(palette[:total]),
        vmin=-0.5,
        vmax=total - 0.5,
        interpolation="nearest",
    )
    for line in range(1, fold):
        ax.axhline(line * H / fold - 0.5, color="white", lw=1.2)
        ax.axvline(line * W / fold - 0.5, color="white", lw=1.2)
    regions = f"{fold * fold} regions" if fold > 1 else "1 region"
    ax.set(
        xticks=[],
        yticks=[],
        title=f"M = {p * p} per region, {regions}\n"
        f"{summary[-1]['clusters_used']} of {total} centres used",
    )
    if c == 0:
        ax.set_ylabel(f"fold {fold} x {fold}")
    if r == len(folds) - 1:
        ax.set_xlabel(f"proposal {p} x {p}")
fig.suptitle(f"Assignment of the photo's {N} points (5-D, one head), from context_cluster")
save_figure(fig, out / "assignments.png")
plt.show()

# %% [markdown]
# Not every proposed centre ends up with points: a centre proposed in a region of uniform
# colour can lose all its points to a neighbour that is slightly more similar to them. The
# table counts the clusters that are used, and the share of the photo's points in the largest.

# %%
assignments = pd.DataFrame(summary)
assignments[["setting", "centres_total", "clusters_used", "largest_fraction"]]

# %% [markdown]
# ## Fixed or moving centres
#
# The paper proposes the centres once and keeps them; it reports (quoted below from
# `cocs/paper_numbers.yaml`) that updating them iteratively, as k-means would, is not worth
# its cost. `center_iters` performs those updates: each similarity-space centre moves to the
# weighted mean of its cluster and the points are re-assigned. Centre $m$ stays centre $m$
# through the updates, so comparing the two assignments index by index counts the points that
# change cluster.

# %%
kw = dict(
    heads=1, proposal_w=proposal_w, proposal_h=proposal_h, sim_alpha=sim_alpha, sim_beta=sim_beta
)
claim = cocs.paper.numbers()["ablation_claims"]["iterative_centres"]
print(f"the paper, on iterated centres: {claim}")
fixed = context_cluster(x, x, **kw).assignment[0, 0]  # (H, W)
moved = {
    t: context_cluster(x, x, center_iters=t, **kw).assignment[0, 0]
    for t in range(1, center_iters + 1)
}
changed = {t: int((a != fixed).sum()) for t, a in moved.items()}
for t, n in changed.items():
    print(f"after {t} update(s): {n} of {N} points ({n / N:.1%}) are in another cluster")
last = moved[center_iters]
for label, a in (("fixed", fixed), (f"{center_iters} updates", last)):
    sizes = torch.bincount(a.flatten(), minlength=M)
    summary.append(
        dict(
            setting=f"proposal {proposal_w}x{proposal_h}, fold 1x1, {label}",
            M=M,
            folds=1,
            centres_total=M,
            center_iters=0 if label == "fixed" else center_iters,
            clusters_used=int((sizes > 0).sum()),
            largest_fraction=sizes.max().item() / N,
            changed_fraction=(a != fixed).float().mean().item(),
        )
    )
assignments = pd.DataFrame(summary)
write_csv(assignments, out / "assignments.csv")

# %%
grey = photo[0].float().mean(0).numpy() / 255  # (H, W)
diff = (last != fixed).numpy()
fig, axes = plt.subplots(1, 3, figsize=(11, 4))
cmap = ListedColormap(palette[:M])
axes[0].imshow(fixed.numpy(), cmap=cmap, vmin=-0.5, vmax=M - 0.5, interpolation="nearest")
axes[1].imshow(last.numpy(), cmap=cmap, vmin=-0.5, vmax=M - 0.5, interpolation="nearest")
axes[2].imshow(grey, cmap="gray", vmin=0, vmax=1.6)  # a light background for the changes
axes[2].imshow(
    np.ma.masked_where(~diff, diff), cmap=ListedColormap(["crimson"]), interpolation="nearest"
)
titles = [
    "fixed centres (the paper)",
    f"centres updated {center_iters} times",
    f"{changed[center_iters]} points changed cluster ({changed[center_iters] / N:.1%})",
]
for ax, title in zip(axes, titles, strict=True):
    ax.set(title=title, xticks=[], yticks=[])
fig.suptitle(f"{M} centres on the photo's 5-D points, one head, one region")
save_figure(fig, out / "iterations.png")
plt.show()

# %% [markdown]
# ## Cost: the paper's formulation and the library's
#
# Written as in the paper, aggregation and dispatch multiply a one-hot-masked similarity
# matrix $(M, N)$ with the values $(N, D)$ by *broadcasting*: both build a tensor of shape
# (B · heads, M, N, D), and autograd keeps such tensors for the backward pass. Memory then
# grows as $M N D$. The library uses the same equations but, since the assignment is hard,
# aggregates with a scatter-add and dispatches with a gather, and computes the backward pass
# by hand; nothing larger than the $(M, N)$ similarity matrix and tensors of the size of the
# points is built, so memory grows as $N (M + D)$.
#
# `cocs.bench.paper_cluster` is that formulation, kept for comparison; it takes a
# `cocs.Cluster` module for its settings and inputs laid out as (B · heads, D, H, W). Before
# timing, we check that both compute the same output on the benchmark's random inputs, so that
# the measurement compares implementations of one function. Then each setting runs forward
# and backward, the two implementations alternating, and we keep the median time of `repeats`
# runs after one warm-up, and the peak memory of the tensors alive during one run. Torch runs
# on `threads` CPU threads, one by default: on a machine shared with other work, several
# threads spend their time waiting for each other at every small operation, and the timings
# would measure the machine's load rather than the implementations.

# %%
sides = [int(t) for t in bench_sides.split(",")]
grids = [int(t) for t in bench_proposals.split(",")]
nchw = "b h w (e d) -> (b e) d h w"  # paper_cluster's layout


def bench_case(side: int, p: int):
    """Random points and values (1, side, side, heads * D) and a Cluster holding the settings."""
    mixer = cocs.Cluster(
        dim=1,
        out_dim=1,
        heads=bench_heads,
        head_dim=bench_head_dim,
        proposal_w=p,
        proposal_h=p,
        fold_w=1,
        fold_h=1,
    )
    shape = (1, side, side, bench_heads * bench_head_dim)
    return torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True), mixer


def run_paper(xb, vb, mixer):  # forward and backward, the paper's broadcasts
    e = mixer.heads
    out = paper_cluster(rearrange(xb, nchw, e=e), rearrange(vb, nchw, e=e), mixer)
    return rearrange(out, "(b e) d h w -> b h w (e d)", e=e)


def run_cocs(xb, vb, mixer):  # forward and backward, the library
    return context_cluster(
        xb,
        vb,
        heads=mixer.heads,
        proposal_w=mixer.proposal_w,
        proposal_h=mixer.proposal_h,
        sim_alpha=mixer.sim_alpha,
        sim_beta=mixer.sim_beta,
    ).out


xb, vb, mixer = bench_case(sides[0], grids[-1])
torch.testing.assert_close(run_paper(xb, vb, mixer), run_cocs(xb, vb, mixer))
print("paper_cluster and context_cluster agree on the benchmark's inputs")

# %%
implementations = {"paper": run_paper, "cocs": run_cocs}


def step(run, xb, vb, mixer):
    """One forward and backward pass, from fresh gradients."""
    for t in (xb, vb, mixer.sim_alpha, mixer.sim_beta):
        t.grad = None
    run(xb, vb, mixer).sum().backward()


busy = busy_percent()  # what the rest of the machine is doing while this times
records = []
for side, p in itertools.product(sides, grids):
    if p > side:
        continue
    case = bench_case(side, p)
    times = {impl: [] for impl in implementations}
    for r in range(repeats + 1):  # the first round warms up
        for impl, run in implementations.items():
            t0 = time.perf_counter()
            step(run, *case)
            if r:
                times[impl].append(time.perf_counter() - t0)
    for impl, run in implementations.items():
        peak = cpu_peak_mib(lambda run=run, case=case: step(run, *case))
        records.append(
            dict(
                impl=impl,
                N=side * side,
                M=p * p,
                D=bench_head_dim,
                heads=bench_heads,
                seconds=float(np.median(times[impl])),
                peak_mib=peak,
            )
        )
scaling = pd.DataFrame(records)
scaling["hardware"], scaling["threads"] = hardware_name(), torch.get_num_threads()
scaling["busy_percent"] = busy
# timings of a busy machine never replace committed ones of a quiet machine: they go beside
scaling["case"] = scaling["impl"] + ":" + scaling["N"].astype(str) + ":" + scaling["M"].astype(str)
scaling, busy_timings = keep_quiet_timings(scaling, out / "scaling.csv", key="case",
                                           columns=["seconds", "peak_mib"])  # fmt: skip
if busy_timings is not None:
    write_csv(busy_timings, out / "scaling.busy.csv")
    print(f"this machine was busy ({busy:.0f}% of the CPUs in other processes): the quiet "
          "timings of scaling.csv are kept; these are in scaling.busy.csv")
write_csv(scaling, out / "scaling.csv")
print(
    f"measured on {hardware_name()}: torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
)
scaling.pivot_table(index=["N", "M"], columns="impl", values=["seconds", "peak_mib"])

# %% [markdown]
# Log-log axes: a cost proportional to $N$ is a line of slope 1. Colour marks the number of
# centres, line style the implementation.

# %%
fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.6))
ms = sorted(scaling["M"].unique())
colours = dict(zip(ms, plt.cm.viridis(np.linspace(0, 0.85, len(ms))), strict=True))
for (impl, M_), part in scaling.groupby(["impl", "M"]):
    style = dict(
        color=colours[M_],
        marker="o",
        ls="--" if impl == "paper" else "-",
        label=f"{impl}, M = {M_}",
    )
    ax_t.plot(part["N"], part["seconds"] * 1e3, **style)
    ax_m.plot(part["N"], part["peak_mib"], **style)
ax_t.set(
    xscale="log",
    yscale="log",
    xlabel="points N",
    ylabel="forward + backward (ms, median)",
    title="time",
)
ax_m.set(
    xscale="log", yscale="log", xlabel="points N", ylabel="peak tensor memory (MiB)", title="memory"
)
for ax in (ax_t, ax_m):
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xticks(sorted(scaling["N"].unique()), labels=sorted(scaling["N"].unique()))
    ax.minorticks_off()
ax_m.legend(fontsize=8, ncol=2)
fig.suptitle(
    f"One context-cluster step, B = 1, heads = {bench_heads}, D = {bench_head_dim}, "
    f"on {hardware_name()} (torch threads: {torch.get_num_threads()})"
)
save_figure(fig, out / "scaling.png")
plt.show()

# %% [markdown]
# At the largest setting, the ratios, and how each implementation's memory grows with $M$ at
# the largest $N$ (the exponent of a power law fitted through the smallest and largest $M$).
# Memory is counted tensor by tensor, so it does not depend on the machine's load; times do,
# and only their ratio on this machine is meaningful.

# %%
by = scaling.set_index(["impl", "N", "M"])
N_max, M_max, M_min = scaling["N"].max(), scaling["M"].max(), scaling["M"].min()
top_p, top_c = by.loc[("paper", N_max, M_max)], by.loc[("cocs", N_max, M_max)]
assert top_p["peak_mib"] > top_c["peak_mib"]
print(
    f"N = {N_max}, M = {M_max}: the paper's formulation takes "
    f"{top_p['seconds'] / top_c['seconds']:.1f}x the time and "
    f"{top_p['peak_mib'] / top_c['peak_mib']:.1f}x the memory of context_cluster "
    f"({top_p['peak_mib']:.0f} MiB against {top_c['peak_mib']:.0f} MiB)"
)
if M_max > M_min:
    power = {}
    for impl in implementations:
        grow = by.loc[(impl, N_max, M_max), "peak_mib"] / by.loc[(impl, N_max, M_min), "peak_mib"]
        power[impl] = np.log(grow) / np.log(M_max / M_min)
        print(f"{impl}: memory grows as M^{power[impl]:.2f} from M = {M_min} to {M_max}")
    if {"paper", "cocs"} <= power.keys():  # the text above: M N D against N (M + D)
        assert power["paper"] > power["cocs"], f"memory exponents: {power}"

# %% [markdown]
# ## Exercises
#
# Each exercise runs in seconds on a laptop CPU. The worked solutions, with checks of the
# expected outcomes, are in `notebooks/solutions/02_context_clustering.py`: try first, then
# compare.
#
# 1. **A negative scale.** Cluster the photo's 5-D points (`img_size = 64`, one head, one
#    region, 4 x 4 centres) with `context_cluster` and `sim_alpha = -1.0`, in float64, and
#    compare the assignment with the cosines of each point to the proposed centres, computed by
#    hand. *Expected:* the sigmoid now falls as the cosine grows, so every point joins the centre
#    it is *least* similar to: the assignment equals the arg-min of the cosines, point for
#    point. Why can the network still learn a good $\alpha$ from its initial value 1?
# 2. **Position against colour.** Multiply the two position channels of the photo's points by 0,
#    1 and 4 before clustering (one head, one region, 4 x 4 centres), and measure how far, on
#    average, a point lies from the mean position of its cluster (in the unscaled positions).
#    *Expected:* the more weight the positions carry, the more compact the clusters: with
#    positions times 4 the spread is clearly smaller than with the paper's points, and with
#    colour alone (times 0) it is the largest.
# 3. **Regions in the benchmark.** Give a 64 x 64 map of random points and values (4 heads of 24
#    channels) the same 16 centres, once in one region (proposal 4 x 4) and once in 2 x 2
#    regions of 4 centres each (proposal 2 x 2, `fold_w = fold_h = 2`), and measure the peak
#    tensor memory of a forward and backward pass of `cocs.bench.paper_cluster` and of
#    `context_cluster` with `cocs.bench.cpu_peak_mib`. *Expected:* the two implementations agree
#    in both settings; the regions cut the paper formulation's memory by more than half, since
#    its (B · heads, M, N, D) broadcast shrinks with the centres each point meets, while the
#    library's memory, mostly tensors the size of the points, changes little and stays below
#    the paper's in both settings.
