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
# # 9. Dense prediction: Context Cluster backbones for semantic segmentation
#
# *Terms such as point, centre, region, head or dispatch are defined in the
# [glossary](../GLOSSARY.md).*
#
# **Question.** Does a Context Cluster backbone carry over from classifying images to labelling
# every pixel, and does the number of centres per region matter for it?
#
# **The paper's claims.** With Semantic FPN on ADE20K, CoC-Small reaches about the same mean
# IoU with 4, 25 or 49 centres per region; with Mask R-CNN on COCO, the backbone beats a
# ResNet-18 (the numbers, as the paper reports them, come from `cocs/paper_numbers.yaml`). It
# also argues that clustering resembles superpixels, which should suit segmentation.
#
# **Here.** CamVid road scenes (SegNet's 11 classes; 367 training and 233 test images), at a
# fixed 352x480, with Semantic FPN (`cocs.dense.SemanticFPN`) on a Context Cluster backbone
# and on a ResNet of similar size, each from scratch and, where the handbook ships weights
# trained on Imagenette (chapter 5), from those; and the Context Cluster with 4, 25 and 49
# centres per region. The backbone keeps the regions it was trained with on Imagenette (4, 2,
# 1 and 1 per side in its four stages; at 352x480 a first-stage region is 22x30 points); the
# authors' release cuts its dense-prediction backbones finer (8, 4, 2 and 1: its
# `context_cluster_small_feat2` to `_feat7`), which the `folds` parameter sets. Every run goes
# through the one training engine with the same CPU budget; void pixels count nowhere. It
# writes, under `results/09_dense_prediction/`:
#
# - `<run>/metrics.csv`, `metrics.json`, `predictions.npz` (each test image's confusion
#   matrix), and the same for seed k > 0 in `seed<k>/<run>/`; for the runs the figures below
#   draw, `shown.npz` (their predictions of the images shown and, for a Context Cluster, its
#   first stage's assignment), so that the chapter reuses the run, figures included, on a
#   machine without its weights; and
#   `weights.safetensors` (the final weights in float16, kept on the machine that trained,
#   not committed: git ignores them);
# - `runs.csv`: mean IoU (with its interval over the test set) and pixel accuracy per run;
#   `per_class.csv`: IoU of every class;
# - `comparisons.csv`: the paper's claims as paired differences with intervals and verdicts;
#   `seeds.csv`: how far another seed moves each run;
#   `two_machines.csv`: the table's runs beside their twins trained on a faster machine
#   (kept in `faster_machine/`) and beside a run with finer regions (`finer_regions/`),
#   read from the committed results (see below);
#   `aims.csv`: the chapter's aims, met or missed;
# - `predictions.png`: images, ground truth and predictions; `clusters.png`: the backbone's
#   clusters on road scenes.

# %% tags=["parameters"]
backbone = "coc_imagenette"  # the Context Cluster backbone (32-256 channels)
folds = ""  # regions per side of its four stages, e.g. "8,4,2,1"; "": its own (4, 2, 1, 1)
peer = "resnet18_half"  # the ResNet peer (cocs.peers; about the backbone's size)
peer_kwargs = "{}"  # its arguments, a Python dict literal
centres = "2,5,7"  # centres per side of a region: 4, 25 and 49 centres per region
pretrained = True  # also train from the shipped Imagenette weights where they exist
budget_minutes = 28.0  # wall-clock minutes of training and evaluation per run
seeds = 1  # seeds each run trains: 0, then 1, ... (seed k > 0 under seed<k>/); a further
# seed found there is read too whenever it matches the run's recipe and model
img_size = 352  # rows of the 4:3 scenes (352 x 480)
batch_size = 8
lr = 1.0e-3  # AdamW, cosine after a linear warm-up
weight_decay = 0.05
warmup_epochs = 1
label_smoothing = 0.0
drop_path = 0.1
amp = "auto"  # autocast: auto (bf16 where the CPU or GPU has it natively, else off), bf16, off
max_per_class = 0  # training images kept (first in name order); 0: all 367
max_test_per_class = 0  # test images kept; 0: all 233
num_threads = 0  # torch CPU threads; 0: all cores
train_missing = True  # False: train nothing, only reuse finished runs that match today's code
results_dir = "results"

# %%
import ast
import json
import time
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import cocs  # noqa: F401  (registers the models)
from cocs.ablation import Finding, verdict
from cocs.bench import hardware_name
from cocs.camvid import CLASSES
from cocs.dense import shown_images, shown_key
from cocs.handbook import results_path, save_figure, write_csv
from cocs.maps import blend
from cocs.model import capture_assignments
from cocs.paper import numbers
from cocs.runs import (
    budget_caveat,
    finished,
    mismatch,
    read_kept,
    train_or_reuse,
    trained_on,
    write_kept,
)
from cocs.stats import miou_interval, paired_miou_difference
from cocs.train import TrainConfig, build_data, mean_iou, portable_path
from cocs.weights import shipped

started = time.perf_counter()
if num_threads:
    torch.set_num_threads(num_threads)
out = results_path(results_dir, "09_dense_prediction")
hardware, threads = hardware_name(), torch.get_num_threads()
sides = [int(c) for c in centres.split(",") if c.strip()]
if seeds < 1:
    raise ValueError(f"seeds={seeds}: each run trains at least its seed 0; use seeds=1 or more")
per_side = tuple(int(f) for f in folds.split(",") if f.strip())  # regions per side, by stage
fold = {"fold_w": per_side, "fold_h": per_side} if per_side else {}
bundle = build_data(TrainConfig.from_namespace(globals(), model="semantic_fpn", dataset="camvid",
                                               epochs=0, progress=False))  # fmt: skip
shown = shown_images(len(bundle.test))  # the test images the figures show

# %% [markdown]
# ## The runs
#
# One row per run: the backbone, its arguments (the centres per region), and whether it starts
# from weights trained on Imagenette. A backbone without shipped weights is trained from
# scratch only, and the table says so.

# %%
plan = []
for side in sides:
    kw = {"proposal_w": side, "proposal_h": side, **fold}
    plan.append((f"coc_{side * side}", backbone, kw, False))
plan.append(("resnet", peer, ast.literal_eval(peer_kwargs), False))
for name, body in (("coc_4", backbone), ("resnet", peer)):
    if pretrained and shipped(body) is not None:
        plan.append((f"{name}_pretrained", body, {} if body == peer else
                     {"proposal_w": 2, "proposal_h": 2, **fold}, True))  # fmt: skip
    elif pretrained:
        print(f"{body}: no shipped Imagenette weights yet (chapter 5 exports them); from scratch only")
pd.DataFrame(plan, columns=["run", "backbone", "backbone_kwargs", "pretrained"])

# %% [markdown]
# ## Training
#
# AdamW with a cosine schedule after a warm-up epoch, random scaling (0.75-1.5), crops and
# flips of image and mask together (`cocs.camvid.AugmentedSegmentation`), cross-entropy over
# the non-void pixels; the engine fits as many epochs as the budget holds. A finished run is
# reused without its model when its `shown.npz` matches it; otherwise its weights are loaded
# (or, where this machine has none, it is trained again).
#
# Each run trains `seeds` seeds (the default profile: one, seed 0, within its three hours). A
# run of another seed k already in `seed<k>/` is read as well when it is what this chapter
# would train (the same recipe, seed k, and the model today's code builds), so that seeds
# trained at another time, with `seeds = 2`, give every comparison below its seed spread.


# %%
def seed_config(cfg: TrainConfig, k: int) -> TrainConfig:
    """The run of ``cfg`` with seed ``k``: seed 0 under ``<run>/``, seed k under ``seed<k>/``."""
    if k == 0:
        return cfg
    return replace(cfg, seed=k, out_dir=str(out / f"seed{k}" / Path(cfg.out_dir).name))


rows, finished_runs, configs = [], {}, {}
# per run, then per seed: its test confusions (images, C, C), where it trained, its epochs
confusions, machines, epochs_of = {}, {}, {}
for run_name, body, kw, warm in plan:
    cfg = TrainConfig.from_namespace(
        globals(), model="semantic_fpn", dataset="camvid", epochs=0, save_predictions=True, save_weights=True,
        model_kwargs=f"backbone={body!r},backbone_kwargs={kw!r},pretrained={warm}",
        out_dir=str(out / run_name), progress=False,
    )  # fmt: skip
    by_seed = {}  # seed -> its finished run
    for k in range(seeds):
        by_seed[k] = train_or_reuse(seed_config(cfg, k), train_missing=train_missing,
                                    need_model=False)  # fmt: skip
    k = seeds
    while Path(seed_config(cfg, k).out_dir).is_dir():  # seeds trained at another time
        if (run := finished(seed_config(cfg, k), weights=False)) is None:
            print(f"seed {k} of {run_name} not read: {mismatch(seed_config(cfg, k))}")
        else:
            by_seed[k] = run
        k += 1
    for k, run in by_seed.items():
        assert run["complete"], f"{run_name}, seed {k}, did not finish its plan"
        with np.load(Path(seed_config(cfg, k).out_dir) / "predictions.npz") as f:
            confusions.setdefault(run_name, {})[k] = f["confusion"]  # (images, C, C)
        machines.setdefault(run_name, {})[k] = trained_on(run)
        epochs_of.setdefault(run_name, {})[k] = run["epochs_done"]
    run, confusion = by_seed[0], confusions[run_name][0]  # the table's run: seed 0
    finished_runs[run_name], configs[run_name] = run, cfg
    miou, iou = mean_iou(torch.from_numpy(confusion.sum(0)))
    _, low, high = miou_interval(confusion)  # the test set's variation, not the seed's
    every = [mean_iou(torch.from_numpy(c.sum(0)))[0] for c in confusions[run_name].values()]
    rows.append({"run": run_name, "backbone": body, "centres": kw.get("proposal_w", 0) ** 2 or None,
                 "pretrained": warm, "miou": miou, "miou_low": low, "miou_high": high,
                 "pixel_acc": run["final"]["test_acc"],
                 "epochs": run["epochs_done"], "params": run["params"], **trained_on(run),
                 "minutes": sum(r["epoch_seconds"] for r in run["metrics"]) / 60,
                 "seconds_per_epoch": float(np.median([r["train_seconds"] for r in run["metrics"]])),
                 "seeds": len(every), "miou_mean": float(np.mean(every)),
                 "miou_seeds": " ".join(f"{m:.2f}" for m in every),
                 "epochs_seeds": " ".join(str(r["epochs_done"]) for r in by_seed.values()),
                 **{f"iou_{c}": v for c, v in zip(CLASSES, iou.tolist(), strict=True)}})  # fmt: skip
    print(f"{run_name:<20} mIoU {miou:.2f}% [{low:.2f}, {high:.2f}], "
          f"pixel accuracy {run['final']['test_acc']:.2f}% "
          f"after {run['epochs_done']} epochs in {rows[-1]['minutes']:.1f} min; "
          f"every seed: {rows[-1]['miou_seeds']}")  # fmt: skip
runs = pd.DataFrame(rows)
if caveat := budget_caveat([m for by in machines.values() for m in by.values()]):  # reused runs
    print(f"NB: {caveat}")
write_csv(runs, out / "runs.csv")
per_class = runs.set_index("run")[[f"iou_{c}" for c in CLASSES]].T
per_class.index = list(CLASSES)
write_csv(per_class.reset_index(names="class"), out / "per_class.csv")
display(runs[["run", "pretrained", "miou", "miou_low", "miou_high", "pixel_acc", "epochs", "params",
              "minutes", "seconds_per_epoch", "seeds", "miou_seeds"]].round(2))  # fmt: skip

# %% [markdown]
# `miou`, `miou_low` and `miou_high` are seed 0's mean IoU and a 95% interval of it over the
# test set's variation (`cocs.stats.miou_interval`: a bootstrap that resamples whole test
# images and recomputes the mean IoU from their pixel counts); `miou_seeds` lists every seed's
# mean IoU and `miou_mean` is their mean. How far another seed moves a run, the spread that
# the test set's interval does not show, is measured below ("What a seed does").

# %% [markdown]
# ## Ours beside the paper's
#
# The paper's numbers are ADE20K (150 classes) after 80,000 iterations from ImageNet weights;
# ours are CamVid (11 classes) after minutes on a CPU. Only the pattern can be compared: does
# the centre count matter?

# %%
display(pd.DataFrame(numbers()["other_tasks"]["ade20k_semantic_fpn_80k"]).assign(
    source="paper, ADE20K, Semantic FPN"))  # fmt: skip
by_centres = runs[runs["run"].str.match(r"coc_\d+$")][["centres", "miou"]]
by_centres

# %% [markdown]
# On CamVid itself, others report the numbers below (`cocs/paper_numbers.yaml`, with their
# sources): SegNet-Basic trained on the same 367 images, SegNet trained on 3,433 road scenes
# from several data sets, and the table of Yu and Koltun (whose SegNet row matches none of the
# SegNet paper's own), all at full resolution on GPUs. They are reported elsewhere, on other
# budgets and resolutions, not measured here: the one closest to this chapter's setting is
# SegNet-Basic, the only one trained on CamVid's training images alone.

# %%
camvid_reported = pd.DataFrame(numbers()["other_tasks"]["camvid_11"])
camvid_reported

# %% [markdown]
# ## What reproduces here
#
# Each comparison is the paired difference of two runs' mean IoU on the same test images
# (`cocs.stats.paired_miou_difference`: the bootstrap above, applied to both runs with the
# same resampled images, so that what makes an image hard for both cancels out). Where both
# runs have several seeds, they are paired seed by seed (the same seed of each) and the 95%
# interval adds the spread of the per-seed differences to the test set's variation (the
# `seeds` column says how many); with one seed, it covers the test set only, and a verdict is
# about these trained models, not yet about the architectures. The verdicts follow chapter 6's rule
# (`cocs.ablation.verdict`): "reproduces" when the interval lies on the paper's side of zero
# (for a claim of no difference: within ±1 point), "reversed" when it lies on the other side,
# "differs" when a claim of no difference meets an interval that excludes zero, "no difference
# detected at this scale" when it holds zero; `detectable` is the smallest true difference
# that the comparison would find with 80% power. `same_machine` says whether the two runs
# trained on one machine at one precision and speed (`cocs.runs.budget_caveat`: two machines
# of one name can differ; the speed is measured by `cocs.provenance.speed_probe`, and runs
# recorded before it must share their platform build instead): runs reused from another
# machine had other minutes, and a verdict between such runs is about those runs only.
#
# Two more limits. Every run has the same wall-clock budget, so a costlier model fits fewer
# epochs (the `epochs` and `seconds_per_epoch` columns above): a difference between centre
# counts can mix the centres' effect with that of the epochs they cost, where the paper trains
# every model for the same iterations. On this machine the three centre counts cost within 10%
# of one another per epoch (checked below), so that part is small here. And the pretrained
# rows start from chapter 5's Imagenette models, whose own accuracies differ (chapter 5), so
# "backbone" there includes how well each learned Imagenette. The paper compares backbones on
# COCO detection, not on ADE20K, and starts every backbone from ImageNet weights: the
# pretraining rows are this chapter's own question.

# %%
scratch = runs[runs["run"].str.match(r"coc_\d+$")].sort_values("centres")
cost = scratch["seconds_per_epoch"].max() / scratch["seconds_per_epoch"].min()
print(f"seconds per epoch of the centre counts: {scratch['seconds_per_epoch'].round(1).tolist()}")
if scratch["epochs"].min() > 2:  # budgeted runs of several epochs (a smoke run has one)
    assert cost < 1.1, f"the prose: the centre counts cost within 10% per epoch, not {cost:.2f}x"
tasks = numbers()["other_tasks"]
fpn = ", ".join(f"{r['model']} {r['miou']}" for r in tasks["ade20k_semantic_fpn_80k"]
                if r["model"].startswith("CoC-Small"))  # fmt: skip
rcnn = ", ".join(f"{r['model']} {r['ap_box']}" for r in tasks["coco_mask_rcnn_1x"]
                 if r["model"].startswith(("CoC-Small", "ResNet")))  # fmt: skip
first = f"coc_{sides[0] ** 2}"
claims = [(Finding("the centre count matters little", f"coc_{s * s}", first, expect="similar"),
           f"ADE20K, Semantic FPN, mIoU: {fpn}") for s in sides[1:]]  # fmt: skip
for suffix in ("", "_pretrained"):
    claims.append((Finding("a Context Cluster backbone beats the ResNet", first + suffix,
                           "resnet" + suffix), f"COCO, Mask R-CNN 1x, box AP: {rcnn}"))  # fmt: skip
for body in (first, "resnet"):
    claims.append((Finding("Imagenette weights help", f"{body}_pretrained", body),
                   "not compared: the paper starts every backbone from ImageNet"))  # fmt: skip


def common_seeds(a: str, b: str) -> list[int]:
    return sorted(confusions[a].keys() & confusions[b].keys())


def paired(a: str, b: str):
    """Run ``a`` minus run ``b`` in mean IoU, over the seeds both have, paired seed by seed."""
    ks = common_seeds(a, b)
    a_seeds, b_seeds = (np.stack([confusions[r][k] for k in ks]) for r in (a, b))
    return paired_miou_difference(a_seeds, b_seeds, allow_one_seed=True)


def same_machine(a: str, b: str) -> bool:
    """Whether every seed of runs ``a`` and ``b`` that is compared trained on one machine at one
    precision (the table's caveat has nothing to say about them): only then did their equal
    minutes buy comparable work."""
    ks = common_seeds(a, b)
    return budget_caveat([machines[r][k] for r in (a, b) for k in ks]) is None


found = []
for f, paper in claims:
    if {f.better, f.worse} <= confusions.keys():
        d = paired(f.better, f.worse)
        found.append({"claim": f.claim, "better": f.better, "worse": f.worse, "expect": f.expect,
                      **d.as_dict(), "verdict": verdict(f, d.low, d.high), "paper": paper,
                      "same_machine": same_machine(f.better, f.worse)})  # fmt: skip
comparisons = pd.DataFrame(found)
write_csv(comparisons, out / "comparisons.csv")
display(comparisons[["claim", "better", "worse", "seeds", "mean", "low", "high", "detectable",
                     "verdict", "same_machine"]].round(2))  # fmt: skip

# %% [markdown]
# The handbook's aims for this chapter: the best Context Cluster run at 50% mean IoU or more
# within its budget, and at most 2 points below the best ResNet run. Below, what the runs
# reached, and SegNet-Basic's reported number, the one trained on the same 367 images.

# %%
ours = runs[runs["backbone"] == backbone].set_index("run")
theirs = runs[runs["backbone"] == peer].set_index("run")
best, best_peer = ours["miou"].idxmax(), theirs["miou"].idxmax()
gap = paired(best, best_peer)
aims = pd.DataFrame([  # same_machine: the first aim is about one run, on one machine
    {"aim": "best Context Cluster run: at least 50% mean IoU", "runs": best,
     "measured": ours.loc[best, "miou"], "low": ours.loc[best, "miou_low"],
     "high": ours.loc[best, "miou_high"], "met": bool(ours.loc[best, "miou"] >= 50.0)},
    {"aim": "best Context Cluster run: at most 2 points below the best ResNet run",
     "runs": f"{best} - {best_peer}", "measured": gap.mean, "low": gap.low, "high": gap.high,
     "met": bool(gap.mean >= -2.0)},
]).assign(same_machine=[True, same_machine(best, best_peer)])  # fmt: skip
write_csv(aims, out / "aims.csv")
segnet = next(r for r in tasks["camvid_11"] if r["model"] == "SegNet-Basic")
apart = " The two trained on different machines or precisions: equal minutes were not equal work."
lines = [f"- **{c.claim}** ({c.better} minus {c.worse}, {c.seeds} seed{'s' * (c.seeds > 1)} "
         f"each): {c.mean:+.1f} points of mean IoU, "
         f"95% interval [{c.low:+.1f}, {c.high:+.1f}]: *{c.verdict}*. The paper: {c.paper}."
         + ("" if c.same_machine else apart) for c in comparisons.itertuples()]  # fmt: skip
lines += [f"- **Aim: {a.aim}** ({a.runs}): {a.measured:.1f} [{a.low:.1f}, {a.high:.1f}]: "
          f"**{'met' if a.met else 'missed'}**." + ("" if a.same_machine else apart)
          for a in aims.itertuples()]  # fmt: skip
lines.append(
    f"- **SegNet-Basic** ({segnet['budget']}, reported elsewhere): {segnet['miou']} mean IoU; "
    f"the best run here, {best}, {ours.loc[best, 'miou']:.1f} after "
    f"{ours.loc[best, 'epochs']} epochs in {ours.loc[best, 'minutes']:.0f} minutes on a CPU "
    f"(every seed: {ours.loc[best, 'miou_seeds']})."
)
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Beyond one run: seeds and machines
#
# The table above has one run per model and seed, and its intervals cover the test set only.
# Two things it cannot show are read here from the committed results, in every profile, so
# that the prose below is checked against them:
#
# - **another seed.** Every run of the table was trained again with seed 1 on the table's
#   machine (its recipe with seed 1, as `seeds = 2` trains it; kept in `seed1/` and checked
#   below to be the table run's model and recipe): another seed means other initial weights
#   for the layers that start from scratch, another order and augmentation of the training
#   images. It shows how far a seed alone moves a run at this budget, and the comparisons
#   above pair these seeds with the table's.
# - **another machine of the same name.** Equal minutes are equal work only on machines of
#   equal speed, and a machine's name does not tell its speed. The table's runs trained on one
#   machine (an AMD EPYC with AVX512, 2 threads, bfloat16) under one platform build. Five of
#   them had first been trained, from the same code, recipe and seed, on a machine of the same
#   name under another platform build, on which every step was faster; they are kept in
#   `faster_machine/`. Each beside its twin shows what the machine alone does to a budget in
#   minutes, and whether the verdicts hold on the faster machine.
#
# One more run trained on the table's machine, kept in `finer_regions/`: `coc_4` with the
# regions that the authors' release uses for dense prediction (`folds = "8,4,2,1"`).

# %%
committed = results_path("results", "09_dense_prediction", create=False)  # the default run's
table_runs = ("coc_4", "coc_25", "coc_49", "resnet", "coc_4_pretrained", "resnet_pretrained")
pilot = {}
folders = {name: committed / name for name in table_runs}
folders |= {f"{name}, seed 1": committed / "seed1" / name for name in table_runs}
folders |= {f"{p.name}, faster": p for p in sorted((committed / "faster_machine").iterdir())
            if p.is_dir()}  # fmt: skip
folders["coc_4, folds 8/4/2/1"] = committed / "finer_regions" / "coc_4"
for label, folder in folders.items():
    meta = json.loads((folder / "metrics.json").read_text())
    with np.load(folder / "predictions.npz") as f:
        confusion = f["confusion"]  # (images, C, C)
    miou, _ = mean_iou(torch.from_numpy(confusion.sum(0)))
    _, low, high = miou_interval(confusion)
    seconds = pd.read_csv(folder / "metrics.csv")["train_seconds"].median()
    pilot[label] = {"confusion": confusion[None], "fingerprint": meta["fingerprint"],
                    "recipe": meta["recipe"],
                    "row": {"run": label, "platform": meta["environment"]["hardware"]["platform"],
                            "epochs": meta["epochs_done"], "seconds_per_epoch": seconds,
                            "miou": miou, "miou_low": low, "miou_high": high},
                    "setting": (meta["environment"]["hardware"]["cpu_capability"],
                                meta["environment"]["hardware"]["torch_threads"], meta["autocast"])}  # fmt: skip
one_runs = pd.DataFrame([p["row"] for p in pilot.values()]).set_index("run")
twins = [label.removesuffix(", faster") for label in folders if label.endswith(", faster")]
table_build = one_runs.loc["coc_4", "platform"]
for name in twins:
    assert pilot[name]["fingerprint"] == pilot[f"{name}, faster"]["fingerprint"], f"{name}: twins"
    assert pilot[name]["recipe"] == pilot[f"{name}, faster"]["recipe"], f"{name}: twins"
for name in table_runs:  # the same model and recipe, seed 1 instead of 0
    first, second = pilot[name], pilot[f"{name}, seed 1"]
    assert second["fingerprint"] == first["fingerprint"], f"{name}: seeds of another model"
    assert (first["recipe"]["seed"], second["recipe"]["seed"]) == (0, 1)
    assert second["recipe"] == first["recipe"] | {"seed": 1}, f"{name}: seeds of another recipe"
assert pilot["coc_4, folds 8/4/2/1"]["fingerprint"] != pilot["coc_4"]["fingerprint"]
here = [label for label in folders if not label.endswith(", faster")]
assert len(twins) == 5, f"the prose: five twins, not {twins}"
assert {pilot[label]["setting"] for label in folders} == {("AVX512", 2, "bfloat16")}, "the prose"
assert (one_runs.loc[here, "platform"] == table_build).all(), "the prose: one machine"
assert (one_runs.loc[[f"{n}, faster" for n in twins], "platform"] != table_build).all()
display(one_runs.round(2))


def fmt(d) -> str:
    return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}]"


def both_seeds(name: str) -> np.ndarray:
    """(2, images, C, C): seeds 0 and 1 of a table run, in that order."""
    return np.concatenate([pilot[name]["confusion"], pilot[f"{name}, seed 1"]["confusion"]])


# %% [markdown]
# ### What a seed does
#
# For every run, seed 1 minus seed 0 on the same test images, with its interval over the test
# set, and the epochs each fitted into the same minutes (the machine's speed drifts a little
# from run to run).

# %%
seed_rows = []
for name in table_runs:
    d = paired_miou_difference(pilot[f"{name}, seed 1"]["confusion"], pilot[name]["confusion"],
                               allow_one_seed=True)  # fmt: skip
    seed_rows.append({"run": name, "mean": d.mean, "low": d.low, "high": d.high,
                      "beyond_test_interval": bool(d.low > 0 or d.high < 0),
                      "epochs": f"{one_runs.loc[f'{name}, seed 1', 'epochs']} vs "
                                f"{one_runs.loc[name, 'epochs']}"})  # fmt: skip
seed_moves = pd.DataFrame(seed_rows)
write_csv(seed_moves, out / "seeds.csv")
moved = seed_moves.set_index("run")["mean"].abs()  # how far a seed moved each run
display(seed_moves.round(2))
display(Markdown(
    f"A seed moved a run by {moved.min():.1f} to {moved.max():.1f} points of mean IoU (median "
    f"{moved.median():.1f}); {int(seed_moves['beyond_test_interval'].sum())} of "
    f"{len(seed_moves)} moves lie beyond the test set's interval."
))  # fmt: skip

# %% [markdown]
# A seed alone moves every Context Cluster run further than its test-set interval allows,
# and the ResNet runs less, within theirs (checked below): at this budget the clustering
# backbone seems the more sensitive to its seed (four runs against two). So the per-run
# intervals of the table understate how uncertain a comparison of two runs is, which is why
# the comparisons above pair seeds 0 and 1 and add the spread of the per-seed differences to
# the test set's variation. No run ended higher with seed 1 than with seed 0; with six runs that can be
# chance, and the comparisons, which set seed 1 against seed 1 and seed 0 against seed 0, do
# not depend on it.

# %%
by_run = seed_moves.set_index("run")
coc_runs = [n for n in table_runs if n.startswith("coc_")]
peer_runs = [n for n in table_runs if not n.startswith("coc_")]
assert by_run.loc[coc_runs, "beyond_test_interval"].all(), "the prose: beyond the intervals"
assert not by_run.loc[peer_runs, "beyond_test_interval"].any(), "the prose: within theirs"
assert moved[peer_runs].max() < moved[coc_runs].min(), "the prose: the ResNet runs moved less"
assert (seed_moves["mean"] < 0).all(), "the prose: no run higher with seed 1"
epochs_0, epochs_1 = (one_runs.loc[[f"{n}{s}" for n in table_runs], "epochs"].to_numpy()
                      for s in ("", ", seed 1"))  # fmt: skip
assert (epochs_0 != epochs_1).any(), "the prose: the same minutes fitted other epoch counts"

# %% [markdown]
# ### What a machine does

# %%
pairs = [(f"the slower machine, {name} (the same model, recipe and seed)", name, f"{name}, faster")
         for name in twins]  # fmt: skip
pairs += [("the Context Cluster backbone against the ResNet, on the faster machine",
           "coc_4, faster", "resnet, faster"),
          ("the same, both pretrained, on the faster machine", "coc_4_pretrained, faster",
           "resnet_pretrained, faster"),
          ("25 centres per region instead of 4, on the faster machine", "coc_25, faster",
           "coc_4, faster"),
          ("the release's regions (8, 4, 2, 1 per side), on one machine", "coc_4, folds 8/4/2/1",
           "coc_4")]  # fmt: skip
lines, one_found, one_rows = [], {}, []
for what, a, b in pairs:
    d = paired_miou_difference(pilot[a]["confusion"], pilot[b]["confusion"], allow_one_seed=True)
    sign = "higher" if d.low > 0 else "lower" if d.high < 0 else "no difference detected"
    if (a, b) == ("coc_25, faster", "coc_4, faster"):  # the paper's claim, judged as above
        sign = verdict(Finding("the centre count matters little", a, b, expect="similar"),
                       d.low, d.high)  # fmt: skip
    one_found[a, b] = (d, sign)
    epochs = f"{one_runs.loc[a, 'epochs']} vs {one_runs.loc[b, 'epochs']}"
    seconds = (f"{one_runs.loc[a, 'seconds_per_epoch']:.0f} vs "
               f"{one_runs.loc[b, 'seconds_per_epoch']:.0f}")  # fmt: skip
    one_rows.append({"what": what, "better": a, "worse": b, **d.as_dict(), "verdict": sign,
                     "epochs": epochs, "seconds_per_epoch": seconds})  # fmt: skip
    lines.append(f"- **{what}** ({a} minus {b}): {d.mean:+.1f} points of mean IoU, 95% interval "
                 f"[{d.low:+.1f}, {d.high:+.1f}]: *{sign}*; epochs {epochs}; seconds of "
                 f"training per epoch {seconds}.")  # fmt: skip
write_csv(pd.DataFrame(one_rows), out / "two_machines.csv")
display(Markdown("\n".join(lines)))

# %% [markdown]
# What the machine alone does. The slower machine takes longer for every step, so the same
# minutes buy fewer epochs, and every run ends lower there than its twin (checked below). It
# does not cost every model alike: the Context Cluster runs lose more than the ResNet's, so
# the ResNet's lead over the Context Cluster backbone is not a property of the two models
# alone: from scratch and from Imagenette alike, it grows as the budget shrinks. The ResNet
# gets further in few epochs; the clustering backbone, it seems, needs more of them before
# its gains show.
#
# What it does to the verdicts. With one seed each, 25 centres per region end below 4 on the
# faster machine, by more than a seed moved any run. On the table's machine, the two seeds of
# each leave 25 minus 4 too uncertain to decide (*no difference detected at this scale*: the
# two seeds' differences have opposite signs, and an interval from two seeds is wide, wider
# than the faster machine's difference) and put 49 minus 4 within a point (*reproduces*). The
# paper's "the centre count matters little" is therefore not contradicted here, and where this
# chapter can judge it, it holds; the faster machine's difference is one pair of runs. The
# finer regions of the authors' release, on the table's machine, gain no more than a seed
# moved one run, at no more cost per epoch: a hint in their favour, not a finding. Only the
# gap between the backbones, more than four times the largest seed difference on either
# machine, is far beyond all of these.

# %%
machine = {name: one_found[name, f"{name}, faster"][0] for name in twins}
assert all(d.high < 0 for d in machine.values()), "the prose: every twin is lower here"
for c, r in (("coc_4", "resnet"), ("coc_4_pretrained", "resnet_pretrained")):
    assert machine[r].mean > machine[c].mean, f"the prose: {r} loses less than {c}"
backbones = {"from scratch": ("coc_4", "resnet"),
             "from Imagenette": ("coc_4_pretrained", "resnet_pretrained")}  # fmt: skip
slow_gap = {k: paired_miou_difference(pilot[c]["confusion"], pilot[r]["confusion"],
                                      allow_one_seed=True) for k, (c, r) in backbones.items()}  # fmt: skip
fast_gap = {k: one_found[f"{c}, faster", f"{r}, faster"][0] for k, (c, r) in backbones.items()}
assert all(slow_gap[k].mean < fast_gap[k].mean for k in backbones), "the prose: the lead grows"
two_gap = {k: paired_miou_difference(both_seeds(c), both_seeds(r))
           for k, (c, r) in backbones.items()}  # fmt: skip
centres_fast_d, centres_fast = one_found["coc_25, faster", "coc_4, faster"]
centres_two = {n: paired_miou_difference(both_seeds(n), both_seeds("coc_4"))
               for n in ("coc_25", "coc_49")}  # fmt: skip
centres_verdict = {n: verdict(Finding("the centre count matters little", n, "coc_4",
                                      expect="similar"), d.low, d.high)
                   for n, d in centres_two.items()}  # fmt: skip
folds_d, folds_sign = one_found["coc_4, folds 8/4/2/1", "coc_4"]
folds_cost = (one_runs.loc["coc_4, folds 8/4/2/1", "seconds_per_epoch"]
              / one_runs.loc["coc_4", "seconds_per_epoch"])  # fmt: skip
speed = [one_runs.loc[n, "seconds_per_epoch"] / one_runs.loc[f"{n}, faster", "seconds_per_epoch"]
         for n in twins]  # fmt: skip
assert min(speed) > 1, "the prose: every step was faster on the faster machine"
assert centres_fast_d.high < 0 and abs(centres_fast_d.mean) > moved.max(), "the prose: faster"
d25 = centres_two["coc_25"]
assert centres_verdict == {"coc_25": "no difference detected at this scale",
                           "coc_49": "reproduces"}, f"the prose: {centres_verdict}"  # fmt: skip
assert np.prod(np.sign(d25.per_seed)) < 0, "the prose: the two seeds' signs differ"
assert d25.high - d25.low > abs(centres_fast_d.mean), "the prose: wider than the faster's"
assert folds_d.mean <= moved.max(), "the prose: the finer regions gain no more than a seed moved"
assert folds_d.low > 0 and folds_cost < 1.05, "the prose: finer regions do better, no costlier"
gaps = [*slow_gap.values(), *fast_gap.values(), *two_gap.values()]
assert all(abs(g.mean) > 4 * moved.max() for g in gaps), "the prose: the backbones' gap"

display(Markdown("\n".join([
    f"- Seconds per training epoch, slower machine over faster: {min(speed):.2f}x to "
    f"{max(speed):.2f}x.",
    "- Lost to the slower machine (points of mean IoU): "
    + ", ".join(f"{n} {fmt(d)}" for n, d in machine.items()) + ".",
    *[f"- Context Cluster minus ResNet, {k}: {fmt(slow_gap[k])} on the table's machine and "
      f"{fmt(fast_gap[k])} on the faster one, seed 0 each; {fmt(two_gap[k])} over seeds 0 and 1 "
      "on the table's machine." for k in backbones],
    *[f"- {n.removeprefix('coc_')} minus 4 centres per region, seeds 0 and 1 on the table's "
      f"machine: {fmt(d)}, *{centres_verdict[n]}* (smallest detectable difference "
      f"{d.detectable:.1f} points)." for n, d in centres_two.items()],
    f"- 25 minus 4 centres per region, seed 0 on the faster machine: {fmt(centres_fast_d)}, "
    f"*{centres_fast}*.",
    f"- The release's regions minus the backbone's own, seed 0 on the table's machine: "
    f"{fmt(folds_d)}, *{folds_sign}*, at {folds_cost:.2f}x the seconds per epoch.",
])))  # fmt: skip

# %% [markdown]
# ## What the models see
#
# Test images, their ground truth (void in black) and the predictions of the best run of each
# backbone. Each of them keeps what these figures need from its model in its `shown.npz`,
# written when the model is at hand (a run reused without it loads its weights, or is trained
# again where this machine has none) and read back when it is not.

# %%
x, y = bundle.test.__getitems__(shown)
palette = np.array(plt.get_cmap("tab20").colors[:11] + ((0.0, 0.0, 0.0),))  # class 11: void
kept = {}
for name in (best, best_peer):  # the Context Cluster run's clusters are drawn below too
    path, run = out / name / "shown.npz", finished_runs[name]
    if run.get("model") is None and read_kept(path, shown_key(run)) is None:
        run = train_or_reuse(configs[name], train_missing=train_missing)  # the figure needs it
    if (net := run.get("model")) is not None:  # draw from the model, and keep what was drawn
        with torch.no_grad(), capture_assignments(net.eval()) as found:
            arrays = {"pred": net(cocs.data.normalize(x, bundle.mean, bundle.std)).argmax(1)}
        if found:  # a Context Cluster backbone: its first stage's assignment (images, heads, h, w)
            arrays["assignment"] = next(iter(found.values()))
        write_kept(path, shown_key(run), {k: v.numpy() for k, v in arrays.items()})
    kept[name] = read_kept(path, shown_key(run))
    assert kept[name] is not None, f"{portable_path(path)} does not match the run {name}"
preds = {name: k["pred"] for name, k in kept.items()}
cols = 2 + len(preds)
fig, axes = plt.subplots(len(shown), cols, figsize=(2.6 * cols, 2.2 * len(shown)), squeeze=False)
for r in range(len(shown)):
    panels = [x[r].permute(1, 2, 0).numpy(), palette[y[r].numpy()]]
    panels += [palette[p[r]] for p in preds.values()]
    for c, (panel, title) in enumerate(zip(panels, ["image", "ground truth", *preds], strict=True)):
        axes[r, c].imshow(panel)
        axes[r, c].set_title(title, fontsize=8)
        axes[r, c].axis("off")
fig.tight_layout()
save_figure(fig, out / "predictions.png")
plt.show()

# %% [markdown]
# ## The backbone's clusters on road scenes
#
# The first stage's clusters of the best Context Cluster run, from the assignment the
# operation returns: within each region (white lines), one colour per centre.

# %%
first = torch.from_numpy(kept[best]["assignment"])  # (images, heads, H / 4, W / 4)
fig, ax = plt.subplots(figsize=(6, 4.5))
ax.imshow(blend(x[0], first[0, 0], centres=int(ours.loc[best, "centres"])))
ax.set_title(f"{best}, stage 1, head 1: {first.shape[2]}x{first.shape[3]} points")
ax.axis("off")
save_figure(fig, out / "clusters.png")
plt.show()
print(f"this chapter ran {(time.perf_counter() - started) / 60:.1f} minutes")

# %% [markdown]
# ## Detection, for readers with a GPU
#
# The same backbones plug into torchvision's Faster and Mask R-CNN through an FPN
# (`cocs.dense.build_detector`; `tests/test_dense.py` trains a step and predicts with both).
# COCO and a GPU are what the paper's detection results need; **no detection result was
# measured here**. With COCO in torchvision's layout, a reader would build
# `build_detector(timm.create_model("coc_small", features_only=True), num_classes=91)` and
# train it with torchvision's detection reference scripts (a 1x schedule: 12 epochs).

# %% [markdown]
# ## Exercises
#
# Each exercise runs in seconds on a laptop CPU and needs no data set. The worked solutions,
# with checks of the expected outcomes, are in `notebooks/solutions/09_dense_prediction.py`:
# try first, then compare.
#
# 1. **One head, any backbone.** Build `semantic_fpn` on `coc_imagenette` and on
#    `resnet18_half` (from scratch) and run both on two random scenes of
#    `cocs.train.segmentation_size(128)` rows and columns. *Expected:* both give logits of shape
#    (2, 11, H, W), a score for every class at every pixel of the input, and the head's lateral
#    layers take the widths of the levels that each backbone's `feature_info` declares: four
#    each, at strides 4, 8, 16 and 32 (timm counts a ResNet's stem, at stride 2, as a level
#    too; the head leaves it out, as the paper's Semantic FPN does).
# 2. **Mean IoU by hand.** Draw a 64 x 64 label map of random classes 0-9 with some pixels
#    void (11), and a random prediction of classes 0-9, so that class 10 occurs in neither.
#    Count the confusion matrix of the non-void pixels by hand, compute each class's
#    intersection over union, TP / (TP + FP + FN), and their mean, and compare with
#    `cocs.train.mean_iou`.
#    *Expected:* they agree to 1e-9, and the class that occurs in neither map is left out of the
#    mean, neither 0 nor 100.
# 3. **Centres per region, and their cost.** Count the MACs of `semantic_fpn` on
#    `coc_imagenette` with 4, 25 and 49 centres per region (`backbone_kwargs` with
#    `proposal_w = proposal_h` of 2, 5 and 7) on one 352 x 480 scene, on the `meta` device,
#    split into the similarities (`bmm`) and the rest. *Expected:* the similarity MACs grow in
#    exact proportion to the centres, 4 : 25 : 49, while the rest does not change at all, so the
#    whole model grows by far less than the centres.
