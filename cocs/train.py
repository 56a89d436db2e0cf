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
import ast
import csv
import difflib
import io
import json
import math
import numbers
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
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
from .fingerprint import model_fingerprint

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; raised before any training starts."""


class TrainingDiverged(FloatingPointError):
    """The training loss stopped being finite. ``metrics.json`` records the epoch (its key
    ``diverged``) before this is raised; ``args[1]`` is that record."""


@dataclass
class TrainConfig:
    """Every setting of a training run, flat. Defaults are the documented CIFAR-10 run."""

    # model
    model: str = "coc_cifar"  # any timm name; `import cocs` registers coc_*
    model_kwargs: str = ""  # extra create_model arguments: "k=v,k=v" (Python literals) or JSON
    shared_init: bool = False  # copy the seed's initial weights of `model` without model_kwargs
    drop_path: float = 0.1  # stochastic depth rate
    # data
    dataset: str = "cifar10"  # cifar10, cifar100, imagenette, imagenet, folder, modelnet40, camvid
    data_path: str = ""  # data location; empty: COCS_DATA_<NAME>, cache, archives, download
    download: bool = True  # allow downloading the data set as the last resort
    img_size: int = 32  # side of the images the model sees (camvid: rows, 4:3 scenes)
    max_per_class: int = 0  # training images kept per class (first in file order); 0: all
    max_test_per_class: int = 0  # evaluation images kept per class; 0: all
    max_classes: int = 0  # classes kept (first in sorted order); 0: all
    crop_pad: int = -1  # pad-and-crop margin (CIFAR) in pixels; -1: img_size // 8; 0: flips only
    randaugment: str = ""  # timm RandAugment string such as "rand-m9-mstd0.5-inc1"; empty: off
    mixup: float = 0.0  # Mixup alpha; 0: off
    cutmix: float = 0.0  # CutMix alpha; 0: off
    label_smoothing: float = 0.1  # weight of the uniform distribution in the target
    # optimisation
    epochs: int = 30  # 0: as many as fit into budget_minutes (see plan_epochs)
    budget_minutes: float = 0.0  # with epochs=0: wall-clock minutes of training and evaluation
    batch_size: int = 128  # global batch, over all processes
    eval_batch_size: int = 0  # 0: 2 * batch_size
    eval_flip: bool = False  # also test the finished model on each image and its mirror
    eval_every: int = 1  # test after every k-th epoch (and always after the last)
    opt: str = "adamw"  # a timm optimizer name
    lr: float = 2e-3  # peak learning rate (not rescaled with the batch size)
    min_lr: float = 1e-5  # learning rate at the end of the cosine
    warmup_epochs: int = 2  # linear warm-up from warmup_lr to lr (may exceed epochs in smoke runs)
    warmup_lr: float = 1e-6  # learning rate of the first warm-up step
    weight_decay: float = 0.05  # not applied to norms, biases and other 1-d parameters
    sched_on_steps: bool = True  # update the learning rate every step (else every epoch)
    clip_grad: float = 0.0  # max gradient norm; 0: off
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0: off
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU), bf16, fp16 or off
    torch_compile: bool = False  # torch.compile the model for training steps (slow first steps)
    # run
    seed: int = 0  # initial weights, data order and augmentation
    device: str = "auto"  # auto (CUDA if present), cpu, cuda, cuda:N
    num_workers: int = 0  # DataLoader worker processes
    num_threads: int = 0  # torch CPU threads; 0: leave torch's default
    out_dir: str = "results/train"  # metrics.csv and metrics.json
    ckpt_dir: str = ""  # last.pt; empty: out_dir with its "results" component -> "checkpoints"
    resume: bool = True  # continue from ckpt_dir/last.pt when it exists
    keep_epoch_ckpts: bool = False  # also keep epoch_NNN.pt (weights only) for later analysis
    save_predictions: bool = False  # write each test image's label and prediction (.npz)
    stop_after_epochs: int = 0  # stop this call after so many epochs (resume later); 0: run all
    progress: bool = True  # progress bars

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        """A validated config from a mapping; unknown keys and wrong types raise ``ConfigError``."""
        if isinstance(d, TrainConfig):
            d = asdict(d)
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for key, value in d.items():
            if key not in types:
                close = difflib.get_close_matches(str(key), types, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"unknown config key {key!r}.{hint} Known keys: {', '.join(types)}. "
                    "Rename or remove it."
                )
            values[key] = _check_type(key, value, types[key])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_namespace(cls, namespace: Mapping, **overrides) -> "TrainConfig":
        """A validated config from the config keys of a namespace (a notebook's ``globals()``).

        Names that are not config keys are ignored, so a notebook's ``parameters`` cell stays
        the one place where its run is defined; ``overrides`` win over the namespace.
        """
        names = {f.name for f in fields(cls)}
        return cls.from_dict({k: v for k, v in namespace.items() if k in names} | overrides)

    def validate(self) -> None:
        """Check values (types and ranges) without touching data or models; raise ``ConfigError``."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        rules = [
            ("epochs", self.epochs >= 0, "an int >= 1, or 0 to plan them from budget_minutes"),
            ("budget_minutes", self.budget_minutes >= 0, "a float >= 0 (minutes; 0: off)"),
            ("batch_size", self.batch_size >= 1, "an int >= 1"),
            ("eval_batch_size", self.eval_batch_size >= 0, "an int >= 0 (0: 2 * batch_size)"),
            ("img_size", self.img_size >= 1, "an int >= 1"),
            ("lr", self.lr > 0, "a float > 0"),
            ("min_lr", self.min_lr >= 0, "a float >= 0"),
            ("warmup_lr", self.warmup_lr >= 0, "a float >= 0"),
            ("weight_decay", self.weight_decay >= 0, "a float >= 0"),
            (
                "warmup_epochs",
                self.warmup_epochs >= 0,
                "an int >= 0 (a warm-up longer than the run never reaches lr)",
            ),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "a float in [0, 1)"),
            ("drop_path", 0 <= self.drop_path < 1, "a float in [0, 1)"),
            ("mixup", self.mixup >= 0, "a float >= 0 (0: off)"),
            ("cutmix", self.cutmix >= 0, "a float >= 0 (0: off)"),
            (
                "ema",
                self.ema == 0 or 0 < self.ema < 1,
                "0 (off) or a decay in (0, 1) such as 0.9998",
            ),
            ("clip_grad", self.clip_grad >= 0, "a float >= 0 (0: off)"),
            ("amp", self.amp in ("auto", "bf16", "fp16", "off"), "one of auto, bf16, fp16, off"),
            (
                "device",
                self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
                "auto, cpu, cuda, cuda:N or mps",
            ),
            (
                "dataset",
                self.dataset in (*D.DATASETS, *POINT_DATASETS, *SEGMENTATION_DATASETS),
                f"one of {sorted([*D.DATASETS, *POINT_DATASETS, *SEGMENTATION_DATASETS])}",
            ),
            ("max_per_class", self.max_per_class >= 0, "an int >= 0 (0: all)"),
            ("max_test_per_class", self.max_test_per_class >= 0, "an int >= 0 (0: all)"),
            ("max_classes", self.max_classes >= 0, "an int >= 0 (0: all)"),
            ("crop_pad", self.crop_pad >= -1, "an int >= 0, or -1 for img_size // 8"),
            ("num_workers", self.num_workers >= 0, "an int >= 0"),
            ("eval_every", self.eval_every >= 1, "an int >= 1 (1: after every epoch)"),
            ("num_threads", self.num_threads >= 0, "an int >= 0 (0: torch's default)"),
            ("stop_after_epochs", self.stop_after_epochs >= 0, "an int >= 0 (0: run all epochs)"),
            (
                "randaugment",
                self.randaugment == "" or self.randaugment.startswith("rand"),
                "empty (off) or a timm RandAugment string such as 'rand-m9-mstd0.5-inc1'",
            ),
            ("out_dir", self.out_dir != "", "a folder path"),
        ]
        for key, ok, expected in rules:
            if not ok:
                raise ConfigError(
                    f"{key}={getattr(self, key)!r} is not valid; expected {expected}."
                )
        if self.epochs == 0 and self.budget_minutes == 0:
            raise ConfigError(
                "epochs=0 plans the epochs from a time budget, but budget_minutes is 0; "
                "set epochs >= 1 or budget_minutes > 0."
            )
        if self.epochs > 0 and self.budget_minutes > 0:
            raise ConfigError(
                f"budget_minutes={self.budget_minutes} applies only with epochs=0 (now "
                f"{self.epochs}); set one of them to 0."
            )
        if self.epochs == 0 and self.warmup_epochs == 0:
            raise ConfigError(
                "epochs=0 needs warmup_epochs >= 1: the epochs are planned after the warm-up, "
                "whose learning rates do not depend on the total; set warmup_epochs=1."
            )
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ConfigError(
                f"batch_size={self.batch_size} must be even with mixup/cutmix; use an even batch."
            )
        if self.dataset in POINT_DATASETS or self.dataset in SEGMENTATION_DATASETS:
            if self.randaugment or self.mixup or self.cutmix or self.crop_pad != -1:
                what = "point clouds" if self.dataset in POINT_DATASETS else "per-pixel classes"
                raise ConfigError(
                    f"dataset={self.dataset!r} holds {what}: randaugment, mixup, cutmix and "
                    "crop_pad apply to image classification; leave them at their defaults"
                )
        elif self.crop_pad != -1 and D.get_spec(self.dataset).train_crop != "pad":
            raise ConfigError(
                f"crop_pad={self.crop_pad} applies to pad-and-crop data sets (cifar10, cifar100); "
                f"{self.dataset} uses a random resized crop: leave crop_pad at -1."
            )
        parse_model_kwargs(self.model_kwargs)


def _check_type(key: str, value, expected: type):
    """``value`` as ``expected`` (int, float, bool or str), or a ``ConfigError`` naming the key."""
    ok = {
        bool: isinstance(value, bool | np.bool_),
        int: isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_),
        float: isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_),
        str: isinstance(value, str),
    }[expected]
    if not ok:
        example = {bool: "True or False", int: "3", float: "0.001", str: "'text'"}[expected]
        raise ConfigError(
            f"{key}={value!r} has type {type(value).__name__}; expected {expected.__name__} (e.g. {key}={example})."
        )
    return expected(value)


def parse_model_kwargs(text: str) -> dict:
    """``"a=1,b=(2, 3),c=name"`` or a JSON object -> keyword arguments for ``timm.create_model``."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"model_kwargs={text!r} is not valid JSON ({err}).") from err
        if not isinstance(out, dict):
            raise ConfigError(f"model_kwargs={text!r} must be a JSON object.")
        return out
    out = {}
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(text):  # split on commas outside brackets
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for part in parts:
        key, sep, raw = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(
                f"model_kwargs={text!r}: {part.strip()!r} is not key=value; write e.g. 'fold=2,heads=(4, 8)'."
            )
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()  # a bare word is a string
    return out


def resolve_ckpt_dir(cfg: TrainConfig) -> Path:
    """``ckpt_dir``, or ``out_dir`` with its last "results" component replaced by "checkpoints"."""
    if cfg.ckpt_dir:
        return Path(cfg.ckpt_dir)
    parts = list(Path(cfg.out_dir).parts)
    if "results" in parts:
        i = len(parts) - 1 - parts[::-1].index("results")
        parts[i] = "checkpoints"
        return Path(*parts)
    return Path(cfg.out_dir) / "checkpoints"


# Keys that may differ between the run that wrote a checkpoint and the run resuming it.
RUN_ONLY_KEYS = frozenset(
    {
        "out_dir",
        "ckpt_dir",
        "resume",
        "keep_epoch_ckpts",
        "stop_after_epochs",
        "num_workers",
        "num_threads",
        "progress",
        "eval_flip",
        "torch_compile",
        "device",
        "download",
        "data_path",
        "save_predictions",
        "eval_every",
    }
)


def recipe(cfg: "TrainConfig | Mapping") -> dict:
    """What a run trained with, beside the model: the config without the model's name and
    arguments (the model fingerprint covers them) and without the keys that say only where and
    how visibly it ran (:data:`RUN_ONLY_KEYS`). Two runs with equal recipes and fingerprints
    trained the same model the same way."""
    d = asdict(cfg) if isinstance(cfg, TrainConfig) else dict(cfg)
    return {k: v for k, v in d.items() if k not in RUN_ONLY_KEYS | {"model", "model_kwargs"}}


def same_recipe(recorded: Mapping, cfg: "TrainConfig") -> bool:
    """Whether a recorded :func:`recipe` is that of ``cfg``. A key the record lacks (a setting
    added since) counts as its default; a key only the record has (one removed since) is
    ignored, so that adding a setting does not make every committed run stale."""
    defaults = asdict(TrainConfig())
    return all(recorded.get(k, defaults[k]) == v for k, v in recipe(cfg).items())


def portable_source(text: str) -> str:
    """A data set's source description with every absolute path cut to its last component
    ("cache folder /home/me/cocs/data" -> "cache folder data")."""
    return re.sub(r"(?<!\S)/\S*", lambda m: Path(m.group(0)).name, text)


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository when it lies inside it, so that committed files
    name no folder of the machine that wrote them; other paths are kept as given."""
    if not str(path):
        return ""
    p = Path(path)
    try:
        return p.resolve().relative_to(REPO_ROOT).as_posix() if p.is_absolute() else p.as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: torch.device | str | None = None) -> dict:
    """Git commit, library versions and hardware, for every metrics file and checkpoint."""
    import timm
    import torchvision

    status = _git("status", "--porcelain", "--untracked-files=no")
    info = {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
            "timm": str(timm.__version__),
            "numpy": str(np.__version__),
        },
        "hardware": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512, ...
            "cpu_bf16": cpu_has_native_bf16(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "device": str(device) if device is not None else None,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        },
    }
    return info


# --------------------------------------------------------------------------------------------
# Files, written atomically
# --------------------------------------------------------------------------------------------


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_metrics_csv(path: Path, rows: Sequence[Mapping]) -> None:
    """Rewrite ``metrics.csv`` atomically: one row per epoch."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(path, buf.getvalue())


def _save(obj, path: Path) -> None:
    _write_atomic(path, lambda tmp: torch.save(obj, tmp))


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


# Data sets of point clouds: (B, N, 3) coordinates in, classes out (cocs.modelnet).
POINT_DATASETS = ("modelnet40",)
# Data sets of per-pixel classes, with the class id that counts nowhere (void).
SEGMENTATION_DATASETS = {"camvid": 11}


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX). Elsewhere bfloat16
    autocast is emulated: on an AVX2-only CPU a coc_cifar training step took 8x as long as in
    float32 (eager and compiled alike)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _resolve_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
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


def evaluate(
    model: nn.Module,
    loader,
    *,
    device: torch.device,
    mean,
    std,
    amp_dtype: torch.dtype | None = None,
    flip: bool = False,
    ignore_index: int = -100,
    confusion: torch.Tensor | None = None,
) -> tuple[float, float, int]:
    """Mean cross-entropy, top-1 accuracy (%) and count over a loader (summed over processes).

    Targets may be one class per item (B,) or per pixel (B, H, W) against logits (B, C, H, W);
    targets equal to ``ignore_index`` count nowhere (segmentation's void). ``confusion``, a
    (C, C) tensor, is added the counts of (target, prediction) pairs, for mean IoU.
    ``flip=True`` is test-time augmentation by horizontal flips: the model sees each image and
    its mirror (whose per-pixel predictions are mirrored back), and the two predicted class
    distributions are averaged.
    """
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    with torch.no_grad():
        for x, y in loader:
            x, y = (
                D.normalize(x.to(device, non_blocking=True), mean, std),
                y.to(device, non_blocking=True),
            )
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
                mirrored = model(x.flip(3)) if flip else None
            log_p = logits.float().log_softmax(1)  # (B, classes) or (B, classes, H, W)
            if flip:  # the log of the mean of the two distributions
                mirrored = mirrored.flip(3) if mirrored.dim() == 4 else mirrored
                log_p = torch.logaddexp(log_p, mirrored.float().log_softmax(1)) - math.log(2)
            totals[0] += nn.functional.nll_loss(
                log_p, y, reduction="sum", ignore_index=ignore_index
            ).double()
            correct, count = _scores(log_p, y, ignore_index, confusion)
            totals[1] += correct
            totals[2] += count
    if dist.is_initialized():
        dist.all_reduce(totals)
        if confusion is not None:
            dist.all_reduce(confusion)
    loss, correct, n = totals.tolist()
    return loss / n, 100.0 * correct / n, int(n)


def _scores(logits: torch.Tensor, y: torch.Tensor, ignore_index: int, confusion=None):
    """Correct predictions and counted targets of a batch (targets at ``ignore_index`` left
    out), and the (target, prediction) counts added to ``confusion`` when given."""
    pred = logits.argmax(1)
    valid = y != ignore_index
    if confusion is not None:
        C = confusion.shape[0]
        pairs = y[valid] * C + pred[valid]
        confusion += torch.bincount(pairs, minlength=C * C).view(C, C).to(confusion.dtype)
    return ((pred == y) & valid).sum(), valid.sum()


def mean_iou(confusion: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean intersection over union (%) and each class's IoU from a (C, C) confusion matrix of
    (target, prediction) counts; classes that occur in neither count as NaN and are left out."""
    c = confusion.double()
    inter, union = c.diag(), c.sum(0) + c.sum(1) - c.diag()
    iou = torch.where(union > 0, 100.0 * inter / union.clamp_min(1), torch.nan)
    return float(iou.nanmean()), iou


def predict(
    model: nn.Module,
    bundle: DataBundle,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch: int = 256,
    ignore_index: int = -100,
) -> dict[str, np.ndarray]:
    """Every test item's outcome, in the test split's order.

    Paired comparisons of two models on one test set (``cocs.stats``) need the per-item
    outcomes, not only the accuracies. For classification: ``label`` and ``pred``, int16
    arrays of length ``len(bundle.test)``; for segmentation (``ignore_index`` >= 0): each
    image's confusion matrix of (target, prediction) pixel counts, ``confusion`` (N, C, C).
    """
    model.eval()
    labels, preds, confusions = [], [], []
    C = len(bundle.classes)
    sampler = D.EpochBatchSampler(len(bundle.test), batch, shuffle=False, drop_last=False)
    with torch.no_grad():
        for x, y in D.make_loader(bundle.test, sampler, 0):
            x = D.normalize(x.to(device), bundle.mean, bundle.std)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = model(x).float().argmax(1).cpu()
            if ignore_index < 0:
                preds.append(pred)
                labels.append(y)
                continue
            for p_i, y_i in zip(pred, y, strict=True):  # (H, W) each
                valid = y_i != ignore_index
                pairs = y_i[valid] * C + p_i[valid]
                confusions.append(torch.bincount(pairs, minlength=C * C).view(C, C))
    if ignore_index >= 0:
        return {"confusion": torch.stack(confusions).numpy().astype(np.int32)}
    return {
        "label": torch.cat(labels).numpy().astype(np.int16),
        "pred": torch.cat(preds).numpy().astype(np.int16),
    }


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
    ``ckpt_path``, ``model`` (unwrapped, eval mode) and ``ema_model`` (or None).
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


def _train(
    cfg: TrainConfig, rank: int, world: int, local_rank: int, on_epoch_end, on_step_end
) -> dict:
    import timm.data
    import timm.loss
    import timm.optim
    import timm.scheduler
    import timm.utils

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = _resolve_device(cfg, local_rank)
    amp_dtype = _resolve_amp(cfg, device)
    if cfg.batch_size % world:
        raise ConfigError(
            f"batch_size={cfg.batch_size} must be divisible by the {world} processes."
        )
    out_dir, ckpt_dir = Path(cfg.out_dir), resolve_ckpt_dir(cfg)
    last_path = ckpt_dir / "last.pt"
    is_main = rank == 0

    # Data: rank 0 first, so that extraction and decoding happen once.
    if is_main:
        bundle = build_data(cfg, rank=rank)
    if world > 1:
        dist.barrier()
    if not is_main:
        bundle = build_data(cfg, rank=rank)
    n_train = len(bundle.train)
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the training set ({n_train} images); lower batch_size."
        )

    # Model, identical on every rank; then per-rank randomness (drop path) from seed + rank.
    seed_everything(cfg.seed)
    model = create_model(cfg, num_classes=len(bundle.classes)).to(device)
    own_init = None
    if cfg.shared_init:  # the default variant's initial weights of this seed, where they fit
        seed_everything(cfg.seed)
        default = create_model(
            TrainConfig.from_dict(asdict(cfg) | {"model_kwargs": ""}), len(bundle.classes)
        )
        own_init = share_initial_weights(model, default.to(device))
        del default
    fingerprint = model_fingerprint(model)
    seed_everything(cfg.seed + rank)
    n_params = sum(p.numel() for p in model.parameters())
    ema = timm.utils.ModelEmaV3(model, decay=cfg.ema) if cfg.ema > 0 else None
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    t_scale = steps_per_epoch if cfg.sched_on_steps else 1

    def make_scheduler(total: int) -> timm.scheduler.CosineLRScheduler:
        return timm.scheduler.CosineLRScheduler(
            optimizer,
            t_initial=total * t_scale,
            lr_min=cfg.min_lr,
            warmup_t=cfg.warmup_epochs * t_scale,
            warmup_lr_init=cfg.warmup_lr,
            t_in_epochs=not cfg.sched_on_steps,
        )

    # Under a time budget the total is planned after the warm-up (see plan_epochs); until then a
    # provisional one, which changes no learning rate: warm-up rates do not depend on the total.
    budgeted = cfg.epochs == 0
    total = cfg.warmup_epochs + 1 if budgeted else cfg.epochs
    scheduler = make_scheduler(total)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ignore = SEGMENTATION_DATASETS.get(cfg.dataset, -100)  # a target class that counts nowhere
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = timm.data.Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
            num_classes=len(bundle.classes),
        )
        criterion = timm.loss.SoftTargetCrossEntropy()
    elif ignore >= 0:  # per-pixel targets with a void class
        criterion = nn.CrossEntropyLoss(ignore_index=ignore, label_smoothing=cfg.label_smoothing)
    elif cfg.label_smoothing > 0:
        criterion = timm.loss.LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    rows: list[dict] = []
    start_epoch = 0
    env = environment_info(device)
    if cfg.resume and last_path.is_file():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
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
                f"{last_path} belongs to a run with other settings ({listed}); use another ckpt_dir, "
                "delete it, or pass resume=False to start afresh."
            )
        model.load_state_dict(ckpt["model"])
        total = int(ckpt.get("epochs_planned", total))
        scheduler = make_scheduler(total)  # before the optimizer's state: it sets the rates
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        rows, start_epoch = list(ckpt["metrics"]), int(ckpt["epoch"])
        states = ckpt["rng"]
        if len(states) == world:
            _set_rng_state(states[rank], device)
        else:  # another process count: randomness cannot continue identically
            seed_everything(cfg.seed + rank + 1000 * start_epoch)
        if start_epoch >= total:
            env = ckpt.get("env", env)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.torch_compile:  # training steps only; weights are shared, checkpoints stay uncompiled
        # dynamic=False: the last, smaller batch gets its own graph; otherwise the compiler
        # switches to a shape-generic graph that is slower for the full batches too
        net = torch.compile(net, dynamic=False)

    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
    pin = device.type == "cuda"

    def test(into: dict, prefix: str, which: nn.Module, flip: bool = False) -> None:
        """Test loss and accuracy of ``which`` over the whole test split (all processes),
        written into ``into`` as ``<prefix>loss``, ``<prefix>acc`` (and ``<prefix>miou``)."""
        sampler = D.EpochBatchSampler(
            len(bundle.test), eval_bs, shuffle=False, drop_last=False, rank=rank, world_size=world
        )
        loader = D.make_loader(bundle.test, sampler, cfg.num_workers, pin_memory=pin)
        C = len(bundle.classes)
        confusion = torch.zeros(C, C, dtype=torch.float64, device=device) if ignore >= 0 else None
        into[f"{prefix}loss"], into[f"{prefix}acc"], _ = evaluate(
            which,
            loader,
            device=device,
            mean=bundle.mean,
            std=bundle.std,
            amp_dtype=amp_dtype,
            flip=flip,
            ignore_index=ignore,
            confusion=confusion,
        )
        if confusion is not None:
            into[f"{prefix}miou"] = mean_iou(confusion)[0]

    epochs_run = 0
    epoch = start_epoch
    diverged = None  # the epoch whose training loss was not finite, if any
    while epoch < total:
        if cfg.stop_after_epochs and epochs_run >= cfg.stop_after_epochs:
            break
        if not cfg.sched_on_steps:
            scheduler.step(epoch)
        sampler = D.EpochBatchSampler(
            n_train, cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=rank, world_size=world
        )
        loader = D.make_loader(bundle.train, sampler, cfg.num_workers, pin_memory=pin)
        net.train()
        # loss sum over items, correct, counted targets (items, or non-void pixels), items
        totals = torch.zeros(4, dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{total}",
            leave=False,
            disable=not (cfg.progress and is_main),
        )
        for step, (x, y) in enumerate(bar):
            x, y = (
                D.normalize(x.to(device, non_blocking=True), bundle.mean, bundle.std),
                y.to(device, non_blocking=True),
            )
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(x)
                loss = criterion(logits, target)
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
                scheduler.step_update(num_updates)
            if ema is not None:
                ema.update(model, step=num_updates)
            if on_step_end is not None and is_main:
                on_step_end(model, num_updates, loss.item())
            correct, counted = _scores(logits.detach(), y, ignore)
            totals += torch.stack([loss.detach().double() * len(y), correct, counted,
                                   torch.tensor(len(y), device=device)]).double()  # fmt: skip
            if cfg.progress and is_main and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if step == 0:  # the first step of a process compiles (torch_compile)
                first_step_seconds = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        if world > 1:
            dist.all_reduce(totals)
        train_loss, train_correct, counted, seen = totals.tolist()
        if not math.isfinite(train_loss):  # recorded in metrics.json, then raised below
            diverged = {"epoch": epoch + 1, "train_loss": str(train_loss)}
            break
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss / seen,
            "train_acc": 100.0 * train_correct / counted,  # against the unmixed labels
        }
        row["test_loss"] = row["test_acc"] = math.nan  # not tested after this epoch
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 >= total:
            test(row, "test_", model)
            if ema is not None:
                test(row, "ema_test_", ema.module)
        row["train_seconds"] = train_seconds
        row["epoch_seconds"] = time.perf_counter() - t0
        row["images_per_s"] = seen / train_seconds
        if budgeted:
            # the epoch's cost with its first step counted as an ordinary one
            ordinary = (
                (train_seconds - first_step_seconds) / (steps_per_epoch - 1)
                if steps_per_epoch > 1
                else first_step_seconds
            )
            row["steady_seconds"] = row["epoch_seconds"] - first_step_seconds + ordinary
            if epoch + 1 >= cfg.warmup_epochs:
                recent = [r["steady_seconds"] for r in [*rows, row][-3:]]
                planned = plan_epochs(
                    epoch + 1,
                    sum(r["epoch_seconds"] for r in [*rows, row]),
                    sum(recent) / len(recent),
                    60.0 * cfg.budget_minutes,
                )
                if world > 1:  # every process follows rank 0's plan
                    shared = torch.tensor([planned], dtype=torch.int64, device=device)
                    dist.broadcast(shared, src=0)
                    planned = int(shared.item())
                planned = max(planned, epoch + 1)  # the epochs done stay done
                if planned != total:
                    total = planned
                    scheduler = make_scheduler(total)
                    if cfg.sched_on_steps:
                        scheduler.step_update((epoch + 1) * steps_per_epoch)
                    row["lr"] = optimizer.param_groups[0]["lr"]
            row["epochs_planned"] = total
        rows.append(row)
        epochs_run += 1
        epoch += 1

        states = [_rng_state(device)]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, _rng_state(device))
        if is_main:
            ckpt = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch,
                "epochs_planned": total,
                "rng": states,
                "config": asdict(cfg),
                "fingerprint": fingerprint,
                "metrics": rows,
                "classes": bundle.classes,
                "env": env,
            }
            _save(ckpt, last_path)
            if cfg.keep_epoch_ckpts:
                _save(
                    {k: ckpt[k] for k in ("model", "ema", "epoch", "config", "classes", "env")},
                    ckpt_dir / f"epoch_{epoch:03d}.pt",
                )
            write_metrics_csv(out_dir / "metrics.csv", rows)
            if cfg.progress:
                tqdm.write(_describe(row, total))
        if on_epoch_end is not None:
            on_epoch_end(dict(row))

    if diverged is None and rows and math.isnan(rows[-1]["test_acc"]):  # ended untested
        test(rows[-1], "test_", model)
        if ema is not None:
            test(rows[-1], "ema_test_", ema.module)
    final_flip = None
    if cfg.eval_flip and rows and diverged is None:  # the finished (or stopped) model
        final_flip = {"epoch": len(rows)}
        test(final_flip, "test_", model, flip=True)
    complete = diverged is None and len(rows) >= total
    if cfg.save_predictions and complete and is_main:
        outcomes = predict(
            model, bundle, device=device, amp_dtype=amp_dtype, batch=eval_bs, ignore_index=ignore
        )

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **outcomes)

        _write_atomic(out_dir / "predictions.npz", write)
    config = asdict(cfg)
    for key in ("out_dir", "ckpt_dir", "data_path"):
        config[key] = portable_path(config[key])
    result = {
        "config": config,
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
        "params": n_params,
        "train_images": n_train,
        "test_images": len(bundle.test),
        "data_source": portable_source(bundle.source),
        "autocast": {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(amp_dtype, "off"),
        "world_size": world,
        "out_dir": portable_path(out_dir),
        "ckpt_path": portable_path(last_path),
    }
    if world > 1:
        result["rank_weight_max_diff"] = _max_weight_diff(model)
    if is_main:
        if rows:
            write_metrics_csv(out_dir / "metrics.csv", rows)
        meta = {k: v for k, v in result.items() if k != "metrics"}
        meta["environment"] = env
        meta["images_skipped"] = sum(
            len(getattr(split.data, "skipped", ())) for split in (bundle.train, bundle.test)
        )
        _write_text(out_dir / "metrics.json", json.dumps(meta, indent=2) + "\n")
    if diverged is not None:
        raise TrainingDiverged(
            f"{cfg.model} ({cfg.model_kwargs or 'default'}), seed {cfg.seed}: the training loss "
            f"became {diverged['train_loss']} in epoch {diverged['epoch']}; recorded in "
            f"{out_dir / 'metrics.json'}. Lower lr (now {cfg.lr}) or train with amp='off'.",
            diverged,
        )
    result["model"] = model.eval()
    result["ema_model"] = ema.module.eval() if ema is not None else None
    return result


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
