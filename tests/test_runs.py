"""Finished runs stand for new ones only while they are what the code would train today."""

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cocs import data as D
from cocs import runs as R
from cocs import train as T
from cocs import weights as W


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run of 1 epoch on 24 images of 16x16 px, and its config."""
    root = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("COCS_DATA", str(root / "cache"))
    mp.setenv("COCS_ARCHIVES", "")
    tree = D.write_synthetic_folder(root / "tree", per_class={"train": 8, "val": 4})
    cfg = T.TrainConfig(model="coc_micro", dataset="folder", data_path=str(tree), download=False,
                        img_size=16, epochs=1, batch_size=8, warmup_epochs=1, num_threads=1,
                        out_dir=str(root / "results" / "run"), progress=False)  # fmt: skip
    run = T.train(cfg)
    yield cfg, run
    mp.undo()


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                strict=True))  # fmt: skip


def test_a_finished_run_is_read_back_with_its_weights(trained):
    cfg, run = trained
    back = R.finished(cfg)
    assert back["reused"] and back["weights"].startswith("checkpoint")
    assert back["final"] == pytest.approx(run["final"], nan_ok=True)
    assert [r["epoch"] for r in back["metrics"]] == [1]
    assert back["metrics"][0]["test_acc"] == pytest.approx(run["final"]["test_acc"])
    assert same_weights(back["model"], run["model"])
    assert R.finished(cfg, weights=False)["model"] is None
    # where it trained comes from its record, the same for the fresh and the reused run
    assert R.trained_on(back) == R.trained_on(run) != {}
    assert R.trained_on(run)["threads"] == 1 and R.trained_on(run)["autocast"] == run["autocast"]


def test_where_a_run_trained_is_read_from_its_record_not_from_this_machine():
    hardware = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "torch_threads": 2, "device": "cpu"}
    run = {"config": {"amp": "auto"}, "autocast": "off", "environment": {"hardware": hardware}}
    assert R.trained_on(run) == {"hardware": "AMD EPYC (AVX2)", "threads": 2, "autocast": "off",
                                 "gflops": None, "platform": None}  # fmt: skip
    older = {"cpu": "AMD EPYC", "torch_threads": 2, "device": "cpu"}  # before capability
    run = {"config": {"amp": "auto"}, "environment": {"hardware": older}}
    assert R.trained_on(run) == {"hardware": "AMD EPYC", "threads": 2, "autocast": "off",
                                 "gflops": None, "platform": None}  # fmt: skip
    gpu = {"cpu": "x", "torch_threads": 8, "device": "cuda:0", "gpus": ["NVIDIA H200"]}
    run = {"config": {"amp": "auto"}, "autocast": "bfloat16", "environment": {"hardware": gpu}}
    assert R.trained_on(run) == {"hardware": "NVIDIA H200", "threads": 8, "autocast": "bfloat16",
                                 "gflops": None, "platform": None}  # fmt: skip
    run = {"config": {"amp": "bf16"}, "environment": {"hardware": older}}  # no autocast field
    assert R.trained_on(run)["autocast"] == "bfloat16"


def test_another_recipe_or_model_does_not_match(trained):
    cfg, _ = trained
    assert R.finished(T.TrainConfig.from_dict(vars(cfg) | {"lr": 1e-2})) is None
    other = T.TrainConfig.from_dict(vars(cfg) | {"model_kwargs": "use_positions=False"})
    assert R.finished(other) is None, "another architecture has another fingerprint"
    gone = T.TrainConfig.from_dict(vars(cfg) | {"out_dir": cfg.out_dir + "-none"})
    assert R.finished(gone) is None


def test_train_or_reuse_trains_nothing_it_has(trained, monkeypatch):
    cfg, run = trained
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("trained again"))
    assert same_weights(R.train_or_reuse(cfg, train_missing=False)["model"], run["model"])
    gone = T.TrainConfig.from_dict(vars(cfg) | {"lr": 1e-2})
    with pytest.raises(R.MissingRun, match=r"no finished run.*recipe differs \(lr: 0.002 -> 0.01"):
        R.train_or_reuse(gone, train_missing=False)
    assert R.mismatch(cfg) is None
    other = T.TrainConfig.from_dict(vars(cfg) | {"model_kwargs": "use_positions=False"})
    assert R.mismatch(other).startswith("it trained model ")
    assert (
        R.mismatch(T.TrainConfig.from_dict(vars(cfg) | {"out_dir": "x"})) == "no metrics.json there"
    )


def test_compiling_matters_only_under_a_time_budget(trained, tmp_path):
    cfg, _ = trained
    compiled = T.TrainConfig.from_dict(vars(cfg) | {"torch_compile": True})
    assert R.mismatch(compiled) is None, "a fixed number of epochs: compiling is how, not what"
    copy = tmp_path / "results" / "budgeted"
    shutil.copytree(cfg.out_dir, copy)
    meta = json.loads((copy / "metrics.json").read_text())
    meta["config"] |= {"epochs": 0, "budget_minutes": 1.0}  # as a budgeted run records itself
    meta["recipe"] |= {"epochs": 0, "budget_minutes": 1.0}
    (copy / "metrics.json").write_text(json.dumps(meta))
    eager = T.TrainConfig.from_dict(vars(cfg) | {"out_dir": str(copy), "epochs": 0,
                                                 "budget_minutes": 1.0})  # fmt: skip
    assert R.mismatch(eager) is None
    budgeted = T.TrainConfig.from_dict(vars(eager) | {"torch_compile": True})
    assert R.mismatch(budgeted).startswith(
        "it trained eager under a time budget, this run is compiled"
    )
    assert R.mismatch(budgeted, ignore={"torch_compile"}) is None


def test_ignored_recipe_keys_and_records_without_a_recipe(trained, tmp_path):
    cfg, _ = trained
    copy = tmp_path / "results" / "older"
    shutil.copytree(cfg.out_dir, copy)
    meta = json.loads((copy / "metrics.json").read_text())
    del meta["recipe"]  # an engine that recorded only the config
    (copy / "metrics.json").write_text(json.dumps(meta))
    older = T.TrainConfig.from_dict(vars(cfg) | {"out_dir": str(copy)})
    assert R.mismatch(older) is None, "the recipe is read from the recorded config"
    bf16 = T.TrainConfig.from_dict(vars(older) | {"amp": "bf16"})
    assert R.mismatch(bf16) == f"its recipe differs (amp: {cfg.amp!r} -> 'bf16')"
    assert R.mismatch(bf16, ignore={"amp"}) is None
    both = T.TrainConfig.from_dict(vars(bf16) | {"lr": 1e-2})
    assert R.mismatch(both, ignore={"amp"}) == "its recipe differs (lr: 0.002 -> 0.01)"
    del meta["config"]
    (copy / "metrics.json").write_text(json.dumps(meta))
    assert R.mismatch(older) == "its metrics.json records neither a recipe nor a config"


def test_without_a_checkpoint_the_shipped_weights_of_that_run_are_used(trained, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    cfg, run = trained
    ckpt = T.resolve_ckpt_dir(cfg)
    moved = tmp_path / "moved"
    shutil.move(ckpt, moved)
    try:
        with pytest.raises(R.MissingRun, match="final weights are neither"):
            R.train_or_reuse(cfg, train_missing=False)
        assert R.train_or_reuse(cfg, train_missing=False, need_model=False)["model"] is None
        monkeypatch.setattr(T, "train", lambda c, **k: {"trained": c.out_dir})
        assert R.train_or_reuse(cfg) == {"trained": cfg.out_dir}, "no weights: trained again"
        folder = tmp_path / "weights"
        monkeypatch.setattr(W, "shipped", lambda name, _=None: W.manifest(folder).get(name))
        monkeypatch.setattr(W, "load_shipped", functools.partial(W.load_shipped, folder=folder))
        W.export(run["model"], cfg.model, metrics={"test_acc": run["final"]["test_acc"]},
                 source="results/run", folder=folder)  # fmt: skip
        back = R.finished(cfg)
        assert back["weights"] == "shipped float16 weights cocs/weights/coc_micro.safetensors.xz"
        for a, b in zip(back["model"].state_dict().values(), run["model"].state_dict().values(),
                        strict=True):  # fmt: skip
            assert torch.allclose(a, b.half().to(a.dtype))
        W.export(run["model"], cfg.model, metrics={"test_acc": 1.0}, source="results/run",
                 folder=folder)  # fmt: skip
        assert R.finished(cfg)["model"] is None, "weights of another run are not these"
    finally:
        shutil.move(moved, ckpt)


def test_a_run_that_keeps_its_weights_is_reused_with_them_without_its_checkpoint(trained, tmp_path):
    cfg, _ = trained
    kept = T.TrainConfig.from_dict(vars(cfg) | {"save_weights": True,
                                                "out_dir": cfg.out_dir + "-kept"})  # fmt: skip
    run = T.train(kept)
    folder = Path(kept.out_dir)
    assert run["final_weights"]["file"] == T.FINAL_WEIGHTS
    assert (
        json.loads((folder / "metrics.json").read_text())["final_weights"] == run["final_weights"]
    )
    assert R.mismatch(kept) is None, "save_weights is not part of the recipe"
    shutil.rmtree(T.resolve_ckpt_dir(kept))  # another machine: no checkpoint
    back = R.finished(kept)
    assert (
        back["weights"] == f"the run's float16 weights {T.portable_path(folder / T.FINAL_WEIGHTS)}"
    )
    for a, b in zip(back["model"].state_dict().values(), run["model"].state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b.half().to(a.dtype))
    with open(folder / T.FINAL_WEIGHTS, "r+b") as f:  # a damaged file is refused, by name
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"weights\.safetensors is missing or does not match"):
        R.finished(kept)


def test_kept_arrays_are_read_back_only_for_their_own_key(tmp_path):
    path = tmp_path / "run" / "shown.npz"
    assert R.read_kept(path, {"fingerprint": "a"}) is None, "no file yet"
    pred = np.arange(12, dtype=np.int64).reshape(2, 2, 3)
    R.write_kept(path, {"fingerprint": "a", "shown": [0, 5]}, {"pred": pred})
    back = R.read_kept(path, {"shown": [0, 5], "fingerprint": "a"})  # key order is no matter
    assert set(back) == {"pred"} and np.array_equal(back["pred"], pred)
    assert R.read_kept(path, {"fingerprint": "b", "shown": [0, 5]}) is None, "another model"
    assert R.read_kept(path, {"fingerprint": "a", "shown": [0, 6]}) is None, "other images"
    assert [p.name for p in path.parent.iterdir()] == ["shown.npz"], "no temporary file left"
    with pytest.raises(ValueError, match="'key' is the name"):
        R.write_kept(path, {}, {"key": pred})


def test_committed_segmentation_runs_keep_what_their_figures_draw():
    """Chapter 9's run weights are not committed: the shown.npz of each run its figures draw
    (each backbone's best) must stand for them."""
    from cocs.dense import shown_key

    folder = Path(__file__).resolve().parents[1] / "results" / "09_dense_prediction"
    runs = pd.read_csv(folder / "runs.csv")
    drawn = set(runs.loc[runs.groupby("backbone")["miou"].idxmax(), "run"])  # each one's best
    assert len(drawn) == 2, drawn
    for name in sorted(drawn):
        meta = json.loads((folder / name / "metrics.json").read_text())
        kept = R.read_kept(folder / name / "shown.npz", shown_key(meta))
        assert kept is not None, f"{name}: shown.npz missing or not this run's"
        assert kept["pred"].shape == (2, *T.segmentation_size(meta["config"]["img_size"]))
    for path in folder.rglob("shown.npz"):  # and whatever else is kept belongs to its run
        meta = json.loads((path.parent / "metrics.json").read_text())
        assert R.read_kept(path, shown_key(meta)) is not None, f"{path.parent}: not this run's"


def test_budgeted_runs_of_one_machine_name_but_different_speeds_do_not_compare():
    from cocs.runs import budget_caveat

    base = {"hardware": "AMD EPYC (AVX512)", "threads": 2, "autocast": "bfloat16"}
    assert budget_caveat([base | {"gflops": 100.0}, base | {"gflops": 110.0}]) is None
    slow = budget_caveat([base | {"gflops": 100.0}, base | {"gflops": 60.0}])
    assert "at different speeds" in slow and "60 to 100 GFLOP/s" in slow
    other = budget_caveat([base | {"gflops": 100.0}, base | {"hardware": "Intel", "gflops": 100.0}])
    assert "2 machines" in other
    # without a recorded speed, the platform build stands in for it
    old = base | {"gflops": float("nan"), "platform": "Linux-6.18-fc-v1300"}
    assert budget_caveat([old, old | {"gflops": None}]) is None
    builds = budget_caveat([old, old | {"platform": "Linux-6.18-fc-v1272"}])
    assert "2 machines" in builds and "fc-v1272" in builds and "fc-v1300" in builds
    # a run with a speed beside one without: the builds decide
    assert budget_caveat([old, old | {"gflops": 100.0}]) is None
    assert "fc-v1272" in budget_caveat([old, old | {"gflops": 100.0, "platform": "fc-v1272"}])
    assert budget_caveat([base, base]) is None, "rows of older tables: neither key"


def test_a_run_records_how_fast_its_cpu_was():
    from cocs.provenance import environment_info, speed_probe
    from cocs.runs import trained_on

    speed = speed_probe()
    assert speed["matmul_gflops"] > 0 and speed["copy_gbps"] > 0
    assert speed_probe() is speed, "measured once per process"
    state = torch.random.get_rng_state()
    speed_probe.__wrapped__(seconds=0.01)  # the probe itself, uncached
    assert torch.equal(torch.random.get_rng_state(), state), "a run's seed sees no probe"
    env = environment_info("cpu")
    assert env["hardware"]["speed"] == speed
    assert "speed" not in environment_info("cuda:0")["hardware"], "a GPU run: not the CPU's"
    assert trained_on({"environment": env, "autocast": "off"})["gflops"] == speed["matmul_gflops"]
