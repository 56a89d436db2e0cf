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
# # Solutions: 8. Point clouds: does the context cluster carry over from images to point sets?
#
# Worked solutions to the exercises at the end of chapter 8. Each ends with the checks of its
# expected outcome. They write nothing under `results/` (ModelNet40 is downloaded into `data/`
# where no copy is found, as in the chapter).

# %% tags=["parameters"]
anchors = 32  # anchors per shape in exercise 1
neighbours = 24  # k of the neighbourhoods in exercise 1
fewer = 512  # PointMLP's anchors in exercise 2 (the release: 1024)
groups = 6  # exercise 3: groups of points, points per group, heads, channels, centres
group_size = 24
heads = 2
head_dim = 8
centres = 4
seed = 0
results_dir = "results"  # unused: the solutions write nothing

# %%
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import cocs
from cocs.modelnet import load_modelnet40
from cocs.pointsets import farthest_point_sample, gather, knn

torch.manual_seed(seed)
test = load_modelnet40("test", max_per_class=1, progress=False)
print(f"{len(test)} shapes of {len(test.classes)} classes, {test.points.shape[1]} points each")

# %% [markdown]
# ## Exercise 1: Farthest points or chance
#
# On the first test shape of every class, 32 anchors by farthest point sampling and 32 at
# random: the largest distance from a point to its nearest anchor, and the share of points
# among some anchor's 24 nearest neighbours. *Expected:* on average, farthest point sampling
# leaves a smaller largest distance and covers more of each shape.

# %%
xyz = test.points  # (S, N, 3)
S, N, _ = xyz.shape
generator = torch.Generator().manual_seed(seed)
chosen = {
    "farthest": farthest_point_sample(xyz, anchors),  # (S, anchors)
    "random": torch.stack([torch.randperm(N, generator=generator)[:anchors] for _ in range(S)]),
}
radius, covered = {}, {}
for how, idx in chosen.items():
    centres_xyz = gather(xyz, idx)  # (S, anchors, 3)
    radius[how] = torch.cdist(xyz, centres_xyz).min(-1).values.max(-1).values  # (S,)
    groups_idx = knn(centres_xyz, xyz, neighbours).flatten(1)  # (S, anchors * k)
    inside = torch.zeros(S, N, dtype=torch.bool).scatter_(1, groups_idx, True)
    covered[how] = inside.float().mean(1)  # (S,)
    print(f"{how:<9} anchors: largest distance {radius[how].mean():.3f} on average, "
          f"{covered[how].mean():.1%} of the points in a neighbourhood")
wins = (radius["farthest"] < radius["random"]).float().mean()
print(f"farthest point sampling has the smaller largest distance on {wins:.0%} of the shapes")

# %% [markdown]
# Farthest point sampling adds, at every step, the point farthest from the anchors chosen so
# far, so no point is left far from every anchor: its largest distance is within a factor of
# two of the best any 32 anchors could achieve. Random anchors follow the density of the
# points, bunching where the surface is densely sampled and leaving sparse parts uncovered, and
# their neighbourhoods overlap more, so fewer points fall into any of them. For a network this
# decides which parts of a shape its later stages can see at all.

# %%
assert radius["farthest"].mean() < radius["random"].mean()
assert covered["farthest"].mean() > covered["random"].mean()

# %% [markdown]
# ## Exercise 2: Fewer anchors
#
# `pointmlp_elite` with `points=1024` and with `points=512`: parameters, and MACs of two
# shapes of 1,024 points. *Expected:* the same parameters, and about half the MACs.

# %%
cost = {}
for points in (1024, fewer):
    model = timm.create_model("pointmlp_elite", points=points).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(xyz[:2])  # (2, 1024, 3)
    cost[points] = (sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2)
    print(f"points={points}: {cost[points][0]:,} parameters, {cost[points][1] / 1e6:.1f} M MACs "
          f"for two shapes")  # fmt: skip
share = cost[fewer][1] / cost[1024][1]
print(f"MACs with {fewer} anchors: {share:.2f} of those with 1024")

# %% [markdown]
# PointMLP's `points` sets how many anchors its first stage samples (each later stage halves
# them); the weights are shared by all anchors, like a convolution's by all positions, so
# their number does not depend on it. The work does: every stage runs its MLPs on each anchor
# and on each of its $k$ neighbours, so halving the anchors halves almost all of it. What is
# left is the embedding of the input points and the classifier on the pooled feature, and the
# neighbour search, which the counter does not see. Whether the accuracy survives the
# sparser sampling is the training question of the longer exercises.

# %%
assert cost[fewer][0] == cost[1024][0]
assert 0.4 < share < 0.6, share

# %% [markdown]
# ## Exercise 3: The set operation by its formulas
#
# `cocs.context_cluster_sets` against the paper's formulas written out group by group: 6
# groups of 24 random points, 2 heads of 8 channels, 4 centres per group by farthest point
# sampling, in float64. *Expected:* assignment, similarities and output agree.

# %%
points = torch.randn(groups, group_size, heads * head_dim, dtype=torch.float64)  # (G, n, C)
values = torch.randn(groups, group_size, heads * head_dim, dtype=torch.float64)
where = torch.randn(groups, group_size, 3, dtype=torch.float64)  # positions, for the centres
centre_index = farthest_point_sample(where, centres)  # (G, M)
alpha, beta = 1.5, -0.5
lib = cocs.context_cluster_sets(points, values, heads=heads, centre_index=centre_index,
                                sim_alpha=alpha, sim_beta=beta)  # fmt: skip

out = torch.zeros_like(values)  # (G, n, heads * D)
assignment = torch.zeros(groups, heads, group_size, dtype=torch.long)
similarity = torch.zeros(groups, heads, group_size, dtype=torch.float64)
for g in range(groups):
    for e in range(heads):
        channels = slice(e * head_dim, (e + 1) * head_dim)
        x, v = points[g, :, channels], values[g, :, channels]  # (n, D) each
        c, vc = x[centre_index[g]], v[centre_index[g]]  # (M, D): the centres are members
        s = torch.sigmoid(alpha * F.cosine_similarity(x[:, None], c[None], dim=-1) + beta)  # (n, M)
        weight, m = s.max(dim=1)  # each point joins its most similar centre
        for j in range(centres):
            mine = m == j
            g_j = (vc[j] + (weight[mine, None] * v[mine]).sum(0)) / (1 + weight[mine].sum())
            out[g, mine, channels] = weight[mine, None] * g_j  # dispatch
        assignment[g, e], similarity[g, e] = m, weight
difference = (out - lib.out).abs().max().item()
print(f"largest difference of the outputs: {difference:.1e}")

# %% [markdown]
# The set version differs from the image version only in how groups and centres are formed:
# the caller passes groups of points (an anchor's neighbours) and which members propose the
# centres; there is no grid, no pooling and no region. Inside a group the paper's steps are
# unchanged: cosine similarity to each centre, the sigmoid with $\alpha$ and $\beta$, the hard
# assignment to the most similar centre, the aggregate
# $(v_c + \sum_i s_i v_i) / (1 + \sum_i s_i)$ and the dispatch $s_i g$. In float64, a
# rounding difference cannot flip a near-tie, so the two must agree exactly in the assignment
# and to rounding in the rest.

# %%
assert torch.equal(assignment, lib.assignment)
torch.testing.assert_close(similarity, lib.similarity.double(), rtol=0, atol=1e-10)
assert difference < 1e-10
