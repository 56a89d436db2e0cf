"""Shared fixtures: the authors' reference outputs in ../shared/reference."""

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
