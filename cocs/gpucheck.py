"""Time the `full` profile on this machine: the long schedules, for readers with a GPU.

    python -m cocs.gpucheck                # on CUDA; writes results/gpu/<machine>.csv
    python -m cocs.gpucheck --epochs 3 --chapters 04_cifar10

`notebooks/profiles.yaml` lists under `full` the schedules of the paper's scale (200 epochs of
chapter 4, 100 of chapter 6): hours on a GPU, days on a CPU. Before a reader commits a GPU to
them, this command starts each chapter's full-profile runs as the chapter configures them (the
notebook's parameters with the profile's overrides, through the one training engine,
`cocs.train.train`), trains the first `--epochs` epochs of one run per model
(``stop_after_epochs``: the lr schedule is the full one), and projects the profile's wall time
from the measured epochs:

    hours = sum over the profile's runs of (first epoch + (epochs - 1) x steady epoch) / 3600

where the first epoch includes compiling, and a steady epoch is the median of the later ones.
Chapter 6 trains one model per variant; the projection times every variant as the full model
(the variants' own costs relative to it are in `results/06_ablations/costs.csv`). A chapter
whose data set is not on this machine and cannot be downloaded is reported as such, not timed.
The checkpoints go to a temporary folder and are removed: nothing here resumes a real run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

# The chapters whose `full` profile this command can start, and how each lays out its runs.
CHAPTERS = ("04_cifar10", "06_ablations", "05_imagenette")


def full_parameters(chapter: str, profile: str = "full") -> dict[str, Any]:
    """The chapter's parameters under `profile`: its parameters cell with the overrides."""
    from .handbook import load_profile, parameters_of, read_notebook

    defaults = parameters_of(read_notebook(chapter), where=chapter)
    return defaults | load_profile(chapter, profile)


def planned_runs(chapter: str, params: dict[str, Any], out: Path) -> list[tuple[str, Any]]:
    """(timing group, TrainConfig) of every run the chapter trains with `params`, in its order.

    Runs of one group cost the same per epoch; the first run of each group is the one timed.
    """
    from .train import TrainConfig

    if chapter == "04_cifar10":
        names = [m.strip() for m in params["models"].split(",") if m.strip()]
        return [
            (name, TrainConfig.from_namespace(
                params, model=name, dataset="cifar10", out_dir=str(out / chapter / name),
                budget_minutes=0.0 if params["epochs"] else params["budget_minutes"],
                progress=False,
            ))
            for name in names
        ]  # fmt: skip
    if chapter == "06_ablations":
        from . import ablation

        keys = [a.key for a in ablation.ABLATIONS]
        if params["ablations"] != "all":
            keys = [k.strip() for k in params["ablations"].split(",") if k.strip()]
        return [
            ("coc_cifar", ablation.run_config(key, seed, params, out / chapter))
            for key, seed in ablation.schedule(keys, params["max_seeds"])
        ]
    if chapter == "05_imagenette":
        names = [params["model"]] + ([params["peer"]] if params["peer"] else [])
        return [
            (name, TrainConfig.from_namespace(
                params, model=name, dataset="imagenette", out_dir=str(out / chapter / name),
                keep_epoch_ckpts=False, progress=False,
            ))
            for name in names
        ]  # fmt: skip
    raise ValueError(
        f"chapter {chapter!r} has no run layout here: expected one of {', '.join(CHAPTERS)}"
    )


def projected_hours(epochs: int, rows: list[dict]) -> float:
    """Wall hours of a run of `epochs` epochs from the metrics rows of its first epochs."""
    if not rows:
        raise ValueError("no measured epoch to project from: train at least one epoch")
    first = float(rows[0]["epoch_seconds"])
    later = [float(r["epoch_seconds"]) for r in rows[1:]]
    steady = statistics.median(later) if later else first
    return (first + (epochs - 1) * steady) / 3600


def time_chapter(chapter: str, *, epochs: int, device: str, out: Path, profile: str = "full",
                 overrides: dict | None = None) -> Iterator[dict]:  # fmt: skip
    """One row per timing group of the chapter's `profile`, as each is measured: the measured
    epochs and the projected hours of the group's runs."""
    from .train import train

    params = full_parameters(chapter, profile) | (overrides or {})
    runs = planned_runs(chapter, params, out)
    for group in dict.fromkeys(g for g, _ in runs):
        cfgs = [c for g, c in runs if g == group]
        cfg = cfgs[0]
        measured = min(epochs, cfg.epochs)
        started = time.perf_counter()
        result = train(replace(cfg, device=device, stop_after_epochs=measured))
        metrics = result["metrics"]
        env = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())["environment"]
        yield {
            "chapter": chapter,
            "model": group,
            "runs": len(cfgs),
            "epochs": cfg.epochs,
            "measured_epochs": len(metrics),
            "first_epoch_s": round(float(metrics[0]["epoch_seconds"]), 2),
            "steady_epoch_s": round(statistics.median(
                [float(r["epoch_seconds"]) for r in metrics[1:]] or [metrics[0]["epoch_seconds"]]
            ), 2),
            "test_acc_last": round(float(metrics[-1]["test_acc"]), 2),
            "autocast": result["autocast"],
            "compiled": cfg.torch_compile,
            "call_s": round(time.perf_counter() - started, 1),
            "projected_hours": round(sum(projected_hours(c.epochs, metrics) for c in cfgs), 2),
            "torch": env["versions"]["torch"],
            "git_commit": (env["git_commit"] or "")[:7],
            "git_dirty": env["git_dirty"],
        }  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    import pandas as pd

    from .bench import hardware_name
    from .data import DataNotFound
    from .handbook import results_path, write_csv

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs trained per timed run (>= 2)")
    p.add_argument("--chapters", default=",".join(CHAPTERS), help="comma-separated chapters")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu to time it there")
    p.add_argument("--results_dir", default="results")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs {args.epochs}: train at least 1 epoch (2 or more to see a steady one)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(
            f"--device {args.device}: no CUDA device is visible here (torch "
            f"{torch.__version__}); the full profile is meant for a GPU. Run this where one is, "
            "or pass --device cpu to time its first epochs on this CPU anyway (slow)"
        )
    rows, path = [], results_path(args.results_dir, "gpu") / f"{hardware_name()}.csv"
    with tempfile.TemporaryDirectory(prefix="cocs-gpucheck-") as tmp:
        for chapter in [c.strip() for c in args.chapters.split(",") if c.strip()]:
            try:
                for row in time_chapter(chapter, epochs=args.epochs, device=args.device,
                                        out=Path(tmp)):  # fmt: skip
                    rows.append(row)
                    write_csv(pd.DataFrame(rows), path)  # each row as soon as it is measured
                    print(row)
            except DataNotFound as err:  # a data set neither here nor downloadable
                print(f"{chapter}: not timed, its data is missing: {err}")
                rows.append({"chapter": chapter, "model": "", "not_timed": str(err)})
                write_csv(pd.DataFrame(rows), path)
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
