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
# # 5. Imagenette: a Context Cluster trained on real photographs, on a CPU
#
# *Terms such as point, centre, region, head or dispatch are defined in the
# [glossary](../GLOSSARY.md).*
#
# **Question.** Can a small Context Cluster learn to classify real photographs (ten ImageNet
# classes, varied backgrounds, objects at any scale) from scratch on an ordinary CPU, and how
# do its accuracy and its cost evolve during training?
#
# **The paper's claim.** Clustering points by similarity is a generic visual backbone that
# learns ImageNet classification from scratch. ImageNet itself takes days of GPUs; Imagenette
# (fast.ai's ten easy ImageNet classes, about ten thousand training photographs) keeps the
# photographs and fits a CPU, at a reduced image size.
#
# This chapter trains `coc_imagenette` with `cocs.train.train`, keeping a checkpoint of every
# epoch so that a later chapter can show how the clustering evolves during training. A finished
# run is reloaded, not redone. It writes, under `results/05_imagenette/`:
#
# - `metrics.csv` and `metrics.json`: one row per epoch, config, environment;
# - `summary.csv`: final and best validation accuracy, size, cost, speed, wall time, and
#   where each model trained;
# - `peer_difference.csv`: the Context Cluster minus its ResNet peer, image by image, with a
#   95% interval and what it allows one to say;
# - `checkpoints.csv`: the checkpoint of every epoch (in the git-ignored `checkpoints/` folder);
# - `curves.png`: training loss, validation accuracy and learning rate against epochs.

# %% tags=["parameters"]
model = "coc_imagenette"
peer = "resnet18_half"  # a ResNet of similar size, same recipe and budget; empty: none
epochs = 40
batch_size = 64
lr = 2.0e-3  # peak AdamW learning rate, cosine to min_lr after a linear warm-up
weight_decay = 0.05
warmup_epochs = 2
label_smoothing = 0.1
drop_path = 0.05  # stochastic depth
randaugment = ""  # a timm RandAugment string such as "rand-m9-mstd0.5-inc1"; empty: off
mixup = 0.0  # Mixup alpha; 0: off
cutmix = 0.0  # CutMix alpha; 0: off
img_size = 64  # side the model sees (the photographs are stored at 160 px)
max_per_class = 0  # training images per class; 0: all (about 950)
max_test_per_class = 0  # validation images per class; 0: all (about 390)
num_threads = 0  # torch CPU threads; 0: all cores
num_workers = 0  # data-loading processes; 0: in the training process (a 2-core CPU), 8 beside a GPU
keep_epoch_ckpts = True  # a checkpoint per epoch, for the later analysis of the clustering
seed = 0
export_weights = True  # write the trained model into cocs/weights, the package's shipped weights
train_missing = True  # False: train nothing, only reuse finished runs that match today's code
results_dir = "results"

# %%
import statistics
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from matplotlib.ticker import MaxNLocator
from torch.utils.flop_counter import FlopCounterMode

import cocs
from cocs.bench import busy_percent, hardware_name, keep_quiet_timings
from cocs.handbook import repo_root, results_path, save_figure, write_csv
from cocs.runs import train_or_reuse, trained_on
from cocs.stats import paired_difference
from cocs.train import TrainConfig, portable_path, resolve_ckpt_dir
from cocs.weights import WEIGHTS_DIR, export

if num_threads:
    torch.set_num_threads(num_threads)
TARGET = 70.0  # validation top-1 (%) the default CPU run aims at
out = results_path(results_dir, "05_imagenette")
hardware, threads = hardware_name(), torch.get_num_threads()
print(f"{hardware}, {threads} torch threads")

# %% [markdown]
# ## The model and its cost
#
# `coc_imagenette` follows the layout of the paper's tiny model (four stages, folds of 4, 2, 1
# and 1 regions per side, a 4x4 stem), shallower and narrower, for small photographs. Its cost grows with the
# number of points, that is with the square of the image side.

# %%
def macs_of(net: torch.nn.Module) -> float:
    """Multiply-adds of one image at the chapter's size (the counter counts one as two FLOPs)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.zeros(1, 3, img_size, img_size))  # (B, 3, H, W)
    return counter.get_total_flops() / 2


net = cocs.create_model(model, num_classes=10).eval()
params = sum(p.numel() for p in net.parameters())
macs = macs_of(net)
print(f"{model}: {params / 1e6:.2f}M parameters, {macs / 1e6:.1f}M MACs at {img_size}x{img_size}")

# %% [markdown]
# ## Training
#
# The data come from the official Imagenette archive (the 160 px version), downloaded on first
# use or read from a local copy (see `cocs.data`), decoded once and cached. Training crops a
# random region of random size and aspect and flips it; validation resizes and crops the
# centre. `keep_epoch_ckpts` keeps the weights after every epoch beside the resumable
# `last.pt`.

# %%
cfg = TrainConfig.from_namespace(
    globals(), dataset="imagenette", out_dir=str(out), progress=False, save_predictions=True
)
t0 = time.perf_counter()
run = train_or_reuse(cfg, train_missing=train_missing)
call_seconds = time.perf_counter() - t0
metrics = pd.DataFrame(run["metrics"])
assert run["complete"] and len(metrics) == epochs, f"{len(metrics)} of {epochs} epochs"
assert metrics["train_loss"].notna().all() and metrics["test_acc"].between(0, 100).all()
print(
    f"{run['train_images']} training and {run['test_images']} validation images "
    f"({run['data_source']}); this call took {call_seconds / 60:.1f} min"
)
metrics.round(3)

# %% [markdown]
# The trained model ships with the package in float16, as chapter 4's do (`cocs.weights`):
# `timm.create_model("coc_imagenette", pretrained=True)` loads it offline.

# %%
weights_dir = WEIGHTS_DIR if export_weights else out / "weights"
entry = export(
    run["model"],
    model,
    metrics={"test_acc": run["final"]["test_acc"], "dataset": "imagenette", "img_size": img_size,
             "epochs": run["epochs_done"]},  # fmt: skip
    source=portable_path(out),
    folder=weights_dir,
)
print(f"{model}: {entry['file']}, fingerprint {entry['fingerprint']}")

# %% [markdown]
# ## Learning curves

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
axes[0].plot(metrics["epoch"], metrics["train_loss"], marker="o", label="training")
axes[0].plot(metrics["epoch"], metrics["test_loss"], marker="o", label="validation")
axes[0].set(xlabel="epoch", ylabel="loss (training: label-smoothed; validation: plain)",
            title="Loss")  # fmt: skip
axes[1].plot(metrics["epoch"], metrics["train_acc"], marker="o", label="training")
axes[1].plot(metrics["epoch"], metrics["test_acc"], marker="o", label="validation")
axes[1].axhline(TARGET, color="grey", linestyle="--", linewidth=1, label=f"target {TARGET:.0f}%")
axes[1].set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="Accuracy")
axes[2].plot(metrics["epoch"], metrics["lr"], marker="o")
axes[2].set(xlabel="epoch", ylabel="learning rate", title="Learning rate (end of epoch)")
for ax in axes:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
for ax in axes[:2]:
    ax.legend()
where = trained_on(run)  # a reused run may have trained on another machine than this one
fig.suptitle(f"{model} on Imagenette at {img_size}px; trained on {where['hardware']}, "
             f"{where['threads']} threads, autocast {where['autocast']}")  # fmt: skip
fig.tight_layout()
save_figure(fig, out / "curves.png")
plt.show()

# %% [markdown]
# Two things in these curves need a word, and both are measured below rather than read off
# the figure. Validation accuracy can sit above training accuracy: the training number is an
# average over the epoch, taken on augmented crops in training mode while the weights still
# change, whereas validation sees centre crops after the epoch, in evaluation mode. And
# whether the curves have flattened decides whether more epochs would pay: the gain of the
# last five epochs says it.

# %%
tested = metrics.dropna(subset=["test_acc"])
above = (tested["test_acc"] > tested["train_acc"]).mean()
tail = tested.tail(6)  # five steps between the last six tested epochs
gain = tail["test_acc"].iloc[-1] - tail["test_acc"].iloc[0]
gain_train = tail["train_acc"].iloc[-1] - tail["train_acc"].iloc[0]
print(f"validation above training in {100 * above:.0f}% of the tested epochs")
print(f"over epochs {tail['epoch'].iloc[0]}-{tail['epoch'].iloc[-1]}: validation "
      f"{gain:+.2f} points, training {gain_train:+.2f} points; final learning rate "
      f"{metrics['lr'].iloc[-1]:.1e}")  # fmt: skip

# %% [markdown]
# ## The checkpoint of every epoch
#
# The checkpoints stay out of git; the list of them, relative to the repository when they are
# inside it, is a results file that a later chapter reads to load the model as it was after
# any epoch (`cocs.train.load_trained(path)`).


# %%
def shown_path(path):
    """``path`` relative to the repository root when it lies inside it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(repo_root())) if path.is_relative_to(repo_root()) else str(path)


ckpt_dir = resolve_ckpt_dir(cfg)
checkpoints = pd.DataFrame(
    {
        "epoch": metrics["epoch"],
        "path": [shown_path(ckpt_dir / f"epoch_{e:03d}.pt") for e in metrics["epoch"]],
        "test_acc": metrics["test_acc"],
    }
)
if keep_epoch_ckpts:
    assert all((ckpt_dir / f"epoch_{e:03d}.pt").is_file() for e in metrics["epoch"])
    write_csv(checkpoints, out / "checkpoints.csv")
checkpoints.tail()

# %% [markdown]
# ## Summary
#
# Final accuracy is the last epoch's; best is the highest of any epoch (for information:
# choosing it uses the validation set). Inference speed is timed here on a batch of random
# images of the training size, gradients off, with the share of the CPUs that other processes
# used meanwhile (`busy_percent`): timings of a busy machine never replace a quiet machine's
# committed ones; they are written beside them, to `summary.busy.csv`.

# %%
batch = torch.randn(2 * batch_size, 3, img_size, img_size)  # (B, 3, H, W)
busy = busy_percent()  # what the rest of the machine is doing while inference is timed
committed_summary = out / "summary.csv"
committed_summary = pd.read_csv(committed_summary) if committed_summary.is_file() else None


def write_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Writes summary.csv; inference timings of a busy machine never replace the committed
    ones of a quiet machine: they go beside them, to summary.busy.csv."""
    table = table.assign(busy_percent=busy)
    if committed_summary is not None:
        table, aside = keep_quiet_timings(
            table, out / "summary.csv", key="model", columns=["infer_img_s"],
            old=committed_summary, context=("infer_hardware",),
        )  # fmt: skip
        if aside is not None:
            write_csv(aside, out / "summary.busy.csv")
            print(f"this machine was busy ({busy:.0f}% of the CPUs in other processes): the "
                  "quiet inference timings of summary.csv are kept; these are in "
                  "summary.busy.csv")  # fmt: skip
    write_csv(table, out / "summary.csv")
    return table


def images_per_second(net: torch.nn.Module) -> float:
    """Inference speed on ``batch`` on this machine: the median of 3 passes after a warm-up."""
    net = net.cpu().eval()
    with torch.no_grad():
        net(batch)  # warm-up
        seconds = []
        for _ in range(3):
            t0 = time.perf_counter()
            net(batch)
            seconds.append(time.perf_counter() - t0)
    return len(batch) / statistics.median(seconds)


summary = pd.DataFrame(
    [
        {
            "model": model,
            "img_size": img_size,
            "val_top1_final": metrics["test_acc"].iloc[-1],
            "val_top1_best": metrics["test_acc"].max(),
            "best_epoch": int(metrics.loc[metrics["test_acc"].idxmax(), "epoch"]),
            "params": params,
            "macs_m": macs / 1e6,
            "epochs": len(metrics),
            "wall_minutes": metrics["epoch_seconds"].sum() / 60,
            "train_img_s": metrics["images_per_s"].median(),
            "infer_img_s": images_per_second(run["model"]),
            "train_images": run["train_images"],
            "val_images": run["test_images"],
            **trained_on(run),  # hardware, threads and autocast of the training, from its record
            "infer_hardware": f"{hardware}, {threads} threads",  # this machine: infer_img_s
        }
    ]
)
summary = write_summary(summary)
final = summary["val_top1_final"].iloc[0]
print(
    f"{model} at {img_size}px: {final:.2f}% validation top-1 after epoch {epochs}; the "
    f"{TARGET:.0f}% target was {'MET' if final >= TARGET else 'NOT met'}."
)
summary.drop(columns=["hardware", "infer_hardware"]).round(2)

# %% [markdown]
# ## A ResNet peer at the same budget
#
# An accuracy alone cannot say whether the Context Cluster learns photographs well. `peer`, a
# ResNet-18 at half width with the usual ImageNet stem (`cocs.peers.resnet18_half`, about as
# many parameters), trains with the same recipe, epochs, seed and data order; the two are then
# compared image by image on the validation set (a paired bootstrap, `cocs.stats`; with one
# seed, the interval covers the validation set's variation only, not the seed's). Its
# weights ship with the package too, for chapter 9's ResNet backbone.

# %%
if peer:
    peer_cfg = TrainConfig.from_namespace(
        globals(), model=peer, dataset="imagenette", out_dir=str(out / "peer" / peer),
        keep_epoch_ckpts=False, save_predictions=True, progress=False, ckpt_dir="",
    )  # fmt: skip
    peer_run = train_or_reuse(peer_cfg, train_missing=train_missing)
    assert peer_run["complete"], f"{peer} did not finish"
    peer_metrics = pd.DataFrame(peer_run["metrics"])
    export(peer_run["model"], peer, metrics={"test_acc": peer_run["final"]["test_acc"],
           "dataset": "imagenette", "img_size": img_size, "epochs": peer_run["epochs_done"]},
           source=portable_path(out / "peer" / peer), folder=weights_dir)  # fmt: skip
    summary = pd.concat([summary, pd.DataFrame([{
        "model": peer, "img_size": img_size, "val_top1_final": peer_metrics["test_acc"].iloc[-1],
        "val_top1_best": peer_metrics["test_acc"].max(),
        "best_epoch": int(peer_metrics.loc[peer_metrics["test_acc"].idxmax(), "epoch"]),
        "params": peer_run["params"], "macs_m": macs_of(peer_run["model"]) / 1e6,
        "epochs": len(peer_metrics),
        "wall_minutes": peer_metrics["epoch_seconds"].sum() / 60,
        "train_img_s": peer_metrics["images_per_s"].median(),
        "infer_img_s": images_per_second(peer_run["model"]),
        "train_images": peer_run["train_images"], "val_images": peer_run["test_images"],
        **trained_on(peer_run), "infer_hardware": f"{hardware}, {threads} threads",
    }])], ignore_index=True)  # fmt: skip
    summary = write_summary(summary)
    outcomes = {}
    for name, folder in ((model, out), (peer, out / "peer" / peer)):
        with np.load(folder / "predictions.npz") as f:
            outcomes[name] = (f["label"] == f["pred"])[None]  # (1 seed, images)
    d = paired_difference(outcomes[model], outcomes[peer], allow_one_seed=True)
    print(f"{model} minus {peer}: {d.mean:+.2f} points [{d.low:+.2f}, {d.high:+.2f}] "
          "(validation set's variation only, one seed)")  # fmt: skip
    if d.low > 0 or d.high < 0:
        peer_verdict = (f"{model} is {'ahead of' if d.low > 0 else 'behind'} {peer} on these "
                        "validation images, beyond their sampling variation")  # fmt: skip
    else:
        peer_verdict = f"{model} and {peer} cannot be told apart on these validation images"
    peer_verdict += ("; with one seed each, how much of it another seed would change is not "
                     "measured, so this is no verdict on the architectures")  # fmt: skip
    print(peer_verdict)
    write_csv(pd.DataFrame([{"model": model, "peer": peer, "difference": d.mean, "low": d.low,
                             "high": d.high, "seeds": 1, "verdict": peer_verdict}]),
              out / "peer_difference.csv")  # fmt: skip
    display(summary[["model", "val_top1_final", "params", "epochs", "wall_minutes"]].round(2))

# %% [markdown]
# Imagenette's classes are easy to tell apart (a church, a parachute, a golf ball...), so its
# accuracies are not comparable with ImageNet's: the point of this chapter is a real model,
# trained honestly on real photographs on a CPU, whose per-epoch checkpoints let us watch the
# clusters form.

# %% [markdown]
# ## Exercises
#
# The exercises take seconds to a minute on a laptop CPU. The worked solutions, with checks of
# the expected outcomes, are in `notebooks/solutions/05_imagenette.py`: try first, then compare.
#
# 1. **Detail or epochs.** Count the MACs of `coc_imagenette` on one image of 64, 96 and 128 px.
#    Then let `cocs.train.plan_epochs` fit epochs into the wall time of the chapter's run (the
#    sum of `epoch_seconds` in `results/05_imagenette/metrics.csv`), an epoch at 64 px costing
#    the median of that run's epochs and an epoch at 96 px that times the ratio of the MACs.
#    *Expected:* the MACs grow with the square of the side, to within a fraction of a per cent
#    (the classifier alone does not grow), so at 96 px the budget holds a little under half as
#    many epochs as at 64 px.
# 2. **The checkpoint of every epoch.** Train `coc_imagenette` for 2 epochs on 4 photographs per
#    class at 64 px (batch 8, no warm-up, `keep_epoch_ckpts = True`, `save_predictions = True`)
#    into a temporary folder, load the checkpoints of both epochs with
#    `cocs.train.load_trained`, and predict the 50 validation photographs (5 per class) with
#    `cocs.train.predict`. *Expected:* the two checkpoints hold different weights, and the last
#    one reproduces, photograph by photograph, the predictions the engine saved, and so the
#    accuracy it recorded for that epoch.
# 3. **The floor of the training loss.** With label smoothing $\varepsilon = 0.1$ over $K = 10$
#    classes, the target puts $1 - \varepsilon + \varepsilon / K$ on the true class and
#    $\varepsilon / K$ on each other one. Compute the loss of
#    `torch.nn.functional.cross_entropy(..., label_smoothing=0.1)` for logits equal to the
#    logarithm of that target, compare it with the target's entropy, and try a thousand random
#    logits. *Expected:* the loss equals the entropy to 1e-6 and no random logits do better: the
#    training loss of chapters 4 and 5 levels off above zero by construction.
#
# **Further (long), not part of the workshop** (hours on a CPU, no worked solutions):
#
# - Train at `img_size = 96` with fewer epochs for the same time budget: does seeing more
#   detail beat seeing the data more often?
# - Add `randaugment = "rand-m9-mstd0.5-inc1"`: does it help or hurt at this short schedule?
# - Load the checkpoints of the first and of the last epoch of the chapter's run (paths in
#   `checkpoints.csv`) and compare their predictions on a few validation images.
