"""make reproduce: stale chapters found as Make would, a plan with recorded times, a timing log."""

import os

import pandas as pd
import pytest

from cocs import reproduce as R


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository with three chapters, 03 reading 01, all built after their sources."""
    names = ["01_a", "02_b", "03_c"]
    (tmp_path / "cocs").mkdir()
    (tmp_path / "cocs" / "lib.py").write_text("")
    for n in names:
        (tmp_path / f"{n}.py").write_text("")
        (tmp_path / f"{n}.ipynb").write_text("")
    monkeypatch.setattr(R, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(R, "notebook_names", lambda: names)
    monkeypatch.setattr(R, "notebook_source", lambda n: tmp_path / f"{n}.py")
    monkeypatch.setattr(R, "build_path", lambda n, profile="default": tmp_path / f"{n}.ipynb")
    monkeypatch.setattr(R, "READS", {"03_c": ("01_a",)})
    monkeypatch.setattr(R, "trains_in_bf16", lambda n: n == "02_b")
    monkeypatch.setattr(R, "cpu_has_native_bf16", lambda: True)
    t = 1_000_000
    for i, p in enumerate([tmp_path / "cocs" / "lib.py", *(tmp_path / f"{n}.py" for n in names)]):
        os.utime(p, (t + i, t + i))
    for n in names:
        os.utime(tmp_path / f"{n}.ipynb", (t + 100, t + 100))
    return tmp_path


def test_stale_chapters_follow_sources_library_and_what_they_read(repo):
    assert R.stale() == []
    os.utime(repo / "02_b.py", (1_000_200, 1_000_200))
    assert R.stale() == ["02_b"]
    os.utime(repo / "01_a.py", (1_000_300, 1_000_300))
    assert R.stale() == ["01_a", "02_b", "03_c"], "03 reads 01, which runs again"
    (repo / "02_b.ipynb").unlink()
    os.utime(repo / "cocs" / "lib.py", (1_000_400, 1_000_400))
    assert R.stale() == ["01_a", "02_b", "03_c"]


def test_the_plan_names_each_chapter_with_its_recorded_time(repo):
    (repo / "results").mkdir()
    R.record_timing("01_a", 12.0)
    R.record_timing("01_a", 90.0)  # the last record counts
    table = pd.read_csv(R.timings_file())
    assert table["name"].tolist() == ["01_a", "01_a"] and {"hardware", "finished"} <= set(table)
    text = R.plan(["01_a", "02_b"])
    assert "01_a" in text and "about 1 h 30 min" in text and "02_b" in text
    assert "no time on record" in text and "total: about 1 h 30 min, plus 1 chapter" in text
    assert R.plan([]).startswith("every chapter's default run is up to date")


def test_the_plan_says_what_training_the_reused_runs_again_would_take(repo):
    (repo / "results").mkdir()
    R.record_timing("01_a", 0.5)  # its last run reused what it had trained before
    run = repo / "results" / "01_a" / "seed0"
    run.mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2], "epoch_seconds": [1800.0, 1800.0]}).to_csv(
        run / "metrics.csv", index=False
    )
    env = {"hardware": {"cpu": "Some CPU", "torch_threads": 2}}
    (run / "metrics.json").write_text(pd.Series({"environment": env}).to_json())
    text = R.plan(["01_a", "02_b"])
    assert "about 0 min (its last run" in text and "trained for 1 h 00 min (Some CPU" in text
    assert "without them, training takes about 1 h 00 min more" in text
    assert "without them" not in R.plan(["02_b"]), "no committed runs, nothing reused"


def test_the_plan_warns_when_this_cpu_would_emulate_bfloat16(repo, monkeypatch):
    assert "warning" not in R.plan(["01_a", "02_b"])
    monkeypatch.setattr(R, "cpu_has_native_bf16", lambda: False)
    text = R.plan(["01_a", "02_b"])
    assert "warning: 02_b train in bfloat16 autocast, which this CPU" in text
    assert 'amp = "off"' in text and "warning" not in R.plan(["01_a"])


def test_the_chapters_that_train_in_bfloat16_are_read_from_their_parameters():
    assert R.trains_in_bf16("06_ablations") and not R.trains_in_bf16("01_image_as_points")
