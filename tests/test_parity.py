"""cocs computes what the authors' release computes, and loads its checkpoints."""

from __future__ import annotations

import pytest
import timm
import torch

from cocs import Cluster, load_official_checkpoint

ATOL = 1e-4


@pytest.mark.parametrize("name", ["coc_tiny", "coc_tiny_plain"])
def test_released_model_reproduces_features_and_logits(reference, name):
    ref = reference[name]
    model = load_official_checkpoint(ref["state_dict"], name).eval()
    with torch.no_grad():
        features = model.forward_features(ref["input"])
        logits = model.forward_head(features)
    torch.testing.assert_close(features, ref["features"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, ref["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("channels_last", [True, False])
def test_released_model_in_both_layouts(reference, channels_last):
    ref = reference["coc_tiny"]
    model = timm.create_model("coc_tiny", channels_last=channels_last).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["input"]), ref["logits"], atol=ATOL, rtol=0)


def test_cluster_layer_forward_and_backward(reference):
    ref = reference["cluster_layer"]
    cfg = ref["config"]
    layer = Cluster(
        dim=cfg["dim"],
        out_dim=cfg["out_dim"],
        heads=cfg["heads"],
        head_dim=cfg["head_dim"],
        proposal_w=cfg["proposal_w"],
        proposal_h=cfg["proposal_h"],
        fold_w=cfg["fold_w"],
        fold_h=cfg["fold_h"],
    )
    layer.load_state_dict(ref["state_dict"], strict=True)
    x = ref["input"].clone().requires_grad_(True)
    out = layer(x)
    torch.testing.assert_close(out, ref["output"], atol=ATOL, rtol=0)
    (out * ref["grad_output"]).sum().backward()
    torch.testing.assert_close(x.grad, ref["grad_input"], atol=ATOL, rtol=0)
    grads = dict(layer.named_parameters())
    assert set(grads) == set(ref["param_grads"])
    for name, want in ref["param_grads"].items():
        torch.testing.assert_close(grads[name].grad, want, atol=ATOL, rtol=0, msg=name)


def _random_state(layout: dict) -> dict:
    return {k: torch.randn(shape) for k, shape in layout["state_dict"].items()}


def test_every_released_layout_loads_strictly(official_layout, tmp_path):
    for name, layout in official_layout.items():
        model = timm.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == layout["num_params"], name
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == layout["state_dict"], name
        state = _random_state(layout)
        model.load_state_dict(state, strict=True)
        loaded = load_official_checkpoint(state, name)
        torch.testing.assert_close(loaded.state_dict()["head.weight"], state["head.weight"])


def test_checkpoint_file_with_training_wrapper(official_layout, tmp_path):
    state = _random_state(official_layout["coc_tiny"])
    path = tmp_path / "checkpoint.pth.tar"
    # the release's train script saves {'state_dict': ..., 'epoch': ...}, keys may carry 'module.'
    torch.save({"epoch": 299, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = load_official_checkpoint(path, timm.create_model("coc_tiny"))
    torch.testing.assert_close(model.patch_embed.proj.weight, state["patch_embed.proj.weight"])


@pytest.mark.parametrize("layout", ["bare", "model"])
def test_bare_and_model_wrapped_files_load_by_path(official_layout, tmp_path, layout):
    state = _random_state(official_layout["coc_tiny"])
    path = tmp_path / f"{layout}.pth"
    torch.save(state if layout == "bare" else {"model": state, "epoch": 3}, path)
    model = load_official_checkpoint(path, timm.create_model("coc_tiny"))
    torch.testing.assert_close(model.patch_embed.proj.weight, state["patch_embed.proj.weight"])


def test_checkpoint_of_another_variant_is_named(official_layout):
    state = _random_state(official_layout["coc_small"])
    with pytest.raises(ValueError, match=r"does not fit .*coc_tiny.*it fits coc_small"):
        load_official_checkpoint(state, "coc_tiny")


def test_missing_checkpoint_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nothing\.pth"):
        load_official_checkpoint(tmp_path / "nothing.pth", "coc_tiny")


def _saver_file(state: dict, path, ema: dict | None = None):
    """A file as timm's CheckpointSaver writes it for the authors' train.py: the command line as
    an argparse.Namespace, the optimizer's state, the epoch, and the EMA weights."""
    import argparse

    model = timm.create_model("coc_tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = {
        "epoch": 299,
        "arch": "coc_tiny",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": opt.state_dict(),
        "version": 2,
        "args": argparse.Namespace(model="coc_tiny", lr=1e-3, model_ema=True, epochs=300),
        "metric": 71.8,
    }
    if ema is not None:
        ckpt["state_dict_ema"] = ema
    torch.save(ckpt, path)
    return path


def test_a_complete_training_checkpoint_loads_safely_by_path(official_layout, tmp_path):
    layout = official_layout["coc_tiny"]
    state, ema = _random_state(layout), _random_state(layout)
    path = _saver_file(state, tmp_path / "model_best.pth.tar", ema=ema)
    with pytest.raises(Exception, match="argparse"):  # what plain weights-only loading says
        torch.load(path, weights_only=True)
    plain = load_official_checkpoint(path, "coc_tiny")
    torch.testing.assert_close(plain.head.weight, state["head.weight"])
    averaged = load_official_checkpoint(path, "coc_tiny", use_ema=True)
    torch.testing.assert_close(averaged.head.weight, ema["head.weight"])
    in_memory = load_official_checkpoint(torch.load(path, weights_only=False), "coc_tiny")
    torch.testing.assert_close(in_memory.head.weight, state["head.weight"])
    only_ema = {"state_dict_ema": ema}
    torch.testing.assert_close(
        load_official_checkpoint(only_ema, "coc_tiny").head.weight, ema["head.weight"]
    )
    with pytest.raises(ValueError, match="no 'state_dict_ema'"):
        load_official_checkpoint({"state_dict": state}, "coc_tiny", use_ema=True)


class Odd:
    """An object of a class that no weights-only load allows."""


def test_other_python_objects_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {}, "extra": Odd()}, path)
    with pytest.raises(ValueError, match="weights-only load refuses"):
        load_official_checkpoint(path, "coc_tiny")


def test_a_feature_extractor_loads_official_weights(official_layout):
    state = _random_state(official_layout["coc_small"])
    model = timm.create_model("coc_small", features_only=True)
    load_official_checkpoint(state, model)
    torch.testing.assert_close(
        model.model.patch_embed.proj.weight, state["patch_embed.proj.weight"]
    )
    with pytest.raises(ValueError, match="fits coc_tiny") as err:
        load_official_checkpoint(_random_state(official_layout["coc_tiny"]), model)
    assert "fits coc_small" not in str(err.value), "the model itself is never the hint"
