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

from timm.layers import DropPath
from torch import nn

__all__ = ["FINGERPRINT_VERSION", "describe_model", "model_fingerprint"]

# Bump when a forward pass changes in a way no hyper-parameter shows.
FINGERPRINT_VERSION = 1

# Modules that compute the identity at test time; whether they are present is recipe.
_TRANSPARENT = (nn.Identity, nn.Dropout, nn.Dropout2d, DropPath)


def describe_model(model: nn.Module) -> list[str]:
    """The lines that :func:`model_fingerprint` hashes: one per module, parameter and buffer."""
    lines = [f"fingerprint version {FINGERPRINT_VERSION}"]
    for name, module in model.named_modules():
        if isinstance(module, _TRANSPARENT):
            continue
        lines.append(f"{name or '<root>'}: {type(module).__name__}({module.extra_repr()})")
    lines += [f"param {n}: {tuple(p.shape)}" for n, p in model.named_parameters()]
    lines += [f"buffer {n}: {tuple(b.shape)}" for n, b in model.named_buffers()]
    return lines


def model_fingerprint(model: nn.Module) -> str:
    """A 16-hex-digit hash of :func:`describe_model`: equal for models that compute the same
    function of their weights, different when an architectural hyper-parameter differs."""
    text = "\n".join(describe_model(model))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
