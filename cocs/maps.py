"""Clustering maps: which centre every point of a photo joined, stage by stage and head by head.

Nothing here re-implements the forward pass: :func:`stage_assignments` runs the model once and
reads the hard assignments that :func:`cocs.cluster.context_cluster` returned to each layer
(through :func:`cocs.model.capture_assignments`). The rest turns them into pictures.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import data as D
from .handbook import atomic_write_bytes
from .model import capture_assignments

__all__ = [
    "blend",
    "centres_per_region",
    "load_photo",
    "photo_batch",
    "sample_photos",
    "save_gif",
    "stage_assignments",
]

_LAYER = re.compile(r"^network\.(\d+)\.(\d+)\.")  # network.<2 * stage>.<block>.token_mixer


def sample_photos(photos: str = "") -> list[Path]:
    """Image files to draw maps on.

    Args:
        photos: comma-separated image files or folders; empty: the sample photographs, taken
            from ``data/samples`` or extracted there from ``samples.tar.gz`` in an archive
            folder (``$COCS_ARCHIVES``, ``../shared/data``).
    """
    if photos.strip():
        found = []
        for part in (p.strip() for p in photos.split(",") if p.strip()):
            path = Path(part).expanduser()
            if path.is_dir():
                found += sorted(p for p in path.iterdir() if p.suffix.lower() in D.IMAGE_EXTENSIONS)
            elif path.is_file():
                found.append(path)
            else:
                raise FileNotFoundError(
                    f"photos={photos!r}: {part!r} is neither an image file nor a folder; "
                    "pass existing image paths or folders, separated by commas"
                )
        if not found:
            raise FileNotFoundError(f"photos={photos!r}: no images ({D.IMAGE_EXTENSIONS}) found")
        return found
    folder = D.data_root() / "samples"
    if not folder.is_dir():
        archives = [d / "samples.tar.gz" for d in D.archive_dirs()]
        archive = next((a for a in archives if a.is_file()), None)
        if archive is None:
            return _imagenette_photos(tried=[folder, *archives])
        D._extract(archive, D.data_root(), "samples", progress=False)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in D.IMAGE_EXTENSIONS)


def _imagenette_photos(tried: list[Path]) -> list[Path]:
    """Without the sample photographs: the first validation photo of each Imagenette class."""
    try:
        source = D.locate("imagenette", progress=False)
    except D.DataError as err:
        raise FileNotFoundError(
            f"no sample photographs (tried {', '.join(map(str, tried))}) and no Imagenette ({err}); "
            "pass your own, e.g. photos='path/to/photo.jpg,path/to/folder'"
        ) from err
    split = next(
        source.root / s for s in D.get_spec("imagenette").test_splits if (source.root / s).is_dir()
    )
    return [
        next(p for p in sorted(c.iterdir()) if p.suffix.lower() in D.IMAGE_EXTENSIONS)
        for c in sorted(split.iterdir())
        if c.is_dir()
    ]


def load_photo(path: str | os.PathLike, size: int) -> Tensor:
    """A photo's centre square resized to ``size``: uint8 (3, size, size)."""
    return torch.from_numpy(D._decode(Path(path), size).copy()).permute(2, 0, 1).contiguous()


def photo_batch(photos: Sequence[Tensor], dataset: str) -> Tensor:
    """uint8 photos (3, S, S) -> the float batch (B, 3, S, S) a model trained on ``dataset`` sees."""
    spec = D.get_spec(dataset)
    return D.normalize(torch.stack(list(photos)), spec.mean, spec.std)


@torch.no_grad()
def stage_assignments(model: nn.Module, images: Tensor, block: int = -1) -> list[Tensor]:
    """The assignment of one clustering layer per stage, from one forward pass.

    Args:
        model: a ``cocs`` Context Cluster (any variant, trained or not).
        images: (B, 3, H, W), prepared as the model was trained.
        block: which block of each stage (default the last).
    Returns:
        per stage, (B, heads, H_s, W_s) int64: the index of the centre each point joined,
        numbered over all regions of the map (region * centres_per_region + centre).
    """
    was_training = model.training
    model.eval()
    try:
        with capture_assignments(model) as found:
            model(images)
    finally:
        model.train(was_training)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no context-cluster layers to read assignments from; "
            "pass a cocs Context Cluster model (mixer='cluster')"
        )
    stages: dict[int, list[tuple[int, Tensor]]] = {}
    for name, assignment in found.items():
        m = _LAYER.match(name)
        if m is None:
            raise ValueError(f"unexpected layer name {name!r}; expected network.<i>.<j>...")
        stages.setdefault(int(m.group(1)), []).append((int(m.group(2)), assignment))
    return [sorted(stages[i])[block][1] for i in sorted(stages)]


def _palette(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct-looking RGB colours in [0, 1], (n, 3): tab10's ten hues first, then their
    light variants (tab20), then random ones."""
    from matplotlib import colormaps

    base = np.concatenate(
        [np.asarray(colormaps["tab10"].colors), np.asarray(colormaps["tab20"].colors)[1::2]]
    )
    if n <= len(base):
        return base[:n]
    extra = np.random.default_rng(seed).uniform(0.1, 0.95, size=(n - len(base), 3))
    return np.concatenate([base, extra])


def blend(
    photo: Tensor, assignment: Tensor, *, centres: int = 0, alpha: float = 0.55
) -> np.ndarray:
    """A photo tinted by its clustering: (3, Hp, Wp) uint8 and (H, W) centre indices ->
    (Hp, Wp, 3), each side of the photo a multiple of the map's.

    Every point's square of pixels takes the colour of the centre it joined; the photo shows
    through with weight ``1 - alpha``. Points that joined the same centre share a colour.

    Args:
        centres: centres per region (:func:`centres_per_region`). When given, the colours are
            those of the centre within its region, and white lines mark the regions: a few
            colours repeated per region read better than one colour for every centre of the map.
    """
    if assignment.dim() != 2:
        raise ValueError(f"assignment has shape {tuple(assignment.shape)}; expected (H, W)")
    Hp, Wp = photo.shape[-2:]
    H, W = assignment.shape
    if Hp % H or Wp % W:
        raise ValueError(f"photo side {Hp}x{Wp} is not a multiple of the map's {H}x{W}")
    ids = assignment.cpu().numpy()

    def up(a: np.ndarray) -> np.ndarray:  # (H, W, ...) -> (Hp, Wp, ...), nearest
        return a.repeat(Hp // H, axis=0).repeat(Wp // W, axis=1)

    colour_ids = ids % centres if centres else ids
    colours = up(_palette(int(colour_ids.max()) + 1)[colour_ids])  # (S, S, 3)
    rgb = photo.permute(1, 2, 0).cpu().numpy() / 255.0
    out = (1 - alpha) * rgb + alpha * colours
    if centres:
        region = up(ids // centres)  # (S, S)
        edge = np.zeros_like(region, dtype=bool)
        edge[:-1] |= region[:-1] != region[1:]
        edge[:, :-1] |= region[:, :-1] != region[:, 1:]
        out[edge] = 1.0
    return out


def stage_layouts(model: nn.Module, block: int = -1) -> list[tuple[int, int, int, int]]:
    """(fold_w, fold_h, proposal_w, proposal_h) of the layer :func:`stage_assignments` reads
    in each stage."""
    from .cluster import Cluster

    stages: dict[int, list[tuple[int, tuple[int, int, int, int]]]] = {}
    for name, module in model.named_modules():
        m = _LAYER.match(name + ".")
        if isinstance(module, Cluster) and m is not None:
            layout = (module.fold_w, module.fold_h, module.proposal_w, module.proposal_h)
            stages.setdefault(int(m.group(1)), []).append((int(m.group(2)), layout))
    return [sorted(stages[i])[block][1] for i in sorted(stages)]


def centres_per_region(model: nn.Module, block: int = -1) -> list[int]:
    """Centres per region of the layer :func:`stage_assignments` reads in each stage."""
    return [pw * ph for _, _, pw, ph in stage_layouts(model, block)]


def grid_assignment(
    H: int, W: int, fold_w: int, fold_h: int, proposal_w: int, proposal_h: int
) -> Tensor:
    """(H, W) labels of the partition a layer would make from positions alone: each point
    joins the proposal cell of its region that contains it (the centres are pooled over
    those cells). Regions split the first axis `fold_w` times and the second `fold_h` times,
    as in :func:`cocs.cluster.context_cluster`; only the partition matters, not the labels."""
    rh, rw = H // fold_w, W // fold_h  # points per region along each axis
    rows, cols = torch.arange(H), torch.arange(W)
    region = (rows // rh)[:, None] * fold_h + (cols // rw)[None, :]
    cell = ((rows % rh) * proposal_w // rh)[:, None] * proposal_h + (
        (cols % rw) * proposal_h // rw
    )[None, :]
    return region * (proposal_w * proposal_h) + cell


def adjusted_rand_index(a, b) -> float:
    """Agreement of two partitions of the same points (labels of any kind, any shape), corrected
    for chance: 1 for the same partition, about 0 for unrelated ones. NaN when it is undefined:
    both partitions put every point in one cluster, or every point in its own."""
    _, a = np.unique(np.asarray(a).ravel(), return_inverse=True)
    _, b = np.unique(np.asarray(b).ravel(), return_inverse=True)
    if len(a) != len(b):
        raise ValueError(f"the partitions cover {len(a)} and {len(b)} points; they must agree")
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([len(a)]))
    top = (rows + cols) / 2
    return float("nan") if top == expected else float((index - expected) / (top - expected))


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, ms_per_frame: int = 600):
    """Frames (S, S, 3) in [0, 1] -> an endlessly looping animated GIF, written atomically."""
    from PIL import Image

    images = [Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8)) for f in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0
    )
    return atomic_write_bytes(path, buffer.getvalue())
