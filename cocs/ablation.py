"""The ablations of chapter 6: which model each one trains, how the study runs, and its verdicts.

Every ablation is ``coc_cifar`` with a few keyword arguments changed (``model_kwargs`` of
:class:`cocs.train.TrainConfig`), so the whole study is one training engine run many times.
Runs are paired: for each seed, every ablation shares the full model's seed, data order and
augmentation, and (``shared_init``) its initial weights wherever the shapes agree. A finished
run is reused only while its model fingerprint and recipe equal today's (:func:`finished_run`).
:func:`compare` turns the per-image test outcomes into paired differences with confidence
intervals (:mod:`cocs.stats`), and :func:`findings` reads the paper's claims off them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .stats import paired_difference

__all__ = [
    "ABLATIONS",
    "COMPARISONS",
    "FINDINGS",
    "VERDICTS",
    "Ablation",
    "Comparison",
    "Finding",
    "compare",
    "divergence_trace",
    "finished_run",
    "findings",
    "machine_hours",
    "paper_evidence",
    "parallel_gain",
    "relative_costs",
    "run_config",
    "schedule",
    "similarity_diagnosis",
    "summarise",
    "test_images",
    "train_runs",
]


@dataclass(frozen=True)
class Ablation:
    """One row of the study: ``coc_cifar`` built with ``model_kwargs``, trained ``seeds`` times."""

    key: str  # short name; also the results sub-folder
    label: str  # what a reader sees in tables
    group: str  # the question it answers, (a) to (i)
    model_kwargs: str  # cocs.train.parse_model_kwargs syntax; empty: the full model
    seeds: int = 2  # 3 for the rows of the paper's table


# coc_cifar: stages of 16, 8, 4, 2 points per side; heads (2, 2, 4, 4) of 32 channels; 2x2
# centres per region in stages 1-3 and one in stage 4; regions of 4x4 points in stages 1-2
# (folds 4 and 2), none after; point reducers 3x3 with stride 2 and zero padding 1 between
# stages. Per-stage tuples below keep every other setting as it is. The order is the order of
# training within a seed: the paper's claims first.
ABLATIONS = (
    Ablation("full", "full model", "a", "", seeds=3),
    Ablation("no_cluster", "no context cluster (position information only)", "c", "mixer='none'",
             seeds=3),
    # the same channels in one head per layer: heads x head_dim stays (64, 64, 128, 128)
    Ablation("one_head", "one head", "d", "heads=1,head_dim=(64, 64, 128, 128)", seeds=3),
    Ablation("no_positions", "no position information (colour only)", "b", "use_positions=False",
             seeds=3),
    Ablation("raw_similarity", "raw cosine similarity", "h", "similarity='cosine'"),
    Ablation("iterative", "centres updated twice", "g", "center_iters=2"),
    # 64 and 16 centres per map in stages 1 and 2, in 16 and 4 regions or in one
    Ablation("no_regions", "no region partition (4 centres per map)", "f", "fold_w=1,fold_h=1"),
    Ablation("no_regions_same_centres", "no region partition, as many centres (64, 16)", "f",
             "fold_w=1,fold_h=1,proposal_w=(8, 4, 2, 1),proposal_h=(8, 4, 2, 1)"),
    Ablation("centres_1", "1 centre per region", "e", "proposal_w=1,proposal_h=1"),
    Ablation("centres_9", "9 centres per region", "e",
             "proposal_w=(3, 3, 3, 1),proposal_h=(3, 3, 3, 1)"),
    # a region of 4x4 points holds 16: every point proposes a centre
    Ablation("centres_16", "16 centres per region (one per point)", "e",
             "proposal_w=(4, 4, 4, 1),proposal_h=(4, 4, 4, 1)"),
    # the same 3x3 reducers, padded by wrapping the map around: no zero border to tell where
    # an edge is, and nothing else changed (not even a weight: the same parameters)
    Ablation("no_positions_wrap", "no position information, reducers padded circularly", "i",
             "use_positions=False,down_pad_mode='circular'"),
)  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Accuracy of ablation ``a`` minus that of ``b``, paired by seed."""

    a: str
    b: str
    question: str


# Every ablation against the full model, and the two pairs that differ in one thing only.
COMPARISONS = tuple(
    Comparison("full", x.key, f"{x.label} vs the full model") for x in ABLATIONS[1:]
) + (
    Comparison("no_positions", "no_positions_wrap",
               "without positions: reducers padded with zeros vs circularly (no border)"),
    Comparison("no_regions_same_centres", "no_regions",
               "without regions: 64 and 16 centres per map vs 4"),
)  # fmt: skip


VERDICTS = (
    "reproduces",
    "reversed",
    "no difference detected at this scale",
    "differs",  # a difference where the paper expects none
    "does not reproduce",  # a claim that a variant fails to train, when it trains
    "reproduces in part",  # ... when it fails in some seeds only
    "not run",
)


@dataclass(frozen=True)
class Finding:
    """A claim of the paper about two ablations: ``better`` beats ``worse``
    (``expect="better"``), they are within ``margin`` points (``expect="similar"``), or
    ``worse`` fails to train while ``better`` trains (``expect="fails"``: read off the runs'
    status, not their accuracy)."""

    claim: str
    better: str  # an ablation key
    worse: str
    paper_claim: str = ""  # key of ablation_claims in cocs/paper_numbers.yaml; "": its table
    expect: str = "better"
    margin: float = 1.0  # points; for expect="similar"


FINDINGS = (
    Finding("the context cluster adds accuracy to position information", "full", "no_cluster"),
    Finding("several heads beat one", "full", "one_head"),
    Finding("without positions the network fails to train", "full", "no_positions",
            "no_positions", expect="fails"),
    Finding("positions add accuracy", "full", "no_positions", "no_positions"),
    Finding("sigmoid(alpha * s + beta) beats the raw similarity", "full", "raw_similarity",
            "sigmoid_vs_raw"),
    Finding("iterating the centres changes accuracy little", "iterative", "full",
            "iterative_centres", expect="similar"),
)  # fmt: skip


def paper_evidence(finding: Finding, paper: dict) -> str:
    """What the paper reports for ``finding``; ``paper`` is :func:`cocs.paper.numbers`."""
    if finding.paper_claim:
        return f"in its text: {paper['ablation_claims'][finding.paper_claim]}"
    top1 = {row["key"]: row["top1"] for row in paper["ablations"]}
    return (
        f"ImageNet top-1 of CoC-Small, {finding.better} {top1[finding.better]} vs "
        f"{finding.worse} {top1[finding.worse]}"
    )


# --------------------------------------------------------------------------------------------
# Running the study
# --------------------------------------------------------------------------------------------


def schedule(keys: Sequence[str], max_seeds: int) -> list[tuple[str, int]]:
    """(key, seed) in training order, so that an interrupted study holds as many complete
    comparisons as it can: first seeds 0 and 1 of the paper's table rows (the ablations with
    3 seeds), seed by seed; then seeds 0 and 1 of every other ablation, one ablation after the
    other; then the further seeds. Each ablation runs min(its ``seeds``, ``max_seeds``) seeds."""
    known = {a.key: a for a in ABLATIONS}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; expected keys of {list(known)}")
    if max_seeds < 2:
        raise ValueError(f"max_seeds={max_seeds}: paired intervals need at least 2 seeds")
    order = [a.key for a in ABLATIONS if a.key in keys]
    table = [k for k in order if known[k].seeds >= 3]
    first = [(k, s) for s in (0, 1) for k in table]
    first += [(k, s) for k in order if k not in table for s in (0, 1)]
    rest = [
        (k, s) for s in range(2, max_seeds) for k in order if s < min(known[k].seeds, max_seeds)
    ]
    return first + rest


def run_config(key: str, seed: int, params: Mapping, out: str | os.PathLike):
    """The :class:`cocs.train.TrainConfig` of one run; ``params`` holds the recipe's keys (a
    notebook's ``globals()``)."""
    from .train import TrainConfig

    known = {a.key: a for a in ABLATIONS}
    return TrainConfig.from_namespace(
        params,
        model="coc_cifar",
        model_kwargs=known[key].model_kwargs,
        dataset="cifar10",
        seed=seed,
        shared_init=True,
        save_predictions=True,
        out_dir=str(Path(out) / key / f"seed{seed}"),
        progress=False,
    )


def finished_run(cfg) -> dict | None:
    """The finished run of ``cfg`` (:func:`cocs.runs.finished`: its fingerprint and recipe equal
    today's) with its test predictions (``label``, ``pred``); None when there is none.

    A run whose training loss stopped being finite is finished too: its record carries the
    epoch under ``diverged`` and has no predictions. Training it again with the same seed and
    recipe would repeat the same steps, so the study reports it as "failed to train".
    """
    from .runs import finished

    meta = finished(cfg, weights=False)
    if meta is None or meta.get("diverged"):
        return meta
    pred_path = Path(cfg.out_dir) / "predictions.npz"
    if not pred_path.is_file():
        return None
    with np.load(pred_path) as f:
        meta["label"], meta["pred"] = f["label"], f["pred"]
    return meta


def _row(key: str, seed: int, meta: Mapping, reused: bool) -> dict:
    from .runs import trained_on

    failed = meta.get("diverged")
    final = {} if failed else meta["final"]
    return {
        "key": key,
        "seed": seed,
        "status": f"failed to train (loss {failed['train_loss']} in epoch {failed['epoch']})"
        if failed
        else "trained",
        "test_acc": final.get("test_acc", np.nan),
        "train_acc": final.get("train_acc", np.nan),
        "train_loss": final.get("train_loss", np.nan),
        "minutes": meta["epoch_minutes"],
        "params": meta["params"],
        "epochs": meta["epochs_done"],
        "train_images": meta["train_images"],
        "test_images": meta["test_images"],
        "fingerprint": meta["fingerprint"],
        "git_commit": meta["environment"]["git_commit"],
        "git_dirty": meta["environment"]["git_dirty"],
        **trained_on(meta),  # hardware (with its vector capability), threads, autocast
        # the cores of its machine: a run of 1 thread on 2 cores shared them with another
        "cores": meta["environment"]["hardware"].get("cpu_count"),
        "reused": reused,
    }


def run_study(
    plan: Sequence[tuple[str, int]],
    params: Mapping,
    out: str | os.PathLike,
    *,
    train_missing=True,
    parallel: int = 1,
) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]:
    """Train (or reuse) every run of ``plan``; one row per run and each run's correctness.

    A finished run whose fingerprint and recipe match is read from its files; any other run is
    trained by :func:`cocs.train.train`, which resumes an interrupted one from its checkpoint.
    With ``train_missing=False`` runs without matching results are skipped (and listed).
    A run whose loss stops being finite (:class:`cocs.train.TrainingDiverged`) is recorded by
    the engine and gets the status "failed to train" and no accuracy; the study goes on.
    ``parallel`` > 1 trains that many runs at once, each in a process of its own with an equal
    share of this process's threads (:func:`train_runs`), in the order of ``plan``.
    Returns the runs and, per (key, seed) of every run that trained, the (N,) booleans of
    correct test predictions.
    """
    configs = {(key, seed): run_config(key, seed, params, out) for key, seed in plan}
    found = {ks: finished_run(cfg) for ks, cfg in configs.items()}
    missing = [ks for ks in plan if found[ks] is None]
    skipped = [] if train_missing else missing
    if train_missing:
        train_runs([configs[ks] for ks in missing], parallel=parallel)
    rows, correct = [], {}
    for i, (key, seed) in enumerate(plan):
        if (key, seed) in skipped:
            continue
        reused = found[key, seed] is not None
        meta = found[key, seed] if reused else finished_run(configs[key, seed])
        if meta is None:
            raise RuntimeError(f"{key} seed {seed}: its files do not match the model built")
        rows.append(_row(key, seed, meta, reused))
        if "pred" in meta:
            correct[key, seed] = meta["label"] == meta["pred"]
        r = rows[-1]
        outcome = f"{r['test_acc']:.2f}%" if r["status"] == "trained" else r["status"]
        print(
            f"[{i + 1}/{len(plan)}] {key:<24} seed {seed}: {outcome} "
            f"({'reused' if reused else 'trained'}, {r['minutes']:.1f} min)",
            flush=True,
        )
    if skipped:
        print(f"not trained (train_missing=False): {skipped}")
    return pd.DataFrame(rows), correct


def _train_one(cfg) -> None:
    """Train one run to its end; its files record the outcome, a failure to train included."""
    from .train import TrainingDiverged, train

    name = f"{Path(cfg.out_dir).parent.name} seed {cfg.seed}"
    try:
        result = train(cfg)
    except TrainingDiverged as e:
        print(f"{name} failed to train: {e}", flush=True)
        return
    if not result["complete"]:
        raise RuntimeError(f"{name} stopped after {result['epochs_done']} epochs")


def _die_with_parent(parent: int) -> None:
    """A worker's first act (Linux): ask the kernel for SIGTERM when ``parent``, the process
    that started it, dies, however it dies. Otherwise a worker outlives a killed study and
    trains on, writing the files and checkpoint of a run that the study, started again, also
    trains."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # from <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the request: nobody to work for
            os._exit(1)


def _stop_on_sigterm(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def _train_in_worker(job: tuple) -> str:
    cfg, threads = job
    torch.set_num_threads(threads)
    _train_one(replace(cfg, num_threads=threads))
    return f"{Path(cfg.out_dir).parent.name} seed {cfg.seed}"


def train_runs(configs: Sequence, *, parallel: int = 1) -> None:
    """Train every run of ``configs`` (:class:`cocs.train.TrainConfig`), ``parallel`` at a time.

    With ``parallel`` > 1 each run trains in a process of its own (started fresh, ``spawn``)
    with ``torch.get_num_threads() // parallel`` threads, in the order given. On a CPU whose
    cores one training step cannot keep busy (on 2 cores, coc_cifar's small tensors leave a
    second thread idle part of the time), two runs of one thread each finish more runs per
    hour than one run of two threads; chapter 6 measures by how much
    (:func:`parallel_gain`). What each run computes does not depend on it. The first error of
    a worker, an interrupt or a kill (SIGTERM) stops every worker at once and is raised, and a
    worker whose parent dies, however it dies, stops too (Linux); an interrupted run resumes
    from its last checkpoint when the study runs again.
    """
    if parallel <= 1 or len(configs) <= 1:
        for cfg in configs:
            _train_one(cfg)
        return
    threads = max(1, torch.get_num_threads() // parallel)
    print(f"training {len(configs)} runs, {parallel} at a time in processes of {threads} "
          f"thread(s) each", flush=True)  # fmt: skip
    # a kill (SIGTERM) of this process stops the workers as an interrupt does
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if main else None
    pool = multiprocessing.get_context("spawn").Pool(
        parallel, initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    try:
        jobs = [(cfg, threads) for cfg in configs]
        for name in pool.imap_unordered(_train_in_worker, jobs, chunksize=1):
            print(f"finished: {name}", flush=True)
    except BaseException:  # an error, an interrupt or a kill: stop every run now (each
        pool.terminate()  # resumes later from its last checkpoint) rather than train on unseen
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    pool.close()
    pool.join()


class _Timed(Exception):
    """Raised from the training engine's step hook once :func:`_time_steps` has its steps."""


def _time_steps(cfg, threads: int, steps: int, barrier=None) -> dict:
    """A run's training steps as the engine takes them: ``cfg`` (a
    :class:`cocs.train.TrainConfig`: its data, loader, augmentation, loss, optimizer, schedule,
    autocast and compiling) trained by :func:`cocs.train.train` in a scratch folder with
    ``threads`` threads and stopped after ``steps`` timed steps (after two untimed ones).

    Returns ``step_s``, the median seconds from the end of one step to the end of the next
    (the loading of its batch included); ``start_s``, from the call to the end of the first
    step (reading the data, building the model and, when compiled, compiling: what every run
    pays once); and ``eval_batch_s``, the median evaluation batch (``2 x batch_size`` images
    without gradients, uncompiled, as the engine tests)."""
    from .train import _resolve_amp, train

    torch.set_num_threads(threads)
    ends: list[float] = []
    trained: list[torch.nn.Module] = []

    def hook(model: torch.nn.Module, done: int, loss: float) -> None:
        ends.append(time.perf_counter())
        if done == 2 and barrier is not None:
            barrier.wait()  # the timed steps of every process overlap
            ends[-1] = time.perf_counter()
        if len(ends) == steps + 2:
            trained.append(model)
            raise _Timed

    with tempfile.TemporaryDirectory() as scratch:
        run = replace(cfg, out_dir=f"{scratch}/run", ckpt_dir=f"{scratch}/ckpt", resume=False,
                      save_predictions=False, save_weights=False, progress=False,
                      num_threads=threads)  # fmt: skip
        began = time.perf_counter()
        try:
            train(run, on_step_end=hook)
        except _Timed:
            pass
    if not trained:
        raise ValueError(
            f"{cfg.model}: its {cfg.epochs} epoch(s) of {cfg.batch_size}-image batches end "
            f"before {steps + 2} steps; time fewer steps or train on more images"
        )
    model = trained[0].eval()
    amp = _resolve_amp(cfg, torch.device("cpu"))
    x = torch.randn(2 * cfg.batch_size, 3, cfg.img_size, cfg.img_size)
    infer = []
    for _ in range(max(2, steps // 2) + 1):
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.float32,
                                             enabled=amp is not None):  # fmt: skip
            model(x)
        infer.append(time.perf_counter() - t0)
    return {"step_s": float(np.median(np.diff(ends[1:]))), "start_s": ends[0] - began,
            "eval_batch_s": float(np.median(infer[1:]))}  # fmt: skip


def _time_in_worker(cfg, threads: int, steps: int, barrier, results, parent: int) -> None:
    _die_with_parent(parent)
    results.put(_time_steps(cfg, threads, steps, barrier))


def parallel_gain(cfg, parallel: int, *, steps: int = 10) -> dict:
    """How many more training steps per hour ``parallel`` processes give than one.

    Times ``cfg``'s training steps as the engine takes them (:func:`_time_steps`), first in
    this process with all of its threads, then in ``parallel`` processes at once with an equal
    share of them each, whose timed steps start together. ``gain`` = parallel x (one process's
    step) / (a step of the processes side by side): above 1, :func:`train_runs` with
    ``parallel`` finishes the study sooner by that factor. The processes' start
    (``start_s_side_by_side``: data, model and compiling) and evaluation batch
    (``eval_batch_s_side_by_side``) are reported for estimating whole runs.
    """
    threads = torch.get_num_threads()
    alone = _time_steps(cfg, threads, steps)
    share = max(1, threads // parallel)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(parallel), ctx.Queue()
    workers = [ctx.Process(target=_time_in_worker, args=(cfg, share, steps, barrier, results, os.getpid()))
               for _ in range(parallel)]  # fmt: skip
    for w in workers:
        w.start()
    side_by_side = []
    while len(side_by_side) < parallel:
        try:
            side_by_side.append(results.get(timeout=2))
        except queue.Empty:
            dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if dead:  # it cannot report: stop the others rather than wait for them
                for w in workers:
                    w.terminate()
                raise RuntimeError(
                    f"a timing process exited with code {dead[0]}; run the timing from a "
                    "notebook or a script whose top level is guarded by "
                    "`if __name__ == '__main__':` (the processes are started with spawn)"
                ) from None
    for w in workers:
        w.join()
    torch.set_num_threads(threads)
    med = {k: float(np.median([r[k] for r in side_by_side])) for k in side_by_side[0]}
    return {"parallel": parallel, "threads_each": share, "compiled": cfg.torch_compile,
            "step_s_alone": alone["step_s"], "step_s_side_by_side": med["step_s"],
            "start_s_side_by_side": med["start_s"],
            "eval_batch_s_side_by_side": med["eval_batch_s"],
            "gain": parallel * alone["step_s"] / med["step_s"]}  # fmt: skip


def relative_costs(
    keys: Sequence[str], *, batch: int = 128, repeats: int = 5, amp: bool = True, seed: int = 0
) -> pd.DataFrame:
    """Training-step and inference time of each ablation relative to the full model.

    One process, one batch, the models timed in turn (full, a, b, ..., full, a, b, ...) so that
    each sees the same machine load; ``repeats`` rounds after one warm-up round. Eager mode,
    bfloat16 autocast when ``amp``, AdamW's fused step as the engine takes it. Each round
    gives a ratio to the full model's time in that round; ``train_ratio`` and ``infer_ratio``
    are their medians, with their quartiles (``_q1``, ``_q3``) as the spread, and the times
    (ms) are medians too.
    """
    import timm

    from .train import parse_model_kwargs

    known = {a.key: a for a in ABLATIONS}
    keys = ["full", *[k for k in keys if k != "full"]]
    torch.manual_seed(seed)
    models = {
        k: timm.create_model("coc_cifar", **parse_model_kwargs(known[k].model_kwargs)) for k in keys
    }
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for k, m in models.items()}
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = {(k, what): [] for k in keys for what in ("train", "infer")}
    for r in range(repeats + 1):
        for k, m in models.items():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                t0 = time.perf_counter()
                m.train()
                opts[k].zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(m(x).float(), y).backward()
                opts[k].step()
                t1 = time.perf_counter()
                m.eval()
                with torch.no_grad():
                    m(x)
                t2 = time.perf_counter()
            if r > 0:
                times[k, "train"].append(t1 - t0)
                times[k, "infer"].append(t2 - t1)
    rows = []
    for k in keys:
        row = {"key": k}
        for what, name in (("train", "train_step_ms"), ("infer", "infer_ms")):
            row[name] = 1e3 * float(np.median(times[k, what]))
        for what in ("train", "infer"):  # round by round: the same machine load
            per_round = np.array(times[k, what]) / np.array(times["full", what])
            q1, mid, q3 = np.percentile(per_round, [25, 50, 75])
            row |= {f"{what}_ratio": mid, f"{what}_ratio_q1": q1, f"{what}_ratio_q3": q3}
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Summaries and verdicts
# --------------------------------------------------------------------------------------------


def machine_hours(runs: pd.DataFrame) -> float:
    """The hours the runs held their machines: each run's minutes times its share of its
    machine's CPU cores (``threads`` / ``cores``, at most 1; a run without a record of its
    cores counts whole). Runs trained side by side, one thread each on a 2-core CPU, count half
    their minutes each: the wall time of a study that kept its machine busy (a run of one
    thread that ran alone counts half too: for such a study this is a lower bound)."""
    share = (runs["threads"] / runs["cores"]).where(runs["cores"].notna(), 1.0).clip(upper=1.0)
    return float((runs["minutes"] * share.fillna(1.0)).sum() / 60)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each ablation.

    Args:
        runs: one row per run with columns ``key``, ``seed``, ``test_acc`` and ``minutes``.

    Returns:
        One row per key, in the order of :data:`ABLATIONS` (unknown keys last), with columns
        ``label``, ``group``, ``seeds``, ``failed`` (runs that failed to train: those with a
        ``status`` other than "trained"), ``acc_mean``, ``acc_std`` (over the runs that trained;
        sample standard deviation, ``ddof=1``), ``minutes_mean``.
    """
    missing = {"key", "seed", "test_acc", "minutes"} - set(runs.columns)
    if missing:
        raise ValueError(f"runs lacks columns {sorted(missing)}; pass one row per training run")
    duplicated = runs.duplicated(["key", "seed"])
    if duplicated.any():
        raise ValueError(f"runs repeats (key, seed) pairs: {runs.loc[duplicated, ['key', 'seed']]}")
    g = runs.groupby("key", sort=False)
    out = pd.DataFrame(
        {
            "seeds": g["seed"].count(),
            "failed": (runs["status"] != "trained").groupby(runs["key"], sort=False).sum()
            if "status" in runs
            else 0,
            "acc_mean": g["test_acc"].mean(),
            "acc_std": g["test_acc"].std(ddof=1),
            "minutes_mean": g["minutes"].mean(),
        }
    )
    known = {a.key: a for a in ABLATIONS}
    order = [a.key for a in ABLATIONS if a.key in out.index] + [
        k for k in out.index if k not in known
    ]
    out = out.loc[order]
    out.insert(0, "label", [known[k].label if k in known else k for k in out.index])
    out.insert(1, "group", [known[k].group if k in known else "" for k in out.index])
    return out.rename_axis("key").reset_index()


def compare(
    correct: Mapping[tuple[str, int], np.ndarray],
    comparisons: Sequence[Comparison] = COMPARISONS,
    *,
    failed: Collection[tuple[str, int]] = (),
    level: float = 0.95,
) -> pd.DataFrame:
    """The paired difference of every comparison over the seeds both sides have.

    ``correct`` maps (key, seed) to the (N,) booleans of correct test predictions; ``failed``
    holds the (key, seed) of runs that failed to train. ``trained_a``/``trained_b`` and
    ``failed_a``/``failed_b`` count each side's runs of either kind. A comparison with fewer
    than two shared seeds gets ``seeds`` < 2 and no interval.
    """
    rows = []
    for c in comparisons:
        seeds = sorted({s for k, s in correct if k == c.a} & {s for k, s in correct if k == c.b})
        row = {"a": c.a, "b": c.b, "question": c.question, "seeds": len(seeds),
               "trained_a": sum(k == c.a for k, _ in correct),
               "trained_b": sum(k == c.b for k, _ in correct),
               "failed_a": sum(k == c.a for k, _ in failed),
               "failed_b": sum(k == c.b for k, _ in failed)}  # fmt: skip
        row |= dict.fromkeys(("mean", "low", "high", "se_seed", "se_test", "df", "detectable"))
        if len(seeds) >= 2:
            a = np.stack([correct[c.a, s] for s in seeds])
            b = np.stack([correct[c.b, s] for s in seeds])
            row |= paired_difference(a, b, level=level).as_dict()
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.astype({k: float for k in ("mean", "low", "high", "detectable")})


def verdict(finding: Finding, low: float, high: float) -> str:
    """What an interval [low, high] of ``better - worse`` says about ``finding``."""
    if finding.expect == "similar":
        if -finding.margin <= low and high <= finding.margin:
            return "reproduces"
        return "differs" if low > 0 or high < 0 else "no difference detected at this scale"
    if low > 0:
        return "reproduces"
    if high < 0:
        return "reversed"
    return "no difference detected at this scale"


def findings(differences: pd.DataFrame, paper: dict) -> pd.DataFrame:
    """Whether each of the paper's findings shows, read off the intervals of :func:`compare`.

    "reproduces": the interval of better - worse lies above zero (for a claim of no difference:
    within +-margin); "reversed": below zero; "no difference detected at this scale": it holds
    zero, and ``detectable`` says how large a difference the study would have found;
    "differs": a difference where the paper expects none; "not run": fewer than 2 paired seeds.
    A claim that ``worse`` fails to train (``expect="fails"``) is read off the runs' status over
    all of ``worse``'s seeds: "reproduces" when none trained, "does not reproduce" when all
    trained, "reproduces in part" otherwise (at least two runs; else "not run").
    One verdict needs no interval: when every run of the worse side failed to train (at least
    two) and every run of the better side trained (at least two), a claim that ``better`` beats
    ``worse`` "reproduces" in its strongest form (``note`` says so). Any other failure to train
    is named in ``note`` beside the verdict of the seeds where both sides trained.
    """
    d = differences.set_index(["a", "b"])
    rows = []
    for f in FINDINGS:
        row = {"claim": f.claim, "better": f.better, "worse": f.worse, "expect": f.expect,
               "paper": paper_evidence(f, paper), "note": ""}  # fmt: skip
        sign, pair = (
            (1, (f.better, f.worse))
            if (f.better, f.worse) in d.index
            else (-1, (f.worse, f.better))
        )
        if pair not in d.index:
            rows.append(row | {"verdict": "not run"})
            continue
        r = d.loc[pair]
        failed = {pair[0]: int(r["failed_a"]), pair[1]: int(r["failed_b"])}
        trained = {pair[0]: int(r["trained_a"]), pair[1]: int(r["trained_b"])}
        if any(failed.values()):
            row["note"] = "; ".join(
                f"{k} failed to train in {n} seed{'s' if n > 1 else ''}"
                for k, n in failed.items()
                if n
            )
        if f.expect == "fails":  # a claim about training itself, whatever the accuracies
            n = failed[f.worse] + trained[f.worse]
            if n < 2 or trained[f.better] == 0:  # the claim needs a model that trains
                rows.append(row | {"verdict": "not run"})
            elif trained[f.worse] == 0:
                rows.append(row | {"verdict": "reproduces", "seeds": n})
            elif failed[f.worse] == 0:
                note = f"every run of {f.worse} trained ({n} seeds)"
                rows.append(row | {"verdict": "does not reproduce", "seeds": n, "note": note})
            else:
                rows.append(row | {"verdict": "reproduces in part", "seeds": n})
            continue
        if (
            f.expect == "better"
            and failed[f.worse] >= 2
            and trained[f.worse] == 0
            and trained[f.better] >= 2
            and failed[f.better] == 0
        ):
            rows.append(row | {"verdict": "reproduces", "seeds": failed[f.worse]})
            continue
        if r["seeds"] < 2:
            rows.append(row | {"verdict": "not run"})
            continue
        low, high = sorted((sign * r["low"], sign * r["high"]))
        row |= {"difference": sign * r["mean"], "low": low, "high": high,
                "detectable": r["detectable"], "seeds": int(r["seeds"])}  # fmt: skip
        row["verdict"] = verdict(f, low, high)
        rows.append(row)
    return pd.DataFrame(rows)


def test_images(cfg, n: int) -> torch.Tensor:
    """``n`` normalised test images of ``cfg``'s data set, evenly spread over the split (which
    is stored class by class): (n, 3, H, W)."""
    from . import data as D
    from .train import build_data

    bundle = build_data(cfg)
    idx = torch.linspace(0, len(bundle.test) - 1, min(n, len(bundle.test))).long().tolist()
    x, _ = bundle.test.__getitems__(idx)
    return D.normalize(x, bundle.mean, bundle.std)


def similarity_diagnosis(model: torch.nn.Module, images: torch.Tensor) -> pd.DataFrame:
    """How the clusters' aggregates are weighted, per stage: the evidence for why the raw
    cosine similarity trains worse than the sigmoid of it.

    A cluster's aggregate is (v_c + sum_i s_i v_i) / (1 + sum_i s_i). With the sigmoid every
    s_i is in (0, 1) and the denominator is at least 1; with the raw cosine similarity s_i can
    be negative, and the denominator of a cluster can come near zero, which scales its
    aggregate, and the gradient through it, without bound.

    Args:
        model: a ``coc_cifar``-like model (eval mode is set here).
        images: (B, 3, H, W) normalised images.
    Returns one row per stage: ``negative`` (share of points whose similarity to their centre
    is below 0), ``den_small`` (share of clusters with |1 + sum s| < 0.25), ``den_median`` and
    ``den_min`` (median and smallest |1 + sum s| over clusters), ``gain_max`` (the largest
    |s_i| / |1 + sum s| of a point: how much one point's value is amplified in the output).
    """
    from .model import capture_assignments, capture_similarities

    model.eval()
    with torch.no_grad(), capture_assignments(model) as assign, capture_similarities(model) as sim:
        model(images)
    rows = []
    for name, a in assign.items():
        s = sim[name].float()  # (B, heads, H, W)
        stage = int(name.split(".")[1]) // 2 + 1  # network.0 -> 1, network.2 -> 2, ...
        flat_a, flat_s = a.flatten(2), s.flatten(2)  # (B, heads, N)
        centres = int(flat_a.max()) + 1
        den = torch.ones(*flat_a.shape[:2], centres).scatter_add_(2, flat_a, flat_s)
        used = torch.zeros_like(den).scatter_add_(2, flat_a, torch.ones_like(flat_s)) > 0
        den_used = den[used].abs()  # (clusters that have points,)
        gain = flat_s.abs() / den.gather(2, flat_a).abs().clamp_min(1e-6)
        rows.append(
            {
                "layer": name,
                "stage": stage,
                "negative": float((s < 0).float().mean()),
                "den_small": float((den_used < 0.25).float().mean()),
                "den_median": float(den_used.median()),
                "den_min": float(den_used.min()),
                "gain_max": float(gain.max()),
            }
        )
    return (
        pd.DataFrame(rows)
        .groupby("stage", as_index=False)
        .agg(
            negative=("negative", "mean"),
            den_small=("den_small", "mean"),
            den_median=("den_median", "median"),
            den_min=("den_min", "min"),
            gain_max=("gain_max", "max"),
        )
    )


class _EndOfTrace(Exception):
    """Stops the training of :func:`divergence_trace`."""


def divergence_trace(cfg, images: torch.Tensor, *, steps: int, every: int = 10) -> pd.DataFrame:
    """Replay the first training steps of the run ``cfg`` and watch its clusters' denominators.

    The run trains as in the study (its recipe, seed, data order and shared initial weights,
    by :func:`cocs.train.train`) in a scratch folder, for at most ``steps`` steps or until its
    loss stops being finite. After step 1, every ``every``-th step and the last, the model is
    diagnosed on ``images`` by :func:`similarity_diagnosis` (in float32, without autocast).

    Returns one row per diagnosed step and stage: ``step``, ``loss`` (of that training step) and
    the columns of :func:`similarity_diagnosis`. Nothing of the run is kept.
    """
    from dataclasses import replace

    from .train import train

    rows: list[dict] = []

    def record(model: torch.nn.Module, step: int, loss: float) -> None:
        finite = math.isfinite(loss)
        if step == 1 or step % every == 0 or not finite or step >= steps:
            diagnosed = similarity_diagnosis(model, images)
            model.train()
            rows.extend(diagnosed.assign(step=step, loss=loss).to_dict("records"))
        if not finite or step >= steps:
            raise _EndOfTrace

    with tempfile.TemporaryDirectory(prefix="cocs-trace-") as tmp:
        scratch = replace(cfg, out_dir=f"{tmp}/run", ckpt_dir=f"{tmp}/ckpt", resume=False,
                          save_predictions=False, progress=False)  # fmt: skip
        try:
            train(scratch, on_step_end=record)
        except _EndOfTrace:
            pass
    columns = ["step", "loss", "stage"]
    out = pd.DataFrame(rows)
    return out[columns + [c for c in out.columns if c not in columns]]
