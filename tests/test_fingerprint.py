"""Model fingerprints: what changes the function changes the hash, nothing else does; every
committed results file names the fingerprint of the model the code builds today."""

import json
import re
from pathlib import Path

import pytest
import timm

import cocs  # noqa: F401  (registers the models)
from cocs.fingerprint import describe_model, model_fingerprint
from cocs.train import TrainConfig, create_model

ROOT = Path(__file__).resolve().parents[1]


def fp(**kwargs) -> str:
    return model_fingerprint(timm.create_model("coc_cifar", **kwargs))


def test_recipe_and_layout_do_not_change_the_fingerprint():
    base = fp()
    assert len(base) == 16 and base == fp()  # stable within a process and over rebuilds
    assert fp(lean_mlp=True) == fp(channels_last=False) == fp(drop_path_rate=0.2) == base
    assert fp(layer_scale_init_value=1e-3) == base  # an initial value, not the architecture


@pytest.mark.parametrize(
    "change",
    [
        dict(heads=(4, 4, 8, 8), head_dim=16),  # same parameter count, other heads
        dict(proposal_w=1, proposal_h=1),
        dict(fold_w=1, fold_h=1),
        dict(similarity="cosine"),
        dict(center_iters=2),
        dict(use_positions=False),
        dict(mixer="none"),
        dict(down_patch_size=2, down_pad=0),
        dict(down_pad_mode="circular"),
        dict(global_pool=""),
    ],
    ids=lambda c: ",".join(c),
)
def test_every_architectural_change_changes_it(change):
    assert fp(**change) != fp()


def test_the_description_names_the_hyper_parameters():
    text = "\n".join(describe_model(timm.create_model("coc_cifar")))
    assert "heads=2, head_dim=32, proposal=2x2, fold=4x4, similarity=sigmoid" in text
    assert "use_positions=True" in text and "param head.weight: (10, 256)" in text


def committed_metrics() -> list[Path]:
    return sorted((ROOT / "results").rglob("metrics.json"))


@pytest.mark.parametrize("path", committed_metrics(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_result_is_of_the_model_built_today(path):
    meta = json.loads(path.read_text())
    where = path.relative_to(ROOT)
    assert "fingerprint" in meta, f"{where} records no model fingerprint"
    known = {f for f in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig.from_dict({k: v for k, v in meta["config"].items() if k in known})
    today = model_fingerprint(create_model(cfg, num_classes=len(meta["classes"])))
    assert meta["fingerprint"] == today, (
        f"{where} was written by a model with fingerprint {meta['fingerprint']}, but the code "
        f"builds {today} for its config today: run its chapter again"
    )


STUDIES = ("06_ablations", "08_point_clouds", "09_dense_prediction")


@pytest.mark.parametrize(
    "path",
    [p for p in committed_metrics() if p.relative_to(ROOT / "results").parts[0] in STUDIES],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_studies_runs_come_from_committed_code(path):
    """A run of the ablation, point-cloud and segmentation studies names the commit it was
    trained from, and that commit is all its code was: no uncommitted change in the tree."""
    env = json.loads(path.read_text())["environment"]
    assert env["git_commit"] and env["git_dirty"] is False, (
        f"{path.relative_to(ROOT)} was trained from a tree with uncommitted changes (commit "
        f"{env['git_commit']}): delete its folder and run its chapter again from a clean checkout"
    )


# An absolute POSIX path (not the tail of a URL) or a Windows drive path.
ABSOLUTE = re.compile(r"(?<![\w:/.])/(?:[\w.-]+/)+[\w.-]*|\b[A-Za-z]:\\")


def test_the_pattern_finds_paths_and_spares_urls():
    assert ABSOLUTE.search('"out_dir": "/home/me/cocs/results/x"')
    assert ABSOLUTE.search("cache folder /work/main/data")
    assert not ABSOLUTE.search("https://github.com/a/b and results/04_cifar10/x.csv, 1/2")


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((ROOT / "results").rglob("*")) if p.suffix in (".json", ".csv", ".md")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_committed_results_name_no_folder_of_the_machine_that_wrote_them(path):
    found = ABSOLUTE.findall(path.read_text(errors="replace"))
    assert not found, f"{path.relative_to(ROOT)} holds machine paths {found[:3]}"


def test_every_committed_ablation_run_is_reused_by_the_book_profile():
    """Chapter 6 stands on its committed runs: each is found by the chapter's own parameters
    (with the book profile's overrides), so no reader has to train it again."""
    from cocs.ablation import finished_run, run_config
    from cocs.handbook import load_profile, parameters_of, read_notebook
    from cocs.runs import mismatch

    params = parameters_of(read_notebook("06_ablations")) | load_profile("06_ablations", "book")
    folder = ROOT / "results" / "06_ablations"
    found = sorted(p.parent for p in folder.glob("*/seed*/metrics.json"))
    assert found, "chapter 6 has committed runs"
    for run in found:
        key, seed = run.parent.name, int(run.name.removeprefix("seed"))
        if key.startswith("pilot"):  # the pilot of the epoch count: another schedule
            continue
        assert finished_run(run_config(key, seed, params, folder)) is not None, (
            f"{run.relative_to(ROOT)} does not match today's code or recipe: "
            f"{mismatch(run_config(key, seed, params, folder))}"
        )
