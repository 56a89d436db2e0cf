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
# # Solutions: 6. Ablations: which of the paper's design choices matter at CIFAR scale?
#
# Worked solutions to the exercises at the end of chapter 6. Each ends with the checks of its
# expected outcome. They write nothing under `results/` (CIFAR-10 is cached under `data/` on
# first use, as in the chapter).

# %% tags=["parameters"]
test_per_class = 10  # CIFAR-10 test images per class of exercise 2
images_simulated = 10000  # test images of the simulation in exercise 3
seeds_simulated = 3
acc_a = 0.755  # true accuracies of the two simulated models
acc_b = 0.75
seed = 0
results_dir = "results"  # unused: the solutions write nothing

# %%
import numpy as np
import pandas as pd
import timm
import torch
from scipy import stats as st

import cocs
from cocs.ablation import ABLATIONS, similarity_diagnosis
from cocs.data import get_spec, load_split, normalize
from cocs.stats import paired_difference
from cocs.train import parse_model_kwargs

torch.manual_seed(seed)

# %% [markdown]
# ## Exercise 1: What each variant changes
#
# Build every variant of `cocs.ablation.ABLATIONS` on the `meta` device and count its
# parameters. *Expected:* the variants that regroup points keep the full model's parameters
# exactly; without the context cluster the model is smaller; without positions smaller by
# exactly the stem's weights for two channels, with or without a border.

# %%
counts, stems = {}, {}
for ablation in ABLATIONS:
    with torch.device("meta"):
        model = timm.create_model("coc_cifar", **parse_model_kwargs(ablation.model_kwargs))
    counts[ablation.key] = sum(p.numel() for p in model.parameters())
    stems[ablation.key] = model.patch_embed.proj
table = pd.DataFrame({"what": {a.key: a.label for a in ABLATIONS}, "params": counts})
table["vs_full"] = table["params"] - counts["full"]
table

# %% [markdown]
# Heads, centres, regions, the form of the similarity and the centre updates decide how the
# points are *grouped*, not what is learned: one head as wide as all heads together has the
# same projections `f` and `v`, centres are pooled rather than learned, and the raw cosine
# keeps the (then unused) $\alpha$ and $\beta$. So these comparisons hold the parameters
# fixed and change only the grouping, which is what makes them clean. So does circular
# padding of the reducers: the same 3 x 3 kernels, fed the opposite edge of the map instead of
# zeros. The other two remove weights: the token mixer's projections, and the stem's two
# position channels ($D_1 \times 2 \times k \times k$). Their differences in accuracy
# therefore mix the design choice with a change of capacity.

# %%
same = {"one_head", "raw_similarity", "iterative", "no_regions", "no_regions_same_centres",
        "centres_1", "centres_9", "centres_16"}  # fmt: skip
assert all(counts[k] == counts["full"] for k in same), table
assert counts["no_cluster"] < counts["full"]
stem = stems["full"]
assert counts["full"] - counts["no_positions"] == 2 * stem.out_channels * stem.kernel_size[0] ** 2
assert counts["no_positions_wrap"] == counts["no_positions"]

# %% [markdown]
# ## Exercise 2: Why the raw similarity loses, by hand
#
# On 100 CIFAR-10 test images, two untrained `coc_cifar` (seed 0), with the sigmoid and with
# `similarity="cosine"`: compute each cluster's denominator $1 + \sum_i s_i$ in every
# clustering layer with a scatter-add, and compare stage by stage with
# `similarity_diagnosis`. *Expected:* your smallest denominators are the diagnosis's
# `den_min`; with the sigmoid every similarity is positive and every denominator at least 1,
# while with the raw cosine some points join their centre with a negative weight.

# %%
data = load_split("cifar10", "test", img_size=32, max_per_class=test_per_class, progress=False)
spec = get_spec("cifar10")
images = normalize(data.images, spec.mean, spec.std)  # (B, 3, 32, 32)


def denominators(model: torch.nn.Module) -> pd.DataFrame:
    """Per stage, by hand: the smallest |1 + sum of s| of a cluster with points, and the share
    of points with a negative similarity (the mean over the stage's layers)."""
    with torch.no_grad(), cocs.capture_assignments(model) as assign, \
            cocs.capture_similarities(model) as sims:  # fmt: skip
        model(images)
    rows = []
    for layer, a in assign.items():  # network.<2 * (stage - 1)>.<block>.token_mixer
        a, s = a.flatten(2), sims[layer].float().flatten(2)  # (B, heads, N) each
        centres = int(a.max()) + 1  # numbered over the regions of the map
        den = torch.ones(*a.shape[:2], centres).scatter_add_(2, a, s)  # (B, heads, M)
        used = torch.zeros_like(den).scatter_add_(2, a, torch.ones_like(s)) > 0
        rows.append({"stage": int(layer.split(".")[1]) // 2 + 1,
                     "den_min_by_hand": den[used].abs().min().item(),
                     "negative_by_hand": (s < 0).float().mean().item()})  # fmt: skip
    return pd.DataFrame(rows).groupby("stage").agg(
        den_min_by_hand=("den_min_by_hand", "min"), negative_by_hand=("negative_by_hand", "mean")
    )


found = {}
for similarity in ("sigmoid", "cosine"):
    torch.manual_seed(seed)
    model = cocs.create_model("coc_cifar", similarity=similarity).eval()
    library = similarity_diagnosis(model, images).set_index("stage")[["den_min", "negative"]]
    found[similarity] = denominators(model).join(library)
pd.concat(found, names=["similarity"]).round(4)

# %% [markdown]
# A cluster's aggregate is $(v_c + \sum_i s_i v_i) / (1 + \sum_i s_i)$, and the dispatched
# feature of a point is $s_i$ times it. With the sigmoid each $s_i$ lies in $(0, 1)$, so the
# denominator is at least 1 and the aggregate a weighted mean. The raw cosine lies in
# $[-1, 1]$: a point whose features point away from every centre of its region still joins
# the least bad one, with a negative weight, and enough such points can bring a denominator
# near zero, where the aggregate, and the gradient through it, are scaled without bound. The
# untrained models already show the negative weights; the chapter's diagnosis replays the
# beginning of training to see whether they grow there (`trace.csv`).

# %%
sigmoid, cosine = found["sigmoid"], found["cosine"]
for table in found.values():
    assert ((table["den_min_by_hand"] - table["den_min"]).abs() < 1e-5).all(), table
    assert ((table["negative_by_hand"] - table["negative"]).abs() < 1e-9).all(), table
assert (sigmoid["negative"] == 0).all() and (sigmoid["den_min"] >= 1).all()
assert (cosine["negative"] > 0).any(), "the raw cosine should weight some points negatively"

# %% [markdown]
# ## Exercise 3: What pairing buys
#
# Simulate two models on 10 000 test images over 3 seeds (a right below 0.755, b below 0.75
# of one uniform draw per image and seed), and compare `paired_difference` with the 95%
# interval that ignores the pairing. *Expected:* both contain the true difference; the paired
# one is narrower and excludes zero, the unpaired one does not; the paired `se_test` is several
# times smaller than the unpaired standard error.

# %%
rng = np.random.default_rng(seed)
draw = rng.random((seeds_simulated, images_simulated))  # (S, N): how hard each image is
right_a, right_b = draw < acc_a, draw < acc_b  # (S, N) each; b's errors include a's
paired = paired_difference(right_a, right_b)
pa, pb = right_a.mean(), right_b.mean()
se = np.sqrt((pa * (1 - pa) + pb * (1 - pb)) / right_a.size)  # two independent accuracies
z = st.norm.ppf(0.975)
unpaired = (100 * (pa - pb - z * se), 100 * (pa - pb + z * se))
true = 100 * (acc_a - acc_b)
print(f"true difference {true:.2f} points; paired [{paired.low:+.2f}, {paired.high:+.2f}] "
      f"(se_test {paired.se_test:.3f}, se_seed {paired.se_seed:.3f}, {paired.df:.1f} degrees of "
      f"freedom); unpaired [{unpaired[0]:+.2f}, {unpaired[1]:+.2f}] (standard error "
      f"{100 * se:.3f})")  # fmt: skip

# %% [markdown]
# Two accuracies measured on the same test set are not independent: most images are easy or
# hard for both models, and only the images on which they disagree carry the difference.
# The unpaired interval charges each accuracy its whole binomial noise, about 0.4 points at
# 75% on 10 000 images, and a half-point difference drowns in it. The paired interval looks
# only at the per-image differences, which are zero except on the few images that one model
# gets right and the other wrong, so its test-set part is far smaller; what widens it is the
# spread of the per-seed differences, with the wide Student's t of few seeds. It still
# resolves the half point. This is why chapter 6 trains its models in pairs (same seed, data
# order and initial weights) and compares them image by image.

# %%
assert paired.low <= true <= paired.high and unpaired[0] <= true <= unpaired[1]
assert paired.low > 0 and unpaired[0] < 0
assert paired.high - paired.low < unpaired[1] - unpaired[0]
assert 3 * paired.se_test < 100 * se
