"""Every handbook notebook: its source follows the conventions, and its smoke run writes results.

The smoke runs execute `notebooks/NN_slug.py` with the `smoke` profile of
`notebooks/profiles.yaml`, in chapter order, into one temporary results folder (so a chapter
can read what an earlier one wrote), and then call that notebook's check below on
`<results_dir>/NN_slug/`. Every notebook needs a check: a run that only finishes proves little.

Select them with `pytest -m notebook`, leave them out with `pytest -m "not notebook"`.
"""

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from papermill.translators import PythonTranslator
from PIL import Image

from cocs import handbook

NOTEBOOKS = handbook.notebook_names()


# --- what the checks use ---------------------------------------------------------------------


def csv_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """The table at `path`, asserting that it has rows and at least the given columns."""
    assert path.is_file(), f"{path.name} was not written"
    table = pd.read_csv(path)
    assert len(table) > 0, f"{path.name} has no rows"
    missing = set(columns) - set(table.columns)
    assert not missing, f"{path.name} lacks columns {sorted(missing)}; has {list(table.columns)}"
    return table


def png_image(path: Path) -> tuple[int, int]:
    """The (width, height) of the PNG at `path`, asserting that it opens and is not empty."""
    assert path.is_file(), f"{path.name} was not written"
    with Image.open(path) as im:
        assert im.format == "PNG", f"{path.name} is {im.format}, not PNG"
        im.load()
        assert im.width > 1 and im.height > 1, f"{path.name} is {im.size}"
        return im.size


# --- one check per notebook, on the files it wrote ---------------------------------------------

CHECKS: dict[str, Callable[[Path], None]] = {}


def checks(name: str):
    """Register the function as the check of notebook `name`; it receives `results_dir/name/`."""

    def register(fn):
        assert name not in CHECKS, f"two checks for {name}"
        CHECKS[name] = fn
        return fn

    return register


# A check asserts on the files the notebook wrote, for example:
#
# @checks("01_image_as_points")
# def _(out: Path):
#     points = csv_table(out / "points.csv", ["image", "N", "D"])
#     assert (points["N"] > 0).all()
#     png_image(out / "points.png")


@checks("01_image_as_points")
def _(out: Path):
    cols = ["image", "H", "W", "N", "D"] + [
        f"{c}_{m}" for c in ("r", "g", "b", "row", "column") for m in ("min", "max")
    ]
    points = csv_table(out / "points.csv", cols)
    assert len(points) == 1
    p = points.iloc[0]
    assert p["N"] == p["H"] * p["W"] and p["D"] == 5
    assert p["H"] != p["W"], "the photo keeps its portrait aspect ratio"
    for c in ("row", "column"):  # positions span [-0.5, 0.5] exactly
        assert p[f"{c}_min"] == -0.5 and p[f"{c}_max"] == 0.5
    for c in ("r", "g", "b"):  # colours in [0, 1], not constant
        assert 0 <= p[f"{c}_min"] < p[f"{c}_max"] <= 1

    stages = csv_table(
        out / "points_per_stage.csv", ["stage", "points_N", "channels_D", "reduction"]
    )
    assert len(stages) == 5, "the input points, then four stages"
    assert stages["channels_D"].iloc[0] == 5
    assert (stages["points_N"].diff().iloc[1:] < 0).all(), "every reducer shrinks the set"
    assert (stages["channels_D"].diff().iloc[1:] > 0).all(), "channels grow stage by stage"
    side = stages["points_N"].iloc[0] ** 0.5
    assert (stages["points_N"] * stages["reduction"] ** 2 == side**2).all()
    for name in ("point_cloud.png", "points_2d.png", "points_per_stage.png"):
        png_image(out / name)


@checks("02_context_clustering")
def _(out: Path):
    scaling = csv_table(out / "scaling.csv", ["impl", "N", "M", "D", "seconds", "peak_mib"])
    assert set(scaling["impl"]) == {"paper", "cocs"}
    assert (scaling["seconds"] > 0).all() and (scaling["peak_mib"] > 0).all()
    peak = scaling.pivot_table(index=["N", "M"], columns="impl", values="peak_mib")
    assert len(peak) >= 2 and peak.notna().all().all(), "every (N, M) needs both implementations"
    largest = peak.loc[peak.index.max()]  # the largest N, and there the largest M
    assert largest["paper"] > largest["cocs"], "the broadcast formulation should need more memory"
    assigned = csv_table(
        out / "assignments.csv",
        ["setting", "M", "folds", "centres_total", "clusters_used", "largest_fraction"],
    )
    assert (assigned["centres_total"] == assigned["M"] * assigned["folds"] ** 2).all()
    used = assigned["clusters_used"]
    assert ((used >= 1) & (used <= assigned["centres_total"])).all()
    assert ((assigned["largest_fraction"] > 0) & (assigned["largest_fraction"] <= 1)).all()
    assert {1, 2, 4} <= set(assigned["folds"]) and (assigned["center_iters"] > 0).any()
    for figure in ("steps", "assignments", "iterations", "scaling"):
        png_image(out / f"{figure}.png")


@checks("03_model_family")
def _(out: Path):
    family = csv_table(
        out / "model_family.csv",
        [
            "variant",
            "params",
            "params_m",
            "params_2p20",
            "gmacs",
            "img_size",
            "img_s",
            "threads",
            "hardware",
            "paper_params_m",
            "paper_gflops",
            "paper_top1",
        ],
    ).set_index("variant")
    assert {"coc_tiny", "coc_small", "coc_medium", "coc_base_dim64"} <= set(family.index)
    assert family.index.is_unique and (family["gmacs"] > 0).all()
    assert (family["params_2p20"] * 2**20 - family["params"]).abs().max() < 1
    reported = family.dropna(subset=["paper_params_m"])
    assert len(reported) >= 3, "the paper's Table 1 rows did not join"
    # the paper's units: parameters in 2^20, GFLOPs as multiply-accumulates in 2^30
    assert (reported["params_2p20"].round(1) == reported["paper_params_m"]).all()
    assert ((reported["gmacs"] * 1e9 / 2**30).round(1) == reported["paper_gflops"]).all()
    assert family.loc["coc_tiny", "img_s"] > 0, "coc_tiny was not timed"
    stages = csv_table(
        out / "stages.csv",
        ["variant", "stage", "N", "D", "heads", "centres_per_region", "regions"],
    )
    assert len(stages) == 4 * len(family)
    assert (stages["N"] % stages["regions"] == 0).all()
    tiny = stages[stages["variant"] == "coc_tiny"].sort_values("stage")
    assert tiny["N"].tolist() == [3136, 784, 196, 49] and tiny["regions"].iloc[-1] == 1
    assert (out / "model_family.md").read_text().count("| coc_") == len(family)
    png_image(out / "model_family.png")


def shipped_weights(out: Path, names: set[str]) -> None:
    """The chapter exported each of `names` into `out/weights` (a smoke run's own folder), and
    each loads back through cocs.weights with its recorded hash and fingerprint."""
    import timm

    from cocs import weights

    table = weights.manifest(out / "weights")
    assert set(table) == names, f"exported {sorted(table)}, expected {sorted(names)}"
    for name, entry in table.items():
        assert {"test_acc", "dataset", "img_size"} <= set(entry["metrics"])
        weights.load_shipped(timm.create_model(name), name, out / "weights")


@checks("04_cifar10")
def _(out: Path):
    shipped_weights(out, {"coc_cifar", "resnet_cifar", "vit_cifar"})
    answer = (out / "answer.md").read_text()
    pattern = (
        r"coc_cifar is (ahead of|behind|level with \(no difference detected\)) resnet_cifar: [+-]"
    )
    assert re.search(pattern, answer)
    assert "vit_cifar" in answer and answer.count("a gap of") == 3
    comparison = csv_table(
        out / "comparison.csv",
        [
            "model",
            "test_acc_final",
            "test_acc_flip",
            "test_acc_best",
            "params",
            "macs_m",
            "train_img_s",
            "infer_img_s",
            "wall_minutes",
            "epochs",
            "threads",
            "hardware",
            "busy_percent",
        ],
    ).set_index("model")
    assert {"coc_cifar", "resnet_cifar", "vit_cifar"} <= set(comparison.index)
    assert comparison["busy_percent"].between(0, 100).all(), "the load while inference was timed"
    assert comparison["params"].between(1.5e6, 4e6).all(), "the peers should match coc_cifar's size"
    for column in ("test_acc_final", "test_acc_flip"):  # NaN fails too
        assert comparison[column].between(0, 100).all(), column
    assert (comparison["test_acc_best"] >= comparison["test_acc_final"]).all()
    assert (comparison[["macs_m", "train_img_s", "infer_img_s", "wall_minutes"]] > 0).all().all()
    assert comparison.loc["coc_cifar", "macs_m"] < comparison.loc["resnet_cifar", "macs_m"]
    assert comparison["budget_minutes"].nunique() == 1, "every model gets the same budget"
    for name, row in comparison.iterrows():
        metrics = csv_table(out / name / "metrics.csv", ["epoch", "train_loss", "test_acc"])
        assert (
            len(metrics) == row["epochs"] and metrics["test_acc"].iloc[-1] == row["test_acc_final"]
        )
    text = (out / "comparison.md").read_text()
    assert re.search(
        r"with flip test-time augmentation .* target was (MET on single images|met only with flip "
        r"test-time augmentation, NOT on single images|NOT met within the budget|NOT met)",
        text,
    )
    assert re.search(r"This execution of the notebook took \d+\.\d minutes", text)
    # the smoke profile's budget (12 ms) is shorter than any epoch: all three ran over, and the
    # report names them
    assert (comparison["wall_minutes"] > comparison["budget_minutes"]).all()
    assert "Over their time budget: coc_cifar, resnet_cifar, vit_cifar." in text
    assert "Reported elsewhere" in text and "lightweight-coc" in text
    png_image(out / "curves.png")


@checks("05_imagenette")
def _(out: Path):
    shipped_weights(out, {"coc_imagenette", "resnet18_half"})
    models = csv_table(out / "summary.csv", ["model", "val_top1_final"])["model"].tolist()
    assert models == ["coc_imagenette", "resnet18_half"], "the peer trains at the same budget"
    assert (out / "peer" / "resnet18_half" / "predictions.npz").is_file()
    summary = csv_table(
        out / "summary.csv",
        [
            "model",
            "val_top1_final",
            "val_top1_best",
            "params",
            "macs_m",
            "epochs",
            "wall_minutes",
            "train_img_s",
            "infer_img_s",
            "busy_percent",
        ],
    )
    assert len(summary) == 2  # the model and its peer
    assert summary["busy_percent"].between(0, 100).all(), "the load while inference was timed"
    s = summary.iloc[0]
    assert 0 <= s["val_top1_final"] <= s["val_top1_best"] <= 100
    assert s["params"] > 0 and s["macs_m"] > 0 and s["train_img_s"] > 0 and s["infer_img_s"] > 0
    metrics = csv_table(out / "metrics.csv", ["epoch", "train_loss", "test_acc", "images_per_s"])
    assert len(metrics) == s["epochs"] and metrics["epoch"].tolist() == list(
        range(1, len(metrics) + 1)
    )
    checkpoints = csv_table(out / "checkpoints.csv", ["epoch", "path", "test_acc"])
    assert checkpoints["epoch"].tolist() == metrics["epoch"].tolist()
    root = Path(__file__).resolve().parent.parent
    for path in checkpoints["path"]:
        assert (root / path).is_file(), f"{path} is listed but missing"  # absolute paths too
    png_image(out / "curves.png")


@checks("06_ablations")
def _(out: Path):
    import json

    import numpy as np
    import timm

    from cocs.ablation import ABLATIONS, FINDINGS, VERDICTS
    from cocs.fingerprint import model_fingerprint
    from cocs.train import parse_model_kwargs

    runs = csv_table(
        out / "runs.csv", ["key", "seed", "test_acc", "minutes", "params", "fingerprint"]
    )
    assert set(runs["key"]) == {a.key for a in ABLATIONS}, "every ablation runs by default"
    assert (runs.groupby("key")["seed"].nunique() >= 2).all(), "at least two seeds each"
    assert runs["test_acc"].between(0, 100).all() and (runs["minutes"] > 0).all()
    params = runs.groupby("key")["params"].first()
    assert params["no_cluster"] < params["full"] == params["one_head"] == params["raw_similarity"]
    for a in ABLATIONS:  # each run's files name the fingerprint of the model built today
        model = timm.create_model("coc_cifar", **parse_model_kwargs(a.model_kwargs))
        run = out / a.key / "seed0"
        meta = json.loads((run / "metrics.json").read_text())
        assert meta["fingerprint"] == model_fingerprint(model), a.key
        assert set(runs.loc[runs["key"] == a.key, "fingerprint"]) == {meta["fingerprint"]}
        with np.load(run / "predictions.npz") as f:
            assert len(f["pred"]) == meta["test_images"] == len(f["label"])
            acc = 100 * (f["pred"] == f["label"]).mean()
        assert acc == pytest.approx(meta["final"]["test_acc"]), "predictions match the accuracy"
    summary = csv_table(out / "summary.csv", ["key", "label", "acc_mean", "acc_std"])
    mean = runs.groupby("key")["test_acc"].mean()
    assert np.allclose(summary.set_index("key")["acc_mean"], mean[summary["key"]].to_numpy())
    diffs = csv_table(
        out / "differences.csv", ["a", "b", "seeds", "mean", "low", "high", "detectable"]
    )
    assert (diffs["seeds"] >= 2).all() and (diffs["low"] <= diffs["mean"]).all()
    assert (diffs["mean"] <= diffs["high"]).all() and (diffs["detectable"] >= 0).all()
    findings = csv_table(out / "findings.csv", ["claim", "difference", "low", "high", "verdict"])
    assert len(findings) == len(FINDINGS) and set(findings["verdict"]) <= set(VERDICTS)
    text = (out / "findings.md").read_text()
    assert all(claim in text for claim in findings["claim"]) and "paired seeds" in text
    assert set(runs["status"]) == {"trained"}, "no smoke run fails to train"
    trace = csv_table(out / "trace.csv", ["key", "step", "loss", "stage", "den_min", "gain_max"])
    assert set(trace["key"]) == {"raw_similarity", "full"}
    assert trace.groupby("key")["step"].max().nunique() == 1, "the control replays as far"
    png_image(out / "trace.png")
    diagnosis = csv_table(out / "diagnosis.csv", ["key", "seed", "weights", "stage", "den_min"])
    assert {"initial", "trained"} <= set(diagnosis["weights"])
    costs = csv_table(
        out / "costs.csv", ["key", "train_ratio", "infer_ratio", "busy_percent"]
    ).set_index("key")
    assert costs.loc["full", "train_ratio"] == 1 and (costs["train_ratio"] > 0).all()
    png_image(out / "ablations.png")


@checks("07_cluster_maps")
def _(out: Path):
    maps = csv_table(out / "maps.csv", ["model", "stage", "points", "heads", "centres_used_mean"])
    assert {"coc_cifar", "coc_imagenette"} <= set(maps["model"])
    for _, group in maps.groupby("model"):
        assert group["stage"].tolist() == list(range(1, len(group) + 1)) and len(group) == 4
    assert (maps["centres_used_mean"] >= 1).all()
    assert (maps["centres_used_mean"] <= maps["points"]).all()
    for name in ("coc_cifar", "coc_imagenette"):
        png_image(out / f"{name}_grid.png")
        png_image(out / f"{name}_photos.png")
    png_image(out / "evolution.png")
    with Image.open(out / "evolution.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames >= 2, "the evolution needs two frames or more"
    ari = ["ari_grid", "ari_grid_of_untrained", "ari_untrained"]
    agreement = csv_table(out / "agreement.csv", ["model", "stage", "head", "trivial", *ari])
    assert {"coc_cifar", "coc_imagenette"} <= set(agreement["model"])
    scored = agreement[~agreement["trivial"]]
    assert len(scored) and scored[ari].stack().between(-1, 1).all()
    assert agreement.loc[agreement["trivial"], "ari_grid"].isna().all()
    shift = csv_table(out / "grid_shift.csv", ["model", "photo", "difference"])
    assert set(shift["model"]) == set(agreement["model"])
    assert shift["difference"].between(-2, 2).all(), "a difference of two ARIs"
    cifar_last = agreement[(agreement["model"] == "coc_cifar") & (agreement["stage"] == 4)]
    assert cifar_last["trivial"].all(), "coc_cifar's last stage has one centre and one region"
    moved = csv_table(
        out / "regrouping.csv", ["from_epoch", "to_epoch", "stage", "head", "changed"]
    )
    assert moved["changed"].between(0, 1).all() and (moved["to_epoch"] > moved["from_epoch"]).all()


@checks("08_point_clouds")
def _(out: Path):
    import json

    runs = csv_table(out / "runs.csv", ["model", "seed", "oa", "macc", "epochs", "minutes"])
    assert set(runs["model"]) == {"pointmlp_elite", "pointmlp_elite_coc", "coc_points"}
    seeds = runs.groupby("model")["seed"].nunique()
    assert seeds["pointmlp_elite"] >= 2 and seeds["pointmlp_elite_coc"] >= 2
    assert runs[["oa", "macc"]].stack().between(0, 100).all() and (runs["epochs"] >= 1).all()
    for _, r in runs.iterrows():
        meta = json.loads((out / r["model"] / f"seed{r['seed']}" / "metrics.json").read_text())
        assert meta["fingerprint"] == r["fingerprint"] and meta["config"]["dataset"] == "modelnet40"
        assert bool(r["git_dirty"]) == bool(meta["environment"]["git_dirty"])
    summary = csv_table(out / "summary.csv", ["model", "seeds", "oa_mean", "oa_sd", "macc_mean"])
    assert set(summary["model"]) == set(runs["model"])
    per_class = csv_table(out / "per_class.csv", ["class", "accuracy", "test_shapes"])
    assert len(per_class) == 40
    for name in ("difference", "optimizer_difference"):
        diff = csv_table(out / f"{name}.csv", ["a", "b", "mean", "low", "high", "seeds"])
        assert (diff["low"] <= diff["high"]).all() and (diff["seeds"] >= 2).all()
    stem = csv_table(out / "stem.csv", ["a", "b", "mean", "low", "high", "seeds"])
    assert len(stem) == 2 and (stem["seeds"] == 1).all(), "one seed of each stem, committed"
    assert ((stem["low"] <= stem["mean"]) & (stem["mean"] <= stem["high"])).all()
    sgd = json.loads((out / "coc_points_sgd" / "seed0" / "metrics.json").read_text())
    coc = json.loads((out / "coc_points" / "seed0" / "metrics.json").read_text())
    assert (sgd["config"]["opt"], coc["config"]["opt"]) == ("sgd", "adamw")
    assert not sgd["config"]["torch_compile"], "the SGD comparison trains eager"
    assert sgd["fingerprint"] == coc["fingerprint"]
    for name in ("shapes", "grouping", "cluster_maps"):
        png_image(out / f"{name}.png")


@checks("09_dense_prediction")
def _(out: Path):
    import json

    import numpy as np

    from cocs import runs as R
    from cocs.camvid import CLASSES
    from cocs.dense import shown_key
    from cocs.train import mean_iou

    runs = csv_table(out / "runs.csv", ["run", "backbone", "miou", "pixel_acc", "epochs"])
    assert {"coc_4", "resnet"} <= set(runs["run"]) and runs["run"].str.match(r"coc_\d+$").sum() >= 2
    for _, r in runs.iterrows():
        with np.load(out / r["run"] / "predictions.npz") as f:
            confusion = f["confusion"]
        meta = json.loads((out / r["run"] / "metrics.json").read_text())
        assert confusion.shape == (meta["test_images"], 11, 11)
        assert mean_iou(__import__("torch").from_numpy(confusion.sum(0)))[0] == pytest.approx(
            r["miou"]
        )
    assert (runs["miou_low"] < runs["miou"]).all() and (runs["miou"] < runs["miou_high"]).all()
    drawn = set(runs.loc[runs.groupby("backbone")["miou"].idxmax(), "run"])  # each one's best
    for name in sorted(drawn):  # what the figures drew from each model, kept for reuse
        meta = json.loads((out / name / "metrics.json").read_text())
        kept = R.read_kept(out / name / "shown.npz", shown_key(meta))
        assert kept is not None, f"{name}: shown.npz missing or not this run's"
        assert kept["pred"].shape[0] == 2 and kept["pred"].max() < 11
        assert ("assignment" in kept) == name.startswith("coc_")
    per_class = csv_table(out / "per_class.csv", ["class", *runs["run"]])
    assert per_class["class"].tolist() == list(CLASSES)
    comparisons = csv_table(out / "comparisons.csv", ["claim", "better", "worse", "mean", "low"])
    assert (comparisons["low"] <= comparisons["mean"]).all()
    assert (comparisons["mean"] <= comparisons["high"]).all()
    assert set(comparisons["verdict"]) <= {
        "reproduces", "reversed", "differs", "no difference detected at this scale"
    }  # fmt: skip
    assert "the centre count matters little" in set(comparisons["claim"])
    seeds_of = dict(zip(runs["run"], runs["miou_seeds"], strict=True))
    every = {r: [float(m) for m in s.split()] for r, s in seeds_of.items()}
    assert (runs["seeds"] == [len(v) for v in every.values()]).all()
    assert runs["miou"].tolist() == pytest.approx([v[0] for v in every.values()], abs=0.006)
    where = runs.set_index("run")[["hardware", "threads", "autocast"]].astype(str)
    for _, c in comparisons.iterrows():  # paired seed by seed, over the seeds both runs have
        a, b = every[c["better"]], every[c["worse"]]
        assert c["seeds"] == min(len(a), len(b))
        per_seed = [x - y for x, y in zip(a, b, strict=False)]  # seeds 0, 1, ... of both
        assert c["mean"] == pytest.approx(sum(per_seed) / len(per_seed), abs=0.01)
        same = bool((where.loc[c["better"]] == where.loc[c["worse"]]).all())
        assert c["same_machine"] == same, f"{c['better']} - {c['worse']}: same_machine"
    two = csv_table(out / "two_machines.csv", ["what", "better", "worse", "mean", "verdict"])
    assert len(two) == 9 and (two["low"] <= two["high"]).all(), "the committed runs' twins"
    assert two["worse"].str.endswith(", faster").sum() == 8
    seeds = csv_table(out / "seeds.csv", ["run", "mean", "low", "high", "epochs"])
    assert len(seeds) == 6 and (seeds["low"] < seeds["mean"]).all(), "the committed seeds 1"
    assert (seeds["mean"] < seeds["high"]).all()
    aims = csv_table(out / "aims.csv", ["aim", "runs", "measured", "met", "same_machine"])
    assert len(aims) == 2 and aims["met"].dtype == bool and aims["same_machine"].dtype == bool
    for name in ("predictions", "clusters"):
        png_image(out / f"{name}.png")


@checks("10_results")
def _(out: Path):
    from cocs.report import render

    tables = (out / "tables.md").read_text()
    assert tables == render(out.parent), "tables.md is not what the results regenerate"
    assert (out.parent / "README.md").read_text().endswith(tables)
    for title in ("Model family", "CIFAR-10", "Imagenette", "Ablations", "Point clouds", "Speed"):
        assert f"### {title}" in tables
    assert "| coc_cifar " in tables, "the smoke runs of chapters 4 and 6 should appear"


# --- conventions of the sources ----------------------------------------------------------------


def test_the_handbook_has_notebooks():
    assert NOTEBOOKS, f"no notebooks/NN_slug.py found in {handbook.NOTEBOOKS_DIR}"


def test_every_notebook_has_a_check():
    unchecked = sorted(set(NOTEBOOKS) - set(CHECKS))
    orphans = sorted(set(CHECKS) - set(NOTEBOOKS))
    assert not unchecked, f"add a @checks(name) function in {__file__} for {unchecked}"
    assert not orphans, f"checks for notebooks that do not exist: {orphans}; rename or remove"


def test_no_notebook_is_tracked_as_ipynb():
    root = handbook.repo_root()
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "*.ipynb"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not tracked, (
        f"tracked .ipynb files {tracked}: the sources are notebooks/*.py (jupytext percent); "
        "`git rm --cached` them"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_conventions(name):
    nb = handbook.read_notebook(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), (
        f"{name}: the first cell should be a markdown title, `# %% [markdown]` then `# # Title`"
    )
    params = handbook.parameters_of(nb, where=name)  # flat scalars, or it raises
    assert params.get("results_dir") == "results", (
        f'{name}: the parameters cell should set results_dir = "results", got '
        f"{params.get('results_dir')!r}"
    )
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    assert all(c.cell_type == "markdown" for c in nb.cells[:index]), (
        f"{name}: code runs before the parameters cell; put the parameters cell first"
    )
    # papermill reads the cell with its own parser, which an `=` in a comment can defeat
    seen = [p.name for p in PythonTranslator.inspect(nb.cells[index])]
    assert seen == list(params), (
        f"{name}: papermill reads the parameters {seen}, not {list(params)}; "
        "keep `=` out of the comments of the parameters cell"
    )


def test_profiles_are_complete_and_valid():
    handbook.check_profiles()
    for name in NOTEBOOKS:
        handbook.load_profile(name, "smoke")


# --- smoke runs --------------------------------------------------------------------------------


# Chapters that read what earlier chapters wrote: run first when absent (e.g. with `-k 07`).
NEEDS = {"07_cluster_maps": ("04_cifar10", "05_imagenette")}
# Files a chapter writes beside its own folder, as its issue of record asks.
ALSO_WRITES = {"10_results": {"README.md"}}


def _files(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_smoke_run(name, smoke_results, smoke_notebooks, tmp_path):
    check = CHECKS.get(name)
    if check is None:
        pytest.fail(f"{name} has no check: add a @checks({name!r}) function in {__file__}")
    for needed in NEEDS.get(name, ()):
        if not (smoke_results / needed).is_dir():
            handbook.run_notebook(
                needed, profile="smoke", results_dir=smoke_results, output=tmp_path / "needed.ipynb"
            )
    committed = handbook.repo_root() / "results"
    before_committed = _files(committed) if committed.exists() else {}
    before = {p.name for p in smoke_results.iterdir()}

    handbook.run_notebook(
        name, profile="smoke", results_dir=smoke_results, output=smoke_notebooks / f"{name}.ipynb"
    )

    new = {p.name for p in smoke_results.iterdir()} - before
    allowed = {name} | ALSO_WRITES.get(name, set())
    assert new <= allowed, f"{name} wrote outside results_dir/{name}/: {sorted(new - allowed)}"
    after_committed = _files(committed) if committed.exists() else {}
    assert after_committed == before_committed, (
        f"{name} changed the committed results/ in a smoke run; write under "
        "results_path(results_dir, ...) only"
    )
    out = smoke_results / name
    assert out.is_dir() and any(out.iterdir()), f"{name} wrote nothing in results_dir/{name}/"
    check(out)
