"""The handbook's result tables, regenerated from the files under ``results/``.

:func:`render` reads what the chapters and ``make bench`` wrote and returns one Markdown
document; :func:`update_readme` puts it between two markers of the README. Nothing in either is
typed by hand, and a test checks that the README holds exactly what :func:`render` returns.
A chapter that has not been run yet shows as such, with the command that runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from .handbook import atomic_write_text
from .runs import autocast_of, budget_caveat

__all__ = ["BEGIN", "END", "SECTIONS", "readme_block", "render", "stale_results", "update_readme"]

BEGIN = "<!-- results:begin (written by notebooks/10_results.py; do not edit) -->"
END = "<!-- results:end -->"


def _md(df: pd.DataFrame, digits: int = 2) -> str:
    return df.round(digits).to_markdown(index=False)


def _blank_if_missing(column: pd.Series) -> pd.Series:
    return column.map(lambda v: "" if pd.isna(v) else f"{v:g}")


def _family(results: Path) -> str | None:
    path = results / "03_model_family" / "model_family.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    df = df[df["paper_params_m"].notna()]  # the paper's variants
    shown = pd.DataFrame(
        {
            "variant": df["variant"],
            "params (2^20), ours": df["params_2p20"],
            "params (2^20), paper": df["paper_params_m"],
            "GMACs (2^30), ours": df["gmacs_2p30"],
            "GFLOPs, paper": df["paper_gflops"],
            "top-1, paper": df["paper_top1"],
        }
    )
    return _md(shown) + (
        "\n\nThe paper counts a multiply-add as one FLOP. Its Context Cluster rows count a "
        "million parameters as 2^20 and a billion MACs as 2^30, which is why ours are given in "
        "those units; its baselines (ResNet, DeiT, ...) are counted in decimal units."
    )


def _builds(platforms: pd.Series) -> list[str | None]:
    """The parts of platform strings that tell them apart ("Linux-6.18-fc-v1300-x86_64" and
    "Linux-6.18-fc-v1272-x86_64": "build v1300", "build v1272"); None where unrecorded."""
    parts = [str(p).split("-") if pd.notna(p) else None for p in platforms]
    known = [p for p in parts if p is not None]
    width = max(map(len, known), default=0)
    differ = [i for i in range(width) if len({tuple(p[i : i + 1]) for p in known}) > 1]
    return [None if p is None else "build " + "-".join(p[i] for i in differ if i < len(p))
            for p in parts]  # fmt: skip


def _trained_on(df: pd.DataFrame, *, budgeted: bool = True) -> str:
    """The machines a chapter's runs trained on (its ``hardware`` and ``threads`` columns),
    and, for runs ``budgeted`` in minutes that trained on several, why they do not compare."""
    pairs = df[["hardware", "threads"]].drop_duplicates().itertuples(index=False)
    where = "; ".join(f"{h}, {t} threads" for h, t in pairs)
    caveat = budget_caveat(df.to_dict("records")) if budgeted and "autocast" in df else None
    return where + (f" (NB: {caveat})" if caveat else "")


def _cifar(results: Path) -> str | None:
    path = results / "04_cifar10" / "comparison.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    columns = {"model": df["model"], "test acc. (%)": df["test_acc_final"]}
    if "test_acc_flip" in df:  # chapter 4's runs before flip test-time augmentation lack it
        columns["with flip TTA (%)"] = df["test_acc_flip"]
    shown = pd.DataFrame(
        columns
        | {
            "params (M)": df["params"] / 1e6,
            "MACs (M)": df["macs_m"],
            "epochs": df["epochs"],
            "train img/s": df["train_img_s"],
            "infer img/s": df["infer_img_s"],
            "wall (min)": df["wall_minutes"],
        }
    )
    where = _trained_on(df)
    budget = (
        f"{df['budget_minutes'].iloc[0]:g} minutes per model"
        if "budget_minutes" in df and df["budget_minutes"].iloc[0] > 0
        else "the same epochs"
    )
    tta = (
        " Flip TTA: each test image and its mirror, the two predicted distributions averaged."
        if "test_acc_flip" in df
        else ""
    )
    text = (
        _md(shown, 1)
        + f"\n\nSame recipe and budget ({budget}{_how_trained(results, df)}); {where}.{tta}"
    )
    others = results / "04_cifar10" / "other_machines.csv"
    if others.is_file():  # earlier runs of today's models, same recipe, on other hardware
        o = pd.read_csv(others)
        o = o.assign(autocast=o["autocast"].replace({"off": "float32"}))
        text += (
            "\n\nThe same budget on other machines (a budget fixes minutes, not epochs):\n\n"
            + _md(
                o[["run", "model", "hardware", "autocast", "epochs", "test_acc_final"]].rename(
                    columns={"test_acc_final": "test acc. (%)"}
                ),
                1,
            )
        )
    return text


def _crop(meta: dict) -> str:
    """The training crop of a chapter-4 run, from its config (no ``crop_pad``: img_size // 8)."""
    config = meta["config"]
    pad = config.get("crop_pad", -1)
    if pad == -1:
        pad = config.get("img_size", 32) // 8
    return "flips only" if pad == 0 else f"random {pad} px crop and flips"


def _how_trained(results: Path, df: pd.DataFrame) -> str:
    """How the chapter-4 models were trained (crop, autocast, torch.compile), from metrics.json."""
    metas = []
    for model in df["model"]:
        path = results / "04_cifar10" / model / "metrics.json"
        if not path.is_file():
            return ""
        metas.append(json.loads(path.read_text()))
    crops = {_crop(m) for m in metas}
    dtypes = {autocast_of(m) for m in metas}
    compiled = {bool(m["config"].get("torch_compile", False)) for m in metas}
    if len(crops) > 1 or len(dtypes) > 1 or len(compiled) > 1:
        raise ValueError(
            f"chapter 4's models were trained differently: crop {crops}, autocast {dtypes}, "
            f"compiled {compiled}"
        )
    crop, dtype, compiled = crops.pop(), dtypes.pop(), compiled.pop()
    trained = "float32" if dtype == "off" else f"{dtype} autocast"
    return (
        f"; {crop}; training in {trained}{', compiled' if compiled else ''}, inference in float32"
    )


def _imagenette(results: Path) -> str | None:
    path = results / "05_imagenette" / "summary.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    shown = pd.DataFrame(
        {
            "model": df["model"],
            "image size": df["img_size"],
            "val. top-1 (%)": df["val_top1_final"],
            "params (M)": df["params"] / 1e6,
            "MACs (M)": df["macs_m"],
            "epochs": df["epochs"],
            "wall (min)": df["wall_minutes"],
        }
    )
    note = f"\n\nTrained on {_trained_on(df, budgeted=False)}, with the same recipe and epochs."
    paired = results / "05_imagenette" / "peer_difference.csv"
    if paired.is_file():
        for r in pd.read_csv(paired).itertuples():
            note += (
                f" {r.model} minus {r.peer}, image by image on the validation set: "
                f"{r.difference:+.1f} points (95% interval {r.low:+.1f} to {r.high:+.1f}; the "
                f"validation set's variation only, {r.seeds} seed each)."
            )
    return _md(shown, 1) + note


def _interval(row: pd.Series, sign: int = 1) -> str:
    """A difference with its interval; ``sign=-1``: of the pair read the other way round."""
    if pd.isna(row["mean"]):
        return ""
    mean, low, high = (sign * row[c] for c in ("mean", "low", "high"))
    low, high = min(low, high), max(low, high)
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def _accuracy(row: pd.Series) -> str:
    """Mean ± sd of an ablation's runs that trained, and how many failed to train."""
    failed = int(row.get("failed", 0) or 0)
    if failed == row["seeds"]:
        return f"failed to train ({failed} of {failed} seeds)"
    sd = "" if pd.isna(row["acc_std"]) else f" ± {row['acc_std']:.2f}"
    return f"{row['acc_mean']:.2f}{sd}" + (
        f"; failed to train in {failed} seed{'s' * (failed > 1)}" if failed else ""
    )


def _ablations(results: Path) -> str | None:
    folder = results / "06_ablations"
    if not (folder / "summary.csv").is_file() or not (folder / "study.json").is_file():
        return None
    study = json.loads((folder / "study.json").read_text())
    df = pd.read_csv(folder / "summary.csv")
    diffs = pd.read_csv(folder / "differences.csv")
    vs_full = diffs[diffs["a"] == "full"].set_index("b")
    paper = df["paper_says"].where(
        df["paper_delta"].isna(), df["paper_delta"].map("{:+.1f}".format)
    )
    shown = pd.DataFrame(
        {
            "ablation": df["label"],
            "test acc. (%), mean ± sd": [_accuracy(r) for _, r in df.iterrows()],
            "seeds": df["seeds"],
            "change vs full [95% interval]": [  # the variant minus the full model, as the paper
                "" if k not in vs_full.index else _interval(vs_full.loc[k], -1) for k in df["key"]
            ],  # (differences.csv holds full minus the variant)
            "detectable": [
                "" if k not in vs_full.index or pd.isna(vs_full.loc[k, "detectable"])
                else f"{vs_full.loc[k, 'detectable']:.2f}"
                for k in df["key"]
            ],
            "paper (ImageNet, CoC-Small)": paper.fillna(""),
        }
    )  # fmt: skip
    text = f"{study['caption']}\n\n" + shown.to_markdown(index=False)
    pairs = diffs[(diffs["a"] != "full") & diffs["mean"].notna()]
    if len(pairs) and not {"question", "seeds"} <= set(pairs.columns):
        raise ValueError(f"{folder / 'differences.csv'} lacks the columns question and seeds: "
                         "regenerate it with `python -m cocs.handbook run 06_ablations`")  # fmt: skip
    if len(pairs):  # the comparisons that change one thing between two variants
        text += "\n\n" + pd.DataFrame(
            {
                "comparison (first minus second)": pairs["question"],
                "seeds": pairs["seeds"],
                "difference [95% interval]": [_interval(r) for _, r in pairs.iterrows()],
                "detectable": pairs["detectable"].map("{:.2f}".format),
            }
        ).to_markdown(index=False)
    findings = folder / "findings.csv"
    if findings.is_file():
        f = pd.read_csv(findings)
        ours = [
            "" if pd.isna(r["difference"]) else
            f"{r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"
            for _, r in f.iterrows()
        ]  # fmt: skip
        table = pd.DataFrame(
            {
                "paper's claim": f["claim"],
                "better - worse, ours": ours,
                "verdict": [
                    v if pd.isna(n) or not n else f"{v} ({n})"
                    for v, n in zip(f["verdict"], f.get("note", [""] * len(f)), strict=True)
                ],
                "paper": f["paper"],
            }  # fmt: skip
        )
        text += "\n\n" + table.to_markdown(index=False)
    estimate = study.get("plan_estimate") or {}
    if estimate.get("hours_here") is not None:  # measured where the chapter last ran
        if estimate.get("engine_steps"):  # whole runs, timed in the training engine
            counted = ("the engine's steps with their data loading, each run's start "
                       "(compiling) and test passes counted; a run that stopped early, at the "
                       "epochs it trained")  # fmt: skip
        elif "load_s" in estimate:  # whole runs, from a synthetic step
            counted = "steps, data loading, compiling and test passes counted"
        else:
            counted = "training steps only; evaluation and compiling not counted"
        text += (
            f"\n\nThe whole plan ({estimate['runs']} runs) from scratch, as the chapter last "
            f"estimated it on {estimate['hardware']}: about {estimate['hours_here']:.1f} h "
            f"with {estimate['parallel']} runs at a time (measured there: "
            f"{estimate['gain']:.2f}x the runs per hour of one run at a time; {counted})."
        )
        fewest = estimate.get("fewest_epochs")
        if fewest and estimate.get("hours_at_fewest_epochs") and fewest != study.get("epochs"):
            text += (
                f" With {fewest} epochs, the fewest the chapter's learning curve predicts to "
                f"reach 74%, about {estimate['hours_at_fewest_epochs']:.1f} h."
            )
    held, limit = study.get("machine_hours"), study.get("limit_hours")
    if held is not None:  # measured: the runs' own minutes
        text += (
            f"\n\nMeasured: the {study['runs']} runs held their machines {held:.2f} h in all "
            "(each run's minutes at its share of the cores; two runs side by side on a 2-core "
            "CPU count half each; a lower bound, as chapter 6 explains)"
            + (f", {'within' if held <= limit else 'over'} the study's limit of {limit} hours."
               if limit else ".")
        )  # fmt: skip
    return text


def _points(results: Path) -> str | None:
    path = results / "08_point_clouds" / "summary.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    runs = pd.read_csv(results / "08_point_clouds" / "runs.csv")
    spread = lambda m, sd: f"{m:.2f}" + ("" if pd.isna(sd) else f" ± {sd:.2f}")  # noqa: E731
    shown = pd.DataFrame(
        {
            "model": df["model"],
            "params": df["params"],
            "seeds": df["seeds"],
            "OA (%), mean ± sd": [
                spread(m, s) for m, s in zip(df["oa_mean"], df["oa_sd"], strict=True)
            ],
            "mAcc (%), mean ± sd": [
                spread(m, s) for m, s in zip(df["macc_mean"], df["macc_sd"], strict=True)
            ],
            "epochs": df["epochs"].round(1),
            "minutes per run": df["minutes"].round(1),
        }
    )
    note = (
        f"\n\nModelNet40 test split; trained on {_trained_on(runs)}; equal wall-clock "
        "budgets per run, so a slower model trains fewer epochs."
    )
    if "opt" in df:
        shown.insert(1, "optimizer", df["opt"])
    if "compiled" in runs and runs["compiled"].any():  # the others trained eager
        compiled = sorted(runs.loc[runs["compiled"].astype(bool), "model"].unique())
        note += f" Training steps compiled (torch.compile) for {', '.join(compiled)}."
    files = [
        results / "08_point_clouds" / f"{n}.csv"
        for n in ("difference", "compile_difference", "optimizer_difference")
    ]
    for d in [pd.read_csv(f).iloc[0] for f in files if f.is_file()]:
        note += (
            f" {d['a']} minus {d['b']}: {d['mean']:+.2f} points of OA "
            f"[{d['low']:+.2f}, {d['high']:+.2f}] over {d['seeds']} paired seeds (95% interval, "
            "bootstrap over test shapes combined with the seeds' spread)."
        )
    stem = results / "08_point_clouds" / "stem.csv"
    for _, d in pd.read_csv(stem).iterrows() if stem.is_file() else ():
        note += (  # one seed of each: the interval covers the test set only
            f" {d['a']} minus {d['b']}, seed 0 of each on one machine at the same budget: "
            f"{d['mean']:+.2f} points of OA [{d['low']:+.2f}, {d['high']:+.2f}] (95% interval "
            "over the test shapes only)."
        )
    if "git_dirty" in runs and runs["git_dirty"].any():
        dirty = runs[runs["git_dirty"].astype(bool)]
        listed = ", ".join(
            f"{m} seed {s}" for m, s in zip(dirty["model"], dirty["seed"], strict=True)
        )
        note += (
            f" Trained from a tree with uncommitted changes (git_dirty in its metrics.json): "
            f"{listed}; each one's model fingerprint equals today's."
        )
    return shown.to_markdown(index=False) + note


def _miou_differences(c: pd.DataFrame, **columns) -> pd.DataFrame:
    """Paired differences of mean IoU (rows with ``better``, ``worse``, ``mean``, ``low``,
    ``high`` and ``verdict``): the first of ``columns``, the runs, the difference with its
    interval and the verdict, then the other ``columns``."""
    (first, label), *rest = columns.items()
    return pd.DataFrame({
        first: label, "runs": c["better"] + " - " + c["worse"],
        "mIoU difference [95% interval]": [_interval(r) for _, r in c.iterrows()],
        "verdict": c["verdict"], **dict(rest),
    })  # fmt: skip


def _segmentation(results: Path) -> str | None:
    path = results / "09_dense_prediction" / "runs.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    shown = pd.DataFrame(
        {
            "run": df["run"],
            "backbone": df["backbone"],
            "centres per region": _blank_if_missing(df["centres"]),
            "Imagenette init.": df["pretrained"].map({True: "yes", False: "no"}),
            "mIoU (%)": df["miou"].round(1),
            "pixel acc. (%)": df["pixel_acc"].round(1),
            "params (M)": (df["params"] / 1e6).round(2),
            "epochs": df["epochs"],
            "minutes": df["minutes"].round(1),
        }
    )
    if "miou_low" in df:  # 95% interval over the test set, not over seeds
        shown.insert(5, "95% interval", [
            f"[{lo:.1f}, {hi:.1f}]" for lo, hi in zip(df["miou_low"], df["miou_high"], strict=True)
        ])  # fmt: skip
    several = "miou_seeds" in df and (df["seeds"] > 1).any()
    if several:  # every seed's mean IoU, seed 0 first
        shown.insert(6, "mIoU, every seed", df["miou_seeds"].astype(str).str.replace(" ", ", "))
    if "autocast" in df and budget_caveat(df.to_dict("records")):  # say which run trained where
        speed = df["gflops"] if "gflops" in df else [None] * len(df)  # speed_probe, if recorded
        build = _builds(df["platform"]) if "platform" in df else [None] * len(df)  # else build
        shown["trained on"] = [
            f"{h}, {'float32' if a == 'off' else a}"
            + (f", {g:.0f} GFLOP/s" if pd.notna(g) else f", {b}" if pd.notna(b) else "")
            for h, a, g, b in zip(df["hardware"], df["autocast"], speed, build, strict=True)
        ]
    seeds = (
        "mIoU, interval and epochs of seed 0, and every seed's mIoU beside them; the comparisons "
        "pair the seeds both runs have, and their intervals add the seeds' spread to the test set's"
        if several
        else "one seed per run"
    )
    note = (
        f"\n\nSemantic FPN on CamVid (11 classes, void ignored), the 233 test images; {seeds}; "
        f"trained on {_trained_on(df)}; equal wall-clock budgets per run, so a costlier model fits fewer "
        "epochs and a difference mixes the model's effect with that of its epochs. A run's own "
        "interval: the test set's variation only (a bootstrap over test images), not another seed's."
    )
    text = shown.to_markdown(index=False) + note
    claims = path.with_name("comparisons.csv")
    if claims.is_file():
        c = pd.read_csv(claims)
        table = _miou_differences(c, claim=c["claim"], paper=c["paper"])
        if "seeds" in c:
            table.insert(2, "seeds", c["seeds"])
        if "same_machine" in c:  # runs reused from another machine bought other work per minute
            table.insert(4, "same machine", c["same_machine"].map({True: "yes", False: "no"}))
        text += "\n\n" + table.to_markdown(index=False)
    moves = path.with_name("seeds.csv")
    if moves.is_file():  # how far another seed moved each run
        m = pd.read_csv(moves)
        text += "\n\nSeed 1 minus seed 0 of each run, on the same test images:\n\n" + pd.DataFrame({
            "run": m["run"], "mIoU difference [95% interval]": [_interval(r) for _, r in m.iterrows()],
            "epochs": m["epochs"]}).to_markdown(index=False)  # fmt: skip
    two = path.with_name("two_machines.csv")
    if two.is_file():  # the table's runs beside their twins from a faster machine
        o = pd.read_csv(two)
        table = _miou_differences(o, comparison=o["what"], **{
            "epochs": o["epochs"], "s per epoch": o["seconds_per_epoch"]})  # fmt: skip
        text += (
            "\n\nWith chapter 9's `faster_machine/` runs (the same models, recipes and seeds, "
            "trained on a faster machine of the same name) and its `finer_regions/` run, one "
            "seed each:\n\n" + table.to_markdown(index=False)
        )
    aims = path.with_name("aims.csv")
    if aims.is_file():
        text += "\n" + "".join(
            f"\n- Aim, {a['aim']} ({a['runs']}): {a['measured']:.1f} "
            f"[{a['low']:.1f}, {a['high']:.1f}], **{'met' if a['met'] else 'missed'}**."
            + (
                ""
                if a.get("same_machine", True)
                else " (runs from different machines or precisions)"
            )
            for _, a in pd.read_csv(aims).iterrows()
        )
    return text


def _per_machine(folder: Path, shown: Mapping[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of every ``<hardware>.csv`` in ``folder`` with a ``hardware`` column, and the
    columns ``shown`` maps to their titles (both empty without files). A busy machine's
    timings (``<hardware>.busy.csv``) stay beside the quiet ones, not in the table."""
    files = sorted(p for p in folder.glob("*.csv") if not p.name.endswith(".busy.csv"))
    if not files:
        return pd.DataFrame(), pd.DataFrame()
    df = pd.concat([pd.read_csv(p).assign(hardware=p.stem) for p in files], ignore_index=True)
    return df, df[["hardware", *shown]].rename(columns=dict(shown))


def _bench(results: Path) -> str | None:
    df, shown = _per_machine(results / "bench", {
        "model": "model", "img_size": "image", "batch": "batch", "speedup": "speed-up",
        "memory_ratio": "peak memory ratio",
    })  # fmt: skip
    if df.empty:
        return None
    note = (
        "\n\nA training step of `cocs` against the paper's formulation, same weights, "
        "interleaved, each case in a fresh process (`make bench`)."
    )
    if "compiled_speedup" in df:  # measured for some cases only (`--compiled`)
        shown["speed-up, torch.compile"] = _blank_if_missing(df["compiled_speedup"].round(2))
        shown["compile seconds"] = _blank_if_missing(df["compile_s"].round(0))
        if "compiled_grad_diff" in df:
            diff = df["compiled_grad_diff"].map(lambda v: "" if pd.isna(v) else f"{v:.0e}")
            shown["compiled - eager gradients"] = diff
        note += " torch.compile's columns: `cocs` compiled, against the same eager baseline, "
        note += "and the largest difference of its first step's gradients from eager `cocs`'s; "
        note += "compile seconds: that first step, shorter when torch.compile's on-disk cache "
        note += "holds an earlier run's kernels; "
        note += "a blank: not measured with `--compiled`."
    if "bf16_ratio" in df:  # measured for some cases only (`:bf16`)
        native = df["native_bf16"].map(lambda v: "" if pd.isna(v) else ("yes" if v else "no"))
        shown["bfloat16 autocast / float32 speed"] = _blank_if_missing(df["bf16_ratio"].round(2))
        shown["native bfloat16"] = native
        note += (
            " bfloat16 autocast: the speed of eager `cocs` under autocast relative to float32 "
            "(below 1: slower), and whether the processor executes bfloat16 natively (where it "
            "does not, autocast is emulated)."
        )
        if "bf16_speedup" in df:  # rows measured since the paper's side is also timed so
            shown["speed-up, both bfloat16"] = _blank_if_missing(df["bf16_speedup"].round(2))
            note += (
                " Speed-up, both bfloat16: `cocs` against the paper's formulation with both "
                "under autocast (blank: timed before that contender existed)."
            )
    if "busy_percent" in df:
        shown["other load %"] = _blank_if_missing(df["busy_percent"].round(0))
        note += " Other load: the share of the CPUs other processes used while a case was timed."
    return _md(shown) + note


def _gpu(results: Path) -> str | None:
    df, shown = _per_machine(results / "gpu", {
        "chapter": "chapter", "model": "model", "runs": "runs", "epochs": "epochs",
        "first_epoch_s": "first epoch (s)", "steady_epoch_s": "later epochs (s)",
        "projected_hours": "projected hours",
    })  # fmt: skip
    if df.empty:
        return None
    return _md(shown) + (
        "\n\nThe `full` profile's schedules (`notebooks/profiles.yaml`), started as the chapter "
        "configures them on a GPU, their first epochs measured (the first includes compiling, shorter when the same "
        "process compiled the same model before) "
        "and the hours of all the chapter's runs of that model projected from them "
        "(`python -m cocs.gpucheck`); chapter 6 times every variant as the full model."
    )


# (title, reader, command that writes the files it reads)
SECTIONS: tuple[tuple[str, Callable[[Path], str | None], str], ...] = (
    ("Model family (chapter 3)", _family, "python -m cocs.handbook run 03_model_family"),
    ("CIFAR-10 against peers (chapter 4)", _cifar, "python -m cocs.handbook run 04_cifar10"),
    ("Imagenette (chapter 5)", _imagenette, "python -m cocs.handbook run 05_imagenette"),
    ("Ablations on CIFAR-10 (chapter 6)", _ablations, "python -m cocs.handbook run 06_ablations"),
    ("Point clouds (chapter 8)", _points, "python -m cocs.handbook run 08_point_clouds"),
    (
        "Semantic segmentation on CamVid (chapter 9)",
        _segmentation,
        "python -m cocs.handbook run 09_dense_prediction",
    ),
    ("Speed and memory (`make bench`)", _bench, "make bench"),
    ("The `full` profile on a GPU", _gpu, "python -m cocs.gpucheck"),
)


def stale_results(folder: str | os.PathLike) -> list[str]:
    """Why each ``metrics.json`` under ``folder`` does not describe the model the code builds
    today: no fingerprint, or another one. Empty when every file is current."""
    from .fingerprint import model_fingerprint
    from .train import TrainConfig, create_model

    known = set(TrainConfig.__dataclass_fields__)
    problems = []
    for path in sorted(Path(folder).rglob("metrics.json")):
        meta = json.loads(path.read_text())
        cfg = TrainConfig.from_dict({k: v for k, v in meta["config"].items() if k in known})
        today = model_fingerprint(create_model(cfg, num_classes=len(meta["classes"])))
        if meta.get("fingerprint") != today:
            problems.append(
                f"`{path.relative_to(Path(folder).parent)}` was written by a model with fingerprint "
                f"{meta.get('fingerprint', '(none)')}; the code builds {today} for its config today"
            )
    return problems


def render(results_dir: str | os.PathLike) -> str:
    """Every result table of the handbook as Markdown, read from ``results_dir``.

    A section whose training results are stale (:func:`stale_results`) is not tabulated: it
    names the files and the command that regenerates them instead.
    """
    results = Path(results_dir)
    parts = []
    for title, reader, command in SECTIONS:
        chapter = command.split()[-1]
        stale = stale_results(results / chapter) if (results / chapter).is_dir() else []
        if stale:
            listed = "; ".join(stale)
            body = f"Not tabulated: stale results ({listed}). Regenerate them: `{command}`."
        else:
            body = reader(results)
            body = body if body is not None else f"Not run yet: `{command}`."
        parts.append(f"### {title}\n\n{body}")
    return "\n\n".join(parts) + "\n"


def readme_block(text: str, begin: str = BEGIN, end: str = END) -> str:
    """The block of a markdown text between the `begin` and `end` markers (by default the
    README's results markers), without the markers."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(
            f"the file needs exactly one {begin!r} line followed by one {end!r} line; "
            "put them where the generated block belongs"
        )
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def update_readme(
    readme: str | os.PathLike, tables: str, begin: str = BEGIN, end: str = END
) -> bool:
    """Replace the markdown file's block between the markers with ``tables`` (atomically);
    True if it changed."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if readme_block(text, begin, end) == tables:
        return False
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(path, f"{head}{begin}\n{tables.rstrip()}\n{end}{tail}")
    return True
