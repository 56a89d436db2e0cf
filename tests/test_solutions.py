"""The workshop kit: every chapter's exercises, their worked solutions, and the solutions' runs.

Chapters 1 to 9 each end with a `## Exercises` section; `notebooks/solutions/NN_slug.py` solves
the same exercises, in the same order and under the same titles, each in the layout the book
folds (a visible `## Exercise k: <title>` heading; the code, an explanation and the checks
behind toggles). The source checks are fast. Running the solutions is marked `notebook`, like
the chapters' smoke runs: their asserts check the outcomes the exercises promise, and each
run's wall-clock and CPU seconds go into `build/solutions/timings.csv`.
"""

import jupytext
import pytest
from papermill.translators import PythonTranslator

from cocs import handbook, workshop

CHAPTERS = [n for n in handbook.notebook_names() if 1 <= int(n[:2]) <= 9]
SOLUTIONS = {p.stem: p for p in handbook.solution_sources()}


def _first_line(cell) -> str:
    return cell.source.split("\n", 1)[0]


def test_every_chapter_has_its_solutions():
    assert len(CHAPTERS) == 9, f"expected chapters 01 to 09, found {CHAPTERS}"
    missing = sorted(set(CHAPTERS) - set(SOLUTIONS))
    orphans = sorted(set(SOLUTIONS) - set(CHAPTERS))
    assert not missing, f"write notebooks/solutions/NN_slug.py for {missing}"
    assert not orphans, f"solutions without a chapter of exercises: {orphans}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_ends_with_its_exercises(name):
    cells = handbook.read_notebook(name).cells
    last = cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith(workshop.EXERCISES), (
        f"{name}: the last cell should be the markdown section {workshop.EXERCISES!r}"
    )
    old = [c for c in cells if c.cell_type == "markdown" and "## Try it" in c.source]
    assert not old, f"{name}: a 'Try it' section is left; its items belong in the exercises"
    assert 2 <= len(workshop.chapter_exercises(name)) <= 4, f"{name}: 2 to 4 exercises"
    assert f"notebooks/solutions/{name}.py" in last.source, f"{name}: name the solutions file"


@pytest.mark.parametrize("name", CHAPTERS)
def test_solutions_answer_the_chapters_exercises(name):
    asked = workshop.chapter_exercises(name)
    solved = workshop.solution_exercises(SOLUTIONS[name])
    assert len(solved) == len(asked), f"{name}: {len(asked)} exercises, {len(solved)} solved"
    assert solved == asked, f"{name}: the solutions' headings {solved} differ from {asked}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_solution_layout(name):
    nb = jupytext.read(SOLUTIONS[name])
    chapter_title = _first_line(handbook.read_notebook(name).cells[0]).removeprefix("# ")
    title, params = nb.cells[0], nb.cells[1]
    assert title.cell_type == "markdown" and _first_line(title) == f"# Solutions: {chapter_title}"
    assert "parameters" in params.metadata.get("tags", []), (
        f"{name}: the cell after the title should be tagged parameters"
    )
    values = handbook.parameters_of(nb, where=f"solutions/{name}")  # flat scalars, or it raises
    assert values.get("results_dir") == "results"
    seen = [p.name for p in PythonTranslator.inspect(params)]
    assert seen == list(values), f"{name}: papermill reads {seen}, not {list(values)}"

    # after the parameters: set-up code, then one block per exercise
    blocks, setup = [], []
    for cell in nb.cells[2:]:
        if cell.cell_type == "markdown" and _first_line(cell).startswith("## Exercise "):
            blocks.append([cell])
        elif blocks:
            blocks[-1].append(cell)
        else:
            setup.append(cell)
    assert all(c.cell_type == "code" for c in setup), f"{name}: only code before exercise 1"
    for block in blocks:
        heading = _first_line(block[0])
        *work, explanation, checks = block[1:]
        assert work and all(c.cell_type == "code" for c in work), (
            f"{name}, {heading}: the heading should be followed by the code that solves it"
        )
        assert explanation.cell_type == "markdown" and not explanation.source.startswith("#"), (
            f"{name}, {heading}: then one markdown cell that explains, not opening with '#' "
            "(the book folds it)"
        )
        assert checks.cell_type == "code" and "assert" in checks.source, (
            f"{name}, {heading}: the last cell should assert the expected outcome"
        )


@pytest.fixture(scope="module")
def timings():
    """Rows of the solutions run in this session; written to build/solutions/timings.csv."""
    rows = []
    yield rows
    if rows:
        workshop.record(rows, handbook.repo_root() / "build" / "solutions" / "timings.csv")


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_solution_runs(name, tmp_path, timings):
    results = handbook.repo_root() / "results"
    before = {p.name for p in results.iterdir()} if results.is_dir() else set()

    row = workshop.timed_run(SOLUTIONS[name], tmp_path / f"{name}.ipynb")  # fails on a failed cell
    timings.append(row)

    assert (tmp_path / f"{name}.ipynb").is_file()
    assert row["exercises"] == len(workshop.chapter_exercises(name)) and row["seconds"] > 0
    after = {p.name for p in results.iterdir()} if results.is_dir() else set()
    assert after == before, f"{name} wrote {sorted(after - before)} under results/"
