"""Image data sets as uint8 tensors: where they come from, a decode-once cache, fast CPU transforms.

Where a data set is looked for, in this order (the first that exists wins):

1. an explicit path: the ``data_path`` argument (``--data_path``), else the environment variable
   ``COCS_DATA_<NAME>`` (``COCS_DATA_CIFAR10``, ``COCS_DATA_CIFAR100``, ``COCS_DATA_IMAGENETTE``,
   ``COCS_DATA_IMAGENET``, ``COCS_DATA_FOLDER``). A path that is given but holds no data set is an
   error, never silently skipped.
2. the cache folder: ``$COCS_DATA`` if set, else ``data/`` at the repository root (git-ignored).
3. an archive of the same layout in ``$COCS_ARCHIVES`` (folders separated by ``os.pathsep``; if
   unset, ``../shared/data`` beside the repository when it exists), extracted once into the cache
   folder through a temporary folder and a rename, so an interrupted extraction leaves nothing
   half-written.
4. a download (CIFAR through torchvision, Imagenette from its official address), unless
   ``download=False``.
5. otherwise a ``DataNotFound`` error that lists what was tried and what to do.

A data set on disk is either an ImageFolder-style tree ``<root>/{train,test|val}/<class>/<image>``
or, for CIFAR, torchvision's pickled batches. Decoded images are cached as one uint8 tensor per
split and size in ``<cache folder>/cache/`` so that JPEG decoding happens once, not every epoch.
Unreadable images are skipped with a warning that names them (and the count); a split in which
nothing is readable is an error.
"""

import argparse
import contextlib
import hashlib
import math
import os
import random
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(RuntimeError):
    """A data set is present but unusable (bad layout, nothing readable, mismatched classes)."""


class DataNotFound(DataError):
    """No copy of a data set was found and none could be fetched."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where one data set lives and how its images are prepared."""

    name: str
    folder: str  # tree name in the cache folder and top-level folder inside archives
    test_splits: tuple[str, ...]  # candidate folder names of the evaluation split
    archives: tuple[str, ...] = ()  # archive file names looked for in $COCS_ARCHIVES
    torchvision: str = ""  # torchvision class that can download pickled batches
    url: str = ""  # official address of a tar archive holding ``folder/``
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    train_crop: str = "rrc"  # "pad": pad-and-crop (CIFAR); "rrc": random resized crop
    crop_pct: float = 0.875  # eval: resize to img_size / crop_pct, centre-crop img_size
    how_to_get: str = ""

    @property
    def env(self) -> str:
        return f"COCS_DATA_{self.name.upper()}"


def _tree_note(folder: str) -> str:  # braces doubled: ``how_to_get`` is formatted later
    return f"or an ImageFolder tree {folder}/{{{{train,test}}}}/<class>/*.jpg"


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="cifar10",
            folder="cifar10",
            test_splits=("test",),
            archives=("cifar10-jpeg.tar.gz",),
            torchvision="CIFAR10",
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
            train_crop="pad",
            crop_pct=1.0,
            how_to_get=(
                "on a machine with internet access run `python -m cocs.data cifar10`, which downloads "
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into {data_root}; or put "
                "cifar10-jpeg.tar.gz (layout cifar10/{{train,test}}/<class>/*.jpg) in a folder and set "
                "COCS_ARCHIVES to that folder; or set COCS_DATA_CIFAR10 (or --data_path) to an existing "
                "copy: a folder holding cifar-10-batches-py/, " + _tree_note("cifar10")
            ),
        ),
        DatasetSpec(
            name="cifar100",
            folder="cifar100",
            test_splits=("test",),
            archives=("cifar100-jpeg.tar.gz",),
            torchvision="CIFAR100",
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            train_crop="pad",
            crop_pct=1.0,
            how_to_get=(
                "on a machine with internet access run `python -m cocs.data cifar100`, which downloads "
                "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into {data_root}; or put "
                "cifar100-jpeg.tar.gz (layout cifar100/{{train,test}}/<class>/*.jpg) in a folder and set "
                "COCS_ARCHIVES to that folder; or set COCS_DATA_CIFAR100 (or --data_path) to an existing "
                "copy: a folder holding cifar-100-python/, " + _tree_note("cifar100")
            ),
        ),
        DatasetSpec(
            name="imagenette",
            folder="imagenette2-160",
            test_splits=("val",),
            archives=("imagenette2-160.tar.gz", "imagenette2-160.tgz"),
            url="https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
            how_to_get=(
                "on a machine with internet access run `python -m cocs.data imagenette`, or download "
                "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz and extract it into "
                "{data_root} (giving {data_root}/imagenette2-160/{{train,val}}/<wnid>/*.JPEG); or put the "
                "archive in a folder and set COCS_ARCHIVES to that folder; or set COCS_DATA_IMAGENETTE "
                "(or --data_path) to an existing imagenette2-160 folder"
            ),
        ),
        DatasetSpec(
            name="imagenet",
            folder="imagenet",
            test_splits=("val",),
            how_to_get=(
                "ImageNet-1k needs a free account: download ILSVRC2012 train and val from "
                "https://image-net.org/download.php, arrange both as <root>/{{train,val}}/<wnid>/*.JPEG "
                "(one folder per class, also for val), then set COCS_DATA_IMAGENET=<root> or pass "
                "--data_path <root>, or place it at {data_root}/imagenet"
            ),
        ),
        DatasetSpec(
            name="folder",
            folder="folder",
            test_splits=("val", "test"),
            how_to_get=(
                "pass --data_path <root> (or set COCS_DATA_FOLDER) where <root> holds train/<class>/* "
                "and val/<class>/* (or test/<class>/*) image files"
            ),
        ),
    ]
}


def get_spec(dataset: str) -> DatasetSpec:
    """The ``DatasetSpec`` of a data set name; a ``ValueError`` naming the known ones otherwise."""
    if dataset not in DATASETS:
        raise ValueError(
            f"dataset={dataset!r} is not known; expected one of {sorted(DATASETS)} "
            "(use 'folder' with data_path for any ImageFolder tree)"
        )
    return DATASETS[dataset]


def data_root() -> Path:
    """The cache folder: ``$COCS_DATA``, else ``data/`` at the repository root."""
    env = os.environ.get("COCS_DATA")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def archive_dirs() -> list[Path]:
    """Folders searched for archives: ``$COCS_ARCHIVES``, else ``../shared/data`` if it exists."""
    env = os.environ.get("COCS_ARCHIVES")
    if env is not None:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    default = REPO_ROOT.parent / "shared" / "data"
    return [default] if default.is_dir() else []


# --------------------------------------------------------------------------------------------
# Locating a data set on disk
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """A data set found on disk: an ImageFolder tree or torchvision's pickled CIFAR batches."""

    kind: str  # "tree" or "torchvision"
    root: Path  # tree root (holding train/), or the folder torchvision's class is given
    origin: str  # how it was found, for logs and metrics files


def _tree_test_split(spec: DatasetSpec, root: Path) -> str | None:
    return next((s for s in spec.test_splits if (root / s).is_dir()), None)


def _is_tree(spec: DatasetSpec, root: Path) -> bool:
    return (root / "train").is_dir() and _tree_test_split(spec, root) is not None


def _torchvision_folder(spec: DatasetSpec) -> str:
    return {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}.get(
        spec.torchvision, ""
    )


def _source_at(spec: DatasetSpec, path: Path, origin: str) -> DataSource | None:
    """The data set at ``path`` in any layout that ``spec`` accepts, or None."""
    if _is_tree(spec, path):
        return DataSource("tree", path, origin)
    if _is_tree(spec, path / spec.folder):
        return DataSource("tree", path / spec.folder, origin)
    tv = _torchvision_folder(spec)
    if tv:
        if (path / tv).is_dir():
            return DataSource("torchvision", path, origin)
        if path.name == tv and path.is_dir():
            return DataSource("torchvision", path.parent, origin)
    return None


def _extract(archive: Path, dest_root: Path, folder: str, progress: bool = True) -> Path:
    """Extract ``folder/`` of a tar archive into ``dest_root`` atomically; returns the new tree."""
    dest_root.mkdir(parents=True, exist_ok=True)
    target = dest_root / folder
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{folder}-", dir=dest_root))
    try:
        with tarfile.open(archive) as tf:
            for member in tqdm(
                tf, desc=f"extract {archive.name}", unit=" files", disable=not progress
            ):
                # The "data" filter refuses absolute paths, links out of the folder and devices.
                tf.extract(member, tmp, filter="data")
        if not (tmp / folder).is_dir():
            found = sorted(p.name for p in tmp.iterdir())
            raise DataError(
                f"archive {archive} holds {found}, expected a top-level folder {folder}/; "
                "re-create the archive with that layout"
            )
        try:
            os.rename(tmp / folder, target)
        except OSError:
            if not target.is_dir():  # a concurrent extraction that finished first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_archive(dataset: str) -> Path | None:
    """The first archive of ``dataset`` in ``archive_dirs()``, or None."""
    spec = get_spec(dataset)
    for folder in archive_dirs():
        for name in spec.archives:
            if (folder / name).is_file():
                return folder / name
    return None


def _published(spec: DatasetSpec) -> tuple[str, str, str]:
    """(url, file name, MD5) of a data set's official archive, as torchvision publishes them."""
    import torchvision.datasets as tvd

    if spec.torchvision:
        cls = getattr(tvd, spec.torchvision)
        return cls.url, cls.filename, cls.tgz_md5
    known = {url: md5 for url, md5 in tvd.Imagenette._ARCHIVES.values()}
    return spec.url, spec.url.rsplit("/", 1)[-1], known.get(spec.url, "")


def _download(spec: DatasetSpec, root: Path, progress: bool) -> DataSource:
    from .download import download

    root.mkdir(parents=True, exist_ok=True)
    url, name, md5 = _published(spec)
    offline = (
        f"copy {' or '.join(spec.archives) or name} into a folder named by COCS_ARCHIVES"
        if spec.archives
        else f"download {url} elsewhere and put it at {root / 'downloads' / name}"
    )
    if spec.torchvision:  # torchvision finds the verified archive and only extracts it
        import torchvision.datasets

        download(url, root / name, md5=md5, progress=progress, offline=offline)
        getattr(torchvision.datasets, spec.torchvision)(str(root), train=True, download=True)
        return DataSource("torchvision", root, f"downloaded from {url}")
    archive = download(url, root / "downloads" / name, md5=md5, progress=progress, offline=offline)
    tree = _extract(archive, root, spec.folder, progress)
    return DataSource("tree", tree, f"downloaded from {url}")


def locate(
    dataset: str, data_path: str | os.PathLike = "", *, download: bool = True, progress: bool = True
) -> DataSource:
    """Find a data set (extracting or downloading it if needed), in the order of the module doc.

    Args:
        dataset: a name in ``DATASETS``.
        data_path: an explicit location; empty to use ``COCS_DATA_<NAME>`` or the search below it.
        download: try the official download as the last resort.
        progress: show progress bars while extracting.
    """
    spec = get_spec(dataset)
    root = data_root()
    how = spec.how_to_get.format(data_root=root)
    explicit, origin = (
        (str(data_path), "data_path") if data_path else (os.environ.get(spec.env, ""), spec.env)
    )
    if explicit:
        path = Path(explicit).expanduser()
        source = _source_at(spec, path, f"{origin}={path}")
        if source is None:
            state = (
                "does not exist"
                if not path.exists()
                else "holds no train/ and " + "|".join(spec.test_splits) + "/ folders"
            )
            raise DataNotFound(
                f"{origin}={explicit!r} {state} (no {dataset} data set there). To fix: {how}."
            )
        return source

    tried = []
    source = _source_at(spec, root, f"cache folder {root}")
    if source is not None:
        return source
    tried.append(f"cache folder {root} (set COCS_DATA to use another)")

    archive = find_archive(dataset)
    if archive is not None:
        tree = _extract(archive, root, spec.folder, progress)
        return DataSource("tree", tree, f"extracted from {archive}")
    if spec.archives:
        where = ", ".join(map(str, archive_dirs())) or "no folder (COCS_ARCHIVES is empty)"
        tried.append(f"archives {' or '.join(spec.archives)} in {where}")

    if spec.torchvision or spec.url:
        if download:
            try:
                return _download(spec, root, progress)
            except Exception as err:  # any failure becomes part of the report
                tried.append(f"download ({type(err).__name__}: {err})")
        else:
            tried.append("download (skipped: download=False)")
    tried.insert(0, f"{spec.env} (unset) and data_path (empty)")
    raise DataNotFound(
        f"no copy of {dataset} found. Tried: " + "; ".join(tried) + f". To fix: {how}."
    )


# --------------------------------------------------------------------------------------------
# Decoding into uint8 tensors, with a cache
# --------------------------------------------------------------------------------------------


@dataclass
class ImageTensors:
    """One split of a data set, decoded: images ``(N, 3, S, S)`` uint8 and labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    files: list[str]  # relative file names (or "<split>:<index>" for pickled CIFAR)
    source: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def load_size(dataset: str, img_size: int) -> int:
    """Side of the cached square images: ``img_size / crop_pct`` (eval centre-crops ``img_size``)."""
    return int(math.floor(img_size / get_spec(dataset).crop_pct + 0.5))


def _scan(folder: Path, classes: Sequence[str], cap: int) -> list[tuple[str, int]]:
    """``(relative file, label)`` for the first ``cap`` images (sorted by name) of each class."""
    items = []
    for label, name in enumerate(classes):
        cdir = folder / name
        if not cdir.is_dir():
            raise DataError(
                f"class {name!r} has no folder in {folder}; the splits must share class folders"
            )
        files = sorted(
            e.name
            for e in os.scandir(cdir)
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        items += [(f"{name}/{f}", label) for f in (files[:cap] if cap > 0 else files)]
    return items


def _decode(path: Path, size: int) -> np.ndarray:
    """One image as ``(size, size, 3)`` uint8 RGB: centre square, resized with antialiasing."""
    with Image.open(path) as im:
        im = im.convert("RGB")  # grayscale, palette and CMYK images become RGB
        w, h = im.size
        if (w, h) != (size, size):
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            im = im.resize((size, size), Image.Resampling.BICUBIC, box=box)
        return np.asarray(im, dtype=np.uint8)


def _decode_all(folder: Path, items, size: int, desc: str, progress: bool):
    images = np.empty((len(items), size, size, 3), dtype=np.uint8)
    labels, files, skipped = [], [], []
    n = 0
    for rel, label in tqdm(items, desc=desc, unit=" img", disable=not progress, mininterval=1.0):
        try:
            images[n] = _decode(folder / rel, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped.append(rel)
            continue
        labels.append(label)
        files.append(rel)
        n += 1
    images = torch.from_numpy(images[:n]).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
    return images, torch.tensor(labels, dtype=torch.int64), files, skipped


def _load_torchvision(spec: DatasetSpec, root: Path, split: str):
    import torchvision.datasets

    ds = getattr(torchvision.datasets, spec.torchvision)(
        str(root), train=split == "train", download=False
    )
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
    return images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _warn_skipped(skipped: list[str], where: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s) in {where}: {shown}. "
            "Replace or delete them (then delete the cache file) to use every image.",
            stacklevel=3,
        )


def load_split(
    dataset: str,
    split: str,
    *,
    img_size: int,
    max_per_class: int = 0,
    max_classes: int = 0,
    classes: Sequence[str] | None = None,
    data_path: str | os.PathLike = "",
    download: bool = True,
    cache: bool = True,
    progress: bool = True,
) -> ImageTensors:
    """One split as uint8 tensors of side ``load_size(dataset, img_size)``, cached after decoding.

    Args:
        dataset: a name in ``DATASETS``.
        split: "train", or "test" (the evaluation split: test/ or val/ on disk).
        img_size: the side the model sees.
        max_per_class: keep the first this-many images (in file-name order) of each class; 0 all.
        max_classes: keep the first this-many classes (sorted by name); 0 all. Ignored if ``classes``.
        classes: the exact class names to keep, in label order (pass the training split's).
        data_path, download, progress: as in ``locate``.
        cache: read and write ``<cache folder>/cache/*.pt``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    spec = get_spec(dataset)
    source = locate(dataset, data_path, download=download, progress=progress)
    size = load_size(dataset, img_size)

    if source.kind == "torchvision":
        images, labels, all_classes = _load_torchvision(spec, source.root, split)
        keep = list(classes) if classes is not None else all_classes[: max_classes or None]
        missing = [c for c in keep if c not in all_classes]
        if missing:
            raise DataError(f"classes {missing} are not in {dataset} ({all_classes})")
        remap = torch.full((len(all_classes),), -1, dtype=torch.int64)
        remap[[all_classes.index(c) for c in keep]] = torch.arange(len(keep))
        labels = remap[labels]
        idx = torch.cat(
            [
                torch.nonzero(labels == k).flatten()[: max_per_class or None]
                for k in range(len(keep))
            ]
        )
        idx = idx.sort().values
        images, labels = images[idx], labels[idx]
        if size != images.shape[-1]:
            images = _resize_uint8(images, size)
        return ImageTensors(
            images, labels, keep, [f"{split}:{i}" for i in idx.tolist()], source.origin
        )

    folder = source.root / ("train" if split == "train" else _tree_test_split(spec, source.root))
    if classes is None:
        found = sorted(
            e.name
            for e in os.scandir(source.root / "train")
            if e.is_dir() and not e.name.startswith(".")
        )
        classes = found[: max_classes or None]
    classes = list(classes)
    if not classes:
        raise DataError(
            f"{source.root / 'train'} has no class folders; expected train/<class>/<image>"
        )
    items = _scan(folder, classes, max_per_class)

    key = hashlib.sha1("\n".join([str(source.root.resolve()), *classes]).encode()).hexdigest()[:8]
    path = (
        data_root()
        / "cache"
        / f"{dataset}-{split}-{size}px-cap{max_per_class}-{len(classes)}cls-{key}.pt"
    )
    if cache and path.is_file():
        saved = torch.load(path, weights_only=True)
        # A changed folder (files added or removed) invalidates the cache; the scan is cheap.
        if saved.get("version") == CACHE_VERSION and sorted(
            saved["files"] + saved["skipped"]
        ) == sorted(r for r, _ in items):
            _warn_skipped(saved["skipped"], str(folder))
            return ImageTensors(
                saved["images"],
                saved["labels"],
                saved["classes"],
                saved["files"],
                source.origin,
                saved["skipped"],
            )

    images, labels, files, skipped = _decode_all(
        folder, items, size, f"decode {dataset}/{split} at {size}px", progress
    )
    if len(files) == 0:
        shown = ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        raise DataError(
            f"no readable image in {folder}: {len(skipped)} unreadable ({shown}); "
            "expected <class>/<image> files that PIL can open"
        )
    _warn_skipped(skipped, str(folder))
    if cache:
        _save_atomic(
            {
                "version": CACHE_VERSION,
                "images": images,
                "labels": labels,
                "classes": classes,
                "files": files,
                "skipped": skipped,
                "root": str(source.root),
            },
            path,
        )
    return ImageTensors(images, labels, classes, files, source.origin, skipped)


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch ``(N, 3, H, W) -> (N, 3, size, size)`` with antialiasing."""
    out = F.interpolate(
        images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Transforms on uint8 batches, seeded per sample
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _global_rng(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global generators inside the block, restoring them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _resized_crop_box(rng: random.Random, h: int, w: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random box (top, left, height, width) covering ``scale`` of the area at aspect ``ratio``."""
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        bw, bh = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < bw <= w and 0 < bh <= h:
            return rng.randint(0, h - bh), rng.randint(0, w - bw), bh, bw
    # Rare fallback: the largest centred box whose aspect lies inside ``ratio``.
    aspect = w / h
    bw, bh = (
        (w, h)
        if ratio[0] <= aspect <= ratio[1]
        else ((round(h * ratio[1]), h) if aspect > ratio[1] else (w, round(w / ratio[0])))
    )
    return (h - bh) // 2, (w - bw) // 2, bh, bw


def _posterize(img: Image.Image, bits: int, **_) -> Image.Image:
    """Keep ``bits`` bits per channel, at least one.

    XX
        refuses; one bit is the nearest image Pillow allows.
    """
    from PIL import ImageOps

    return img if bits >= 8 else ImageOps.posterize(img, max(1, int(bits)))


class TrainAugment:
    """Random crop (pad-and-crop or resized crop), horizontal flip and optional RandAugment.

    Called on a uint8 batch ``(B, 3, S, S)`` with one integer seed per image, it returns
    ``(B, 3, img_size, img_size)`` uint8. The seeds alone decide the randomness, so a batch is
    augmented identically whatever the worker count or the process that builds it.
    """

    def __init__(
        self,
        *,
        crop: str,
        img_size: int,
        randaugment: str = "",
        mean=IMAGENET_MEAN,
        pad: int | None = None,
    ):
        if crop not in ("pad", "rrc"):
            raise ValueError(f"crop={crop!r}; expected 'pad' or 'rrc'")
        self.crop, self.img_size = crop, img_size
        self.pad = img_size // 8 if pad is None else pad  # 4 px at 32 px, as for CIFAR
        self.randaugment = None
        if randaugment:
            from timm.data import rand_augment_transform

            hparams = {
                "translate_const": int(img_size * 0.45),
                "img_mean": tuple(round(255 * m) for m in mean),
            }
            self.randaugment = rand_augment_transform(randaugment, hparams)
            for op in self.randaugment.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        rngs = [random.Random(s) for s in seeds]
        out = (
            self._pad_crop_flip(images, rngs)
            if self.crop == "pad"
            else self._resized_crop_flip(images, rngs)
        )
        if self.randaugment is not None:
            out = torch.stack([self._rand_augment(x, s) for x, s in zip(out, seeds, strict=True)])
        return out

    def _pad_crop_flip(self, images, rngs):
        B, C, H, W = images.shape
        p, S = self.pad, self.img_size
        padded = F.pad(images, (p, p, p, p))  # (B, C, H+2p, W+2p), zeros
        params = torch.tensor(
            [
                [r.randint(0, H + 2 * p - S), r.randint(0, W + 2 * p - S), r.random() < 0.5]
                for r in rngs
            ]
        )
        rows = params[:, 0, None] + torch.arange(S)  # (B, S)
        cols = params[:, 1, None] + torch.arange(S)  # (B, S)
        cols = torch.where(params[:, 2, None].bool(), cols.flip(1), cols)
        b = torch.arange(B)[:, None, None, None]
        c = torch.arange(C)[None, :, None, None]
        return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, S, S)

    def _resized_crop_flip(self, images, rngs):
        from torchvision.transforms.v2 import functional as TF

        out = []
        for x, r in zip(images, rngs, strict=True):
            top, left, h, w = _resized_crop_box(r, x.shape[-2], x.shape[-1])
            y = TF.resized_crop(x, top, left, h, w, [self.img_size, self.img_size], antialias=True)
            out.append(y.flip(-1) if r.random() < 0.5 else y)
        return torch.stack(out)  # (B, 3, img_size, img_size)

    def _rand_augment(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        # timm's RandAugment works on PIL images and draws from the global Python/NumPy generators.
        with _global_rng(seed):
            im = self.randaugment(Image.fromarray(x.permute(1, 2, 0).numpy()))
        return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)


class CenterCrop:
    """Centre crop of a uint8 batch ``(B, 3, S, S) -> (B, 3, img_size, img_size)``."""

    def __init__(self, img_size: int):
        self.img_size = img_size

    def __call__(self, images: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        S, s = images.shape[-1], self.img_size
        o = (S - s) // 2
        return images[..., o : o + s, o : o + s]


def train_transform(
    dataset: str, img_size: int, randaugment: str = "", pad: int | None = None
) -> TrainAugment:
    """The training augmentation of a data set (pad-and-crop for CIFAR, resized crop otherwise).

    ``pad``: the pad-and-crop margin in pixels (None: ``img_size // 8``; 0: flips only).
    """
    spec = get_spec(dataset)
    return TrainAugment(
        crop=spec.train_crop, img_size=img_size, randaugment=randaugment, mean=spec.mean, pad=pad
    )


def normalize(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float ``(B, 3, H, W)`` standardised per channel; data that
    need no standardisation (point clouds: ``mean=None``) are returned as float."""
    if mean is None:
        return images.float()
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - m) / s


class AugmentedImages(Dataset):
    """An ``ImageTensors`` split served in batches; items are indices or ``(index, seed)`` pairs."""

    def __init__(self, data: ImageTensors, transform: Callable | None = None):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [it if isinstance(it, tuple) else (int(it), int(it)) for it in items]
        idx = torch.tensor([i for i, _ in pairs])
        images = self.data.images[idx]  # (B, 3, S, S)
        if self.transform is not None:
            images = self.transform(images, [s for _, s in pairs])
        return images, self.data.labels[idx]

    def __getitem__(self, item):
        images, labels = self.__getitems__([item])
        return images[0], labels[0]


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed seed for one epoch's order (so seed 1 epoch 0 differs from seed 0 epoch 1)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class EpochBatchSampler(Sampler):
    """Batches of ``(index, seed)`` for one epoch, sharded over processes.

    The order and the per-image seeds depend only on ``(seed, epoch)``. Global batch ``k`` is
    ``order[k*batch_size : (k+1)*batch_size]``; process ``rank`` takes its ``rank``-th contiguous
    part, so ``world_size`` processes together see exactly the batches of one process.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.shuffle, self.drop_last, self.rank, self.world_size = (
            shuffle,
            drop_last,
            rank,
            world_size,
        )

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest > 0 and not self.drop_last and rest > self.rank)

    def __iter__(self):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        for start in range(0, self.n, self.batch_size):
            chunk = torch.arange(start, min(start + self.batch_size, self.n))
            if len(chunk) < self.batch_size and self.drop_last:
                break
            part = chunk.tensor_split(self.world_size)[self.rank]
            if len(part):
                yield list(zip(order[part].tolist(), seeds[part].tolist(), strict=True))


def _collated(batch):
    return batch  # ``AugmentedImages.__getitems__`` already returns a collated batch


def make_loader(
    dataset: AugmentedImages,
    sampler: EpochBatchSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over pre-collated batches; its own generator keeps global RNGs untouched."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_collated,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(epoch_seed(sampler.seed, sampler.epoch)),
        pin_memory=pin_memory,
    )


def write_synthetic_folder(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] = ("ant", "bee", "cat"),
    per_class: Mapping[str, int] | None = None,
    size: int = 16,
    fmt: str = "PNG",
    seed: int = 0,
) -> Path:
    """Write a small ImageFolder tree of learnable images: class ``k`` is bright in channel ``k % 3``.

    Args:
        root: folder to create; gets ``<split>/<class>/<NN>.<fmt>``.
        per_class: images per class for each split; default ``{"train": 8, "val": 4}``.
        size: image side in pixels.
        fmt: a PIL format name (PNG, JPEG).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    suffix = {"JPEG": "jpg"}.get(fmt.upper(), fmt.lower())
    for split, n in (per_class or {"train": 8, "val": 4}).items():
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                pixels[..., k % 3] += 150
                Image.fromarray(pixels).save(folder / f"{i:02d}.{suffix}", format=fmt)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cocs.data NAME``: find, extract or download a data set and say where it is."""
    parser = argparse.ArgumentParser(prog="python -m cocs.data", description=main.__doc__)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--data_path", default="")
    parser.add_argument("--no_download", action="store_true")
    parser.add_argument(
        "--img_size", type=int, default=0, help="also decode both splits into the cache"
    )
    args = parser.parse_args(argv)
    source = locate(args.dataset, args.data_path, download=not args.no_download)
    print(f"{args.dataset}: {source.kind} at {source.root} ({source.origin})")
    if args.img_size:
        for split in ("train", "test"):
            data = load_split(
                args.dataset,
                split,
                img_size=args.img_size,
                data_path=args.data_path,
                download=not args.no_download,
            )
            print(f"  {split}: {tuple(data.images.shape)} uint8, {len(data.classes)} classes")


if __name__ == "__main__":
    main()
