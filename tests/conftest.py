"""Shared fixtures: the authors' reference outputs in ../shared/reference, and the smoke runs'
results and executed notebooks, which the notebook tests write and the book tests read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference"


def _require(path: Path) -> Path:
    """The path, or a skip on a user's machine without ../shared (a failure in CI, which has it)."""
    if path.exists():
        return path
    msg = f"{path} is missing: the reference outputs of the authors' release live in ../shared"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def reference() -> dict:
    return torch.load(_require(REFERENCE / "coc_official_reference.pt"), weights_only=False)


@pytest.fixture(scope="session")
def official_layout() -> dict:
    import json

    return json.loads(_require(REFERENCE / "coc_official_state_dict_layout.json").read_text())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """One results folder for every smoke run, so a chapter can read what an earlier wrote."""
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def smoke_notebooks(tmp_path_factory) -> Path:
    """Where the smoke runs' executed notebooks go: `<folder>/NN_slug.ipynb`, laid out as
    `build/notebooks/smoke/` is, so that `cocs.book` can build a site from them."""
    return tmp_path_factory.mktemp("notebooks") / "smoke"


def pytest_collection_modifyitems(config, items):
    """Tests of the built site run last: they use the smoke runs' notebooks, which the
    notebook tests have executed by then (a site test run alone executes them itself)."""
    items.sort(key=lambda item: "smoke_site" in getattr(item, "fixturenames", ()))
