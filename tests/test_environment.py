"""pyproject.toml is the one source of the pins; environment.yml must list exactly the same."""

import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from cocs.handbook import repo_root

PYTHON = "3.11"


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((repo_root() / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment():
    return yaml.safe_load((repo_root() / "environment.yml").read_text())


def _pins(lines):
    """{normalised name: exact version} of `name==version` lines; anything else fails."""
    pins = {}
    for line in lines:
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", (
            f"{line!r} is not pinned: expected `name==version`, so that every install "
            "resolves the same versions"
        )
        name = req.name.lower().replace("_", "-")
        assert name not in pins, f"{req.name} is listed twice"
        pins[name] = specs[0].version
    return pins


def _conda_parts(environment):
    conda, pip = [], None
    for dep in environment["dependencies"]:
        if isinstance(dep, dict):
            assert pip is None and set(dep) == {"pip"}, f"unexpected entry {dep!r}"
            pip = dep["pip"]
        else:
            conda.append(dep)
    assert pip is not None, "environment.yml has no `pip:` section"
    return conda, pip


def test_pins_agree(pyproject, environment):
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    wanted = _pins(project["dependencies"] + [pin for pins in extras.values() for pin in pins])
    _, pip = _conda_parts(environment)
    listed = _pins([line for line in pip if not line.startswith("-e")])
    missing = {k: v for k, v in wanted.items() if listed.get(k) != v}
    extra = {k: v for k, v in listed.items() if wanted.get(k) != v}
    assert not missing and not extra, (
        f"environment.yml differs from pyproject.toml: pyproject has {missing}, "
        f"environment.yml has {extra}; copy the pins of pyproject.toml into environment.yml"
    )


def test_environment_installs_the_package(environment):
    _, pip = _conda_parts(environment)
    assert "-e ." in pip
    assert environment["name"] == "cocs"


def test_python_version(pyproject, environment):
    conda, _ = _conda_parts(environment)
    assert f"python={PYTHON}" in conda
    assert "pip" in conda
    assert PYTHON in SpecifierSet(pyproject["project"]["requires-python"])
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + PYTHON.replace(".", "")
