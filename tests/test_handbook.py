"""The notebook runner and the results-writing helpers of cocs.handbook."""

import json
import os
import re
import sys

import matplotlib
import pandas as pd
import pytest
from PIL import Image

from cocs import handbook

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

DEMO = """\
# %% [markdown]
# # A demonstration notebook
#
# Writes its parameters and the kernel's Python prefix.

# %% tags=["parameters"]
steps = 100
rate = 0.5
label = "full"
verbose = False
results_dir = "results"

# %%
import sys

from cocs.handbook import atomic_write_text, results_path

out = results_path(results_dir, "01_demo")
atomic_write_text(out / "run.txt", f"{steps} {rate} {label} {verbose}\\n{sys.prefix}\\n")
"""

FAILING = """\
# %% [markdown]
# # A notebook that fails

# %% tags=["parameters"]
results_dir = "results"

# %%
denominator = 0
ratio = 1 / denominator
"""


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    """A notebooks folder with one demonstration notebook and a smoke profile for it."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "01_demo.py").write_text(DEMO)
    (folder / "profiles.yaml").write_text("smoke:\n  01_demo: {steps: 2, label: small}\n")
    monkeypatch.setattr(handbook, "NOTEBOOKS_DIR", folder)
    return folder


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- atomic writes -----------------------------------------------------------------------------


def test_atomic_write_text_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "note.txt"
    handbook.atomic_write_text(path, "first\n")
    handbook.atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert _leftovers(path.parent) == []
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~handbook._UMASK


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "note.txt"
    handbook.atomic_write_text(path, "kept\n")
    with pytest.raises(TypeError):
        handbook.atomic_write_bytes(path, "not bytes")
    assert path.read_text() == "kept\n"
    assert _leftovers(tmp_path) == []


def test_write_csv_round_trip(tmp_path):
    df = pd.DataFrame({"model": ["coc_tiny", "coc_small"], "top1": [0.5, 0.25]})
    path = handbook.write_csv(df, tmp_path / "table.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), df)
    assert _leftovers(tmp_path) == []


def test_save_figure_writes_a_png_that_opens(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    path = handbook.save_figure(fig, tmp_path / "line.png", dpi=50)
    plt.close(fig)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 10
    assert _leftovers(tmp_path) == []


def test_save_figure_needs_a_suffix(tmp_path):
    fig = plt.figure()
    with pytest.raises(ValueError, match="without a suffix"):
        handbook.save_figure(fig, tmp_path / "figure")
    plt.close(fig)


# --- results folders ---------------------------------------------------------------------------


def test_results_path_resolves_relative_folders_against_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    path = handbook.results_path("results", "01_demo", create=False)
    assert path == handbook.repo_root() / "results" / "01_demo"


def test_results_path_creates_absolute_folders(tmp_path):
    path = handbook.results_path(tmp_path / "out", "01_demo")
    assert path == tmp_path / "out" / "01_demo" and path.is_dir()
    assert handbook.results_path(str(tmp_path / "out"), "01_demo") == path


@pytest.mark.parametrize("name", ["", "..", "a/b", "/abs"])
def test_results_path_rejects_names_that_are_not_one_folder(tmp_path, name):
    with pytest.raises(ValueError, match="single folder name"):
        handbook.results_path(tmp_path, name)


def test_repo_root_holds_the_package():
    assert (handbook.repo_root() / "cocs" / "handbook.py").is_file()
    assert (handbook.repo_root() / "pyproject.toml").is_file()


# --- parameters and profiles -------------------------------------------------------------------


def test_notebook_names_are_sorted_and_filtered(notebooks):
    (notebooks / "02_second.py").write_text(DEMO)
    (notebooks / "scratch.py").write_text(DEMO)
    assert handbook.notebook_names() == ["01_demo", "02_second"]


def test_parameters_of_reads_flat_scalars(notebooks):
    params = handbook.parameters_of(handbook.read_notebook("01_demo"))
    assert params == {
        "steps": 100,
        "rate": 0.5,
        "label": "full",
        "verbose": False,
        "results_dir": "results",
    }


@pytest.mark.parametrize(
    "line",
    ["sizes = [1, 2]", "steps = 2 * 50", "import math", "a = b = 1", "a, b = 1, 2", "x = None"],
)
def test_parameters_of_rejects_anything_but_flat_scalars(notebooks, line):
    (notebooks / "01_demo.py").write_text(DEMO.replace('label = "full"', line))
    with pytest.raises(ValueError, match="parameters cell|flat scalar"):
        handbook.parameters_of(handbook.read_notebook("01_demo"))


def test_parameters_of_needs_one_parameters_cell(notebooks):
    (notebooks / "01_demo.py").write_text(DEMO.replace(' tags=["parameters"]', ""))
    with pytest.raises(ValueError, match="0 cells tagged 'parameters'"):
        handbook.parameters_of(handbook.read_notebook("01_demo"))


def test_default_profile_overrides_nothing(notebooks):
    assert handbook.load_profile("01_demo") == {}


def test_smoke_profile_is_read_and_checked(notebooks):
    assert handbook.load_profile("01_demo", "smoke") == {"steps": 2, "label": "small"}
    handbook.check_profiles()


def test_unknown_notebook_names_the_value_the_choices_and_the_remedy(notebooks):
    with pytest.raises(ValueError) as err:
        handbook.load_profile("01_dmeo", "smoke")
    message = str(err.value)
    assert "'01_dmeo'" in message and "01_demo" in message and "cocs.handbook list" in message


def test_unknown_profile_names_the_value_the_choices_and_the_remedy(notebooks):
    with pytest.raises(ValueError) as err:
        handbook.load_profile("01_demo", "smoek")
    message = str(err.value)
    assert "'smoek'" in message and "default, smoke" in message and "profiles.yaml" in message


def test_a_notebook_missing_from_the_profile_is_an_error(notebooks):
    (notebooks / "02_second.py").write_text(DEMO)
    with pytest.raises(
        ValueError, match=r"'02_second' has no entry under 'smoke'.*02_second: \{\}"
    ):
        handbook.load_profile("02_second", "smoke")


@pytest.mark.parametrize(
    "entry, match",
    [
        ("{step: 2}", "unknown parameter 'step'"),
        ("{steps: '2'}", "'steps' = '2' has type str, but its default 100 has type int"),
        ("{rate: 1e-3}", "has type str"),  # YAML 1.1 reads 1e-3 as a string
        ("{verbose: 1}", "'verbose' = 1 has type int, but its default False has type bool"),
        ("[steps, 2]", "expected a mapping of parameter names to values"),
    ],
)
def test_profile_entries_must_match_the_parameters_cell(notebooks, entry, match):
    (notebooks / "profiles.yaml").write_text(f"smoke:\n  01_demo: {entry}\n")
    with pytest.raises(ValueError, match=match):
        handbook.load_profile("01_demo", "smoke")


def test_an_int_may_replace_a_float(notebooks):
    (notebooks / "profiles.yaml").write_text("smoke:\n  01_demo: {rate: 1}\n")
    assert handbook.load_profile("01_demo", "smoke") == {"rate": 1}


def test_check_profiles_rejects_entries_without_a_notebook(notebooks):
    (notebooks / "profiles.yaml").write_text("smoke:\n  01_demo: {}\n  09_gone: {}\n")
    with pytest.raises(ValueError, match="'09_gone' under 'smoke'"):
        handbook.check_profiles()


def test_results_dir_override_needs_the_parameter(notebooks, tmp_path):
    (notebooks / "01_demo.py").write_text(DEMO.replace('results_dir = "results"', "seed = 0"))
    with pytest.raises(ValueError, match="unknown parameter 'results_dir'"):
        handbook.run_notebook("01_demo", results_dir=tmp_path, output=tmp_path / "x.ipynb")


# --- execution ---------------------------------------------------------------------------------


def test_run_injects_the_profile_and_uses_this_python(notebooks, tmp_path):
    output = tmp_path / "build" / "01_demo.ipynb"
    path = handbook.run_notebook(
        "01_demo", profile="smoke", results_dir=tmp_path / "res", output=output
    )
    assert path == output and output.is_file()
    assert sorted(p.name for p in output.parent.iterdir()) == ["01_demo.ipynb"]
    params, prefix = (tmp_path / "res" / "01_demo" / "run.txt").read_text().splitlines()
    assert params == "2 0.5 small False"  # steps and label from the profile, the rest default
    assert prefix == sys.prefix  # the kernel runs the environment that runs the handbook
    recorded = json.loads(output.read_text())["metadata"]["cocs"]  # what the book page states
    assert recorded["profile"] == "smoke" and recorded["cpu_count"] == os.cpu_count()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", recorded["executed"])


def test_a_failing_cell_exits_non_zero_and_shows_the_cell(notebooks, tmp_path, capsys):
    (notebooks / "02_fails.py").write_text(FAILING)
    output = tmp_path / "02_fails.ipynb"
    code = handbook.main(["run", "02_fails", "--output", str(output)])
    stderr = capsys.readouterr().err
    assert code == 1
    assert "ratio = 1 / denominator" in stderr and "ZeroDivisionError" in stderr
    assert not output.exists()  # so that make runs it again
    assert (tmp_path / "02_fails.failed.ipynb").is_file()


def test_cli_reports_a_bad_name_without_a_traceback(notebooks, capsys):
    assert handbook.main(["run", "01_dmeo"]) == 2
    assert "unknown notebook '01_dmeo'" in capsys.readouterr().err


def test_cli_lists_the_notebooks(notebooks, capsys):
    assert handbook.main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["01_demo"]
