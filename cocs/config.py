"""The configuration of a training run: one flat ``TrainConfig``, checked before anything runs.

Its field names are the notebook parameters, the command-line options of ``python -m
cocs.train`` and the keys of the saved files. A run's *recipe* (:func:`recipe`) is every field
that changes what it learns; :func:`same_recipe` decides whether a finished run can stand for a
new one.
"""

import ast
import difflib
import json
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import data as D

REPO_ROOT = Path(__file__).resolve().parent.parent

# Data sets of point clouds: (B, N, 3) coordinates in, classes out (cocs.modelnet).
POINT_DATASETS = ("modelnet40",)
# Data sets of per-pixel classes, with the class id that counts nowhere (void).
SEGMENTATION_DATASETS = {"camvid": 11}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; raised before any training starts."""


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
    amp: str = "auto"  # auto (bf16 if native, else fp16 on CUDA, off on CPU), bf16, fp16, off
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
    save_weights: bool = False  # write the final weights in float16 beside metrics.json
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
        "save_weights",
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


def same_recipe(recorded: Mapping, cfg: "TrainConfig", *, ignore: Iterable[str] = ()) -> bool:
    """Whether a recorded :func:`recipe` is that of ``cfg``, the keys in ``ignore`` aside. A
    key the record lacks (a setting added since) counts as its default; a key only the record
    has (one removed since) is ignored, so that adding a setting does not make every committed
    run stale."""
    defaults, skip = asdict(TrainConfig()), set(ignore)
    return all(recorded.get(k, defaults[k]) == v for k, v in recipe(cfg).items() if k not in skip)


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
