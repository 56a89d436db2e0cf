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
# # 6. Ablations: which of the paper's design choices matter at CIFAR scale?
#
# *Terms such as point, centre, region, head or dispatch are defined in the
# [glossary](../GLOSSARY.md).*
#
# **Question.** The paper builds its block from a handful of choices: points carry their
# positions, a clustering mixes them, with several heads, a few centres per region, regions
# that partition the map, centres fixed after one proposal, and a sigmoid on the similarity.
# Which of these change accuracy when a small model is trained on CIFAR-10 on a CPU, and do
# the paper's findings hold there?
#
# **The paper's claims.** On ImageNet with CoC-Small (cited from a third-party report of the
# paper): position information alone reaches a lower accuracy than with the context cluster,
# and several heads beat one. In its text: without positions the network failed to train;
# the sigmoid of the scaled similarity works better than the raw cosine similarity; updating
# the centres iteratively gains very little for a large cost, which is why they are fixed.
#
# **The design.** Every variant is `coc_cifar` with one choice changed, trained by the engine
# of chapter 4 (`cocs.train.train`) with chapter 4's recipe (compiled training steps, 1 px
# crops and flips) in bfloat16 autocast, which chapter 4 uses where the CPU has it natively and
# which the study fixes (`amp = "bf16"`) so that all its runs, whichever machine trained them,
# share one precision. Each trains for a fixed number of epochs on all 50 000 training
# images and is tested on all 10 000 test images. Runs are *paired*: for each seed, the full model
# and every variant share the seed, the order of the images, their augmentation and, wherever
# the shapes agree, the initial weights. The variants are listed in `cocs.ablation.ABLATIONS`;
# the paper's three table rows and the positions question get three seeds, the rest two.
# Finished runs whose model fingerprint and recipe equal today's are reused, so the study can
# be spread over several sittings and machines; an interrupted run resumes from its
# checkpoint. It writes, under
# `results/06_ablations/`:
#
# - `<key>/seed<N>/metrics.csv`, `metrics.json`, `predictions.npz`: every run, its config,
#   fingerprint and environment, and its prediction for every test image;
# - `runs.csv`: one row per run; `summary.csv`: mean and spread per ablation;
# - `differences.csv`: every paired comparison with its 95% interval;
# - `findings.csv` and `findings.md`: each of the paper's findings, and whether it reproduces;
# - `costs.csv`: the time of a training step and of inference relative to the full model;
# - `ablations.png`: the differences with their intervals.

# %% tags=["parameters"]
ablations = "all"  # comma-separated keys of cocs.ablation.ABLATIONS, or "all"
max_seeds = 3  # seeds per ablation: min(its own count, max_seeds); at least 2
epochs = 11  # fixed, the same for every run: the full model needs 11 to pass 74% (see below)
eval_every = 3  # test after every 3rd epoch and the last: the verdicts need only the last
batch_size = 128
lr = 2.0e-3  # peak AdamW learning rate, cosine to min_lr after a linear warm-up
weight_decay = 0.05
warmup_epochs = 1
label_smoothing = 0.1
crop_pad = 1  # random-crop margin in pixels, as in chapter 4
drop_path = 0.0
amp = "bf16"  # autocast dtype: bf16, or off where a CPU lacks bfloat16 support
torch_compile = True  # torch.compile the training steps (compiling takes minutes per run)
img_size = 32
max_per_class = 0  # training images per class; 0: all 5000
max_test_per_class = 0  # test images per class; 0: all 1000
num_threads = 0  # torch CPU threads; 0: all cores
num_workers = 0  # data-loading processes; 0: in the training process (a 2-core CPU), 8 beside a GPU
parallel_runs = 2  # runs trained at once on a CPU, each in a process with its share of threads
train_missing = True  # False: tabulate only the finished runs, train nothing
cost_repeats = 5  # timing rounds of the relative-cost measurement; 0: the committed costs.csv
trace_steps = 400  # steps replayed to watch the raw similarity; 0: the committed trace.csv
results_dir = "results"

# %%
import json
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import timm
import torch
from IPython.display import display

from cocs.ablation import (
    ABLATIONS,
    FINDINGS,
    compare,
    divergence_trace,
    findings,
    finished_run,
    machine_hours,
    parallel_gain,
    relative_costs,
    run_config,
    run_study,
    schedule,
    similarity_diagnosis,
    summarise,
    test_images,
)
from cocs.bench import busy_percent, hardware_name, keep_quiet_timings
from cocs.handbook import atomic_write_text, results_path, save_figure, write_csv
from cocs.paper import numbers
from cocs.train import cpu_has_native_bf16, create_model, load_trained, resolve_ckpt_dir

started = time.perf_counter()
if num_threads:
    torch.set_num_threads(num_threads)
known = {a.key: a for a in ABLATIONS}
keys = list(known) if ablations == "all" else [k.strip() for k in ablations.split(",") if k]
plan = schedule(keys, max_seeds)
out = results_path(results_dir, "06_ablations")
hardware, threads = hardware_name(), torch.get_num_threads()
print(f"{hardware}, {threads} torch threads; {len(keys)} ablations, {len(plan)} runs")

# %% [markdown]
# ## The variants
#
# Each variant is `coc_cifar` with a few constructor arguments changed. The full model has
# four stages of 16, 8, 4 and 2 points per side, 2, 2, 4 and 4 heads of 32 channels, 2x2
# centres per region in the first three stages, regions of 4x4 points in the first two, and
# 3x3 point reducers with stride 2 and zero padding between stages. "One head" keeps the
# channels (one head as wide as all heads together); "no context cluster" removes the token
# mixer and keeps everything else, positions included (the paper's "position information only"
# row); "no position information" keeps colour as the only feature of a point. "No region
# partition" comes twice: with the same 4 centres per region, which also cuts the centres of a
# feature map 16-fold in stage 1, and with as many centres per map as the full model (64 and
# 16 in stages 1 and 2), which separates the partition from the number of centres.

# %%
pd.DataFrame(
    [(a.group, a.key, a.label, a.seeds, a.model_kwargs or "(none)") for a in ABLATIONS
     if a.key in keys],
    columns=["group", "key", "what", "seeds", "model_kwargs"],
)  # fmt: skip

# %% [markdown]
# ## Why this many epochs
#
# A verdict needs a model that has learned something: the full model must pass 74% test
# accuracy. A pilot run of the full model with a 9-epoch schedule (kept in `pilot_9_epochs/`)
# fell short, and so did a later one with 10 epochs (`pilot_10_epochs/`, the same recipe and
# seed). Chapter 4 had trained the same model with the same recipe, in bfloat16, for longer
# (that run's files are kept in chapter 4's `earlier/amd-epyc-2threads-bfloat16/`, since
# chapter 4 trains in the precision of the machine that runs it). A curve acc(E) = a - b / E
# through the 9-epoch pilot and that run gives the fewest epochs predicted to pass 74%: 11.
# A third pilot with 11 epochs (`pilot_11_epochs/`, the same recipe and seed) checked the
# prediction before the study was trained with them, and the full model's finished runs below
# check it again, seed by seed. (An earlier version of this study trained 12 epochs; its runs
# and its plan estimate are in the repository's history.)

# %%
committed = results_path("results", "06_ablations", create=False)  # the default run's files
ch4_bf16 = results_path("results", "04_cifar10", create=False) / "earlier"
ch4_bf16 = ch4_bf16 / "amd-epyc-2threads-bfloat16"  # chapter 4's run in bfloat16
pilot, long = (
    json.loads(path.read_text())
    for path in (committed / "pilot_9_epochs" / "seed0" / "metrics.json",
                 ch4_bf16 / "coc_cifar" / "metrics.json")
)  # fmt: skip
assert long["fingerprint"] == pilot["fingerprint"], "the two pilots trained different models"
assert long["autocast"] == pilot["autocast"] == "bfloat16", "the pilots' precisions differ"
(e1, a1), (e2, a2) = [(m["epochs_done"], m["final"]["test_acc"]) for m in (pilot, long)]
assert a1 < 74, f"the pilot reached {a1:.2f}%: the prose says it fell short of 74%"
b = (a2 - a1) / (1 / e1 - 1 / e2)
a = a2 + b / e2
print(f"pilot: {a1:.2f}% after {e1} epochs; chapter 4: {a2:.2f}% after {e2}; "
      f"predicted for {epochs} epochs: {a - b / epochs:.2f}%")  # fmt: skip
ten = json.loads((committed / "pilot_10_epochs" / "seed0" / "metrics.json").read_text())
assert ten["fingerprint"] == pilot["fingerprint"] and ten["recipe"] | {"epochs": 9} == pilot[
    "recipe"
], "the 10-epoch pilot differs from the 9-epoch one in more than its epochs"
assert ten["final"]["test_acc"] < 74, "the prose says the 10-epoch pilot fell short of 74%"
print(f"the 10-epoch pilot: {ten['final']['test_acc']:.2f}% (predicted "
      f"{a - b / ten['epochs_done']:.2f}%)")  # fmt: skip
eleven = json.loads((committed / "pilot_11_epochs" / "seed0" / "metrics.json").read_text())
assert eleven["fingerprint"] == pilot["fingerprint"] and eleven["recipe"] | {"epochs": 9} == pilot[
    "recipe"
], "the 11-epoch pilot differs from the 9-epoch one in more than its epochs"
assert eleven["final"]["test_acc"] >= 74, "the prose says the 11-epoch pilot passed 74%"
assert math.ceil(b / (a - 74)) == 11, "the prose says the curve predicts 11 epochs"
print(f"the 11-epoch pilot: {eleven['final']['test_acc']:.2f}% (predicted "
      f"{a - b / eleven['epochs_done']:.2f}%)")  # fmt: skip
checks = [json.loads(f.read_text()) for f in sorted(committed.glob("full/seed*/metrics.json"))]
checks = [m["final"]["test_acc"] for m in checks if m["epochs_done"] == epochs]
print(f"the full model's committed runs of {epochs} epochs: {checks or 'none yet'}")
if max_per_class == 0:  # the whole training set: the default run
    assert a - b / epochs >= 74, f"{epochs} epochs are predicted to miss 74%"
    assert all(acc >= 74 for acc in checks), f"a full run of {epochs} epochs missed 74%: {checks}"

# %% [markdown]
# ## The plan and its cost
#
# Before training, each variant's training step and inference are timed against the full
# model's, in one process and in turn, so that all see the same machine load
# (`cocs.ablation.relative_costs`, eager mode). The estimate of the whole study scales the
# full model's measured epoch time (the fastest epoch of finished full-model runs of this
# study, which is the machine's speed when nothing else runs; else chapter 4's `coc_cifar` on
# this machine) by these ratios; runs that are already finished cost nothing.
#
# On a CPU the study trains `parallel_runs` runs at once, each in a process of its own with
# an equal share of the threads (`cocs.ablation.train_runs`). A training step of `coc_cifar`
# works on small tensors, which may leave the second thread of a process on two cores idle
# part of the time, where two processes of one thread each would keep both cores busy. What a
# run computes does not change (tests/test_ablation.py checks that its files are those one
# process of one thread writes), only how many runs finish per hour, which
# `cocs.ablation.parallel_gain` measures here whenever there are timings to take or runs to
# train: the full model's run trained by the engine itself (its data, loader, loss, fused
# AdamW, schedule, autocast; compiled when `torch_compile` is set) in a scratch folder and
# stopped after a few timed steps, first alone with all threads, then in `parallel_runs`
# processes side by side (the engine itself, not a copy of its step, which could drift from
# it). The chapter trains in parallel only where that gain is above 1, and then also estimates
# the study from this machine's own measurements, run by run: its start (reading the data,
# building the model, compiling), its steps (training images / batch size per epoch, each with
# the loading of its batch) at the side-by-side step time scaled by the variant's cost ratio,
# and its passes over the test set (every `eval_every` epochs and the last, then the saved
# predictions) at the side-by-side evaluation time scaled by the variant's inference ratio;
# all divided among the processes. A finished run counts the epochs it trained: one whose loss
# stopped being finite ended with that epoch, untested (a run not yet trained counts all its
# epochs).

# %%
if cost_repeats:
    busy = busy_percent()  # what the rest of the machine is doing
    costs = relative_costs(keys, repeats=cost_repeats, amp=amp == "bf16").assign(
        busy_percent=busy, hardware=hardware_name(), threads=torch.get_num_threads()
    )
    # timings of a busy machine never replace committed ones of a quiet machine
    columns = ["train_step_ms", "infer_ms", "train_ratio", "infer_ratio", "train_ratio_q1",
               "train_ratio_q3", "infer_ratio_q1", "infer_ratio_q3"]
    costs, busy_costs = keep_quiet_timings(costs, out / "costs.csv", key="key", columns=columns)
    if busy_costs is not None:
        write_csv(busy_costs, out / "costs.busy.csv")
        print(f"this machine was busy ({busy:.0f}% of the CPUs in other processes): the quiet "
              "timings of costs.csv are kept; these are in costs.busy.csv")  # fmt: skip
    write_csv(costs, out / "costs.csv")
else:  # measured where the study ran
    costs = pd.read_csv(committed / "costs.csv")
    print(f"cost_repeats=0: the committed costs.csv (other processes used "
          f"{costs['busy_percent'].iloc[0]:.0f}% of the CPUs)")  # fmt: skip
    write_csv(costs, out / "costs.csv")
done = {(k, s) for k, s in plan if finished_run(run_config(k, s, globals(), out)) is not None}
reference = None  # minutes of one epoch of the full model on a quiet machine
full_epochs = [
    pd.read_csv(Path(run_config(k, s, globals(), out).out_dir) / "metrics.csv")["epoch_seconds"]
    for k, s in sorted(done)
    if k == "full"
]
if full_epochs:  # the fastest epoch after the first (which compiles): the machine left alone
    reference = min(e.iloc[1:].min() if len(e) > 1 else e.min() for e in full_epochs) / 60
    source = f"the fastest epoch of {len(full_epochs)} finished full-model run(s)"
ch4 = results_path(results_dir, "04_cifar10", create=False) / "coc_cifar" / "metrics.csv"
if reference is None and ch4.is_file():
    share = (max_per_class or 5000) / 5000  # of the training set
    reference = pd.read_csv(ch4)["epoch_seconds"].median() / 60 * share
    source = "chapter 4's coc_cifar epochs"
ratio = costs.set_index("key")["train_ratio"]
estimate = pd.DataFrame(
    [{"key": k, "seed": s, "done": (k, s) in done,
      "minutes": 0.0 if (k, s) in done or reference is None else epochs * reference * ratio[k]}
     for k, s in plan]
)  # fmt: skip
if reference is None:
    print("no measured epoch time to estimate from: the first run will tell")
else:
    print(
        f"{len(plan) - len(done)} of {len(plan)} runs to train, one at a time about "
        f"{estimate['minutes'].sum() / 60:.1f} h ({epochs} epochs each; one full-model epoch "
        f"{reference:.2f} min, from {source})"
    )
parallel = 1 if torch.cuda.is_available() else max(1, parallel_runs)
plan_estimate = {"hardware": hardware, "threads": threads, "runs": len(plan),
                 "units": float(sum(ratio[k] for k, _ in plan)),  # full-model runs' worth
                 "hours_one_at_a_time": None if reference is None else epochs * reference
                 * float(sum(ratio[k] for k, _ in plan)) / 60}  # fmt: skip
if parallel > 1 and (cost_repeats or (train_missing and len(done) < len(plan))):
    gain = parallel_gain(run_config("full", 0, globals(), out), parallel,
                         steps=2 * cost_repeats or 10)  # the full model's run, as it trains
    print(f"{parallel} processes of {gain['threads_each']} thread(s) side by side: a step "
          f"{gain['step_s_side_by_side']:.3f} s each against {gain['step_s_alone']:.3f} s for one "
          f"process alone, {gain['gain']:.2f}x the runs per hour "
          f"({'compiled' if torch_compile else 'eager'} steps of the engine)")  # fmt: skip
    if gain["gain"] <= 1:
        print("no gain here: the runs train one at a time")
        parallel = 1
    else:
        # a run, as the engine trains it: its start (data, model, compiling), its steps
        # (loading included) and its test passes (every eval_every epochs and the last, then
        # the saved predictions); a finished run counts the epochs it trained (one that
        # diverged stopped at the end of that epoch, untested)
        per_epoch = 10 * (max_per_class or 5000) // batch_size
        batches = math.ceil(10 * (max_test_per_class or 1000) / (2 * batch_size))
        eval_ratio = costs.set_index("key")["infer_ratio"]
        step_s, start_s = gain["step_s_side_by_side"], gain["start_s_side_by_side"]
        ran = {(k, s): epochs for k, s in plan}  # epochs each run trains
        for k, s in done:
            meta = finished_run(run_config(k, s, globals(), out))
            ran[k, s] = meta["diverged"]["epoch"] if meta.get("diverged") else meta["epochs_done"]

        def run_hours(k: str, s: int, planned: int = epochs) -> float:
            """One run's share of the time, ``parallel`` runs training at once, with a
            ``planned`` schedule (a run that stopped early stops there again)."""
            e = ran[k, s] if ran[k, s] < epochs else planned
            passes = len({*range(eval_every, e + 1, eval_every), e}) + 1 if e == planned else 0
            seconds = (start_s + (per_epoch * e - 1) * step_s * ratio[k]
                       + passes * batches * gain["eval_batch_s_side_by_side"] * eval_ratio[k])
            return seconds / 3600 / parallel

        whole = sum(run_hours(k, s) for k, s in plan)
        left = sum(run_hours(k, s) for k, s in plan if (k, s) not in done)
        short = {f"{k} seed {s}": e for (k, s), e in ran.items() if e < epochs}
        # the fewest epochs the curve above predicts to reach 74%, and what they would cost
        fewest = math.ceil(b / (a - 74)) if a > 74 else None
        at_fewest = None if fewest is None else sum(run_hours(k, s, fewest) for k, s in plan)
        plan_estimate |= {"parallel": parallel, "gain": gain["gain"], "compiled": torch_compile,
                          "step_s_side_by_side": step_s, "start_s_side_by_side": start_s,
                          "eval_batch_s_side_by_side": gain["eval_batch_s_side_by_side"],
                          "stopped_early": short, "engine_steps": True, "hours_here": whole,
                          "fewest_epochs": fewest, "hours_at_fewest_epochs": at_fewest}  # fmt: skip
        print(f"from this machine's measurements, {parallel} runs at a time: the whole plan "
              f"about {whole:.1f} h (engine steps with their loading, each run's start of "
              f"{start_s:.0f} s and its test passes; runs that stopped early at the epochs "
              f"they trained: {short or 'none'}), the runs left {left:.1f} h")  # fmt: skip
        if fewest is not None and fewest != epochs:
            print(f"with {fewest} epochs, the fewest the curve predicts to reach 74%: about "
                  f"{at_fewest:.1f} h")  # fmt: skip
if amp == "bf16" and not cpu_has_native_bf16() and len(done) < len(plan):
    print(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bfloat16: "
          "bf16 autocast is emulated, and every epoch here will take several times the "
          "estimate; the study is meant for a CPU with AVX512-BF16 or AMX (amp='off' is "
          "faster here, but it is another recipe: a separate study)")  # fmt: skip
estimate.groupby("key", sort=False)["minutes"].sum().round(1)

# %% [markdown]
# ## Training
#
# Every run has the same recipe; only `model_kwargs` and the seed differ. The runs follow
# `cocs.ablation.schedule`: seeds 0 and 1 of the paper's table rows first, then the other
# ablations pair by pair, then the third seeds, so that an interrupted study already holds as
# many complete comparisons as it can. A run whose training loss stops being finite is not
# retried with another recipe: the engine records the epoch in its `metrics.json`, and the
# study reports it as the paper does, "failed to train" (its seed then joins no interval).
# With runs side by side (above), each run's minutes are its own wall time while it shared
# the machine, so their sum counts the time of the runs, not of the study; each run's
# `threads` column says how it trained, and the chapter's own wall time is kept beside them.

# %%
runs, correct = run_study(plan, globals(), out, train_missing=train_missing, parallel=parallel)
write_csv(runs, out / "runs.csv")
paper = numbers()
paper_top1 = {row["key"]: row["top1"] for row in paper["ablations"]}
claim_of = {f.better if f.expect == "similar" else f.worse: f.paper_claim for f in FINDINGS}
summary = summarise(runs)
summary["paper_top1"] = summary["key"].map(paper_top1)
summary["paper_delta"] = summary["paper_top1"] - paper_top1["full"]
summary["paper_says"] = summary["key"].map(
    lambda k: paper["ablation_claims"].get(claim_of.get(k, ""), "")
)
write_csv(summary, out / "summary.csv")
trained = runs[~runs["reused"]]
print(
    f"{len(runs)} runs ({len(trained)} trained now, {trained['minutes'].sum() / 60:.2f} h); "
    f"all runs together took {runs['minutes'].sum() / 60:.2f} h of training and evaluation"
)
summary.round(2)

# %% [markdown]
# ## How sure can a difference be?
#
# Two things stand between a measured difference and the true one: the seed, and the test set,
# which is a sample of 10 000 images of the ones the models could meet. At 75% accuracy the
# binomial standard error of one accuracy on 10 000 images is about 0.4 points, and comparing
# two numbers of a few seeds by their standard deviation ignores it. Because the runs are
# paired, each test image is a small paired experiment: both models saw the same seed and
# the same data order, and met the same image. So every comparison below is a **paired
# bootstrap over test images, combined over seeds** (`cocs.stats.paired_difference`): the
# mean over seeds of the accuracy difference, with a 95% interval whose width adds the
# spread of the per-seed differences (Student's t with few degrees of freedom, since it rests
# on two or three numbers) and the test set's own variation (the same resampled images for
# both models and every seed). We prefer this to McNemar's test because it gives an interval
# in points, not only a p-value, and because it combines seeds without assuming that they
# agree. Each row also says the smallest true difference the study would have detected
# with 80% power (`detectable`): where no difference is detected, effects smaller than that
# remain possible.

# %%
failed = [(k, s) for k, s, st in runs[["key", "seed", "status"]].itertuples(index=False)
          if st != "trained"]  # fmt: skip
for k, s in failed:
    print(f"{known[k].label}, seed {s}: {runs.set_index(['key', 'seed']).loc[(k, s), 'status']}")
differences = compare(correct, failed=failed)
write_csv(differences, out / "differences.csv")
differences[["question", "seeds", "mean", "low", "high", "detectable", "failed_b"]].round(2)

# %% [markdown]
# ## Ours beside the paper's
#
# The paper's numbers are ImageNet top-1 of CoC-Small, trained with the release's 300-epoch
# recipe; ours are CIFAR-10 test accuracy of a much smaller model (the ratio of parameters is
# printed below) after a few epochs. Only the differences to each study's full model can be
# compared, and only in sign and rough size. The raw-similarity variant gets a panel of its
# own, so that a large loss there (or a run that failed to train) does not squash the scale on
# which the other intervals are read; the table above says how large its difference is.

# %%
n_ours, n_small = (sum(p.numel() for p in timm.create_model(m).parameters())
                   for m in ("coc_cifar", "coc_small"))  # fmt: skip
print(f"coc_cifar: {n_ours / 1e6:.2f}M parameters, {n_ours / n_small:.2f} of coc_small's "
      f"{n_small / 1e6:.2f}M")  # fmt: skip
vs_full = differences[differences["a"] == "full"].copy()
vs_full["label"] = vs_full["b"].map(lambda k: known[k].label)
vs_full["paper"] = vs_full["b"].map(paper_top1) - paper_top1["full"]
ran = vs_full[vs_full["seeds"] >= 2]
big = ran["b"] == "raw_similarity"
fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), width_ratios=(3, 1), sharey=False)
for ax, part in zip(axes, (ran[~big], ran[big]), strict=True):
    y = np.arange(len(part))
    ax.errorbar(-part["mean"], y, xerr=[part["high"] - part["mean"], part["mean"] - part["low"]],
                fmt="o", capsize=3, label="ours: CIFAR-10, mean and 95% interval")  # fmt: skip
    has = part["paper"].notna()
    ax.plot(part.loc[has, "paper"], y[has.to_numpy()], "s", color="tab:red",
            label="paper (reported): ImageNet-1K, CoC-Small")  # fmt: skip
    for yi, key in zip(y, part["b"], strict=True):  # a claim in words, e.g. "failed to train"
        said = paper["ablation_claims"].get(claim_of.get(key, ""), "")
        if said == "failed to train":
            ax.annotate(f"paper: {said}", (0, yi), xytext=(4, 6), textcoords="offset points",
                        color="tab:red", fontsize=8)  # fmt: skip
    ax.axvline(0, color="black", linewidth=0.8)
    if part.empty:  # no paired seed trained: say why instead of an empty panel
        lost = vs_full[(vs_full["b"] == "raw_similarity") & (vs_full["failed_b"] > 0)]
        why = (f"raw cosine similarity:\nfailed to train\nin {int(lost['failed_b'].iloc[0])} "
               "seeds" if len(lost) else "raw cosine similarity:\nnot run")  # fmt: skip
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    ax.set_yticks(y, part["label"])
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("accuracy change against the full model (points)")
axes[1].yaxis.tick_right()
axes[1].set_xlabel("change (points)")
axes[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13))
n_machines = runs["hardware"].nunique()  # kinds of processor (a run records no host name)
fig.suptitle(f"Ablations of coc_cifar: {epochs} epoch{'s' * (epochs > 1)} on {int(runs['train_images'].iloc[0])} "
             f"images, paired seeds (runs on {n_machines} kind{'s' * (n_machines > 1)} of "
             "processor: see findings.md)")  # fmt: skip
fig.tight_layout()
save_figure(fig, out / "ablations.png")
plt.show()

# %% [markdown]
# ## Which findings reproduce?
#
# A verdict follows from the interval alone: "reproduces" when it lies on the paper's side of
# zero (for a claim of no difference: within a point either way), "reversed" when it lies on
# the other side, "no difference detected at this scale" when it holds zero, with the size of
# the smallest effect this study could have seen. Two kinds of verdict need no interval. When
# every run of a variant failed to train (at least two seeds) while every run of the full model
# trained, the paper's claim that the full model is better "reproduces", and the note says why.
# And the paper's claim that its network without positions *failed to train* is a claim about
# training, not accuracy: it is read off the runs' status alone ("reproduces" if none of them
# trained, "does not reproduce" if all did, "reproduces in part" between), while the accuracy
# that positions add is a finding of its own, judged by its interval like the others.

# %%
verdicts = findings(differences, paper)
if {"full", "iterative"} <= set(costs["key"]):  # the other half of the claim: the cost
    c = costs.set_index("key").loc["iterative"]
    spread = lambda m, q1, q3: f"{c[m]:.2f}x" + (  # noqa: E731
        "" if pd.isna(c.get(q1)) else f" (quartiles {c[q1]:.2f}-{c[q3]:.2f})")
    cost = (f"a training step costs {spread('train_ratio', 'train_ratio_q1', 'train_ratio_q3')} "
            f"the full model's and inference {spread('infer_ratio', 'infer_ratio_q1', 'infer_ratio_q3')}"
            ", eager, timed in turn in one process")  # fmt: skip
    it = verdicts["better"].eq("iterative") | verdicts["worse"].eq("iterative")
    verdicts.loc[it, "note"] = [f"{n}; {cost}" if n else cost for n in verdicts.loc[it, "note"]]
write_csv(verdicts, out / "findings.csv")
first = runs.iloc[0]
seeds_per_key = runs.groupby("key")["seed"].nunique()
machines = runs.groupby(["hardware", "cores", "threads", "autocast"], sort=False,
                        dropna=False).size()  # fmt: skip
where = "; ".join(
    f"{n} on {h}" + ("" if pd.isna(c) else f" ({int(c)} cores)")
    + f", {int(t)} thread{'s' * (t > 1)} per run, autocast {a}"
    for (h, c, t, a), n in machines.items()
)  # fmt: skip
caption = (
    f"coc_cifar on CIFAR-10: {epochs} epochs, {int(first['train_images'])} training and "
    f"{int(first['test_images'])} test images, {seeds_per_key.min()}-{seeds_per_key.max()} "
    f"paired seeds per ablation ({len(runs)} of the {len(plan)} planned runs: {where}); "
    "differences with 95% intervals (paired bootstrap over test images, combined over seeds); "
    "detectable: the smallest true difference the study finds with 80% power."
)
lines = []
for _, f in verdicts.iterrows():
    if f["verdict"] == "not run":
        lines.append(f"- {f['claim']}: not run here.")
        continue
    if pd.isna(f.get("difference")):  # decided by runs that failed to train
        lines.append(f"- {f['claim']} (paper, {f['paper']}): **{f['verdict']}**: {f['note']}.")
        continue
    note = f" ({f['note']})" if f["note"] else ""
    lines.append(
        f"- {f['claim']} (paper, {f['paper']}): **{f['verdict']}**{note}. Here {f['better']} "
        f"minus {f['worse']} is {f['difference']:+.2f} points [{f['low']:+.2f}, "
        f"{f['high']:+.2f}] over {f['seeds']} seeds; the study detects differences of "
        f"{f['detectable']:.2f} points."
    )
by_verdict = verdicts.groupby("verdict")["claim"].apply(list).to_dict()
plainly = [
    f"- {label}: {'; '.join(by_verdict[v]) if v in by_verdict else 'none'}."
    for v, label in (("reproduces", "Reproduce at this scale"),
                     ("reversed", "Reversed at this scale"),
                     ("differs", "A difference where the paper expects none"),
                     ("does not reproduce", "Do not reproduce: a variant the paper could not "
                      "train trains here"),
                     ("reproduces in part", "Reproduce in some seeds only"),
                     ("no difference detected at this scale",
                      "Too small a study to decide (no difference detected)"),
                     ("not run", "Not run yet"))
]  # fmt: skip
text = (
    f"# Ablations of coc_cifar on CIFAR-10\n\n{caption}\n\n" + "\n".join(plainly)
    + "\n\nIn detail:\n\n" + "\n".join(lines) + "\n"
)
atomic_write_text(out / "findings.md", text)
study = {
    "caption": caption,
    "epochs": epochs,
    "train_images": int(first["train_images"]),
    "test_images": int(first["test_images"]),
    "runs": len(runs),
    "training_hours": runs["minutes"].sum() / 60,
    "machines": [{"hardware": h, "cores": None if pd.isna(c) else int(c), "threads": int(t),
                  "autocast": a, "runs": int(n)} for (h, c, t, a), n in machines.items()],
    # the plan from scratch as this sitting estimated it (hours_here: from this machine's
    # measurements side by side, whole runs; hours_one_at_a_time: from the reference epoch)
    "plan_estimate": plan_estimate,
}
atomic_write_text(out / "study.json", json.dumps(study, indent=2) + "\n")
print(text)

# %% [markdown]
# ## Where the raw similarity can go wrong
#
# Whether the raw similarity loses, and by how much, is the difference in the table above;
# this section looks for the mechanism the paper's choice of a sigmoid suggests. A cluster's
# aggregate is (v_c + sum_i s_i v_i) / (1 + sum_i s_i). The sigmoid keeps every
# weight s_i in (0, 1), so the denominator is at least 1. The raw cosine similarity lies in
# [-1, 1]: a point can join a centre it points away from, with a negative weight, and the
# denominator of a cluster can come near zero, which scales its aggregate, and the gradient
# through it, without bound. `cocs.ablation.similarity_diagnosis` measures this on 256 test
# images, from the weights the operation returns (`ClusterOutput.similarity`): the share of
# negative weights, of clusters whose |denominator| is below 0.25, the smallest |denominator|
# and the largest gain |s_i| / |1 + sum s| of one point.
#
# A diagnosis of the finished models cannot explain a run that never finished, so
# `cocs.ablation.divergence_trace` replays the beginning of training instead: the run of seed 0
# exactly as the study trains it (recipe, seed, data order, initial weights), diagnosed after
# step 1 and every 10th step, until its loss stops being finite or `trace_steps` steps have
# passed; the full model, replayed for as many steps, is the control. Nothing of the replays is
# kept but `trace.csv`.

# %%
images = test_images(run_config("full", 0, globals(), out), 256)
traces = {}
if not trace_steps and (committed / "trace.csv").is_file():  # replayed where the study ran
    print("trace_steps=0: the committed trace.csv")
    shown_trace = pd.read_csv(committed / "trace.csv")
    traces = {k: t.drop(columns="key") for k, t in shown_trace.groupby("key", sort=False)}
elif not trace_steps:
    print("trace_steps=0 and no committed trace.csv: nothing replayed")
elif "raw_similarity" in keys:
    traces["raw_similarity"] = divergence_trace(
        run_config("raw_similarity", 0, globals(), out), images, steps=trace_steps
    )
    replayed = int(traces["raw_similarity"]["step"].max())
    traces["full"] = divergence_trace(run_config("full", 0, globals(), out), images, steps=replayed)
if "raw_similarity" in traces:
    trace = pd.concat([t.assign(key=k) for k, t in traces.items()], ignore_index=True)
    write_csv(trace, out / "trace.csv")
    raw = traces["raw_similarity"]
    last = int(raw["step"].max())
    finite = raw[np.isfinite(raw["loss"])]
    print(
        "raw similarity, seed 0: the loss "
        + (f"became {raw['loss'].iloc[-1]} at step {last}" if len(finite) < len(raw)
           else f"stayed finite for all {last} steps replayed")
        + f"; full model: finite for all {int(traces['full']['step'].max())} steps"
    )  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for k, t in traces.items():
        worst = t.groupby("step").agg(loss=("loss", "first"), den_min=("den_min", "min"),
                                      gain_max=("gain_max", "max"))  # fmt: skip
        label = known[k].label
        axes[0].plot(worst.index, worst["loss"], label=label)
        axes[1].semilogy(worst.index, worst["den_min"], label=label)
        axes[2].semilogy(worst.index, worst["gain_max"], label=label)
    for ax, what in zip(axes, ("training loss", "smallest |1 + sum s| of a cluster",
                               "largest gain |s_i| / |1 + sum s|"), strict=True):  # fmt: skip
        ax.set_xlabel("training step")
        ax.set_title(what, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("The first steps of training, replayed: seed 0, 256 test images, all stages")
    fig.tight_layout()
    save_figure(fig, out / "trace.png")
    plt.show()
    shown = trace[trace["step"].isin([1, int(finite["step"].max())])]
    display(shown.groupby(["key", "step", "stage"])[
        ["loss", "negative", "den_small", "den_min", "gain_max"]].mean().round(4))  # fmt: skip

# %% [markdown]
# The trained models, where this machine has their checkpoints (otherwise the committed
# `diagnosis.csv`), beside the same models before training:

# %%
diagnosis_csv = out / "diagnosis.csv"
pairs = [(k, s) for k, s, st in runs[["key", "seed", "status"]].itertuples(index=False)
         if k in ("full", "raw_similarity")]  # fmt: skip
parts = []
for k, s in pairs:
    cfg = run_config(k, s, globals(), out)
    torch.manual_seed(s)
    parts.append(similarity_diagnosis(create_model(cfg, 10), images).assign(
        key=k, seed=s, weights="initial", epochs=0))  # fmt: skip
    path = resolve_ckpt_dir(cfg) / "last.pt"
    trained_ok = runs.set_index(["key", "seed"]).loc[(k, s), "status"] == "trained"
    if trained_ok and path.is_file():
        net, trained_cfg = load_trained(path)
        if trained_cfg.epochs == epochs:  # a checkpoint of another schedule: another model
            parts.append(similarity_diagnosis(net, images).assign(
                key=k, seed=s, weights="trained", epochs=epochs))  # fmt: skip
diagnosis = pd.concat(parts, ignore_index=True) if parts else None
if diagnosis is not None and diagnosis_csv.is_file():  # trained rows of other machines
    committed = pd.read_csv(diagnosis_csv)
    if "epochs" not in committed:  # written before rows said their schedule
        committed["epochs"] = np.where(committed["weights"] == "initial", 0, -1)
    committed = committed[committed["epochs"].isin([0, epochs])]  # this study's models only
    have = set(map(tuple, diagnosis[["key", "seed", "weights"]].to_numpy().tolist()))
    extra = committed[[(k, s, w) not in have for k, s, w in
                       committed[["key", "seed", "weights"]].itertuples(index=False)]]  # fmt: skip
    if len(extra):
        print(f"{len(extra)} rows from the committed {diagnosis_csv.name} (checkpoints elsewhere)")
        diagnosis = pd.concat([diagnosis, extra], ignore_index=True)
if diagnosis is not None:
    write_csv(diagnosis, diagnosis_csv)
    shown = diagnosis.groupby(["key", "weights", "stage"])[
        ["negative", "den_small", "den_median", "den_min", "gain_max"]
    ].mean()
    display(shown.round(3))

# %% [markdown]
# ## Why this model can train without positions
#
# The paper reports that without position information its network failed to train; whether
# ours does is printed below, run by run. A point that carries only colour still sits
# somewhere, and a network can learn where from two cues that need no coordinates. The
# *border*: the point reducers between stages are strided 3x3 convolutions with zero padding,
# so a point on the edge of a map sees zeros where an inner point sees neighbours, which tells
# the network where the edges are and, stage by stage, how far a point is from them. And
# *locality*: every reducer mixes each point with its 3x3 neighbours, and each region of the
# clustering holds neighbouring points, so what is near stays together whatever the points
# carry. Both are in the paper's model too (its reducers are the same strided convolutions with
# zero padding), so neither alone can explain why its network failed.
#
# The circularly padded variant removes the border and nothing else: the same 3x3 kernels,
# the same weights, fed the opposite edge of the map instead of zeros, so every point sees a
# full neighbourhood and no point is on an edge. With neither positions nor a border, what is
# left to locate a point is locality alone. The table reads the differences with their
# intervals, and the sentences printed under it say which way they point: zero against circular
# padding, and the full model against locality alone.

# %%
pos = differences[
    ((differences["a"] == "full") & (differences["b"].str.startswith("no_positions")))
    | (differences["b"] == "no_positions_wrap")
]
display(pos[["question", "seeds", "mean", "low", "high", "detectable"]].round(2))
without = runs[runs["key"].str.startswith("no_positions")]
for _, r in without.iterrows():
    print(f"{r['key']} seed {r['seed']}: {r['status']}, {r['test_acc']:.2f}%")
trained_all = bool(len(without)) and (without["status"] == "trained").all()
print(
    ("every run without positions trained: " if trained_all else "not every run without "
     "positions trained: ")
    + ", ".join(f"{k} {g['test_acc'].mean():.1f}%" for k, g in without.groupby("key"))
)  # fmt: skip
wrap = pos[(pos["a"] == "no_positions") & (pos["b"] == "no_positions_wrap")]
if len(wrap) and pd.notna(wrap["low"].iloc[0]):
    r = wrap.iloc[0]
    gap = f"{r['mean']:+.2f} points [{r['low']:+.2f}, {r['high']:+.2f}] over {int(r['seeds'])} seeds"
    if r["low"] > 0:
        print(f"the zero border is a cue: with it minus without it, {gap}"
              + ("; without it (and without positions) the model still trains, so locality "
                 "and colour carry the rest" if trained_all else ""))  # fmt: skip
    elif r["high"] < 0:
        print(f"the circularly padded reducers do better: zeros minus circular, {gap}")
    else:
        print(f"no difference detected between zero and circular padding ({gap}; the study "
              f"detects {r['detectable']:.2f} points)"
              + ("; the border is not what lets this model train without positions: without "
                 "it, every run still trained" if trained_all else ""))  # fmt: skip
else:
    print("the circularly padded variant has not finished two seeds yet; no reading of the "
          "border cue")  # fmt: skip
alone = pos[(pos["a"] == "full") & (pos["b"] == "no_positions_wrap")]
if len(alone) and pd.notna(alone["low"].iloc[0]):  # locality alone against the full model
    r = alone.iloc[0]
    gap = f"{r['mean']:+.2f} points [{r['low']:+.2f}, {r['high']:+.2f}] over {int(r['seeds'])} seeds"
    border_known = len(wrap) and pd.notna(wrap["low"].iloc[0]) and wrap["low"].iloc[0] > 0
    if r["low"] > 0:
        print(f"with locality alone (no positions, no border) the full model is better: full "
              f"minus it, {gap}; "
              + ("the border gives back part of it (above)" if border_known else
                 "how much of that the border alone gives back is not resolved by the paired "
                 "comparison of the two paddings above"))  # fmt: skip
    elif r["high"] < 0:
        print(f"locality alone (no positions, no border) beats the full model: full minus it, {gap}")
    else:
        print(f"no difference detected between the full model and locality alone ({gap}; the "
              f"study detects {r['detectable']:.2f} points)")  # fmt: skip

# %% [markdown]
# ## What fixed centres save
#
# The paper fixes the centres after one proposal because iterating them costs much for little
# accuracy. The cost, measured above in one process with the models timed in turn:

# %%
costs.set_index("key").loc[[k for k in ("full", "iterative") if k in costs["key"].values]].round(3)

# %% [markdown]
# ## Where the time went
#
# The study's budget, divided over its questions: the training and evaluation minutes of every
# run, summed per ablation, with its share of the whole. The paper's three table rows and the
# positions question get three seeds, every other variant two.
#
# What the whole study cost is measured from its runs, not estimated: each run's minutes
# times its share of its machine's cores (`cocs.ablation.machine_hours`: two runs of one thread
# side by side on a 2-core CPU count half their minutes each), which is the wall time of a
# study that kept its machine busy (a run of one thread that ran alone, at the end of the
# queue, counts half as well). It leaves out each run's start (reading the data, building
# the model) and its saved predictions, a few seconds each; the one epoch of a run that failed
# to train, which its record does not time (a few minutes); and this chapter's own work
# (timings, replays, figures), whose minutes are printed beside it. The study's limit is
# 6 hours of a 2-core CPU.

# %%
spent = runs.groupby("key", sort=False)["minutes"].agg(["count", "sum"])
spent["share"] = spent["sum"] / spent["sum"].sum()
spent.columns = ["runs", "minutes", "share"]
spent["machine_minutes"] = [60 * machine_hours(runs[runs["key"] == k]) for k in spent.index]
chapter_minutes = (time.perf_counter() - started) / 60
held = machine_hours(runs)
# the default study, complete: the one the 6-hour limit is for
default_study = max_per_class == max_test_per_class == 0 and len(runs) == len(plan)
study |= {"chapter_minutes": chapter_minutes, "training_hours": runs["minutes"].sum() / 60,
          "machine_hours": held, "limit_hours": 6 if default_study else None}  # fmt: skip
atomic_write_text(out / "study.json", json.dumps(study, indent=2) + "\n")
print(
    f"training and evaluation of all {len(runs)} runs: {study['training_hours']:.2f} h of run "
    f"time, {held:.2f} h of the machine (runs side by side counted at their share of the "
    f"cores); the runs trained in this sitting: {trained['minutes'].sum() / 60:.2f} h of run "
    f"time; this chapter ran {chapter_minutes:.1f} minutes in this sitting"
)
if default_study:
    estimated = plan_estimate.get("hours_here")
    print(f"the whole study held its machines at least {held:.2f} h: "
          + ("within" if held <= 6 else "over") + " the 6-hour limit"
          + (f" (the plan's estimate on this machine: {estimated:.1f} h)" if estimated else ""))
spent.round(2)

# %% [markdown]
# ## Exercises
#
# Each exercise runs in seconds on a laptop CPU and needs none of the study's runs. The worked
# solutions, with checks of the expected outcomes, are in `notebooks/solutions/06_ablations.py`:
# try first, then compare.
#
# 1. **What each variant changes.** Build every variant of `cocs.ablation.ABLATIONS`
#    (`coc_cifar` with its `model_kwargs`, through `cocs.train.parse_model_kwargs`, on the
#    `meta` device) and count its parameters. *Expected:* one head, the raw similarity,
#    iterated centres and every change of centres or regions keep exactly the full model's
#    parameters, since they regroup points without adding weights; without the context cluster
#    the model is smaller; without positions it is smaller by exactly the stem's weights for two
#    input channels, whether the reducers pad with zeros or circularly.
# 2. **Why the raw similarity loses, by hand.** Take 100 CIFAR-10 test images and two untrained
#    `coc_cifar` (seed 0), one with the sigmoid and one with `similarity="cosine"`. Read every
#    clustering layer's assignment and similarities with `cocs.capture_assignments` and
#    `cocs.capture_similarities`, compute each cluster's denominator $1 + \sum_i s_i$ with a
#    scatter-add, and compare stage by stage with `cocs.ablation.similarity_diagnosis`.
#    *Expected:* your smallest denominators are the diagnosis's `den_min`; with the sigmoid
#    every similarity is positive and every denominator at least 1, while with the raw cosine
#    some points join their centre with a negative weight, even before training.
# 3. **What pairing buys.** Simulate two models on 10 000 test images over 3 seeds: model a is
#    right where a uniform draw per image and seed is below 0.755, model b where it is below
#    0.75, a true difference of half a point. Compare the interval of
#    `cocs.stats.paired_difference` with the 95% interval of the difference of two accuracies
#    that ignores the pairing. *Expected:* both intervals contain the true difference, but the
#    paired one is narrower and excludes zero where the unpaired one does not: the test set's
#    part of its uncertainty (`se_test`) is several times smaller than the standard error of the
#    unpaired difference.
#
# **Further (long), not part of the workshop** (hours on a CPU, no worked solutions):
#
# - Add seeds: raise the `seeds` of the ablations in `cocs/ablation.py` and `max_seeds` to 4;
#   the seed part of every interval narrows, at a third more cost per ablation.
# - A study of your own: add an `Ablation` to `cocs/ablation.py` (any `coc_cifar` keyword, for
#   instance `mlp_ratios=2`) and run `ablations = "full,<your key>"`.
