"""The results tables: regenerated from results/, and the README holds exactly them."""

import json

import numpy as np
import pandas as pd
import pytest

from cocs import report
from cocs.handbook import repo_root


def test_readme_tables_equal_the_regenerated_ones():
    readme = (repo_root() / "README.md").read_text(encoding="utf-8")
    assert report.readme_block(readme) == report.render(repo_root() / "results"), (
        "README.md's results section differs from the results files: "
        "run `python -m cocs.handbook run 10_results`"
    )


def test_committed_results_readme_matches_too():
    written = (repo_root() / "results" / "README.md").read_text(encoding="utf-8")
    assert written.endswith(report.render(repo_root() / "results"))


def test_a_chapter_not_run_shows_its_command(tmp_path):
    text = report.render(tmp_path)
    for title, _, command in report.SECTIONS:
        assert f"### {title}\n\nNot run yet: `{command}`." in text


def test_tables_are_read_from_the_files(tmp_path):
    (tmp_path / "bench").mkdir()
    pd.DataFrame(
        [{"model": "coc_x", "img_size": 32, "batch": 8, "speedup": 2.345, "memory_ratio": 0.4}]
    ).to_csv(tmp_path / "bench" / "some-cpu.csv", index=False)
    text = report.render(tmp_path)
    assert "| some-cpu   | coc_x   |" in text and "2.35" in text  # rounded to 2 digits


def test_compiled_columns_are_blank_where_not_measured(tmp_path):
    (tmp_path / "bench").mkdir()
    row = {"img_size": 32, "batch": 8, "speedup": 1.5, "memory_ratio": 0.4}
    pd.DataFrame(
        [
            {"model": "coc_x", **row, "compiled_speedup": 2.104, "compile_s": 239.4},
            {"model": "coc_y", **row},
        ]
    ).to_csv(tmp_path / "bench" / "some-cpu.csv", index=False)
    lines = report.render(tmp_path).splitlines()
    x, y = (
        [c.strip() for c in next(s for s in lines if f"| {m}" in s).split("|")[1:-1]]
        for m in ("coc_x", "coc_y")
    )
    assert x[-2:] == ["2.1", "239"] and y[-2:] == ["", ""]


def test_bf16_and_load_columns_and_busy_files(tmp_path):
    (tmp_path / "bench").mkdir()
    row = {"img_size": 32, "batch": 8, "speedup": 1.5, "memory_ratio": 0.4, "busy_percent": 3.0}
    pd.DataFrame(
        [
            {"model": "coc_x", **row, "bf16_ratio": 0.114, "native_bf16": False},
            {"model": "coc_y", **row},
        ]
    ).to_csv(tmp_path / "bench" / "some-cpu.csv", index=False)
    pd.DataFrame([{"model": "coc_z", **row, "busy_percent": 90.0}]).to_csv(
        tmp_path / "bench" / "some-cpu.busy.csv", index=False
    )
    text = report.render(tmp_path)
    assert "coc_z" not in text, "a busy machine's timings stay out of the table"
    x, y = (
        [c.strip() for c in next(s for s in text.splitlines() if f"| {m}" in s).split("|")[1:-1]]
        for m in ("coc_x", "coc_y")
    )
    assert x[-3:] == ["0.11", "no", "3"] and y[-3:] == ["", "", "3"]


def test_the_same_precision_speedup_shows_where_measured(tmp_path):
    (tmp_path / "bench").mkdir()
    row = {"img_size": 32, "batch": 8, "speedup": 1.5, "memory_ratio": 0.4, "bf16_ratio": 1.2,
           "native_bf16": True}  # fmt: skip
    pd.DataFrame(
        [{"model": "coc_x", **row, "bf16_speedup": 4.567}, {"model": "coc_y", **row}]
    ).to_csv(tmp_path / "bench" / "some-cpu.csv", index=False)
    text = report.render(tmp_path)
    x, y = (
        [c.strip() for c in next(s for s in text.splitlines() if f"| {m}" in s).split("|")[1:-1]]
        for m in ("coc_x", "coc_y")
    )
    assert x[-1] == "4.57" and y[-1] == "" and "both bfloat16" in text


def test_cifar_table_shows_the_same_budget_on_other_machines(tmp_path):
    (tmp_path / "04_cifar10").mkdir()
    run = {"test_acc_final": 70.1, "params": 2.5e6, "macs_m": 33.5, "epochs": 8, "threads": 2,
           "train_img_s": 200.0, "infer_img_s": 900.0, "wall_minutes": 38.0, "budget_minutes": 39.0}  # fmt: skip
    pd.DataFrame([{"model": "coc_cifar", **run, "hardware": "CPU A", "autocast": "off"}]).to_csv(
        tmp_path / "04_cifar10" / "comparison.csv", index=False
    )
    text = report.render(tmp_path)
    assert "other machines" not in text, "nothing to show without other_machines.csv"
    here = dict(run="this run", hardware="CPU A", autocast="off", epochs=8, test_acc_final=70.09)
    there = dict(run="cpu-b", hardware="CPU B", autocast="bfloat16", epochs=29, test_acc_final=80.9)
    pd.DataFrame([here, there]).assign(model="coc_cifar").to_csv(
        tmp_path / "04_cifar10" / "other_machines.csv", index=False
    )
    text = report.render(tmp_path)
    assert "The same budget on other machines" in text
    assert "| this run | coc_cifar | CPU A      | float32    |        8 |" in text
    assert "| cpu-b    | coc_cifar | CPU B      | bfloat16   |       29 |" in text


def _metrics(config: dict, model: str = "coc_micro") -> dict:
    """A metrics.json of a run of ``model`` with ``config``, with today's fingerprint."""
    from cocs.fingerprint import model_fingerprint
    from cocs.train import TrainConfig, create_model

    full = {"model": model} | config
    fp = model_fingerprint(create_model(TrainConfig.from_dict(full), 10))
    return {"config": full, "classes": [str(i) for i in range(10)], "fingerprint": fp}


def test_stale_results_are_refused_with_their_file_and_command(tmp_path):
    (tmp_path / "06_ablations" / "x" / "seed0").mkdir(parents=True)
    stale = _metrics({}) | {"fingerprint": "0123456789abcdef"}
    (tmp_path / "06_ablations" / "x" / "seed0" / "metrics.json").write_text(json.dumps(stale))
    text = report.render(tmp_path)
    assert (
        "Not tabulated: stale results (`06_ablations/x/seed0/metrics.json` was written by a "
        in text
    )
    assert "model with fingerprint 0123456789abcdef" in text
    assert "Regenerate them: `python -m cocs.handbook run 06_ablations`" in text
    assert report.stale_results(tmp_path / "04_cifar10") == []


def _cifar_run(results, configs, extra_columns=None, **meta):
    """A chapter-4 comparison.csv and one metrics.json per model with the given configs
    (and ``meta``, further metrics.json keys shared by every model)."""
    out = results / "04_cifar10"
    for model, config in configs.items():
        (out / model).mkdir(parents=True)
        (out / model / "metrics.json").write_text(json.dumps(_metrics(config) | meta))
    row = {"test_acc_final": 80.0, "params": 2.5e6, "macs_m": 33.0, "epochs": 3}
    row |= extra_columns or {}
    row |= {"train_img_s": 1.0, "infer_img_s": 2.0, "wall_minutes": 3.0, "budget_minutes": 40.0}
    row |= {"hardware": "some-cpu", "threads": 2}
    pd.DataFrame([{"model": m, **row} for m in configs]).to_csv(out / "comparison.csv", index=False)


def test_cifar_caption_says_how_the_models_were_trained(tmp_path):
    config = {"amp": "bf16", "torch_compile": True}
    _cifar_run(tmp_path, {"coc_x": config, "peer_y": config})
    text = report.render(tmp_path)
    assert (
        "(40 minutes per model; random 4 px crop and flips; training in bfloat16 autocast, "
        "compiled, inference in float32)" in text
    )


def test_cifar_table_shows_flip_tta_where_measured(tmp_path):
    config = {"amp": "off", "torch_compile": False}
    _cifar_run(tmp_path / "old", {"coc_x": config})
    assert "flip TTA" not in report.render(tmp_path / "old")  # comparison.csv without the column
    _cifar_run(tmp_path / "new", {"coc_x": config}, {"test_acc_flip": 81.25})
    text = report.render(tmp_path / "new")
    lines = text[text.index("| model") :].splitlines()
    header, row = ([c.strip() for c in line.split("|")[1:-1]] for line in (lines[0], lines[2]))
    assert header[1:3] == ["test acc. (%)", "with flip TTA (%)"]
    assert row[:3] == ["coc_x", "80", "81.2"]
    assert "Flip TTA: each test image and its mirror" in text


@pytest.mark.parametrize(
    ("crop", "shown"),
    [({"crop_pad": 0}, "flips only"), ({"crop_pad": 2}, "random 2 px crop and flips")],
)
def test_cifar_caption_names_the_training_crop(tmp_path, crop, shown):
    config = {"amp": "off", "torch_compile": False} | crop
    _cifar_run(tmp_path, {"coc_x": config, "peer_y": config})
    assert f"(40 minutes per model; {shown}; training in float32, " in report.render(tmp_path)


@pytest.mark.parametrize(
    ("meta", "trained"),
    [
        ({"autocast": "float16"}, "float16 autocast"),  # recorded by the engine: amp auto on CUDA
        ({"environment": {"hardware": {"device": "cpu"}}}, "float32"),  # older file, on a CPU
    ],
)
def test_cifar_caption_resolves_amp_auto(tmp_path, meta, trained):
    config = {"amp": "auto", "torch_compile": False}
    _cifar_run(tmp_path, {"coc_x": config, "peer_y": config}, **meta)
    text = report.render(tmp_path)
    assert f"; training in {trained}, inference in float32)" in text


@pytest.mark.parametrize("peer", [{"amp": "off"}, {"crop_pad": 0}, {"torch_compile": False}])
def test_cifar_models_trained_differently_are_refused(tmp_path, peer):
    config = {"amp": "bf16", "torch_compile": True}
    _cifar_run(tmp_path, {"coc_x": config, "peer_y": config | peer})
    with pytest.raises(ValueError, match="trained differently"):
        report.render(tmp_path)


def test_update_readme_replaces_only_the_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# Title\n\nbefore\n\n{report.BEGIN}\nold\n{report.END}\n\nafter\n")
    assert report.update_readme(path, "new table\n")
    text = path.read_text()
    assert text == f"# Title\n\nbefore\n\n{report.BEGIN}\nnew table\n{report.END}\n\nafter\n"
    assert report.readme_block(text) == "new table\n"
    assert not report.update_readme(path, "new table\n"), "an unchanged block is not rewritten"


@pytest.mark.parametrize(
    "text",
    [
        "no markers",
        f"{report.END}\n{report.BEGIN}",
        f"{report.BEGIN}\n{report.BEGIN}\n{report.END}",
    ],
)
def test_missing_or_misplaced_markers_are_reported(tmp_path, text):
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(ValueError, match="results:begin"):
        report.update_readme(path, "x\n")


def test_an_ablation_that_failed_to_train_says_so_instead_of_a_number():
    def row(**kw):
        return pd.Series({"seeds": 2, "failed": 2, "acc_mean": np.nan, "acc_std": np.nan} | kw)

    assert report._accuracy(row()) == "failed to train (2 of 2 seeds)"
    assert report._accuracy(row(seeds=3, acc_mean=70.0)) == "70.00; failed to train in 2 seeds"
    assert report._accuracy(row(failed=0, acc_mean=75.5, acc_std=0.25)) == "75.50 ± 0.25"


def _segmentation_runs(folder, machines):
    rows = [
        {"run": f"coc_{c}", "backbone": "coc_imagenette", "centres": c, "pretrained": False,
         "miou": 40.0 + i, "pixel_acc": 80.0, "epochs": 9, "params": 3.2e6, "minutes": 27.9,
         "hardware": h, "threads": 2, "autocast": "off"}
        for i, (c, h) in enumerate(zip((4, 25), machines, strict=True))
    ] + [{"run": "resnet", "backbone": "resnet18_half", "centres": np.nan, "pretrained": True,
          "miou": 47.25, "pixel_acc": 85.0, "epochs": 11, "params": 4.2e6, "minutes": 27.5,
          "hardware": machines[0], "threads": 2, "autocast": "off"}]  # fmt: skip
    (folder / "09_dense_prediction").mkdir()
    pd.DataFrame(rows).to_csv(folder / "09_dense_prediction" / "runs.csv", index=False)


def test_segmentation_table_and_its_caption(tmp_path):
    _segmentation_runs(tmp_path, ["AMD EPYC (AVX2)"] * 2)
    text = report.render(tmp_path)
    assert "### Semantic segmentation on CamVid (chapter 9)" in text
    assert "| coc_4  | coc_imagenette | 4                    | no                 |" in text
    assert "| resnet | resnet18_half  |                      | yes                |" in text
    assert "47.2" in text and "trained on AMD EPYC (AVX2), 2 threads; equal wall-clock" in text
    assert "NB:" not in text


def test_segmentation_claims_and_aims_come_from_their_files(tmp_path):
    _segmentation_runs(tmp_path, ["AMD EPYC (AVX2)"] * 2)
    folder = tmp_path / "09_dense_prediction"
    runs = pd.read_csv(folder / "runs.csv")
    runs.assign(miou_low=runs["miou"] - 1.2, miou_high=runs["miou"] + 1.5).to_csv(
        folder / "runs.csv", index=False
    )
    pd.DataFrame([{"claim": "the centre count matters little", "better": "coc_25",
                   "worse": "coc_4", "mean": 1.0, "low": -0.4, "high": 2.4,
                   "verdict": "no difference detected at this scale",
                   "paper": "ADE20K, Semantic FPN, mIoU: CoC-Small/4 36.6"}]).to_csv(
        folder / "comparisons.csv", index=False)  # fmt: skip
    pd.DataFrame([{"aim": "best Context Cluster run: at least 50% mean IoU", "runs": "coc_25",
                   "measured": 41.0, "low": 39.75, "high": 42.5, "met": False}]).to_csv(
        folder / "aims.csv", index=False)  # fmt: skip
    text = report.render(tmp_path)
    assert "| [38.8, 41.5] " in text, "coc_4's interval"
    row = next(line for line in text.splitlines() if "| coc_25 - coc_4 " in line)
    assert "| +1.00 [-0.40, +2.40] " in row and "| no difference detected at this scale " in row
    assert "(coc_25): 41.0 [39.8, 42.5], **missed**." in text
    assert "not another seed's" in text


def test_segmentation_runs_with_several_seeds_show_every_seed(tmp_path):
    _segmentation_runs(tmp_path, ["AMD EPYC (AVX2)"] * 2)
    folder = tmp_path / "09_dense_prediction"
    runs = pd.read_csv(folder / "runs.csv")
    runs.assign(seeds=[2, 1, 2], miou_seeds=["40.00 38.50", "41.00", "47.25 46.00"]).to_csv(
        folder / "runs.csv", index=False
    )
    pd.DataFrame([{"claim": "a Context Cluster backbone beats the ResNet", "better": "coc_4",
                   "worse": "resnet", "seeds": 2, "mean": -7.38, "low": -9.0, "high": -5.7,
                   "verdict": "reversed", "paper": "COCO"}]).to_csv(
        folder / "comparisons.csv", index=False)  # fmt: skip
    pd.DataFrame([{"run": "coc_4", "mean": -1.5, "low": -1.9, "high": -1.1,
                   "beyond_test_interval": True, "epochs": "15 vs 16"}]).to_csv(
        folder / "seeds.csv", index=False)  # fmt: skip
    text = report.render(tmp_path)
    assert "mIoU, every seed" in text and "| 40.00, 38.50 " in text and "| 41.00 " in text
    assert (
        "the comparisons pair the seeds both runs have" in text and "one seed per run" not in text
    )
    row = next(line for line in text.splitlines() if "| coc_4 - resnet " in line)
    assert [c.strip() for c in row.split("|")][3] == "2", "the seeds column"
    assert "Seed 1 minus seed 0 of each run" in text
    row = next(line for line in text.splitlines() if line.startswith("| coc_4 | -1.50 "))
    assert "| -1.50 [-1.90, -1.10] " in row and "| 15 vs 16 " in row


def test_budgeted_runs_of_several_machines_carry_a_caveat(tmp_path):
    _segmentation_runs(tmp_path, ["AMD EPYC (AVX2)", "Intel Xeon (AVX512_BF16)"])
    text = report.render(tmp_path)
    assert "NB: these runs trained on 2 machines or precisions" in text
    assert "equal minutes there are not equal work" in text
    cells = {c[0]: c for c in (
        [x.strip() for x in line.split("|")[1:-1]] for line in text.splitlines() if "| coc_" in line
    )}  # fmt: skip
    assert cells["coc_4"][-1] == "AMD EPYC (AVX2), float32", "which run trained where"
    assert cells["coc_25"][-1] == "Intel Xeon (AVX512_BF16), float32"


def test_segmentation_comparisons_between_machines_follow_the_table(tmp_path):
    _segmentation_runs(tmp_path, ["AMD EPYC (AVX512)"] * 2)
    pd.DataFrame([{"what": "the slower machine, coc_4 (the same model, recipe and seed)",
                   "better": "coc_4", "worse": "coc_4, faster", "mean": -8.9, "low": -9.6,
                   "high": -8.2, "verdict": "lower", "epochs": "15 vs 27",
                   "seconds_per_epoch": "79 vs 46"}]).to_csv(
        tmp_path / "09_dense_prediction" / "two_machines.csv", index=False)  # fmt: skip
    text = report.render(tmp_path)
    assert "With chapter 9's `faster_machine/` runs (the same models, recipes and seeds" in text
    row = next(line for line in text.splitlines() if "| coc_4 - coc_4, faster " in line)
    assert "| -8.90 [-9.60, -8.20] " in row and "| lower " in row and "| 15 vs 27 " in row


def test_budgeted_runs_of_one_processor_under_two_builds_carry_a_caveat(tmp_path):
    """Runs recorded before the speed probe: the platform build tells the machines apart."""
    _segmentation_runs(tmp_path, ["AMD EPYC (AVX512)"] * 2)
    path = tmp_path / "09_dense_prediction" / "runs.csv"
    runs = pd.read_csv(path)
    runs.assign(platform=["Linux-fc-v1300", "Linux-fc-v1272", "Linux-fc-v1300"]).to_csv(path)
    text = report.render(tmp_path)
    assert "NB: these runs trained on 2 machines or precisions" in text and "fc-v1272" in text
    row = next(line for line in text.splitlines() if "| coc_25 " in line)
    assert row.rstrip(" |").endswith("AMD EPYC (AVX512), float32, build v1272")


def test_claims_between_machines_say_so(tmp_path):
    _segmentation_runs(tmp_path, ["AMD EPYC (AVX2)", "Intel Xeon (AVX512_BF16)"])
    folder = tmp_path / "09_dense_prediction"
    claim = {"claim": "the centre count matters little", "better": "coc_25", "worse": "coc_4",
             "mean": 1.0, "low": -0.4, "high": 2.4, "verdict": "no difference detected at this scale",
             "paper": "ADE20K", "same_machine": False}  # fmt: skip
    pd.DataFrame([claim, claim | {"worse": "resnet", "same_machine": True}]).to_csv(
        folder / "comparisons.csv", index=False
    )
    pd.DataFrame([{"aim": "at most 2 points below", "runs": "coc_25 - resnet", "measured": -1.0,
                   "low": -2.0, "high": 0.1, "met": True, "same_machine": False}]).to_csv(
        folder / "aims.csv", index=False)  # fmt: skip
    lines = report.render(tmp_path).splitlines()
    header = next(line for line in lines if line.startswith("| claim "))
    column = [x.strip() for x in header.split("|")].index("same machine")
    for runs, same in (("coc_25 - coc_4", "no"), ("coc_25 - resnet", "yes")):
        row = next(line for line in lines if f"| {runs} " in line)
        assert [x.strip() for x in row.split("|")][column] == same
    assert any(
        line.endswith("**met**. (runs from different machines or precisions)") for line in lines
    )


def test_imagenette_caption_gives_the_paired_difference_with_its_peer(tmp_path):
    folder = tmp_path / "05_imagenette"
    folder.mkdir()
    row = {"img_size": 64, "val_top1_final": 70.0, "params": 3e6, "macs_m": 48.5, "epochs": 40,
           "wall_minutes": 40.0, "hardware": "AMD EPYC (AVX2)", "threads": 2, "autocast": "off"}  # fmt: skip
    pd.DataFrame([{"model": "coc_imagenette"} | row, {"model": "resnet18_half"} | row]).to_csv(
        folder / "summary.csv", index=False
    )
    pd.DataFrame([{"model": "coc_imagenette", "peer": "resnet18_half", "difference": -10.39,
                   "low": -11.71, "high": -9.08, "seeds": 1, "verdict": "..."}]).to_csv(
        folder / "peer_difference.csv", index=False
    )  # fmt: skip
    text = report.render(tmp_path)
    assert (
        "coc_imagenette minus resnet18_half, image by image on the validation set: -10.4 " in text
    )
    assert "(95% interval -11.7 to -9.1; the validation set's variation only, 1 seed each)" in text


def test_ablation_changes_are_the_variant_minus_the_full_model_as_in_the_paper(tmp_path):
    folder = tmp_path / "06_ablations"
    folder.mkdir()
    pd.DataFrame([
        {"key": "full", "label": "full model", "seeds": 2, "failed": 0, "acc_mean": 76.0,
         "acc_std": 0.4, "paper_delta": 0.0, "paper_says": ""},
        {"key": "no_cluster", "label": "no context cluster", "seeds": 2, "failed": 0,
         "acc_mean": 75.5, "acc_std": 0.6, "paper_delta": -3.3, "paper_says": ""},
    ]).to_csv(folder / "summary.csv", index=False)  # fmt: skip
    pd.DataFrame([{"a": "full", "b": "no_cluster", "mean": 0.5, "low": -0.1, "high": 1.1,
                   "detectable": 0.8}]).to_csv(folder / "differences.csv", index=False)  # fmt: skip
    (folder / "study.json").write_text(json.dumps({"caption": "a study"}))
    text = report._ablations(tmp_path)
    assert "from scratch" not in text, "no estimate recorded: none shown"
    estimate = {"runs": 28, "hardware": "some-cpu", "hours_here": 6.42, "parallel": 2,
                "gain": 1.31}  # fmt: skip
    (folder / "study.json").write_text(json.dumps({"caption": "a study",
                                                   "plan_estimate": estimate}))  # fmt: skip
    shown = report._ablations(tmp_path)
    assert "on some-cpu: about 6.4 h" in shown and "1.31x" in shown
    assert "training steps only" in shown
    (folder / "study.json").write_text(json.dumps({"caption": "a study",
                                                   "plan_estimate": estimate | {"load_s": 0.01}}))  # fmt: skip
    assert "data loading, compiling and test passes counted" in report._ablations(tmp_path)
    (folder / "study.json").write_text(json.dumps({"caption": "a study",
                                                   "plan_estimate": estimate | {"engine_steps": True}}))  # fmt: skip
    assert "the engine's steps with their data loading" in report._ablations(tmp_path)
    assert "fewest" not in report._ablations(tmp_path)
    (folder / "study.json").write_text(json.dumps({"caption": "a study", "epochs": 12,
                                                   "plan_estimate": estimate | {
                                                       "fewest_epochs": 11,
                                                       "hours_at_fewest_epochs": 5.61}}))  # fmt: skip
    assert "With 11 epochs, the fewest" in report._ablations(tmp_path)
    assert "about 5.6 h." in report._ablations(tmp_path)
    assert "Measured" not in report._ablations(tmp_path), "no measurement recorded: none shown"
    for held, word in ((5.93, "within"), (6.2, "over")):
        (folder / "study.json").write_text(json.dumps({"caption": "a study", "runs": 28,
                                                       "machine_hours": held}))  # fmt: skip
        shown = report._ablations(tmp_path)
        assert f"the 28 runs held their machines {held:.2f} h in all" in shown
        assert "limit" not in shown, "a study other than the complete default one: no limit"
        (folder / "study.json").write_text(json.dumps({"caption": "a study", "runs": 28,
                                                       "machine_hours": held,
                                                       "limit_hours": 6}))  # fmt: skip
        assert f"{word} the study's limit of 6 hours" in report._ablations(tmp_path)
    pd.DataFrame([{"a": "full", "b": "no_cluster", "mean": 0.5, "low": -0.1, "high": 1.1,
                   "detectable": 0.8, "question": "q", "seeds": 2},
                  {"a": "no_positions", "b": "no_positions_wrap", "mean": -0.3, "low": -0.9,
                   "high": 0.3, "detectable": 0.85, "seeds": 2,
                   "question": "zeros vs circularly"}]).to_csv(folder / "differences.csv",
                                                               index=False)  # fmt: skip
    pair = next(line for line in report._ablations(tmp_path).splitlines() if "circularly" in line)
    assert "-0.30 [-0.90, +0.30]" in pair and "0.85" in pair, "the pair of variants, read as is"
    row = next(line for line in text.splitlines() if line.startswith("| no context cluster"))
    assert "-0.50 [-1.10, +0.10]" in row and "-3.3" in row, "ours and the paper's, one sign"
