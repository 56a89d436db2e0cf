"""Finished runs, read back instead of trained again.

A chapter that has trained a model keeps its files under ``results/`` (``metrics.json``,
``metrics.csv``, predictions), and they are committed; the checkpoints stay on the machine
that trained, and a chapter may export the final weights into ``cocs/weights`` or keep them,
in float16, beside the run's results (``save_weights``: committed where they are small, so
that a study whose runs need their models can span machines). What a chapter draws from a
model can also be kept beside the run (:func:`write_kept`, :func:`read_kept`), so that a
machine without the weights draws it again. A later execution of the chapter, on any machine, can stand on that run instead of training it again,
but only while the run is what the code would train today: the same model fingerprint
(:func:`cocs.fingerprint.model_fingerprint`) and the same recipe (:func:`cocs.config.recipe`).

:func:`finished` reads such a run, with its weights where they can be found, and
:func:`train_or_reuse` is what chapters call: the finished run if there is one, else training
(or, with ``train_missing=False``, a clear error that names the command to run).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, TrainConfig, portable_path, resolve_ckpt_dir, same_recipe
from .fingerprint import model_fingerprint

__all__ = [
    "MissingRun",
    "autocast_of",
    "budget_caveat",
    "finished",
    "mismatch",
    "read_kept",
    "train_or_reuse",
    "trained_on",
    "write_kept",
]


class MissingRun(ConfigError):
    """No finished run matches, and the caller asked not to train one."""


def _run_key(path: str | Path) -> tuple[str, ...]:
    """What identifies a run's folder on any machine: its parts after the last ``results``."""
    parts = Path(path).parts
    cut = max((i for i, p in enumerate(parts) if p == "results"), default=-1)
    return tuple(parts[cut + 1 :])


def _read_rows(path: Path) -> list[dict]:
    """``metrics.csv`` as the engine's rows: numbers as floats, ``epoch`` as int."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {k: (float(v) if v not in ("", None) else math.nan) for k, v in raw.items()}
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def _load_weights(cfg: TrainConfig, model: torch.nn.Module, meta: Mapping) -> str | None:
    """Load the run's final weights into ``model``; where they came from, or None.

    The checkpoint when this machine has it (and it is the run's last epoch), else the weights
    shipped in ``cocs/weights`` that were exported from this very run (same fingerprint, same
    results folder, same final accuracy; stored in float16), else the float16 copy the engine
    wrote beside the run's results (``save_weights``; its SHA-256 is checked).
    """
    path = resolve_ckpt_dir(cfg) / "last.pt"
    if path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("fingerprint") == meta["fingerprint"] and ckpt["epoch"] == meta["epochs_done"]:
            model.load_state_dict(ckpt["model"])
            return f"checkpoint {portable_path(path)}"
    from .weights import load_float16, load_shipped, shipped

    entry = shipped(cfg.model)
    if (
        entry is not None
        and entry["fingerprint"] == meta["fingerprint"]
        and _run_key(entry["source"]) == _run_key(cfg.out_dir)
        and entry["metrics"].get("test_acc") == meta["final"]["test_acc"]
    ):
        load_shipped(model, cfg.model)
        return f"shipped float16 weights cocs/weights/{entry['file']}"
    kept = meta.get("final_weights")  # written with save_weights, beside the results
    if kept and (Path(cfg.out_dir) / kept["file"]).is_file():
        load_float16(model, Path(cfg.out_dir) / kept["file"], kept["sha256"])
        return f"the run's float16 weights {portable_path(Path(cfg.out_dir) / kept['file'])}"
    return None


def _chapter_of(path: str | Path) -> str:
    """The chapter whose results folder holds ``path`` ("<chapter>" when none does)."""
    key = _run_key(path)
    return key[0] if key and key[0][:2].isdigit() else "<chapter>"


def _check(
    cfg: TrainConfig, ignore: Iterable[str] = ()
) -> tuple[str | None, dict | None, torch.nn.Module | None]:
    """(why the files under ``cfg.out_dir`` cannot stand for a run of ``cfg`` or None, their
    ``metrics.json``, the model ``cfg`` builds today). The recipe's keys in ``ignore`` are not
    compared."""
    from .config import recipe
    from .train import create_model

    path = Path(cfg.out_dir) / "metrics.json"
    if not path.is_file():
        return "no metrics.json there", None, None
    meta = json.loads(path.read_text())
    if not (meta.get("complete") or meta.get("diverged")):
        done, planned = meta.get("epochs_done"), meta.get("epochs_planned")
        return f"its run stopped after {done} of {planned} epochs", meta, None
    recorded = meta.get("recipe")
    if recorded is None and "config" in meta:  # written before the recipe was recorded apart
        recorded = recipe(meta["config"])
    if recorded is None:
        return "its metrics.json records neither a recipe nor a config", meta, None
    if not same_recipe(recorded, cfg, ignore=ignore):
        changed = [f"{k}: {recorded[k]!r} -> {v!r}" for k, v in recipe(cfg).items()
                   if k in recorded and k not in ignore and recorded[k] != v]  # fmt: skip
        return f"its recipe differs ({', '.join(changed) or 'settings added since'})", meta, None
    # compiling changes how a step is computed, not what it computes; under a time budget it
    # also changes how many epochs fit, so there it must match too
    was = bool(meta.get("config", {}).get("torch_compile", False))
    if cfg.epochs == 0 and "torch_compile" not in ignore and was != cfg.torch_compile:
        how = {True: "compiled", False: "eager"}
        return (
            f"it trained {how[was]} under a time budget, this run is {how[cfg.torch_compile]} "
            "(compiling changes how many epochs the budget buys)",
            meta,
            None,
        )
    model = create_model(cfg, len(meta["classes"]))
    today = model_fingerprint(model)
    if meta.get("fingerprint") != today:
        return (
            f"it trained model {meta.get('fingerprint')}, today's code builds {today}",
            meta,
            None,
        )
    return None, meta, model


def mismatch(cfg: TrainConfig | Mapping, *, ignore: Iterable[str] = ()) -> str | None:
    """Why the files under ``cfg.out_dir`` cannot stand for a run of ``cfg``; None when they
    can (see :func:`finished`). ``ignore``: recipe keys left out of the comparison, for a
    caller that shows how they differ (e.g. ``{"amp"}``: runs of other machines' precision)."""
    return _check(TrainConfig.from_dict(cfg), frozenset(ignore))[0]


def finished(cfg: TrainConfig | Mapping, *, weights: bool = True) -> dict | None:
    """The finished run of ``cfg`` from its files, or None when there is none that matches.

    A run matches when its ``metrics.json`` says it completed (or diverged: the engine records
    that too), its recipe equals ``cfg``'s and its fingerprint is that of the model ``cfg``
    builds today (:func:`mismatch` says why not). Returns what :func:`cocs.train.train`
    returns, ``metrics`` read from ``metrics.csv``, with ``reused=True``, the ``environment``
    it ran in, and, with ``weights``, ``model`` (eval mode) and ``weights`` (where they came
    from) when the final weights are found (see :func:`_load_weights`), else ``model=None``.
    ``ema_model`` is None.
    """
    cfg = TrainConfig.from_dict(cfg)
    why, meta, model = _check(cfg)
    if why is not None:
        return None
    found = None
    if weights and not meta.get("diverged"):
        found = _load_weights(cfg, model, meta)
    return meta | {
        "metrics": _read_rows(Path(cfg.out_dir) / "metrics.csv"),
        "reused": True,
        "weights": found,
        "model": model.eval() if found else None,
        "ema_model": None,
    }


def train_or_reuse(
    cfg: TrainConfig | Mapping, *, train_missing: bool = True, need_model: bool = True, **callbacks
) -> dict:
    """The finished run of ``cfg`` when one matches (and, with ``need_model``, its final weights
    are found); otherwise :func:`cocs.train.train` (which resumes from a checkpoint), or with
    ``train_missing=False`` a :class:`MissingRun` error. Prints which, and where it came from.
    """
    from .train import train

    cfg = TrainConfig.from_dict(cfg)
    done = finished(cfg, weights=need_model)
    if done is not None and (done["model"] is not None or done.get("diverged") or not need_model):
        env = done["environment"]
        print(
            f"{portable_path(cfg.out_dir)}: the finished run of commit "
            f"{(env.get('git_commit') or '?')[:7]} on {env['hardware']['cpu']} "
            f"({env['hardware']['torch_threads']} threads), not trained again"
            + (f"; weights: {done['weights']}" if done["weights"] else "")
        )
        return done
    if not train_missing:
        why = (
            "its results match, but its final weights are neither in a checkpoint on this "
            "machine nor shipped in cocs/weights"
            if done is not None
            else f"no finished run there matches today's code: {_check(cfg)[0]}"
        )
        raise MissingRun(
            f"{portable_path(cfg.out_dir)}: {why}; train it with the chapter's default profile "
            f"(`python -m cocs.handbook run {_chapter_of(cfg.out_dir)}`), or pass "
            "train_missing=True."
        )
    if done is not None:
        print(
            f"{portable_path(cfg.out_dir)}: its results match, but its final weights are "
            "neither in a checkpoint here nor shipped: training it again"
        )
    return train(cfg, **callbacks)


def autocast_of(meta: Mapping) -> str:
    """The autocast dtype a run trained in ("off", "bfloat16", "float16"), from its record.

    The engine records the dtype it resolved; files written before it did give only the
    config's ``amp``, whose "auto" meant float32 on a CPU when they were written.
    """
    if "autocast" in meta:
        return meta["autocast"]
    amp = meta["config"].get("amp", "off")
    device = meta.get("environment", {}).get("hardware", {}).get("device", "cpu")
    if amp == "auto" and str(device).startswith("cpu"):
        return "off"
    return {"bf16": "bfloat16", "fp16": "float16", "off": "off"}.get(amp, f"amp {amp}")


def trained_on(run: Mapping) -> dict:
    """Where and how a run trained, from its record: ``hardware`` (the GPU, or the processor
    with its vector capability where recorded, e.g. "AMD EPYC (AVX2)"), ``threads``,
    ``autocast``, ``gflops`` (how fast its processor ran, :func:`cocs.provenance.speed_probe`;
    None in records older than the probe) and ``platform`` (the operating system's build). A
    chapter's tables take them from here, not from the machine executing the chapter: a reused
    run may have trained on another one.
    """
    hw = run.get("environment", {}).get("hardware", {})
    if str(hw.get("device") or "cpu").startswith("cuda") and hw.get("gpus"):
        name = hw["gpus"][0]
    else:
        name = hw.get("cpu") or "unrecorded CPU"
        name += f" ({hw['cpu_capability']})" if hw.get("cpu_capability") else ""
    return {"hardware": name, "threads": hw.get("torch_threads"), "autocast": autocast_of(run),
            "gflops": hw.get("speed", {}).get("matmul_gflops"), "platform": hw.get("platform")}  # fmt: skip


# Budgeted runs whose speed probes differ by more than this factor did not get equal work.
SPEED_TOLERANCE = 1.2


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _machine(m: Mapping, by_speed: bool) -> tuple[str, ...]:
    """What a run's minutes were minutes of: processor, threads and precision, and, unless
    the runs compared all recorded their speed (``by_speed``), the platform build in its stead
    (one processor name has trained here under two builds, one about 1.7x slower)."""
    key = (str(m["hardware"]), f"{m['threads']} threads", f"autocast {m.get('autocast', '?')}")
    platform = m.get("platform")
    return key if by_speed else (*key, str(platform if _known(platform) else "?"))


def budget_caveat(machines: Iterable[Mapping]) -> str | None:
    """What a reader must know when runs compared at equal wall-clock budgets trained on more
    than one machine (``machines``: each run's :func:`trained_on`, or rows with its keys), else
    None: a minute of one is not a minute of work on another, so such a comparison holds only
    between runs of the same machine. One processor name can hide machines of different
    speeds: runs that all recorded theirs (``gflops``) must agree on it within
    :data:`SPEED_TOLERANCE`; otherwise they must share their platform build."""
    machines = list(machines)
    speeds = [float(m["gflops"]) for m in machines if _known(m.get("gflops"))]
    by_speed = len(speeds) == len(machines)
    seen = sorted({_machine(m, by_speed) for m in machines})
    if len(seen) >= 2:
        names = "; ".join(", ".join(k) for k in seen)
        return (
            f"these runs trained on {len(seen)} machines or precisions ({names}): equal minutes "
            "there are not equal work, so compare budgeted runs only within one of them, or "
            "train the others again on one machine"
        )
    if by_speed and len(speeds) >= 2 and max(speeds) > SPEED_TOLERANCE * min(speeds):
        return (
            f"these runs trained on machines of one name ({', '.join(seen[0])}) at different "
            f"speeds (float32 products at {min(speeds):.0f} to {max(speeds):.0f} GFLOP/s, "
            "cocs.provenance.speed_probe): equal minutes there are not equal work, so compare "
            "budgeted runs only between runs of one speed, or train the others again"
        )
    return None


def write_kept(path: str | Path, key: Mapping, arrays: Mapping[str, np.ndarray]) -> None:
    """Keep arrays that a chapter computes from a run's model (a figure's predictions, say) in
    a small file beside the run's results, with ``key``: what they depend on (the run's
    fingerprint, the images shown, ...). A later execution without the model's weights reads
    them back with :func:`read_kept` instead of needing the model. Written atomically."""
    import io

    from .handbook import atomic_write_bytes

    if "key" in arrays:
        raise ValueError(
            "'key' is the name under which write_kept stores the key; rename the array"
        )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, key=np.array(json.dumps(dict(key), sort_keys=True)), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_kept(path: str | Path, key: Mapping) -> dict[str, np.ndarray] | None:
    """The arrays :func:`write_kept` kept at ``path`` for this very ``key``; None when the file
    is missing or was written for another key (another model, other images)."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as f:
        if json.loads(str(f["key"])) != json.loads(json.dumps(dict(key), sort_keys=True)):
            return None
        return {k: f[k] for k in f.files if k != "key"}
