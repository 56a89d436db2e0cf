"""Cluster maps: read from the clustering's own assignments, drawn, and saved."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import cocs
from cocs import maps


def test_one_map_per_stage_from_the_layers_own_assignment():
    model = timm.create_model("coc_micro").train()
    x = torch.randn(2, 3, 32, 32)
    stages = maps.stage_assignments(model, x)
    assert model.training, "the model's mode is restored"
    with cocs.capture_assignments(model) as found:
        model.eval()(x)
    last_of_stage = {}
    for name, assignment in found.items():  # network.<2 * stage>.<block>.token_mixer
        stage, block = (int(i) for i in name.split(".")[1:3])
        last_of_stage[stage] = max(
            last_of_stage.get(stage, (-1, None)), (block, assignment), key=lambda t: t[0]
        )
    assert len(stages) == len(last_of_stage)
    for got, (_, want) in zip(
        stages, (last_of_stage[k] for k in sorted(last_of_stage)), strict=True
    ):
        assert torch.equal(got, want)
        assert got.dtype == torch.int64 and got.dim() == 4 and got.shape[0] == 2


def test_centres_per_region_of_each_stage():
    assert maps.centres_per_region(timm.create_model("coc_cifar")) == [4, 4, 4, 1]
    ablation = timm.create_model("coc_cifar", proposal_w=(3, 3, 3, 1), proposal_h=(3, 3, 3, 1))
    assert maps.centres_per_region(ablation) == [9, 9, 9, 1]


def test_first_block_can_be_chosen():
    model = timm.create_model("coc_micro")
    x = torch.randn(1, 3, 32, 32)
    assert [a.shape for a in maps.stage_assignments(model, x, block=0)] == [
        a.shape for a in maps.stage_assignments(model, x)
    ]


def test_a_model_without_clustering_is_refused():
    model = timm.create_model("coc_micro", mixer="none")
    with pytest.raises(ValueError, match="no context-cluster layers"):
        maps.stage_assignments(model, torch.randn(1, 3, 32, 32))


def test_blend_colours_each_centre_and_keeps_the_photo():
    photo = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    assignment = torch.tensor([[0, 1], [1, 2]])  # (H, W)
    rgb = maps.blend(photo, assignment, alpha=0.5)
    assert rgb.shape == (8, 8, 3) and 0 <= rgb.min() and rgb.max() <= 1
    assert np.allclose(rgb[0, 4], rgb[4, 0]), "one centre, one colour"
    assert not np.allclose(rgb[0, 0], rgb[0, 4]), "two centres, two colours"
    outlined = maps.blend(photo, torch.tensor([[0, 2], [3, 5]]), centres=2, alpha=0.5)
    assert np.allclose(outlined[0, 0], outlined[0, 4]), "the first centre of two regions"
    assert np.allclose(outlined[0, 3], 1.0), "a white line between regions"
    with pytest.raises(ValueError, match="not a multiple"):
        maps.blend(torch.zeros(3, 9, 9, dtype=torch.uint8), assignment)


def test_photos_load_as_centre_squares_and_normalise(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    photo = maps.load_photo(tmp_path / "wide.png", 16)
    assert photo.shape == (3, 16, 16) and photo.dtype == torch.uint8
    assert photo[0].min() > 250 and photo[1].max() < 5
    batch = maps.photo_batch([photo, photo], "cifar10")
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    assert maps.sample_photos(str(tmp_path)) == [tmp_path / "wide.png"]


def test_bad_photo_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        maps.sample_photos(str(tmp_path / "nowhere.jpg"))
    with pytest.raises(FileNotFoundError, match="no images"):
        maps.sample_photos(str(tmp_path))


def test_no_samples_anywhere_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("COCS_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("COCS_ARCHIVES", str(tmp_path / "none"))

    def no_imagenette(*args, **kwargs):  # as without a network: the last fallback fails too
        raise maps.D.DataNotFound("imagenette: nothing found")

    monkeypatch.setattr(maps.D, "locate", no_imagenette)
    with pytest.raises(FileNotFoundError, match="photos="):
        maps.sample_photos()


def test_gif_has_every_frame(tmp_path):
    frames = [np.full((8, 8, 3), v) for v in (0.0, 0.5, 1.0)]
    path = maps.save_gif(frames, tmp_path / "a.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 3


def test_maps_of_a_released_checkpoint(reference, tmp_path):
    """The authors' layout, loaded through load_official_checkpoint, gives maps at 224 px."""
    path = tmp_path / "released.pth"
    torch.save({"state_dict": reference["coc_tiny"]["state_dict"]}, path)
    model = cocs.load_official_checkpoint(path, "coc_tiny").eval()
    stages = maps.stage_assignments(model, reference["coc_tiny"]["input"][:1])
    assert [a.shape[-1] for a in stages] == [56, 28, 14, 7]


def _ari_by_pairs(a, b) -> float:
    """The adjusted Rand index from its definition: agreements over all pairs of points."""
    import itertools

    n = len(a)
    same_a = [a[i] == a[j] for i, j in itertools.combinations(range(n), 2)]
    same_b = [b[i] == b[j] for i, j in itertools.combinations(range(n), 2)]
    both = sum(x and y for x, y in zip(same_a, same_b, strict=True))
    pairs = n * (n - 1) / 2
    expected = sum(same_a) * sum(same_b) / pairs
    top = (sum(same_a) + sum(same_b)) / 2
    return (both - expected) / (top - expected)


def test_adjusted_rand_index_matches_its_definition():
    from cocs.maps import adjusted_rand_index

    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 30), rng.integers(0, 3, 30)
        assert adjusted_rand_index(a, b) == pytest.approx(_ari_by_pairs(a, b))
    a = rng.integers(0, 5, 40)
    assert adjusted_rand_index(a, (a + 3) * 7) == pytest.approx(1.0)  # labels do not matter
    assert np.isnan(adjusted_rand_index(np.zeros(9), np.zeros(9)))  # one cluster: undefined
    with pytest.raises(ValueError, match="9 and 8 points"):
        adjusted_rand_index(np.zeros(9), np.zeros(8))


def test_grid_assignment_is_the_partition_into_proposal_cells():
    from cocs.maps import grid_assignment

    H, W, fw, fh, pw, ph = 8, 12, 2, 2, 2, 3
    labels = grid_assignment(H, W, fw, fh, pw, ph)
    for r in range(H):  # slowly: region, then the cell of the region
        for c in range(W):
            region = (r // (H // fw), c // (W // fh))
            cell = ((r % (H // fw)) // ((H // fw) // pw), (c % (W // fh)) // ((W // fh) // ph))
            for r2 in range(H):
                for c2 in range(W):
                    region2 = (r2 // (H // fw), c2 // (W // fh))
                    cell2 = (
                        (r2 % (H // fw)) // ((H // fw) // pw),
                        (c2 % (W // fh)) // ((W // fh) // ph),
                    )
                    same = (region, cell) == (region2, cell2)
                    assert same == bool(labels[r, c] == labels[r2, c2])
    assert len(torch.unique(labels)) == fw * fh * pw * ph
