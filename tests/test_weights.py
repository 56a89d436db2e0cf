"""Weights that ship with the package: exported in float16 with their hash and fingerprint,
loaded offline by timm.create_model(..., pretrained=True), and as good as recorded."""

import json

import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the models)
from cocs import weights as W


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "weights"


def test_export_and_load_round_trip(folder):
    torch.manual_seed(0)
    model = timm.create_model("coc_micro")
    entry = W.export(
        model, "coc_micro", metrics={"test_acc": 12.5}, source="results/x", folder=folder
    )
    assert entry["dtype"] == "float16" and len(entry["sha256"]) == 64
    assert W.manifest(folder)["coc_micro"] == entry and entry["metrics"]["test_acc"] == 12.5
    fresh = W.load_shipped(timm.create_model("coc_micro"), "coc_micro", folder)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v.half().float())
    # another classifier: everything but the head loads, the head keeps its own weights
    five = timm.create_model("coc_micro", num_classes=5)
    head = five.head.weight.clone()
    W.load_shipped(five, "coc_micro", folder)
    assert torch.equal(five.head.weight, head)
    torch.testing.assert_close(
        five.patch_embed.proj.weight, model.patch_embed.proj.weight.half().float()
    )
    features = W.load_shipped(
        timm.create_model("coc_micro", features_only=True), "coc_micro", folder
    )
    torch.testing.assert_close(
        features.model.patch_embed.proj.weight, fresh.patch_embed.proj.weight
    )


def test_damaged_files_and_changed_architectures_are_refused(folder):
    W.export(timm.create_model("coc_micro"), "coc_micro", metrics={}, source="x", folder=folder)
    with pytest.raises(ValueError, match="trained as model"):
        W.load_shipped(timm.create_model("coc_micro", similarity="cosine"), "coc_micro", folder)
    path = folder / "coc_micro.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        W.load_shipped(timm.create_model("coc_micro"), "coc_micro", folder)
    with pytest.raises(ValueError, match="no trained weights ship for coc_cifar"):
        W.load_shipped(timm.create_model("coc_cifar"), "coc_cifar", folder)


SHIPPED = sorted(W.manifest())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_offline_and_reach_their_recorded_accuracy(name):
    """On 1000 test images spread over the test split: within 4 points (3 binomial standard
    errors at 80%) of the accuracy recorded on the whole split."""
    from cocs.train import TrainConfig, build_data

    entry = W.manifest()[name]
    assert (W.WEIGHTS_DIR / entry["file"]).stat().st_size < 20 * 2**20, "a few MB"
    model = timm.create_model(name, pretrained=True).eval()
    cfg = TrainConfig(model=name, dataset=entry["metrics"]["dataset"],
                      img_size=entry["metrics"]["img_size"], progress=False)  # fmt: skip
    bundle = build_data(cfg)
    idx = torch.linspace(0, len(bundle.test) - 1, 1000).long().tolist()
    x, y = bundle.test.__getitems__(idx)
    with torch.no_grad():
        from cocs.data import normalize

        acc = 100 * (model(normalize(x, bundle.mean, bundle.std)).argmax(1) == y).float().mean()
    assert abs(acc.item() - entry["metrics"]["test_acc"]) < 4, json.dumps(entry["metrics"])
