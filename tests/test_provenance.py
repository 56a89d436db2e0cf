"""environment_info's git_dirty: tracked code that differs from the commit, not the results
files that chapters write."""

import subprocess

import pytest

from cocs import provenance


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    for folder in ("cocs", "results"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.txt").write_text("1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    return tmp_path


def test_git_dirty_is_about_code_not_results(repo):
    assert provenance.environment_info()["git_dirty"] is False
    (repo / "results" / "a.txt").write_text("2\n")  # a chapter rewrote a committed result
    (repo / "cocs" / "new.txt").write_text("untracked\n")
    assert provenance.environment_info()["git_dirty"] is False
    (repo / "cocs" / "a.txt").write_text("2\n")  # changed code
    assert provenance.environment_info()["git_dirty"] is True
