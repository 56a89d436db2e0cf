"""The training engine: config checks, files, reproducibility, resuming and two-process DDP."""

import csv
import json
import os
import platform
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from cocs import data as D
from cocs import train as T

# The smallest registered model; any timm name without BatchNorm works (the DDP test compares
# one process with two, and BatchNorm statistics depend on the per-process batch).
MODEL = "coc_micro"
MODEL_KWARGS = ""


@pytest.fixture
def tree(tmp_path_factory):
    return D.write_synthetic_folder(
        tmp_path_factory.mktemp("data") / "tree", per_class={"train": 8, "val": 4}
    )


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("COCS_DATA", str(tmp_path / "cache-root"))
    monkeypatch.setenv("COCS_ARCHIVES", "")


def config(tree, out, **overrides) -> dict:
    """A run of 2 epochs x 3 steps on 24 images of 16x16 px that exercises every random part."""
    base = dict(
        model=MODEL,
        model_kwargs=MODEL_KWARGS,
        dataset="folder",
        data_path=str(tree),
        download=False,
        img_size=16,
        epochs=2,
        batch_size=8,
        warmup_epochs=1,
        lr=2e-3,
        drop_path=0.1,
        mixup=0.4,
        cutmix=0.4,
        randaugment="rand-m9-mstd0.5-inc1",
        ema=0.9,
        num_threads=1,
        progress=False,
        out_dir=str(out / "results" / "run"),
        seed=0,
    )
    return base | overrides


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


SCORES = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "ema_test_loss",
    "ema_test_acc",
)


def scores(rows):
    return [{k: float(r[k]) for k in SCORES} for r in rows]


# ---- configuration --------------------------------------------------------------------------


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(
        T.ConfigError, match=r"unknown config key 'epoch'\. Did you mean 'epochs'\?"
    ):
        T.TrainConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", "3", r"epochs='3' has type str; expected int"),
        ("epochs", 2.5, r"epochs=2.5 has type float; expected int"),
        ("lr", True, r"lr=True has type bool; expected float"),
        ("resume", 1, r"resume=1 has type int; expected bool"),
        ("amp", "fp32", r"amp='fp32' is not valid; expected one of auto, bf16, fp16, off"),
        ("dataset", "mnist", r"dataset='mnist' is not valid"),
        (
            "warmup_epochs",
            -1,
            r"warmup_epochs=-1 is not valid; expected an int >= 0",
        ),
        ("model_kwargs", "fold", r"'fold' is not key=value"),
        ("crop_pad", -2, r"crop_pad=-2 is not valid; expected an int >= 0, or -1"),
        ("epochs", 0, r"epochs=0 plans the epochs from a time budget, but budget_minutes is 0"),
        ("budget_minutes", 5.0, r"budget_minutes=5.0 applies only with epochs=0"),
        ("budget_minutes", -1.0, r"budget_minutes=-1.0 is not valid; expected a float >= 0"),
    ],
)
def test_bad_values_are_rejected_before_training(tmp_path, key, value, message):
    out = tmp_path / "results" / "run"
    with pytest.raises(T.ConfigError, match=message):
        T.train({"out_dir": str(out), key: value})
    assert not out.exists() and not (tmp_path / "checkpoints").exists()


def test_the_crop_margin_is_a_choice_for_pad_and_crop_data_sets_only():
    assert T.TrainConfig.from_dict({"dataset": "cifar10", "crop_pad": 0}).crop_pad == 0
    with pytest.raises(
        T.ConfigError,
        match=r"crop_pad=2 applies to pad-and-crop data sets .* imagenette uses a random "
        r"resized crop: leave crop_pad at -1",
    ):
        T.TrainConfig.from_dict({"dataset": "imagenette", "crop_pad": 2})


@pytest.mark.parametrize(("crop_pad", "pad"), [(-1, 2), (0, 0), (3, 3)])
def test_the_engine_gives_the_crop_margin_to_the_augmentation(tree, monkeypatch, crop_pad, pad):
    real = D.load_split  # a CIFAR-10 config, served from the small folder tree

    def load_split(dataset, split, **kw):
        assert dataset == "cifar10"
        return real("folder", split, **(kw | {"data_path": str(tree), "download": False}))

    monkeypatch.setattr(D, "load_split", load_split)
    cfg = T.TrainConfig.from_dict({"img_size": 16, "crop_pad": crop_pad, "progress": False})
    assert T.build_data(cfg).train.transform.pad == pad  # -1: 16 // 8


def test_ints_are_accepted_for_floats_and_model_kwargs_parse():
    cfg = T.TrainConfig.from_dict({"lr": 1, "model_kwargs": "fold=2,heads=(4, 8),act=gelu"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert T.parse_model_kwargs(cfg.model_kwargs) == {"fold": 2, "heads": (4, 8), "act": "gelu"}
    assert T.parse_model_kwargs('{"fold": 2}') == {"fold": 2}


def test_a_notebook_namespace_gives_a_config():
    namespace = {"epochs": 3, "dataset": "cifar100", "plot_style": "dark", "__name__": "__main__"}
    cfg = T.TrainConfig.from_namespace(namespace, out_dir="results/x")
    assert (cfg.epochs, cfg.dataset, cfg.out_dir) == (3, "cifar100", "results/x")


def test_command_line_uses_the_same_flat_names():
    args = T.build_parser().parse_args(
        ["--epochs", "3", "--resume", "false", "--lr", "1e-3", "--model", "coc_micro"]
    )
    cfg = T.TrainConfig.from_dict(vars(args))
    assert (cfg.epochs, cfg.resume, cfg.lr, cfg.model) == (3, False, 1e-3, "coc_micro")
    with pytest.raises(SystemExit, match="amp='x' is not valid"):
        T.main(["--amp", "x"])


def test_checkpoint_folder_mirrors_the_results_folder():
    assert (
        str(T.resolve_ckpt_dir(T.TrainConfig(out_dir="results/03_cifar/run1")))
        == "checkpoints/03_cifar/run1"
    )
    assert str(T.resolve_ckpt_dir(T.TrainConfig(out_dir="out", ckpt_dir="ck"))) == "ck"


def test_unknown_model_names_the_registered_variants(tree, tmp_path):
    with pytest.raises(
        T.ConfigError, match=r"model: unknown model 'coc_nano'; did you mean .*coc_micro"
    ):
        T.train(config(tree, tmp_path, model="coc_nano"))


# ---- reproducibility and resuming -----------------------------------------------------------


def test_same_seed_same_metrics_and_interrupted_run_resumes_identically(tree, tmp_path):
    full = T.train(config(tree, tmp_path / "a"))
    rows = read_csv(tmp_path / "a" / "results" / "run" / "metrics.csv")
    assert len(rows) == 2 and full["complete"] and full["final"]["epoch"] == 2
    assert {"train_seconds", "epoch_seconds", "images_per_s"} <= set(rows[0])

    again = T.train(config(tree, tmp_path / "b"))  # same seed, fresh folders
    assert scores(read_csv(tmp_path / "b" / "results" / "run" / "metrics.csv")) == scores(rows)
    assert all(
        torch.equal(p, q)
        for p, q in zip(full["model"].parameters(), again["model"].parameters(), strict=True)
    )

    class Crash(Exception):
        pass

    def crash(row):
        if row["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        T.train(config(tree, tmp_path / "c"), on_epoch_end=crash)
    assert len(read_csv(tmp_path / "c" / "results" / "run" / "metrics.csv")) == 1
    resumed = T.train(config(tree, tmp_path / "c"))
    assert scores(read_csv(tmp_path / "c" / "results" / "run" / "metrics.csv")) == scores(rows)
    assert resumed["final"]["test_loss"] == full["final"]["test_loss"]

    # A finished run is reloaded, not retrained.
    reloaded = T.train(config(tree, tmp_path / "c"), on_epoch_end=crash)
    assert reloaded["epochs_done"] == 2 and reloaded["complete"]

    with pytest.raises(T.ConfigError, match=r"lr: 0.002 -> 0.001.*resume=False"):
        T.train(config(tree, tmp_path / "c", lr=1e-3))


def test_a_time_budget_needs_a_warm_up_to_plan_after():
    with pytest.raises(T.ConfigError, match=r"epochs=0 needs warmup_epochs >= 1"):
        T.TrainConfig.from_dict({"epochs": 0, "budget_minutes": 5.0, "warmup_epochs": 0})


def test_planning_counts_the_epochs_that_still_fit_with_a_margin():
    # 500 s left at 10 s an epoch, each counted 5% dearer: 47 more after the first
    assert T.plan_epochs(1, 100.0, 10.0, 600.0) == 1 + int(500 // (T.PLAN_MARGIN * 10.0))
    assert T.plan_epochs(1, 100.0, 10.0, 600.0) == 48
    assert T.plan_epochs(5, 598.0, 10.0, 600.0) == 5, "less than an epoch left: stop"
    assert T.plan_epochs(7, 700.0, 10.0, 600.0) == 7, "over budget already: never fewer"
    with pytest.raises(ValueError, match="epoch_seconds=0"):
        T.plan_epochs(1, 1.0, 0.0, 60.0)


def test_a_budgeted_run_plans_after_the_warm_up_and_follows_its_plan(tree, tmp_path, monkeypatch):
    fixed = T.train(config(tree, tmp_path / "fixed", epochs=3))
    calls = []

    def plan(done, spent, epoch_seconds, budget):
        calls.append((done, spent, epoch_seconds, budget))
        return 3

    monkeypatch.setattr(T, "plan_epochs", plan)
    budgeted = config(tree, tmp_path / "budget", epochs=0, budget_minutes=2.0)
    run = T.train(budgeted)
    # planned at 3 from the first epoch on, the run is the fixed 3-epoch run exactly
    assert scores(run["metrics"]) == scores(fixed["metrics"])
    assert run["epochs_done"] == run["epochs_planned"] == 3 and run["complete"]
    assert [done for done, *_ in calls] == [1, 2, 3] and {c[3] for c in calls} == {120.0}
    spent = [sum(r["epoch_seconds"] for r in run["metrics"][:n]) for n in (1, 2, 3)]
    assert [c[1] for c in calls] == pytest.approx(spent)
    assert all(0 < c[2] for c in calls)
    assert [r["epochs_planned"] for r in run["metrics"]] == [3, 3, 3]
    meta = json.loads((tmp_path / "budget" / "results" / "run" / "metrics.json").read_text())
    assert meta["epochs_planned"] == 3 and meta["config"]["epochs"] == 0

    # interrupted after the planning epoch, it resumes with the stored plan
    class Crash(Exception):
        pass

    def crash(row):
        if row["epoch"] == 1:
            raise Crash

    monkeypatch.setattr(T, "plan_epochs", lambda *a: 3)
    with pytest.raises(Crash):
        T.train(config(tree, tmp_path / "c", epochs=0, budget_minutes=2.0), on_epoch_end=crash)
    resumed = T.train(config(tree, tmp_path / "c", epochs=0, budget_minutes=2.0))
    assert scores(resumed["metrics"]) == scores(fixed["metrics"])

    # a plan that changes stretches or shortens the cosine, which still ends at min_lr; a plan
    # shorter than the epochs done ends the run
    plans = iter([5, 4, 2])
    monkeypatch.setattr(T, "plan_epochs", lambda *a: next(plans))
    changed = T.train(config(tree, tmp_path / "d", epochs=0, budget_minutes=2.0))
    assert [r["epochs_planned"] for r in changed["metrics"]] == [5, 4, 3]
    assert changed["complete"] and changed["metrics"][-1]["lr"] == changed["config"]["min_lr"]


def test_a_budget_shorter_than_the_warm_up_ends_after_it(tree, tmp_path):
    run = T.train(config(tree, tmp_path, epochs=0, budget_minutes=1e-5))
    assert run["epochs_done"] == run["epochs_planned"] == 1 and run["complete"]
    assert run["final"]["lr"] == run["config"]["min_lr"], "the cosine ends with the run"
    assert run["final"]["steady_seconds"] > 0
    native = "bfloat16" if T.cpu_has_native_bf16() else "off"
    assert run["autocast"] == native, "amp='auto' on a CPU: bfloat16 only where it is native"


def test_stop_after_epochs_files_and_reloading_a_checkpoint(tree, tmp_path):
    # float32: the checks below compare the engine's evaluation with evaluations of their own
    cfg = config(
        tree,
        tmp_path,
        mixup=0.0,
        cutmix=0.0,
        randaugment="",
        keep_epoch_ckpts=True,
        stop_after_epochs=1,
        amp="off",
    )
    part = T.train(cfg)
    assert part["epochs_done"] == 1 and not part["complete"]
    meta = json.loads((tmp_path / "results" / "run" / "metrics.json").read_text())
    assert meta["complete"] is False and meta["config"]["stop_after_epochs"] == 1
    assert meta["autocast"] == "off", "float32, as asked"
    assert (
        "git_commit" in meta["environment"]
        and meta["environment"]["versions"]["torch"] == torch.__version__
    )
    assert {"cpu", "cpu_count", "torch_threads", "gpus"} <= set(meta["environment"]["hardware"])
    # a CPU run keeps freed memory for its next tensors (cocs.allocator), on glibc's Linux
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert meta["environment"]["hardware"]["keeps_freed_memory"] is glibc

    done = T.train(cfg | {"stop_after_epochs": 0})
    ckpt_dir = tmp_path / "checkpoints" / "run"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch_001.pt", "epoch_002.pt", "last.pt"]
    assert (
        json.loads((tmp_path / "results" / "run" / "metrics.json").read_text())["complete"] is True
    )
    ckpt = torch.load(ckpt_dir / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "ema", "rng", "epoch", "config", "env"} <= set(ckpt)

    model, saved = T.load_trained(ckpt_dir)
    assert saved.model == MODEL and not model.training
    test = D.AugmentedImages(
        D.load_split("folder", "test", img_size=16, data_path=tree, progress=False),
        D.CenterCrop(16),
    )
    spec = D.get_spec("folder")
    loader = D.make_loader(test, D.EpochBatchSampler(len(test), 12, shuffle=False, drop_last=False))
    loss, acc, n = T.evaluate(
        model, loader, device=torch.device("cpu"), mean=spec.mean, std=spec.std
    )
    assert n == 12 and loss == pytest.approx(done["final"]["test_loss"], abs=1e-6)
    T.load_trained(ckpt_dir / "epoch_001.pt", ema=True)

    # Flip test-time augmentation: the mean of the distributions for each image and its mirror.
    flip_loss, flip_acc, _ = T.evaluate(
        model, loader, device=torch.device("cpu"), mean=spec.mean, std=spec.std, flip=True
    )
    x, y = test.__getitems__(list(range(12)))
    x = D.normalize(x, spec.mean, spec.std)
    with torch.no_grad():
        p = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2  # (12, classes)
    assert flip_loss != pytest.approx(loss, abs=1e-6), "the mirror must change the prediction"
    assert flip_loss == pytest.approx(-p[torch.arange(12), y].log().mean().item(), rel=1e-5)
    assert flip_acc == pytest.approx(100.0 * (p.argmax(1) == y).float().mean().item())
    # ... asked of a finished run, which is reloaded (eval_flip does not change the training)
    assert done["final_flip"] is None
    reloaded = T.train(cfg | {"stop_after_epochs": 0, "eval_flip": True})
    assert reloaded["epochs_done"] == 2 and reloaded["final"] == done["final"]
    assert reloaded["final_flip"]["test_loss"] == pytest.approx(flip_loss, rel=1e-6)
    meta = json.loads((tmp_path / "results" / "run" / "metrics.json").read_text())
    assert meta["final_flip"]["test_acc"] == pytest.approx(flip_acc)


def test_paired_runs_share_initial_weights_and_write_their_predictions(tree, tmp_path):
    plain = dict(mixup=0.0, cutmix=0.0, randaugment="", ema=0.0, epochs=1, warmup_epochs=0)
    full = T.train(config(tree, tmp_path, **plain, shared_init=True, save_predictions=True))
    other = T.train(
        config(
            tree,
            tmp_path,
            **plain,
            model_kwargs="use_positions=False",
            shared_init=True,
            out_dir=str(tmp_path / "results" / "other"),
        )  # fmt: skip
    )
    # the initial weights, rebuilt the way the engine builds them
    T.seed_everything(0)
    init_full = T.create_model(T.TrainConfig.from_dict(config(tree, tmp_path)), 3).state_dict()
    T.seed_everything(0)
    own = T.create_model(
        T.TrainConfig.from_dict(config(tree, tmp_path, model_kwargs="use_positions=False")), 3
    )
    T.seed_everything(0)
    kept = T.share_initial_weights(
        own, T.create_model(T.TrainConfig.from_dict(config(tree, tmp_path)), 3)
    )
    assert kept == ["patch_embed.proj.weight"], "only the stem's input channels differ"
    assert all(torch.equal(own.state_dict()[k], init_full[k]) for k in init_full if k not in kept)
    assert other["own_initial_weights"] == kept and full["own_initial_weights"] == []

    meta = json.loads((tmp_path / "results" / "run" / "metrics.json").read_text())
    assert meta["fingerprint"] == T.model_fingerprint(full["model"])
    assert meta["recipe"] == T.recipe(T.TrainConfig.from_dict(meta["config"]))
    assert "model_kwargs" not in meta["recipe"] and "out_dir" not in meta["recipe"]
    assert meta["out_dir"] == str(tmp_path / "results" / "run")  # outside the repository: kept
    with np.load(tmp_path / "results" / "run" / "predictions.npz") as f:
        label, pred = f["label"], f["pred"]
    assert len(label) == len(pred) == full["test_images"] == 12
    assert 100 * (label == pred).mean() == pytest.approx(full["final"]["test_acc"])
    assert not (tmp_path / "results" / "other" / "predictions.npz").exists(), "not asked for"


def test_paths_inside_the_repository_are_recorded_relative_to_it():
    assert T.portable_path(T.REPO_ROOT / "results" / "x") == "results/x"
    assert T.portable_path("results/x") == "results/x" and T.portable_path("") == ""
    assert T.portable_path("/elsewhere/x") == "/elsewhere/x"
    assert T.portable_source("archive /a/b/cifar.tar.gz") == "archive cifar.tar.gz"


def test_a_checkpoint_of_another_architecture_is_not_resumed(tree, tmp_path):
    cfg = config(tree, tmp_path, mixup=0.0, cutmix=0.0, stop_after_epochs=1)
    T.train(cfg)
    ckpt_path = tmp_path / "checkpoints" / "run" / "last.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["fingerprint"] = "0" * 16  # as if the code had changed the model since
    torch.save(ckpt, ckpt_path)
    with pytest.raises(T.ConfigError, match="model fingerprint"):
        T.train(cfg | {"stop_after_epochs": 0})


# ---- two processes --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(tree, tmp_path):
    # drop_path draws per process and mixup mixes within a process's batch: both off here.
    # Crops and flips are seeded per image, so they are the same in one process and in two.
    # float32: bfloat16 rounding (amp='auto' on a CPU with native bfloat16) differs between one
    # batch of 8 and two of 4 by more than the tolerance
    cfg = config(
        tree, tmp_path / "single", epochs=1, warmup_epochs=0, drop_path=0.0, mixup=0.0, cutmix=0.0,
        amp="off",
    )  # fmt: skip
    single = T.train(cfg)

    out = tmp_path / "ddp" / "results" / "run"
    args = [f"--{k}={v}" for k, v in (cfg | {"out_dir": str(out)}).items()]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "cocs.train",
        *args,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, cwd=D.REPO_ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]

    meta = json.loads((out / "metrics.json").read_text())
    assert meta["world_size"] == 2 and meta["rank_weight_max_diff"] == 0.0
    weights = torch.load(tmp_path / "ddp" / "checkpoints" / "run" / "last.pt", weights_only=True)[
        "model"
    ]
    for name, value in single["model"].state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert meta["final"]["train_loss"] == pytest.approx(single["final"]["train_loss"], abs=1e-5)
    assert meta["final"]["test_loss"] == pytest.approx(single["final"]["test_loss"], abs=1e-5)


def test_torch_compile_wraps_the_training_model_only(tree, tmp_path, monkeypatch):
    """Compiling takes minutes on a CPU, so torch.compile is replaced by a recording wrapper:
    the training steps go through it, the checkpoint holds the plain model's keys, and the
    metrics equal an uncompiled run's (the wrapper computes what the model computes)."""
    compiled = []

    class Recorder(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, x):
            self.calls += 1
            return self.module(x)

    def fake_compile(module, **options):
        assert options == {"dynamic": False}, "full batches keep their own static graph"
        compiled.append(Recorder(module))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = T.train(config(tree, tmp_path / "plain"))
    run = T.train(config(tree, tmp_path / "compiled", torch_compile=True))
    assert len(compiled) == 1 and compiled[0].calls == 2 * 3, "every training step, no eval"
    assert scores(run["metrics"]) == scores(plain["metrics"])
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "run" / "last.pt", weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])


def test_testing_every_kth_epoch_still_tests_the_last(tree, tmp_path):
    plain = dict(mixup=0.0, cutmix=0.0, randaugment="", ema=0.0, epochs=3)
    every = T.train(config(tree, tmp_path, **plain))
    sparse = T.train(config(tree, tmp_path, **plain, eval_every=2,
                            out_dir=str(tmp_path / "results" / "sparse")))  # fmt: skip
    acc = [r["test_acc"] for r in sparse["metrics"]]
    assert np.isnan(acc[0]) and not np.isnan(acc[1]) and not np.isnan(acc[2])
    assert sparse["final"]["test_acc"] == every["final"]["test_acc"], "testing changes no training"
    assert sparse["metrics"][-1]["train_loss"] == every["metrics"][-1]["train_loss"]


def test_a_recipe_recorded_before_a_setting_existed_still_matches():
    cfg = T.TrainConfig(epochs=12, lr=2e-3)
    recorded = T.recipe(cfg)
    assert T.same_recipe(recorded, cfg)
    older = {k: v for k, v in recorded.items() if k != "eval_flip" and k != "label_smoothing"}
    assert T.same_recipe(older | {"a_removed_setting": 1}, cfg), "defaults fill what is missing"
    assert not T.same_recipe(older, T.TrainConfig(epochs=12, lr=2e-3, label_smoothing=0.2))
    assert not T.same_recipe(recorded, T.TrainConfig(epochs=11, lr=2e-3))


def test_a_diverged_run_is_recorded_before_it_is_raised(tree, tmp_path, monkeypatch):
    real = T.create_model

    def poisoned(cfg, num_classes):  # the loss of the second epoch is nan
        model = real(cfg, num_classes)
        calls = {"n": 0}

        def forward_hook(module, args, output):
            calls["n"] += 1
            return output * float("nan") if calls["n"] > 3 and module.training else output

        model.register_forward_hook(forward_hook)
        return model

    monkeypatch.setattr(T, "create_model", poisoned)
    plain = dict(mixup=0.0, cutmix=0.0, randaugment="", ema=0.0, epochs=3)
    cfg = config(tree, tmp_path, **plain, save_predictions=True)
    with pytest.raises(T.TrainingDiverged, match="became nan in epoch 2") as raised:
        T.train(cfg)
    assert raised.value.args[1] == {"epoch": 2, "train_loss": "nan"}
    meta = json.loads((tmp_path / "results" / "run" / "metrics.json").read_text())
    assert meta["diverged"] == {"epoch": 2, "train_loss": "nan"}
    assert not meta["complete"] and meta["epochs_done"] == 1 and meta["fingerprint"]
    assert not (tmp_path / "results" / "run" / "predictions.npz").exists()
    assert len(read_csv(tmp_path / "results" / "run" / "metrics.csv")) == 1, "epoch 1 is kept"


def test_bf16_on_a_cpu_without_native_support_warns_and_names_the_way_out(monkeypatch):
    cfg = T.TrainConfig(amp="bf16")
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bfloat16.*amp='off' trains faster"):
        assert T._resolve_amp(cfg, torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert T._resolve_amp(cfg, torch.device("cpu")) == torch.bfloat16
    hardware = T.environment_info()["hardware"]
    assert hardware["cpu_capability"] and isinstance(hardware["cpu_bf16"], bool)


def test_auto_precision_on_a_cpu_is_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    cfg = T.TrainConfig(amp="auto")
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: False)
    assert T._resolve_amp(cfg, torch.device("cpu")) is None, "float32: no emulated bfloat16"
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert T._resolve_amp(cfg, torch.device("cpu")) == torch.bfloat16
    assert T._resolve_amp(T.TrainConfig(amp="off"), torch.device("cpu")) is None


def test_a_run_trains_in_bfloat16_autocast_on_the_cpu(tree, tmp_path):
    plain = dict(mixup=0.0, cutmix=0.0, randaugment="", ema=0.0, epochs=1, amp="bf16")
    with warnings.catch_warnings():  # the emulation warning, on CPUs without native bfloat16
        warnings.simplefilter("ignore", UserWarning)
        run = T.train(config(tree, tmp_path, **plain))
    assert run["autocast"] == "bfloat16" and run["complete"]
    assert np.isfinite(run["final"]["train_loss"]) and 0 <= run["final"]["test_acc"] <= 100


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_fused_optimizer_steps_equal_the_per_parameter_loop(opt):
    import copy

    import timm
    import timm.optim

    assert T._fused(opt) == {"fused": True}
    assert T._fused("lamb") == {}  # timm's own optimizers have no fused step
    torch.manual_seed(0)
    loop = timm.create_model("coc_micro")
    fused = copy.deepcopy(loop)
    opts = [timm.optim.create_optimizer_v2(m, opt=opt, lr=1e-2, weight_decay=0.05, **kw)
            for m, kw in ((loop, {}), (fused, T._fused(opt)))]  # fmt: skip
    assert opts[1].param_groups[0]["fused"] and not opts[0].param_groups[0]["fused"]
    for _ in range(3):
        for a, b in zip(loop.parameters(), fused.parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        for o in opts:
            o.step()
    for a, b in zip(loop.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
