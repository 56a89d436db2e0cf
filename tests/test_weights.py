"""Weights that ship with the package: exported in float16 with their hash and fingerprint,
loaded offline by timm.create_model(..., pretrained=True), and as good as recorded."""

import hashlib
import json
import subprocess

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
    path = folder / "coc_micro.safetensors.xz"
    packed = path.read_bytes()
    path.write_bytes(packed[:-1] + bytes([packed[-1] ^ 1]))  # the xz stream's own check fails
    with pytest.raises(ValueError, match=r"coc_micro\.safetensors\.xz is damaged"):
        W.load_shipped(timm.create_model("coc_micro"), "coc_micro", folder)
    W.save_float16(timm.create_model("coc_micro"), path)  # sound, but other weights
    with pytest.raises(ValueError, match="SHA-256"):
        W.load_shipped(timm.create_model("coc_micro"), "coc_micro", folder)
    with pytest.raises(ValueError, match="no trained weights ship for coc_cifar"):
        W.load_shipped(timm.create_model("coc_cifar"), "coc_cifar", folder)


def test_packed_files_give_back_the_safetensors_file_bit_for_bit(tmp_path):
    """The byte planes and xz are lossless, also for a data section of odd length, and float16
    weights come out smaller than they went in."""
    from safetensors.torch import load, save

    torch.manual_seed(0)
    state = {"w": torch.randn(300, 257).half(), "odd": torch.arange(7, dtype=torch.uint8),
             "steps": torch.tensor(3)}  # fmt: skip
    raw = save(state)
    assert (len(raw) - 8 - int.from_bytes(raw[:8], "little")) % 2 == 1, "an odd data section"
    W._write(tmp_path / "w.safetensors.xz", raw)
    W._write(tmp_path / "w.safetensors", raw)
    assert W.unpack(tmp_path / "w.safetensors.xz") == raw == W.unpack(tmp_path / "w.safetensors")
    assert (tmp_path / "w.safetensors.xz").stat().st_size < 0.9 * len(raw)
    back = load(W.unpack(tmp_path / "w.safetensors.xz"))
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_every_tracked_file_is_under_5_mib():
    """Large binaries bloat every clone for good: shipped weights are packed (under 5 MiB each)
    and run weights over that size stay on the machine that trained them (.gitignore)."""
    root = W.WEIGHTS_DIR.parent.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                             check=True).stdout.decode().split("\0")  # fmt: skip
    large = {f: (root / f).stat().st_size for f in tracked if f and (root / f).is_file()}
    large = {f: size for f, size in large.items() if size > 5 * 2**20}
    assert not large, f"tracked files over 5 MiB: {large}; pack weights with cocs.weights.export"


SHIPPED = sorted(W.manifest())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_offline_and_reach_their_recorded_accuracy(name):
    """On 1000 test images spread over the test split: within 4 points (3 binomial standard
    errors at 80%) of the accuracy recorded on the whole split."""
    from cocs.train import TrainConfig, build_data

    entry = W.manifest()[name]
    path = W.WEIGHTS_DIR / entry["file"]
    assert path.name.endswith(W.PACKED) and path.stat().st_size < 5 * 2**20, "packed, a few MB"
    assert hashlib.sha256(W.unpack(path)).hexdigest() == entry["sha256"]
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
