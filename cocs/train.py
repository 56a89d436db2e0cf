"""One training engine for every notebook and for ``python -m cocs.train``.

The configuration is one flat ``TrainConfig``; its field names are the notebook parameters, the
command-line options and the keys of the saved files. ``train(cfg)`` builds the data, the model
(``timm.create_model`` after ``import cocs``, so every registered name works), AdamW with a
cosine schedule and warm-up, and runs epochs that each end by evaluating, appending a row to
``<out_dir>/metrics.csv`` and saving ``<ckpt_dir>/last.pt``. A run that finds ``last.pt`` resumes
from it and ends with the same metrics as an uninterrupted run. With ``epochs=0`` the run gets a
wall-clock budget instead (``budget_minutes``): after the warm-up, and again after every epoch,
the engine measures what an epoch costs and lays the cosine out over as many epochs as fit.

Under ``torchrun --nproc_per_node=N -m cocs.train ...`` the same code trains with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); ``batch_size`` is the global batch, split
evenly over the processes, and only rank 0 writes files.
"""

import argparse
import functools
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import data as D
from .allocator import keep_freed_memory
from .config import (
    POINT_DATASETS,
    REPO_ROOT,
    RUN_ONLY_KEYS,
    SEGMENTATION_DATASETS,
    ConfigError,
    TrainConfig,
    parse_model_kwargs,
    portable_path,
    portable_source,
    recipe,
    resolve_ckpt_dir,
    same_recipe,
)
from .evaluate import _scores, evaluate, mean_iou, predict, test_split
from .fingerprint import model_fingerprint
from .provenance import (
    _save,
    _write_atomic,
    _write_text,
    cpu_has_native_bf16,
    environment_info,
    write_metrics_csv,
)

# The engine's interface; the configuration, provenance and evaluation live in their own
# modules (cocs.config, cocs.provenance, cocs.evaluate) and are importable from here too.
__all__ = [
    "PLAN_MARGIN",
    "POINT_DATASETS",
    "REPO_ROOT",
    "RUN_ONLY_KEYS",
    "SEGMENTATION_DATASETS",
    "ConfigError",
    "DataBundle",
    "TrainConfig",
    "TrainingDiverged",
    "build_data",
    "build_parser",
    "cpu_has_native_bf16",
    "create_model",
    "environment_info",
    "evaluate",
    "field_help",
    "load_trained",
    "main",
    "mean_iou",
    "parse_model_kwargs",
    "plan_epochs",
    "portable_path",
    "portable_source",
    "predict",
    "recipe",
    "resolve_ckpt_dir",
    "same_recipe",
    "seed_everything",
    "segmentation_size",
    "share_initial_weights",
    "train",
    "write_metrics_csv",
]


class TrainingDiverged(FloatingPointError):
    """The training loss stopped being finite. ``metrics.json`` records the epoch (its key
    ``diverged``) before this is raised; ``args[1]`` is that record."""


# --------------------------------------------------------------------------------------------
# Random state
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def create_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """``timm.create_model(cfg.model, ...)`` after registering the cocs variants."""
    import timm

    from .model import unknown_model_message

    if (problem := unknown_model_message(cfg.model)) is not None:
        raise ConfigError(f"model: {problem}")
    return timm.create_model(
        cfg.model,
        num_classes=num_classes,
        drop_path_rate=cfg.drop_path,
        **parse_model_kwargs(cfg.model_kwargs),
    )


def share_initial_weights(model: nn.Module, reference: nn.Module) -> list[str]:
    """Copy every parameter and buffer of ``reference`` whose name and shape ``model`` shares.

    Paired ablations start from the same weights wherever their shapes allow, so that a
    difference between them comes from the change, not from the draw of the initial weights.
    Returns the names of ``model``'s tensors that kept their own initial values.
    """
    ref = reference.state_dict()
    own = []
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name in ref and ref[name].shape == t.shape:
                t.copy_(ref[name])
            else:
                own.append(name)
    return own


@dataclass
class DataBundle:
    """The two splits of a run, ready for ``make_loader``."""

    train: D.AugmentedImages  # or cocs.modelnet.AugmentedPoints
    test: D.AugmentedImages
    classes: list[str]
    mean: tuple[float, float, float] | None  # None: the inputs need no standardisation
    std: tuple[float, float, float] | None
    source: str


def segmentation_size(img_size: int) -> tuple[int, int]:
    """(H, W) of CamVid's 4:3 scenes for ``img_size`` rows, both multiples of 32 (which the
    region partition of every stage divides)."""
    h = 32 * max(1, round(img_size / 32))
    return h, 32 * max(1, round(h * 4 / 3 / 32))


def build_data(cfg: TrainConfig, *, rank: int = 0) -> DataBundle:
    """Load (and on first use decode and cache) both splits of ``cfg.dataset``."""
    if cfg.dataset in SEGMENTATION_DATASETS:
        from .camvid import AugmentedSegmentation, load_camvid

        size = segmentation_size(cfg.img_size)
        common = dict(size=size, data_path=cfg.data_path, download=cfg.download,
                      progress=cfg.progress and rank == 0)  # fmt: skip
        # max_per_class: images kept (first in name order), as segmentation has no classes
        train = load_camvid("train", max_images=cfg.max_per_class, **common)
        test = load_camvid("test", max_images=cfg.max_test_per_class, **common)
        spec = D.get_spec("imagenet")
        return DataBundle(
            train=AugmentedSegmentation(train, train=True, crop=size),
            test=AugmentedSegmentation(test, train=False),
            classes=list(train.classes),
            mean=spec.mean,
            std=spec.std,
            source=train.source,
        )
    if cfg.dataset in POINT_DATASETS:
        from .modelnet import AugmentedPoints, load_modelnet40

        common = dict(data_path=cfg.data_path, download=cfg.download,
                      progress=cfg.progress and rank == 0)  # fmt: skip
        train = load_modelnet40("train", max_per_class=cfg.max_per_class, **common)
        test = load_modelnet40("test", max_per_class=cfg.max_test_per_class, **common)
        return DataBundle(
            train=AugmentedPoints(train, train=True),
            test=AugmentedPoints(test, train=False),
            classes=train.classes,
            mean=None,  # coordinates need no standardisation
            std=None,
            source=train.source,
        )
    spec = D.get_spec(cfg.dataset)
    common = dict(
        img_size=cfg.img_size,
        data_path=cfg.data_path,
        download=cfg.download,
        progress=cfg.progress and rank == 0,
    )
    train = D.load_split(
        cfg.dataset, "train", max_per_class=cfg.max_per_class, max_classes=cfg.max_classes, **common
    )
    test = D.load_split(
        cfg.dataset, "test", max_per_class=cfg.max_test_per_class, classes=train.classes, **common
    )
    return DataBundle(
        train=D.AugmentedImages(
            train,
            D.train_transform(
                cfg.dataset,
                cfg.img_size,
                cfg.randaugment,
                pad=None if cfg.crop_pad == -1 else cfg.crop_pad,
            ),
        ),
        test=D.AugmentedImages(test, D.CenterCrop(cfg.img_size)),
        classes=train.classes,
        mean=spec.mean,
        std=spec.std,
        source=train.source,
    )


def _resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={cfg.device!r} but CUDA is not available here; use device='auto' or 'cpu'."
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def _resolve_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run, None for float32. ``auto`` takes the fastest one this
    device executes natively: bfloat16 on CUDA that supports it (else float16) and on a CPU
    with AVX512-BF16 or AMX; float32 on any other CPU, where bfloat16 would be emulated."""
    if cfg.amp == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            f"amp='bf16' on a CPU without native bfloat16 ({torch.backends.cpu.get_cpu_capability()}"
            "; no AVX512-BF16 or AMX): autocast is emulated and runs several times slower than "
            "float32. amp='off' trains faster here; it is another recipe, so runs made with "
            "bf16 elsewhere are then not reused.",
            stacklevel=3,
        )
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"amp='fp16' needs CUDA, this run is on {device}; use amp='bf16' or 'off'."
        )
    if cfg.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cfg.amp == "bf16" else torch.float16


def _init_distributed() -> tuple[int, int, int, bool]:
    """``(rank, world_size, local_rank, started_here)`` from torchrun's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return rank, world, local_rank, False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return rank, world, local_rank, True


def load_trained(
    path: str | os.PathLike, *, ema: bool = False, device: str = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """A model rebuilt from a checkpoint (``last.pt`` or ``epoch_NNN.pt``), in eval mode, and its config.

    Args:
        path: a checkpoint file, or a ckpt_dir holding ``last.pt``.
        ema: load the EMA weights (the run must have used ``ema > 0``).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    known = {f.name for f in fields(TrainConfig)}
    dropped = sorted(set(ckpt["config"]) - known)
    if dropped:  # written by another version of this module
        warnings.warn(
            f"{path}: ignoring config keys {dropped} that TrainConfig no longer has", stacklevel=2
        )
    cfg = TrainConfig.from_dict({k: v for k, v in ckpt["config"].items() if k in known})
    model = create_model(cfg, num_classes=len(ckpt["classes"]))
    if ema:
        if ckpt.get("ema") is None:
            raise ValueError(
                f"{path} holds no EMA weights (its run had ema=0); call with ema=False."
            )
        state = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    else:
        state = ckpt["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


# Safety factor on the measured cost of an epoch when planning to a time budget: epochs on a
# shared CPU vary by a few per cent from one to the next.
PLAN_MARGIN = 1.05

# With ``save_weights``, a finished run's final weights, in float16 beside its metrics.json.
FINAL_WEIGHTS = "weights.safetensors"


def plan_epochs(
    done: int, spent_seconds: float, epoch_seconds: float, budget_seconds: float
) -> int:
    """The total number of epochs of a run under a time budget, planned after epoch ``done``.

    ``spent_seconds`` is the time of the epochs done so far (the compiling first step included),
    ``epoch_seconds`` the recent cost of one epoch. The epochs that still fit, each counted
    :data:`PLAN_MARGIN` times its cost, are added to ``done`` (never fewer than ``done``).
    The engine plans again after every epoch past the warm-up, laying its cosine out over the
    new total, so that a machine that slows down or speeds up is followed.
    """
    if epoch_seconds <= 0:
        raise ValueError(f"epoch_seconds={epoch_seconds} must be > 0")
    left = budget_seconds - spent_seconds
    return done + max(0, int(left // (PLAN_MARGIN * epoch_seconds)))


def train(
    cfg: TrainConfig | Mapping,
    *,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_step_end: Callable[[nn.Module, int, float], None] | None = None,
) -> dict:
    """Train (or resume, or reload a finished run) and return its summary.

    Args:
        cfg: a ``TrainConfig`` or a mapping of its fields (validated before anything runs).
        on_epoch_end: called with each epoch's metrics row, after the files are written.
        on_step_end: called on rank 0 after every optimizer step with the model (uncompiled,
            unwrapped, in training mode), the number of steps done and the step's loss; for
            diagnostics (it waits for the step to finish, which a GPU would otherwise not).

    Returns a dict: ``config``, ``metrics`` (one dict per epoch), ``final`` (the last row),
    ``final_flip`` (with ``eval_flip``: the last model's test loss and accuracy with flip
    test-time augmentation, else None), ``epochs_done``, ``epochs_planned`` (``epochs``, or
    under a time budget the last plan), ``complete``, ``classes``, ``params``,
    ``autocast`` (the dtype training ran in: "off", "bfloat16" or "float16"), ``out_dir``,
    ``ckpt_path``, ``final_weights`` (with ``save_weights``: the file of the final weights in
    ``out_dir`` and its SHA-256, else None), ``model`` (unwrapped, eval mode) and ``ema_model``
    (or None).
    ``<out_dir>/metrics.json`` holds the same, without the metrics rows and the models, plus the
    environment and the number of unreadable images skipped.
    """
    cfg = TrainConfig.from_dict(cfg)  # validates a TrainConfig too
    rank, world, local_rank, started_here = _init_distributed()
    try:
        return _train(cfg, rank, world, local_rank, on_epoch_end, on_step_end)
    finally:
        if started_here:
            dist.destroy_process_group()


def _loss(cfg: TrainConfig, num_classes: int, ignore: int):
    """The batch mixer (timm's Mixup/CutMix, or None) and the training criterion."""
    import timm.data
    import timm.loss

    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = timm.data.Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
            num_classes=num_classes,
        )
        return mixup, timm.loss.SoftTargetCrossEntropy()
    if ignore >= 0:  # per-pixel targets with a void class
        return None, nn.CrossEntropyLoss(ignore_index=ignore, label_smoothing=cfg.label_smoothing)
    if cfg.label_smoothing > 0:
        return None, timm.loss.LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return None, nn.CrossEntropyLoss()


def _save_checkpoint(ckpt: dict, ckpt_dir: Path, keep_epoch: bool) -> None:
    """``last.pt``, and with ``keep_epoch`` also ``epoch_NNN.pt`` (weights, config, classes)."""
    _save(ckpt, ckpt_dir / "last.pt")
    if keep_epoch:
        _save(
            {k: ckpt[k] for k in ("model", "ema", "epoch", "config", "classes", "env")},
            ckpt_dir / f"epoch_{ckpt['epoch']:03d}.pt",
        )


def _data_in_turn(cfg: TrainConfig, rank: int, world: int) -> DataBundle:
    """The data of every process; rank 0 first, so that extraction and decoding happen once."""
    if rank == 0:
        bundle = build_data(cfg, rank=rank)
    if world > 1:
        dist.barrier()
    if rank != 0:
        bundle = build_data(cfg, rank=rank)
    return bundle


def _initial_model(cfg: TrainConfig, num_classes: int, device) -> tuple[nn.Module, list | None]:
    """The model of seed ``cfg.seed``, the same on every process; with ``shared_init`` it takes
    the default variant's initial weights wherever they fit (the names it kept are returned)."""
    seed_everything(cfg.seed)
    model = create_model(cfg, num_classes=num_classes).to(device)
    own_init = None
    if cfg.shared_init:
        seed_everything(cfg.seed)
        default = create_model(
            TrainConfig.from_dict(asdict(cfg) | {"model_kwargs": ""}), num_classes
        )
        own_init = share_initial_weights(model, default.to(device))
    return model, own_init


def _replan(rows: Sequence[Mapping], budget_minutes: float, world: int, device) -> int:
    """The epochs a budgeted run plans after the epochs in ``rows``: :func:`plan_epochs` from
    the time spent and the last three epochs' steady cost; every process follows rank 0."""
    recent = [r["steady_seconds"] for r in rows[-3:]]
    planned = plan_epochs(
        len(rows),
        sum(r["epoch_seconds"] for r in rows),
        sum(recent) / len(recent),
        60.0 * budget_minutes,
    )
    if world > 1:
        shared = torch.tensor([planned], dtype=torch.int64, device=device)
        dist.broadcast(shared, src=0)
        planned = int(shared.item())
    return max(planned, len(rows))  # the epochs done stay done


def _check_resumable(ckpt: Mapping, cfg: TrainConfig, fingerprint: str, path: Path) -> None:
    """Raise ConfigError when checkpoint ``path`` belongs to another run than ``cfg``."""
    changed = {
        k: (ckpt["config"].get(k), v)
        for k, v in asdict(cfg).items()
        if k not in RUN_ONLY_KEYS and ckpt["config"].get(k, TrainConfig.__dict__.get(k)) != v
    }
    if ckpt.get("fingerprint", fingerprint) != fingerprint:
        changed["model fingerprint"] = (ckpt["fingerprint"], fingerprint)
    if changed:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ConfigError(
            f"{path} belongs to a run with other settings ({listed}); use another ckpt_dir, "
            "delete it, or pass resume=False to start afresh."
        )


def _write_record(out_dir: Path, result: Mapping, env: Mapping, images_skipped: int) -> None:
    """``metrics.csv`` (one row per epoch) and ``metrics.json`` (the result without its rows and
    models, with the environment), both written atomically."""
    if result["metrics"]:
        write_metrics_csv(out_dir / "metrics.csv", result["metrics"])
    meta = {k: v for k, v in result.items() if k != "metrics"}
    meta["environment"] = env
    meta["images_skipped"] = images_skipped
    _write_text(out_dir / "metrics.json", json.dumps(meta, indent=2) + "\n")


@dataclass
class _Learner:
    """What an optimizer step changes and reads: the model, the module the steps call (the
    model, or its DDP/compiled wrapper, which share its weights), the optimizer with its
    scheduler and gradient scaler, the EMA copy, the batch mixer and the criterion."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None
    ema: nn.Module | None
    mixup: Callable | None
    criterion: nn.Module
    net: nn.Module | None = None


# torch's optimizers with a fused step (one kernel over all parameters, on CPUs and GPUs)
_FUSED = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def _fused(opt: str) -> dict:
    """``{"fused": True}`` when timm's optimizer ``opt`` is one of torch's with a fused step.

    The same update as the per-parameter loop that torch otherwise runs on a CPU, up to
    rounding (tests/test_train.py), in one pass over all parameters instead of a loop of small
    operations per parameter.
    """
    import timm.optim

    cls = timm.optim.get_optimizer_class(opt)
    cls = getattr(cls, "func", cls)  # timm binds some options with functools.partial
    return {"fused": True} if isinstance(cls, type) and issubclass(cls, _FUSED) else {}


def _learner(cfg: TrainConfig, model: nn.Module, num_classes: int, ignore: int, amp_dtype,
             total: int, steps_per_epoch: int) -> _Learner:  # fmt: skip
    """The optimizer (timm's, by name), a cosine schedule over ``total`` epochs, the EMA copy
    and the loss of ``cfg`` for ``model``."""
    import timm.optim
    import timm.utils

    ema = timm.utils.ModelEmaV3(model, decay=cfg.ema) if cfg.ema > 0 else None
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **_fused(cfg.opt)
    )
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    mixup, criterion = _loss(cfg, num_classes, ignore)
    learner = _Learner(model, optimizer, None, scaler, ema, mixup, criterion)
    learner.scheduler = _scheduler(cfg, optimizer, total, steps_per_epoch)
    return learner


def _scheduler(cfg: TrainConfig, optimizer, total: int, steps_per_epoch: int):
    """timm's cosine schedule with warm-up over ``total`` epochs (in steps with sched_on_steps)."""
    import timm.scheduler

    t_scale = steps_per_epoch if cfg.sched_on_steps else 1
    return timm.scheduler.CosineLRScheduler(
        optimizer,
        t_initial=total * t_scale,
        lr_min=cfg.min_lr,
        warmup_t=cfg.warmup_epochs * t_scale,
        warmup_lr_init=cfg.warmup_lr,
        t_in_epochs=not cfg.sched_on_steps,
    )


def _restore(ckpt: Mapping, learner: _Learner, cfg: TrainConfig, total: int, steps_per_epoch: int,
             rank: int, world: int, device) -> tuple[int, list[dict], int]:  # fmt: skip
    """Load a checkpoint into the learner; return the epochs it planned, its metrics rows and
    the epoch to continue from. The random state continues where it stopped when the process
    count is the same; otherwise it is reseeded by epoch (the run then differs)."""
    learner.model.load_state_dict(ckpt["model"])
    total = int(ckpt.get("epochs_planned", total))
    # the schedule before the optimizer's state: creating it sets the rates
    learner.scheduler = _scheduler(cfg, learner.optimizer, total, steps_per_epoch)
    learner.optimizer.load_state_dict(ckpt["optimizer"])
    learner.scheduler.load_state_dict(ckpt["scheduler"])
    if learner.ema is not None:
        learner.ema.load_state_dict(ckpt["ema"])
    if learner.scaler is not None and ckpt.get("scaler"):
        learner.scaler.load_state_dict(ckpt["scaler"])
    start_epoch = int(ckpt["epoch"])
    if len(ckpt["rng"]) == world:
        _set_rng_state(ckpt["rng"][rank], device)
    else:  # another process count: randomness cannot continue identically
        seed_everything(cfg.seed + rank + 1000 * start_epoch)
    return total, list(ckpt["metrics"]), start_epoch


def _train_epoch(cfg: TrainConfig, learner: _Learner, bundle: DataBundle, epoch: int, total: int,
                 *, device, amp_dtype, ignore: int, rank: int, world: int,
                 on_step_end, is_main: bool) -> tuple[dict, dict]:  # fmt: skip
    """One pass over the training split: the steps, then the epoch's metrics row (loss and
    accuracy against the unmixed labels; untested) and its timing (start, seconds, images per
    second, and the first step's seconds: the first step of a process compiles)."""
    n_train = len(bundle.train)
    steps_per_epoch = n_train // cfg.batch_size
    model, net, optimizer, scaler = learner.model, learner.net, learner.optimizer, learner.scaler
    if not cfg.sched_on_steps:
        learner.scheduler.step(epoch)
    sampler = D.EpochBatchSampler(
        n_train, cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=rank, world_size=world
    )
    loader = D.make_loader(bundle.train, sampler, cfg.num_workers, pin_memory=device.type == "cuda")
    net.train()
    # loss sum over items, correct, counted targets (items, or non-void pixels), items
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    first_step_seconds = 0.0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total}", leave=False,
               disable=not (cfg.progress and is_main))  # fmt: skip
    for step, (x, y) in enumerate(bar):
        x = D.normalize(x.to(device, non_blocking=True), bundle.mean, bundle.std)
        y = y.to(device, non_blocking=True)
        target = y
        if learner.mixup is not None:
            x, target = learner.mixup(x, y)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = net(x)
            loss = learner.criterion(logits, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        num_updates = epoch * steps_per_epoch + step + 1
        if cfg.sched_on_steps:
            learner.scheduler.step_update(num_updates)
        if learner.ema is not None:
            learner.ema.update(model, step=num_updates)
        if on_step_end is not None and is_main:
            on_step_end(model, num_updates, loss.item())
        correct, counted = _scores(logits.detach(), y, ignore)
        totals += torch.stack([loss.detach().double() * len(y), correct, counted,
                               torch.tensor(len(y), device=device)]).double()  # fmt: skip
        if cfg.progress and is_main and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step == 0:
            first_step_seconds = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = time.perf_counter() - t0
    if world > 1:
        dist.all_reduce(totals)
    train_loss, train_correct, counted, seen = totals.tolist()
    row = {
        "epoch": epoch + 1,
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": train_loss / seen,
        "train_acc": 100.0 * train_correct / counted,  # against the unmixed labels
        "test_loss": math.nan,  # until tested
        "test_acc": math.nan,
    }
    timing = {"started": t0, "train_seconds": train_seconds,
              "first_step_seconds": first_step_seconds, "images_per_s": seen / train_seconds}  # fmt: skip
    return row, timing


def _checkpoint(learner: _Learner, cfg: TrainConfig, *, epoch: int, total: int, rows: list,
                fingerprint: str, classes, env: Mapping, device, world: int) -> dict:  # fmt: skip
    """Everything a resumed run needs to continue exactly: weights, optimizer, schedule, EMA,
    scaler, every process's random state, the rows so far."""
    states = [_rng_state(device)]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, _rng_state(device))
    return {
        "model": learner.model.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "ema": learner.ema.state_dict() if learner.ema is not None else None,
        "scaler": learner.scaler.state_dict() if learner.scaler is not None else None,
        "epoch": epoch,
        "epochs_planned": total,
        "rng": states,
        "config": asdict(cfg),
        "fingerprint": fingerprint,
        "metrics": rows,
        "classes": classes,
        "env": env,
    }


def _train(
    cfg: TrainConfig, rank: int, world: int, local_rank: int, on_epoch_end, on_step_end
) -> dict:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = _resolve_device(cfg, local_rank)
    if device.type == "cpu":  # large tensors reuse freed memory (cocs.allocator)
        keep_freed_memory()
    amp_dtype = _resolve_amp(cfg, device)
    if cfg.batch_size % world:
        raise ConfigError(
            f"batch_size={cfg.batch_size} must be divisible by the {world} processes."
        )
    out_dir, ckpt_dir = Path(cfg.out_dir), resolve_ckpt_dir(cfg)
    last_path = ckpt_dir / "last.pt"
    is_main = rank == 0

    bundle = _data_in_turn(cfg, rank, world)
    n_train = len(bundle.train)
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the training set ({n_train} images); lower batch_size."
        )
    model, own_init = _initial_model(cfg, len(bundle.classes), device)
    fingerprint = model_fingerprint(model)
    seed_everything(cfg.seed + rank)
    ignore = SEGMENTATION_DATASETS.get(cfg.dataset, -100)  # a target class that counts nowhere
    # Under a time budget the total is planned after the warm-up (see plan_epochs); until then a
    # provisional one, which changes no learning rate: warm-up rates do not depend on the total.
    budgeted = cfg.epochs == 0
    total = cfg.warmup_epochs + 1 if budgeted else cfg.epochs
    learner = _learner(cfg, model, len(bundle.classes), ignore, amp_dtype, total, steps_per_epoch)

    rows: list[dict] = []
    start_epoch = 0
    env = environment_info(device)
    if cfg.resume and last_path.is_file():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        _check_resumable(ckpt, cfg, fingerprint, last_path)
        total, rows, start_epoch = _restore(
            ckpt, learner, cfg, total, steps_per_epoch, rank, world, device
        )
        if start_epoch >= total:  # finished: its record keeps the machine it trained on
            env = ckpt.get("env", env)
    learner.net = model
    if world > 1:
        learner.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.torch_compile:  # training steps only; weights are shared, checkpoints stay uncompiled
        # dynamic=False: the last, smaller batch gets its own graph; otherwise the compiler
        # switches to a shape-generic graph that is slower for the full batches too
        learner.net = torch.compile(learner.net, dynamic=False)

    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
    # test(into, prefix, which, flip=False): the whole test split, all processes together
    test = functools.partial(test_split, bundle=bundle, batch=eval_bs, rank=rank, world=world,
                             num_workers=cfg.num_workers, device=device, amp_dtype=amp_dtype,
                             ignore_index=ignore)  # fmt: skip

    def test_all(row: dict) -> None:
        test(row, "test_", model)
        if learner.ema is not None:
            test(row, "ema_test_", learner.ema.module)

    epochs_run, epoch = 0, start_epoch
    diverged = None  # the epoch whose training loss was not finite, if any
    while epoch < total:
        if cfg.stop_after_epochs and epochs_run >= cfg.stop_after_epochs:
            break
        row, timing = _train_epoch(cfg, learner, bundle, epoch, total, device=device,
                                   amp_dtype=amp_dtype, ignore=ignore, rank=rank, world=world,
                                   on_step_end=on_step_end, is_main=is_main)  # fmt: skip
        if not math.isfinite(row["train_loss"]):  # recorded in metrics.json, then raised below
            diverged = {"epoch": epoch + 1, "train_loss": str(row["train_loss"])}
            break
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 >= total:
            test_all(row)
        row["train_seconds"] = timing["train_seconds"]
        row["epoch_seconds"] = time.perf_counter() - timing["started"]
        row["images_per_s"] = timing["images_per_s"]
        if budgeted:
            # the epoch's cost with its first step counted as an ordinary one
            first_step_seconds = timing["first_step_seconds"]
            ordinary = (
                (row["train_seconds"] - first_step_seconds) / (steps_per_epoch - 1)
                if steps_per_epoch > 1
                else first_step_seconds
            )
            row["steady_seconds"] = row["epoch_seconds"] - first_step_seconds + ordinary
            if epoch + 1 >= cfg.warmup_epochs:
                planned = _replan([*rows, row], cfg.budget_minutes, world, device)
                if planned != total:
                    total = planned
                    learner.scheduler = _scheduler(cfg, learner.optimizer, total, steps_per_epoch)
                    if cfg.sched_on_steps:
                        learner.scheduler.step_update((epoch + 1) * steps_per_epoch)
                    row["lr"] = learner.optimizer.param_groups[0]["lr"]
            row["epochs_planned"] = total
        rows.append(row)
        epochs_run += 1
        epoch += 1
        ckpt = _checkpoint(learner, cfg, epoch=epoch, total=total, rows=rows,
                           fingerprint=fingerprint, classes=bundle.classes, env=env,
                           device=device, world=world)  # fmt: skip
        if is_main:
            _save_checkpoint(ckpt, ckpt_dir, cfg.keep_epoch_ckpts)
            write_metrics_csv(out_dir / "metrics.csv", rows)
            if cfg.progress:
                tqdm.write(_describe(row, total))
        if on_epoch_end is not None:
            on_epoch_end(dict(row))

    if diverged is None and rows and math.isnan(rows[-1]["test_acc"]):  # ended untested
        test_all(rows[-1])
    final_flip = None
    if cfg.eval_flip and rows and diverged is None:  # the finished (or stopped) model
        final_flip = {"epoch": len(rows)}
        test(final_flip, "test_", model, flip=True)
    complete = diverged is None and len(rows) >= total
    result = {
        "config": asdict(cfg),
        "fingerprint": fingerprint,
        "recipe": recipe(cfg),
        "own_initial_weights": own_init,
        "metrics": rows,
        "final": rows[-1] if rows else None,
        "final_flip": final_flip,
        "epochs_done": len(rows),
        "epoch_minutes": sum(r["epoch_seconds"] for r in rows) / 60,  # compiling included
        "epochs_planned": total,
        "complete": complete,
        "diverged": diverged,
        "classes": bundle.classes,
        "params": sum(p.numel() for p in model.parameters()),
        "train_images": n_train,
        "test_images": len(bundle.test),
        "data_source": portable_source(bundle.source),
        "autocast": {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(amp_dtype, "off"),
        "environment": env,
        "world_size": world,
        "out_dir": portable_path(out_dir),
        "ckpt_path": portable_path(last_path),
        "final_weights": None,
    }
    for key in ("out_dir", "ckpt_dir", "data_path"):
        result["config"][key] = portable_path(result["config"][key])
    if world > 1:
        result["rank_weight_max_diff"] = _max_weight_diff(model)
    if is_main:
        if complete:
            _write_outcomes(result, cfg, model, bundle, out_dir, device, amp_dtype, eval_bs, ignore)
        skipped = sum(len(getattr(p.data, "skipped", ())) for p in (bundle.train, bundle.test))
        _write_record(out_dir, result, env, skipped)
    if diverged is not None:
        raise TrainingDiverged(
            f"{cfg.model} ({cfg.model_kwargs or 'default'}), seed {cfg.seed}: the training loss "
            f"became {diverged['train_loss']} in epoch {diverged['epoch']}; recorded in "
            f"{out_dir / 'metrics.json'}. Lower lr (now {cfg.lr}) or train with amp='off'.",
            diverged,
        )
    result["model"] = model.eval()
    result["ema_model"] = learner.ema.module.eval() if learner.ema is not None else None
    return result


def _write_outcomes(result: dict, cfg: TrainConfig, model: nn.Module, bundle: DataBundle,
                    out_dir: Path, device, amp_dtype, eval_bs: int, ignore: int) -> None:  # fmt: skip
    """A finished run's files beside its record: the test predictions (``save_predictions``)
    and the final weights in float16 with their SHA-256 (``save_weights``, in the result)."""
    if cfg.save_predictions:
        outcomes = predict(
            model, bundle, device=device, amp_dtype=amp_dtype, batch=eval_bs, ignore_index=ignore
        )

        def write(tmp: str) -> None:  # a file object: np.savez would append ".npz" to a name
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **outcomes)

        _write_atomic(out_dir / "predictions.npz", write)
    if cfg.save_weights:  # beside the results: a later execution that finds them reuses the run
        from .weights import save_float16

        result["final_weights"] = {"file": FINAL_WEIGHTS, "dtype": "float16",
                                   "sha256": save_float16(model, out_dir / FINAL_WEIGHTS)}  # fmt: skip


def _max_weight_diff(model: nn.Module) -> float:
    """Largest absolute difference between this process's parameters and rank 0's."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return diff.item()


def _describe(row: Mapping, epochs: int) -> str:
    text = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%  "
        f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}%"
    )
    if "ema_test_acc" in row:
        text += f"  ema acc {row['ema_test_acc']:.2f}%"
    return text + f"  {row['epoch_seconds']:.1f}s  {row['images_per_s']:.0f} img/s"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def field_help() -> dict[str, str]:
    """Each ``TrainConfig`` field's description: the comment beside it in the source, the one
    place where a setting is explained."""
    import inspect

    src = inspect.getsource(TrainConfig)
    out = {}
    for f in fields(TrainConfig):
        m = re.search(rf"^\s+{f.name}: \w+ = [^#\n]*#\s*(.+)$", src, re.M)
        out[f.name] = m.group(1).strip() if m else ""
    return out


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one ``--name`` option per ``TrainConfig`` field, each with its
    description and default."""
    parser = argparse.ArgumentParser(
        prog="python -m cocs.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    described = field_help()
    for f in fields(TrainConfig):
        kind = _parse_bool if f.type is bool else f.type
        parser.add_argument(
            f"--{f.name}",
            type=kind,
            default=f.default,
            metavar=f.type.__name__.upper(),
            help=described[f.name].replace("%", "%%"),
        )
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m cocs.train --model coc_cifar --epochs 30 ...``; prints the final metrics."""
    args = build_parser().parse_args(argv)
    try:
        cfg = TrainConfig.from_dict(vars(args))
    except ConfigError as err:
        sys.exit(f"error: {err}")
    try:
        result = train(cfg)
    except (ConfigError, D.DataError) as err:
        sys.exit(f"error: {err}")
    if int(os.environ.get("RANK", "0")) == 0 and result["final"] is not None:
        flip = result["final_flip"]
        extra = {"test_acc_flip": flip["test_acc"]} if flip else {}
        print(json.dumps({"out_dir": result["out_dir"], **result["final"], **extra}))
    return result


if __name__ == "__main__":
    main()
