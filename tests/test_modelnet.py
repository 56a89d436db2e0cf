"""ModelNet40: the shared archive, the public HDF5 layout (a tiny copy built here), and
PointMLP's augmentation."""

import os

import numpy as np
import pytest
import torch

from cocs.data import DataNotFound
from cocs.modelnet import ARCHIVE, augment, load_modelnet40

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", ARCHIVE)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("COCS_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("COCS_DATA_MODELNET40", raising=False)


def write_hdf5_release(folder, shapes_per_file=(3, 2), points=2048):
    """The layout of modelnet40_ply_hdf5_2048: ply_data_{train,test}N.h5 with 'data' (S, 2048,
    3) float32 and 'label' (S, 1) uint8, and shape_names.txt."""
    import h5py

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (folder / "shape_names.txt").write_text("\n".join(f"class{i}" for i in range(40)) + "\n")
    for split, sizes in (("train", shapes_per_file), ("test", (2,))):
        for i, s in enumerate(sizes):
            with h5py.File(folder / f"ply_data_{split}{i}.h5", "w") as f:
                f["data"] = rng.normal(size=(s, points, 3)).astype(np.float32)
                f["label"] = rng.integers(0, 40, size=(s, 1)).astype(np.uint8)
    return folder


def test_the_public_hdf5_release_loads_its_first_1024_points(tmp_path):
    import h5py

    folder = write_hdf5_release(tmp_path / "modelnet40_ply_hdf5_2048")
    train = load_modelnet40("train", data_path=str(folder), download=False)
    assert train.points.shape == (5, 1024, 3) and train.points.dtype == torch.float32
    with h5py.File(folder / "ply_data_train1.h5") as f:
        torch.testing.assert_close(train.points[3:], torch.from_numpy(f["data"][:, :1024]))
        assert train.labels[3:].tolist() == f["label"][:, 0].tolist()
    assert train.classes[:2] == ["class0", "class1"] and len(train.classes) == 40
    assert len(load_modelnet40("test", data_path=str(folder), download=False)) == 2


def test_a_folder_without_the_data_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(DataNotFound, match="neither modelnet40-1024.npz nor a folder"):
        load_modelnet40("train", data_path=str(tmp_path), download=False)
    monkeypatch.setenv("COCS_ARCHIVES", str(tmp_path))
    with pytest.raises(DataNotFound, match="download=False"):
        load_modelnet40("train", download=False)
    with pytest.raises(ValueError, match="split='val'"):
        load_modelnet40("val")


@pytest.mark.skipif(not os.path.isfile(SHARED), reason="the shared archive is not beside the repo")
def test_the_shared_archive_has_the_official_split(monkeypatch):
    monkeypatch.setenv("COCS_ARCHIVES", os.path.dirname(SHARED))
    train, test = load_modelnet40("train", download=False), load_modelnet40("test", download=False)
    assert (len(train), len(test)) == (9843, 2468) and len(train.classes) == 40
    assert train.points.shape[1:] == (1024, 3) and train.points.dtype == torch.float32
    airplane = train.classes.index("airplane")
    assert (train.labels == airplane).sum() == 626 and (test.labels == airplane).sum() == 100
    small = load_modelnet40("train", max_per_class=2, download=False)
    assert len(small) == 80 and torch.bincount(small.labels).eq(2).all()


def test_augmentation_scales_moves_and_shuffles_each_shape():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(4, 64, 3)
    out = augment(pts, g)
    assert out.shape == pts.shape
    # undo the shuffle by matching sorted coordinates per axis: an affine map per shape and axis
    for b in range(4):
        for ax in range(3):
            x, y = pts[b, :, ax].sort().values, out[b, :, ax].sort().values
            scale = (y[-1] - y[0]) / (x[-1] - x[0])
            assert 2 / 3 <= scale < 3 / 2
            shift = y[0] - scale * x[0]
            assert -0.2 <= shift < 0.2
            torch.testing.assert_close(y, scale * x + shift, rtol=1e-4, atol=1e-4)
    assert not torch.equal(out, augment(pts, g)), "a new draw each call"


def test_the_engine_trains_a_point_model_on_a_tiny_hdf5_copy(tmp_path):
    """The one training engine, point clouds in: the data set is the only task piece that
    changes (classification loss and accuracy as for images)."""
    import json

    from cocs import train as T

    folder = write_hdf5_release(tmp_path / "modelnet40_ply_hdf5_2048", shapes_per_file=(8, 8))
    result = T.train(dict(
        model="coc_points", model_kwargs="regions=(4, 2, 2, 1)", dataset="modelnet40",
        data_path=str(folder), download=False, epochs=2, batch_size=8, warmup_epochs=0,
        drop_path=0.0, num_threads=1, progress=False, out_dir=str(tmp_path / "results" / "run"),
        save_predictions=True,
    ))  # fmt: skip
    assert result["complete"] and result["train_images"] == 16 and result["test_images"] == 2
    meta = json.loads((tmp_path / "results" / "run" / "metrics.json").read_text())
    assert meta["data_source"].startswith("data_path=") and len(meta["classes"]) == 40
    with pytest.raises(T.ConfigError, match="point clouds"):
        T.TrainConfig(dataset="modelnet40", mixup=0.2).validate()
    # augmentation drawn per shape from its own seed: the same item, the same draw
    from cocs.modelnet import AugmentedPoints

    data = AugmentedPoints(load_modelnet40("train", data_path=str(folder)), train=True)
    a, _ = data.__getitems__([(3, 17), (4, 5)])
    b, _ = data.__getitems__([(3, 17)])
    torch.testing.assert_close(a[:1], b)
