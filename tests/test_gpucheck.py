"""Timing the `full` profile: the runs it lays out, the projection, and one timed chapter."""

import csv

import pytest
import torch

from cocs import ablation
from cocs import gpucheck as G


@pytest.mark.parametrize("chapter", G.CHAPTERS)
def test_the_full_profile_lays_out_the_runs_the_chapter_trains(chapter, tmp_path):
    params = G.full_parameters(chapter)
    runs = G.planned_runs(chapter, params, tmp_path)
    if chapter == "04_cifar10":
        assert [g for g, _ in runs] == params["models"].split(",")
    elif chapter == "06_ablations":  # every variant's seeds, each timed as the full model
        assert len(runs) == len(ablation.schedule([a.key for a in ablation.ABLATIONS], 3))
    else:
        assert [g for g, _ in runs] == [params["model"], params["peer"]]
    for _, cfg in runs:  # the profile's schedule, not the CPU default's
        assert cfg.epochs == params["epochs"] >= 100 and cfg.budget_minutes == 0
        assert cfg.num_workers == 8 and cfg.drop_path == 0.1
        assert str(tmp_path) in cfg.out_dir


def test_the_projection_counts_the_first_epoch_once():
    rows = [{"epoch_seconds": 100.0}, {"epoch_seconds": 10.0}, {"epoch_seconds": 12.0}]
    assert G.projected_hours(10, rows) == pytest.approx((100 + 9 * 11) / 3600)
    assert G.projected_hours(4, rows[:1]) == pytest.approx(400 / 3600)
    with pytest.raises(ValueError, match="no measured epoch"):
        G.projected_hours(10, [])


def test_a_chapter_is_timed_through_the_engine_and_projected(tmp_path):
    small = dict(models="coc_micro", epochs=5, max_per_class=2, max_test_per_class=1,
                 batch_size=8, torch_compile=False, amp="off", num_threads=1)  # fmt: skip
    (row,) = G.time_chapter("04_cifar10", epochs=2, device="cpu", out=tmp_path,
                            profile="smoke", overrides=small)  # fmt: skip
    assert row["model"] == "coc_micro" and row["epochs"] == 5 and row["measured_epochs"] == 2
    assert row["autocast"] == "off" and row["torch"] == torch.__version__  # and its commit
    assert set(row) >= {"git_commit", "git_dirty"}
    first, steady = row["first_epoch_s"], row["steady_epoch_s"]
    assert row["projected_hours"] == pytest.approx((first + 4 * steady) / 3600, abs=0.01)
    with open(tmp_path / "04_cifar10" / "coc_micro" / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 2  # stopped after the measured epochs


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_the_command_says_how_to_time_on_the_cpu(capsys):
    with pytest.raises(SystemExit):
        G.main(["--chapters", "04_cifar10"])
    assert "--device cpu" in capsys.readouterr().err
