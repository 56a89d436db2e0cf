"""A short, stable hash of what a built model computes, so that results cannot go stale silently.

A results file records the fingerprint of the model that produced it; a chapter reuses the file
only while the model the code builds today has the same fingerprint. The hash covers the module
tree with every hyper-parameter that changes the function (heads, head dims, centres, folds,
similarity, positions, kernel sizes, ...) and the name and shape of every parameter and buffer.
It leaves out what changes only how the function is computed or trained: recomputation
(``lean_mlp``), the memory layout, compilation, autocast, and the regularisers that are the
identity at test time (dropout, drop path), which belong to the recipe and are saved with it.

Code that changes a forward pass without changing any module's hyper-parameters cannot be seen
by a hash of the module tree: such a change must bump :data:`FINGERPRINT_VERSION`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timm.layers import DropPath
from torch import nn

__all__ = ["FINGERPRINT_VERSION", "describe_model", "model_fingerprint"]

# Bump when a forward pass changes in a way no hyper-parameter shows.
FINGERPRINT_VERSION = 1

# Modules that compute the identity at test time; whether they are present is recipe.
_TRANSPARENT = (nn.Identity, nn.Dropout, nn.Dropout2d, DropPath)

# Attributes that change a module's function without showing in its ``extra_repr()``. Read as
# attributes, so that the fingerprint of a model built by older code, which had the same
# attributes but no ``extra_repr`` for them, is computed the same way.
_ATTRIBUTES = ("use_positions", "global_pool")


def describe_model(model: nn.Module) -> list[str]:
    """The lines that :func:`model_fingerprint` hashes: one per module, parameter and buffer."""
    lines = [f"fingerprint version {FINGERPRINT_VERSION}"]
    for name, module in model.named_modules():
        if isinstance(module, _TRANSPARENT):
            continue
        extra = [f"{a}={getattr(module, a)!r}" for a in _ATTRIBUTES if hasattr(module, a)]
        args = ", ".join([module.extra_repr(), *extra]).strip(", ")
        lines.append(f"{name or '<root>'}: {type(module).__name__}({args})")
    lines += [f"param {n}: {tuple(p.shape)}" for n, p in model.named_parameters()]
    lines += [f"buffer {n}: {tuple(b.shape)}" for n, b in model.named_buffers()]
    return lines


def model_fingerprint(model: nn.Module) -> str:
    """A 16-hex-digit hash of :func:`describe_model`: equal for models that compute the same
    function of their weights, different when an architectural hyper-parameter differs."""
    text = "\n".join(describe_model(model))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Results written before fingerprints existed
# --------------------------------------------------------------------------------------------

_AT_COMMIT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("today_fingerprint", sys.argv[1])
today = importlib.util.module_from_spec(spec)
spec.loader.exec_module(today)
from cocs.train import TrainConfig, create_model  # the package of the worktree
meta = json.load(open(sys.argv[2]))
known = set(TrainConfig.__dataclass_fields__)
cfg = TrainConfig.from_dict({k: v for k, v in meta["config"].items() if k in known})
print(today.model_fingerprint(create_model(cfg, num_classes=len(meta["classes"]))))
"""


def fingerprint_at_commit(metrics_json: str | os.PathLike, commit: str) -> str:
    """The fingerprint of the model that ``metrics_json``'s config built at ``commit``.

    The commit is checked out into a temporary git worktree, its ``cocs`` builds the model, and
    this module's :func:`model_fingerprint` hashes it: a run made before fingerprints existed
    gets the fingerprint of the code that trained it, never that of today's code.
    """
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="cocs-at-commit-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), commit],
            cwd=repo, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        try:
            env = dict(os.environ, PYTHONPATH=str(tree))
            out = subprocess.run(
                [sys.executable, "-c", _AT_COMMIT, __file__, str(Path(metrics_json).resolve())],
                cwd=tree, env=env, check=True, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=repo, timeout=60
            )
    return out.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> None:
    """``python -m cocs.fingerprint results/.../metrics.json ...``: add the fingerprint (from the
    code at each run's recorded commit) to results files that lack one, and make their paths
    relative to the repository."""
    import argparse
    import json

    from .train import portable_path, portable_source

    parser = argparse.ArgumentParser(prog="python -m cocs.fingerprint", description=main.__doc__)
    parser.add_argument("files", nargs="+", help="metrics.json files written by cocs.train")
    for path in map(Path, parser.parse_args(argv).files):
        meta = json.loads(path.read_text())
        if "fingerprint" not in meta:
            commit = meta["environment"]["git_commit"]
            meta["fingerprint"] = fingerprint_at_commit(path, commit)
            print(f"{path}: {meta['fingerprint']} (the code at {commit[:10]})")
        for key in ("out_dir", "ckpt_path"):
            meta[key] = portable_path(meta[key])
        for key in ("out_dir", "ckpt_dir", "data_path"):
            meta["config"][key] = portable_path(meta["config"][key])
        meta["data_source"] = portable_source(meta["data_source"])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
