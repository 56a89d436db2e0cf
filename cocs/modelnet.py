"""ModelNet40 point clouds: the official split, 1,024 surface points per shape.

Where a copy is looked for, in order (the same order as the image data sets of
:mod:`cocs.data`):

1. ``data_path`` or ``COCS_DATA_MODELNET40``: a folder of the public HDF5 release, or the
   handbook's ``modelnet40-1024.npz``;
2. the archive ``modelnet40-1024.npz`` in ``COCS_ARCHIVES`` (by default ``../shared/data``);
3. the cache folder (``data/modelnet40_ply_hdf5_2048/``);
4. a download of the public release that PointNet and PointMLP use (HDF5 files of 2,048
   points per shape, of which the first 1,024 are kept), unless ``download=False``.

Training augmentation is PointMLP's: each shape scaled by a random factor per axis and moved
by a random offset, and its points shuffled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import DataNotFound, archive_dirs, data_root

__all__ = ["ARCHIVE", "HDF5_URL", "AugmentedPoints", "PointClouds", "augment", "load_modelnet40"]

ARCHIVE = "modelnet40-1024.npz"
HDF5_URL = "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip"
HDF5_FOLDER = "modelnet40_ply_hdf5_2048"
ENV = "COCS_DATA_MODELNET40"


@dataclass
class PointClouds:
    """One split: ``points`` (S, N, 3) float32, ``labels`` (S,) int64, class names, source."""

    points: Tensor
    labels: Tensor
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def _from_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(path, allow_pickle=False) as f:
        names = [str(n) for n in f["split_names"]]
        keep = f["split"] == names.index(split)
        return f["points"][keep], f["labels"][keep], [str(c) for c in f["class_names"]]


def _from_hdf5(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import h5py

    files = sorted(folder.glob(f"ply_data_{split}*.h5"))
    if not files:
        raise DataNotFound(f"{folder} holds no ply_data_{split}*.h5 files of the HDF5 release")
    points, labels = [], []
    for path in files:  # in the release's file order, as its train_files.txt lists them
        with h5py.File(path, "r") as f:
            points.append(f["data"][:])
            labels.append(f["label"][:].reshape(-1))
    classes = (folder / "shape_names.txt").read_text().split()
    return np.concatenate(points), np.concatenate(labels), classes


def _read(path: Path, split: str):
    return _from_npz(path, split) if path.is_file() else _from_hdf5(path, split)


def _locate(data_path: str, download: bool, progress: bool) -> tuple[Path, str]:
    explicit = data_path or os.environ.get(ENV, "")
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() or any(path.glob("ply_data_*.h5")):
            return path, f"{'data_path' if data_path else ENV}={path.name}"
        raise DataNotFound(
            f"{explicit!r} is neither {ARCHIVE} nor a folder of ply_data_*.h5 files; point it at "
            "one of them, or leave it empty to search the archives and the cache"
        )
    for folder in archive_dirs():
        if (folder / ARCHIVE).is_file():
            return folder / ARCHIVE, f"archive {ARCHIVE}"
    cached = data_root() / HDF5_FOLDER
    if any(cached.glob("ply_data_*.h5")):
        return cached, f"cache folder {HDF5_FOLDER}"
    if not download:
        raise DataNotFound(
            f"no copy of ModelNet40 found (no {ENV}, no {ARCHIVE} in the archive folders, "
            f"nothing in {cached}) and download=False; copy {ARCHIVE} into a folder named by "
            "COCS_ARCHIVES, or allow the download"
        )
    import zipfile

    from .download import download as fetch

    archive = fetch(HDF5_URL, data_root() / "downloads" / f"{HDF5_FOLDER}.zip", progress=progress,
                    offline=f"copy {ARCHIVE} into a folder named by COCS_ARCHIVES")  # fmt: skip
    with zipfile.ZipFile(archive) as z:
        z.extractall(data_root())
    return cached, f"downloaded from {HDF5_URL}"


def load_modelnet40(
    split: str,
    *,
    points: int = 1024,
    max_per_class: int = 0,
    data_path: str = "",
    download: bool = True,
    progress: bool = True,
) -> PointClouds:
    """One split ("train" or "test") of ModelNet40, the first ``points`` points of each shape.

    ``max_per_class`` keeps the first shapes of each class (0: all), for quick runs.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: ModelNet40 has 'train' and 'test'")
    path, source = _locate(data_path, download, progress)
    xyz, labels, classes = _read(path, split)
    if points > xyz.shape[1]:
        raise ValueError(f"points={points}, but the copy has {xyz.shape[1]} per shape")
    labels = labels.astype(np.int64)
    if max_per_class:
        keep = np.concatenate(
            [np.flatnonzero(labels == c)[:max_per_class] for c in range(len(classes))]
        )
        keep.sort()
        xyz, labels = xyz[keep], labels[keep]
    pts = torch.from_numpy(np.ascontiguousarray(xyz[:, :points], dtype=np.float32))
    return PointClouds(pts, torch.from_numpy(labels), classes, source)


def augment(points: Tensor, generator: torch.Generator) -> Tensor:
    """PointMLP's training augmentation of a batch (B, N, 3): each shape scaled per axis by a
    factor in [2/3, 3/2), moved by an offset in [-0.2, 0.2), and its points shuffled."""
    B, N, _ = points.shape
    scale = torch.empty(B, 1, 3).uniform_(2 / 3, 3 / 2, generator=generator)
    shift = torch.empty(B, 1, 3).uniform_(-0.2, 0.2, generator=generator)
    order = torch.rand(B, N, generator=generator).argsort(-1)  # (B, N)
    moved = points * scale + shift
    return moved.gather(1, order.unsqueeze(-1).expand(-1, -1, 3))


class AugmentedPoints(torch.utils.data.Dataset):
    """A :class:`PointClouds` split served in batches, like :class:`cocs.data.AugmentedImages`:
    items are indices or ``(index, seed)`` pairs, and with ``train=True`` each shape gets
    :func:`augment` drawn from its own seed (so the augmentation depends on the run's seed and
    epoch, never on the model or the batch it falls in)."""

    def __init__(self, data: PointClouds, *, train: bool):
        self.data, self.train = data, train

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, items) -> tuple[Tensor, Tensor]:
        pairs = [it if isinstance(it, tuple) else (int(it), int(it)) for it in items]
        idx = torch.tensor([i for i, _ in pairs])
        points = self.data.points[idx]  # (B, N, 3)
        if self.train:
            points = torch.cat([
                augment(points[j : j + 1], torch.Generator().manual_seed(int(s)))
                for j, (_, s) in enumerate(pairs)
            ])  # fmt: skip
        return points, self.data.labels[idx]

    def __getitem__(self, item):
        points, labels = self.__getitems__([item])
        return points[0], labels[0]
