"""Data sets: where they are found, the decode-once cache, bad images, and seeded transforms."""

import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from cocs import data as D


@pytest.fixture(autouse=True)
def isolated_data(tmp_path, monkeypatch):
    """An empty cache folder, no archives and no per-data-set variables."""
    monkeypatch.setenv("COCS_DATA", str(tmp_path / "cache-root"))
    monkeypatch.setenv("COCS_ARCHIVES", "")
    for spec in D.DATASETS.values():
        monkeypatch.delenv(spec.env, raising=False)


def _tar_tree(tree: Path, archive: Path, arcname: str) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tree, arcname=arcname)
    return archive


# ---- where data come from -------------------------------------------------------------------


def test_explicit_path_wins(tmp_path):
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 1, "test": 1})
    source = D.locate("cifar10", tree, download=False)
    assert (source.kind, source.root) == ("tree", tree)


def test_environment_variable_is_an_explicit_path(tmp_path, monkeypatch):
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 1, "val": 1})
    monkeypatch.setenv("COCS_DATA_IMAGENETTE", str(tree))
    assert D.locate("imagenette", download=False).origin == f"COCS_DATA_IMAGENETTE={tree}"


def test_missing_data_says_what_was_tried_and_what_to_do():
    with pytest.raises(D.DataNotFound) as err:
        D.locate("cifar10", download=False)
    text = str(err.value)
    assert (
        "COCS_DATA_CIFAR10 (unset)" in text and "cache folder" in text and "download=False" in text
    )
    assert "python -m cocs.data cifar10" in text
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in text

    with pytest.raises(D.DataNotFound, match="imagenette2-160.tgz"):
        D.locate("imagenette", download=False)
    with pytest.raises(D.DataNotFound, match="https://image-net.org/download.php"):
        D.locate("imagenet")


def test_nonexistent_explicit_path_is_an_error_not_a_fallback(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(D.DataNotFound, match="does not exist") as err:
        D.locate("imagenette", missing)
    assert str(missing) in str(err.value) and "s3.amazonaws.com/fast-ai-imageclas" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataNotFound, match="holds no train/"):
        D.locate("folder", tmp_path / "empty")


def test_archive_is_extracted_once_through_a_temporary_folder(tmp_path, monkeypatch):
    tree = D.write_synthetic_folder(tmp_path / "src", per_class={"train": 2, "test": 1})
    _tar_tree(tree, tmp_path / "archives" / "cifar10-jpeg.tar.gz", "cifar10")
    monkeypatch.setenv("COCS_ARCHIVES", str(tmp_path / "archives"))

    source = D.locate("cifar10", download=False, progress=False)
    root = D.data_root()
    assert source.root == root / "cifar10" and source.origin.startswith("extracted from")
    assert sorted(p.name for p in root.iterdir()) == ["cifar10"]  # no temporary folder left
    assert len(list((root / "cifar10" / "train").rglob("*.png"))) == 6
    assert D.locate("cifar10", download=False).origin.startswith("cache folder")


def test_archive_with_an_escaping_member_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "archives" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    monkeypatch.setenv("COCS_ARCHIVES", str(archive.parent))
    with pytest.raises(tarfile.FilterError):
        D.locate("cifar10", download=False, progress=False)
    assert not (D.data_root().parent / "escaped.txt").exists()
    assert not (D.data_root() / "cifar10").exists()


def test_shared_cifar10_archive_is_found_without_extracting(monkeypatch):
    shared = D.REPO_ROOT.parent / "shared" / "data"
    if not (shared / "cifar10-jpeg.tar.gz").is_file():
        pytest.skip(f"no offline archive at {shared} (only present on the project's machines)")
    monkeypatch.delenv("COCS_ARCHIVES")  # the default: ../shared/data beside the repository
    assert D.find_archive("cifar10") == shared / "cifar10-jpeg.tar.gz"
    with tarfile.open(
        shared / "cifar10-jpeg.tar.gz"
    ) as tf:  # layout check on the first members only
        names = [m.name for _, m in zip(range(4), tf, strict=False)]
    assert names[0] == "cifar10" and any(n.startswith("cifar10/test/") for n in names)


# ---- decoding and the cache -----------------------------------------------------------------


def test_load_split_decodes_grayscale_to_rgb_and_caches(tmp_path, monkeypatch):
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 3, "val": 2}, size=20)
    Image.new("L", (30, 20), 128).save(tree / "train" / "bee" / "gray.jpg")  # grayscale, not square

    data = D.load_split("folder", "train", img_size=16, data_path=tree, progress=False)
    size = D.load_size("folder", 16)  # 18: eval centre-crops 16 of it
    assert data.images.shape == (10, 3, size, size) and data.images.dtype == torch.uint8
    assert data.classes == ["ant", "bee", "cat"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    gray = data.images[data.files.index("bee/gray.jpg")]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert len(list((D.data_root() / "cache").glob("folder-train-18px-cap0-3cls-*.pt"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(D, "_decode", no_decoding)
    again = D.load_split("folder", "train", img_size=16, data_path=tree, progress=False)
    assert torch.equal(again.images, data.images) and again.files == data.files


def test_cache_is_rebuilt_when_files_change(tmp_path):
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 2, "val": 1})
    assert len(D.load_split("folder", "train", img_size=16, data_path=tree, progress=False)) == 6
    Image.new("RGB", (16, 16)).save(tree / "train" / "ant" / "new.png")
    assert len(D.load_split("folder", "train", img_size=16, data_path=tree, progress=False)) == 7


def test_per_class_cap_and_class_subset(tmp_path):
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 5, "val": 3})
    train = D.load_split(
        "folder",
        "train",
        img_size=16,
        data_path=tree,
        max_per_class=2,
        max_classes=2,
        progress=False,
    )
    assert train.classes == ["ant", "bee"] and train.labels.tolist() == [0, 0, 1, 1]
    assert train.files == ["ant/00.png", "ant/01.png", "bee/00.png", "bee/01.png"]
    test = D.load_split(
        "folder", "test", img_size=16, data_path=tree, classes=train.classes, progress=False
    )
    assert test.classes == train.classes and len(test) == 6


def test_corrupt_images_are_skipped_and_named(tmp_path):
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 3, "val": 1}, fmt="JPEG")
    good = (tree / "train" / "ant" / "00.jpg").read_bytes()
    (tree / "train" / "ant" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (tree / "train" / "cat" / "garbage.jpg").write_bytes(b"this is not an image")

    with pytest.warns(
        UserWarning, match=r"skipped 2 unreadable image\(s\).*ant/truncated.jpg.*cat/garbage.jpg"
    ):
        data = D.load_split("folder", "train", img_size=16, data_path=tree, progress=False)
    assert len(data) == 9 and data.skipped == ["ant/truncated.jpg", "cat/garbage.jpg"]
    with pytest.warns(UserWarning, match="cat/garbage.jpg"):  # loading from the cache warns again
        D.load_split("folder", "train", img_size=16, data_path=tree, progress=False)


def test_a_split_with_nothing_readable_is_an_error(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "tree" / split / "ant").mkdir(parents=True)
        (tmp_path / "tree" / split / "ant" / "bad.png").write_bytes(b"nope")
    with pytest.raises(D.DataError, match=r"no readable image.*1 unreadable \(ant/bad.png\)"):
        D.load_split("folder", "train", img_size=16, data_path=tmp_path / "tree", progress=False)


# ---- transforms, sampler and loader ---------------------------------------------------------


def test_pad_crop_flip_is_a_shifted_or_mirrored_copy_decided_by_the_seed():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    aug = D.TrainAugment(crop="pad", img_size=32)
    out = aug(images, seeds=[0, 1, 2, 3, 4, 5])
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, aug(images, seeds=[0, 1, 2, 3, 4, 5]))
    assert not torch.equal(out, aug(images, seeds=[6, 7, 8, 9, 10, 11]))
    # With no padding there is no shift: each image is itself or its mirror image.
    same = D.TrainAugment(crop="pad", img_size=32, pad=0)(images, seeds=range(6))
    for x, y in zip(images, same, strict=True):
        assert torch.equal(x, y) or torch.equal(x.flip(-1), y)


def test_the_crop_margin_defaults_to_an_eighth_of_the_side():
    assert D.train_transform("cifar10", 32).pad == 4
    assert D.train_transform("cifar10", 32, pad=0).pad == 0


def test_resized_crop_and_randaugment_are_seeded_per_image():
    images = torch.randint(0, 256, (4, 3, 18, 18), dtype=torch.uint8)
    aug = D.TrainAugment(crop="rrc", img_size=16, randaugment="rand-m9-mstd0.5-inc1")
    torch.manual_seed(123)
    out = aug(images, seeds=[5, 6, 7, 8])
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.uint8
    # The same image and seed give the same result in any batch position and any global state.
    torch.manual_seed(999)
    assert torch.equal(aug(images[2:3], seeds=[7])[0], out[2])
    # Every operation at the top magnitude (posterize then keeps 0 bits, which Pillow refuses).
    strong = D.TrainAugment(crop="pad", img_size=16, randaugment="rand-n15-m10-inc1")
    assert strong(images[:, :, :16, :16], seeds=range(4)).shape == (4, 3, 16, 16)


def test_normalize_and_center_crop():
    images = torch.full((2, 3, 18, 18), 255, dtype=torch.uint8)
    x = D.normalize(D.CenterCrop(16)(images), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.ones_like(x))


def test_sampler_shards_reproduce_the_single_process_batches():
    one = list(D.EpochBatchSampler(21, 6, seed=3, epoch=2))
    assert len(one) == 3 and all(len(b) == 6 for b in one)  # the last partial batch is dropped
    assert one == list(D.EpochBatchSampler(21, 6, seed=3, epoch=2))
    assert one != list(D.EpochBatchSampler(21, 6, seed=3, epoch=3))
    assert one != list(D.EpochBatchSampler(21, 6, seed=2, epoch=3))
    ranks = [
        list(D.EpochBatchSampler(21, 6, seed=3, epoch=2, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    evals = [
        list(D.EpochBatchSampler(7, 4, shuffle=False, drop_last=False, rank=r, world_size=3))
        for r in range(3)
    ]
    assert sorted(i for r in evals for b in r for i, _ in b) == list(range(7))
    assert [len(e) for e in evals] == [
        len(D.EpochBatchSampler(7, 4, drop_last=False, rank=r, world_size=3)) for r in range(3)
    ]


def test_loader_batches_do_not_depend_on_worker_count(tmp_path):
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 4, "val": 1})
    data = D.load_split("folder", "train", img_size=16, data_path=tree, progress=False)
    ds = D.AugmentedImages(data, D.train_transform("folder", 16))
    state = torch.get_rng_state()
    batches = {
        w: list(D.make_loader(ds, D.EpochBatchSampler(len(ds), 4, seed=0, epoch=1), num_workers=w))
        for w in (0, 1)
    }
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert len(batches[0]) == 3
    for (x0, y0), (x1, y1) in zip(batches[0], batches[1], strict=True):
        assert x0.shape == (4, 3, 16, 16) and torch.equal(x0, x1) and torch.equal(y0, y1)
