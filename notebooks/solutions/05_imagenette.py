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
# # Solutions: 5. Imagenette: a Context Cluster trained on real photographs, on a CPU
#
# Worked solutions to the exercises at the end of chapter 5. Each ends with the checks of its
# expected outcome. They read the chapter's committed `metrics.csv` and write nothing under
# `results/`: the training run goes to a temporary folder, and Imagenette is cached under
# `data/` on first use, as in the chapter.

# %% tags=["parameters"]
sizes = "64,96,128"  # image sides of exercise 1
train_per_class = 4  # training photographs per class of exercise 2
test_per_class = 5  # validation photographs per class of exercise 2
epochs = 2
batch_size = 8
amp = "off"  # bfloat16 autocast only pays on CPUs with native bfloat16 instructions
label_smoothing = 0.1  # exercise 3
seed = 0
results_dir = "results"  # where the chapter's results are read; nothing is written there

# %%
import tempfile

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import cocs
from cocs.handbook import results_path
from cocs.train import (
    TrainConfig,
    build_data,
    load_trained,
    plan_epochs,
    predict,
    resolve_ckpt_dir,
    train,
)

torch.manual_seed(seed)
chapter = pd.read_csv(results_path(results_dir, "05_imagenette", create=False) / "metrics.csv")

# %% [markdown]
# ## Exercise 1: Detail or epochs
#
# Count the MACs of `coc_imagenette` at 64, 96 and 128 px, and let `plan_epochs` fit epochs
# into the wall time of the chapter's run, an epoch costing in proportion to its MACs.
# *Expected:* MACs grow with the square of the side, to within a fraction of a per cent, so
# 96 px holds a little under half as many epochs as 64 px.

# %%
sides = [int(s) for s in sizes.split(",")]
macs = {}
for side in sides:
    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        cocs.create_model("coc_imagenette").eval()(torch.empty(1, 3, side, side))
    macs[side] = counter.get_total_flops() / 2
base = sides[0]
ratio = {side: macs[side] / macs[base] for side in sides}
budget = chapter["epoch_seconds"].sum()  # the chapter's training and evaluation, in seconds
epoch = chapter["epoch_seconds"].median()  # one epoch at the chapter's size
planned = {side: plan_epochs(0, 0.0, epoch * ratio[side], budget) for side in sides}
for side in sides:
    print(f"{side:>3} px: {macs[side] / 1e6:7.1f} M MACs, x{ratio[side]:.4f} "
          f"(side ratio squared: {(side / base) ** 2:.4f}); {planned[side]} epochs "
          f"fit into the chapter's {budget / 60:.0f} minutes")  # fmt: skip

# %% [markdown]
# Every layer of the model works point by point: the stem and the reducers are convolutions,
# the projections and MLPs act on each point, and the similarities compare each point with the
# few centres of its region, whose number does not change with the image. So the MACs are
# proportional to the number of points, the square of the side; only the classifier, which
# sees one pooled vector, does not grow, which is the small difference from the exact square.
# At 96 px an epoch therefore costs about 2.25 times as much, and a fixed budget holds a little
# under half the epochs (the planner also rounds down to whole epochs, each counted
# `cocs.train.PLAN_MARGIN` times dearer than measured). Whether more detail is worth fewer passes over the data is a question only
# training answers, which is the first of the longer exercises.

# %%
for side in sides:
    assert abs(ratio[side] / (side / base) ** 2 - 1) < 0.005, (side, ratio[side])
assert 0.4 < planned[96] / planned[64] < 0.5, planned

# %% [markdown]
# ## Exercise 2: The checkpoint of every epoch
#
# Train `coc_imagenette` for 2 epochs on 4 photographs per class at 64 px, keeping every
# epoch's checkpoint and the predictions, load both checkpoints and predict the 50 validation
# photographs. *Expected:* the checkpoints differ, and the last reproduces the saved
# predictions photograph by photograph, and so the recorded accuracy.

# %%
with tempfile.TemporaryDirectory() as tmp:
    cfg = TrainConfig(
        model="coc_imagenette", dataset="imagenette", img_size=64,
        max_per_class=train_per_class, max_test_per_class=test_per_class, epochs=epochs,
        batch_size=batch_size, warmup_epochs=0, drop_path=0.0, amp=amp, seed=seed,
        keep_epoch_ckpts=True, save_predictions=True, out_dir=tmp, progress=False,
    )  # fmt: skip
    run = train(cfg)
    folder = resolve_ckpt_dir(cfg)
    kept = sorted(p.name for p in folder.glob("epoch_*.pt"))
    first, _ = load_trained(folder / kept[0])
    last, _ = load_trained(folder / kept[-1])
    with np.load(f"{tmp}/predictions.npz") as f:
        saved = {k: f[k] for k in ("label", "pred")}
bundle = build_data(cfg)
again = predict(last, bundle, device=torch.device("cpu"), batch=2 * batch_size)
changed = [n for n, p in first.state_dict().items() if not torch.equal(p, last.state_dict()[n])]
recomputed = 100 * float((again["pred"] == again["label"]).mean())
print(f"checkpoints kept: {kept}; {len(changed)} of {len(first.state_dict())} tensors changed "
      f"between them; accuracy recorded {run['final']['test_acc']:.2f}%, from the checkpoint "
      f"{recomputed:.2f}%")  # fmt: skip

# %% [markdown]
# `keep_epoch_ckpts` saves the weights after every epoch beside the resumable `last.pt`;
# `load_trained` rebuilds the model from the configuration stored with them, so a checkpoint
# needs nothing else to be used. Training changed the weights between the two epochs, and the
# last checkpoint is the very model that the engine tested: predicting the same photographs
# in the same batches gives the same class for every one, hence the same accuracy. This is
# what chapter 7 relies on when it draws the clusters of every epoch. (With so few
# photographs the accuracy itself means nothing.)

# %%
assert kept == [f"epoch_{e:03d}.pt" for e in range(1, epochs + 1)]
assert changed, "the weights of the two epochs should differ"
assert np.array_equal(again["pred"], saved["pred"]) and np.array_equal(again["label"], saved["label"])
assert abs(recomputed - run["final"]["test_acc"]) < 1e-9

# %% [markdown]
# ## Exercise 3: The floor of the training loss
#
# With label smoothing 0.1 over 10 classes, compare the loss of logits equal to the logarithm
# of the smoothed target with the target's entropy, and try a thousand random logits.
# *Expected:* they agree to 1e-6 and no random logits do better.

# %%
K = 10
target = torch.full((K,), label_smoothing / K, dtype=torch.float64)  # the true class is 0
target[0] += 1 - label_smoothing
entropy = -(target * target.log()).sum().item()
label = torch.zeros(1, dtype=torch.long)
best = F.cross_entropy(target.log().unsqueeze(0), label, label_smoothing=label_smoothing).item()
generator = torch.Generator().manual_seed(seed)
logits = 3 * torch.randn(1000, K, dtype=torch.float64, generator=generator)  # (1000, K)
others = F.cross_entropy(logits, label.expand(1000), label_smoothing=label_smoothing,
                         reduction="none")  # fmt: skip
print(f"entropy of the smoothed target {entropy:.6f}; loss at log(target) {best:.6f}; "
      f"random logits: at least {others.min():.6f}; the chapter's lowest training loss: "
      f"{chapter['train_loss'].min():.3f}")  # fmt: skip

# %% [markdown]
# With label smoothing the loss is the cross-entropy between the smoothed target $q$ and the
# predicted distribution $p$: $H(q, p) = H(q) + \mathrm{KL}(q \,\|\, p)$. The Kullback-Leibler
# term is never negative and vanishes only for $p = q$, so the smallest possible loss is the
# entropy of the target, reached by the logits $\log q$ (up to a constant). A training curve
# with label smoothing therefore levels off above zero however well the model fits, and the
# chapter's curve indeed stays above this floor; its distance to the floor, not to zero, is
# what is left to learn.

# %%
assert abs(best - entropy) < 1e-6
assert (others >= entropy - 1e-9).all()
assert chapter["train_loss"].min() > entropy
