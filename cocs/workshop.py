"""The workshop kit: the chapters' exercises, their worked solutions, and what each costs to run.

Every chapter from 1 to 9 ends with a `## Exercises` section of numbered exercises, each
opening with its title in bold (`1. **Forget the positions.** ...`); longer tasks follow under
"Further (long)" and are not counted. `notebooks/solutions/NN_slug.py` solves the exercises
in order, one `## Exercise k: <title>` heading each. `WORKSHOP.md` plans a workshop around them.

`python -m cocs.workshop` runs every solution once with `cocs.handbook.run_solution` (as the
tests do), writes `results/workshop/timings.csv` (solution, exercises, wall-clock and CPU
seconds, hardware, when) and rewrites the table of `WORKSHOP.md` between the markers
`<!-- timings -->` and `<!-- /timings -->` from that file:

    python -m cocs.workshop                          # every solution
    python -m cocs.workshop 02_context_clustering    # one; the other rows are kept

The executed solutions land in the git-ignored `build/solutions/`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .handbook import (
    _format_failure,
    _shown,
    read_notebook,
    repo_root,
    run_solution,
    solution_sources,
    write_csv,
)

EXERCISES = "## Exercises"
FURTHER = "Further (long)"  # the longer tasks after the exercises, not part of the workshop
START, END = "<!-- timings -->", "<!-- /timings -->"
COLUMNS = ["solution", "exercises", "seconds", "cpu_seconds", "hardware", "measured"]

_ITEM = re.compile(r"^(\d+)\. \*\*(.+?)\*\*", re.MULTILINE)  # 1. **Title.** ...
_HEADING = re.compile(r"^## Exercise (\d+): (.+?)\s*$")  # ## Exercise 1: Title


def _numbered(found: list[tuple[str, str]], where: str) -> list[str]:
    """Titles of (number, title) pairs, checking that they are numbered 1, 2, 3, ..."""
    numbers = [int(n) for n, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise ValueError(
            f"{where}: exercises numbered {numbers}; expected 1, 2, ... in order; renumber them"
        )
    return [title.strip().rstrip(".").strip() for _, title in found]


def chapter_exercises(name: str) -> list[str]:
    """The titles of the exercises in chapter `name`'s `## Exercises` section, in order."""
    cells = [
        c.source
        for c in read_notebook(name).cells
        if c.cell_type == "markdown" and c.source.startswith(EXERCISES)
    ]
    if len(cells) != 1:
        raise ValueError(
            f"chapter {name} has {len(cells)} markdown cells that open with {EXERCISES!r}: "
            "expected one, the chapter's last, holding every exercise"
        )
    text = cells[0].split(FURTHER)[0]
    return _numbered(_ITEM.findall(text), f"chapter {name}")


def solution_exercises(path: str | os.PathLike) -> list[str]:
    """The titles of the `## Exercise k: <title>` headings of a solution notebook, in order."""
    import jupytext

    found = []
    for cell in jupytext.read(Path(path)).cells:
        m = _HEADING.match(cell.source.split("\n", 1)[0]) if cell.cell_type == "markdown" else None
        if m is not None:
            found.append((m.group(1), m.group(2)))
    return _numbered(found, _shown(Path(path)))


def timed_run(path: str | os.PathLike, output: str | os.PathLike) -> dict:
    """Run one solution notebook (`run_solution`) and say how long it took.

    Returns a row of `COLUMNS`: `seconds` is wall-clock time, `cpu_seconds` the user and system
    time of the kernel that ran it (the time a shared machine's neighbours cannot inflate),
    `hardware` this machine's processor and torch's thread count (`cocs.bench.hardware_name`).
    """
    from .bench import hardware_name

    path = Path(path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel is a child process
    started = time.perf_counter()
    run_solution(path, output)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "solution": path.stem,
        "exercises": len(solution_exercises(path)),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "hardware": hardware_name(),
        "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def record(rows: Sequence[dict], path: str | os.PathLike):
    """Write `rows` into the timings file at `path` atomically, replacing the rows of the same
    solutions and keeping the others; returns the whole table, in chapter order."""
    import pandas as pd

    path = Path(path)
    new = pd.DataFrame(list(rows), columns=COLUMNS)
    if path.is_file():
        old = pd.read_csv(path)
        kept = old[~old["solution"].isin(new["solution"])]
        new = pd.concat([kept, new], ignore_index=True) if len(new) else kept
    table = new[COLUMNS].sort_values("solution", ignore_index=True)
    write_csv(table, path)
    return table


def timings_table(table) -> str:
    """The markdown that `WORKSHOP.md` shows between its markers, from a timings table."""
    shown = table[["solution", "exercises", "seconds", "cpu_seconds"]].copy()
    total = {"solution": "all", "exercises": int(shown["exercises"].sum()),
             "seconds": shown["seconds"].sum(), "cpu_seconds": shown["cpu_seconds"].sum()}  # fmt: skip
    shown.loc[len(shown)] = total
    shown["seconds"] = shown["seconds"].map(lambda s: f"{s:.0f}")
    shown["cpu_seconds"] = shown["cpu_seconds"].map(lambda s: f"{s:.0f}")
    shown.columns = ["solution", "exercises", "wall-clock seconds", "CPU seconds"]
    machines = ", ".join(sorted(set(table["hardware"])))
    days = sorted({str(m)[:10] for m in table["measured"]})
    when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    return (
        f"{shown.to_markdown(index=False, colalign=('left', 'right', 'right', 'right'))}\n\n"
        f"Measured with `python -m cocs.workshop` on {machines}, {when} "
        "(`results/workshop/timings.csv`).\n"
    )


def update_markdown(path: str | os.PathLike, table) -> None:
    """Rewrite what lies between the timings markers of the markdown file at `path`."""
    from .report import update_readme

    update_readme(path, timings_table(table), begin=START, end=END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cocs.workshop", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "names", nargs="*", help="NN_slug of the solutions to run (default: all of them)"
    )
    args = parser.parse_args(argv)
    sources = {p.stem: p for p in solution_sources()}
    unknown = sorted(set(args.names) - set(sources))
    if unknown:
        print(
            f"error: no solution notebook for {unknown}; expected names among "
            f"{', '.join(sources)} (notebooks/solutions/NN_slug.py)",
            file=sys.stderr,
        )
        return 2

    from papermill.exceptions import PapermillExecutionError

    root = repo_root()
    rows, failed = [], []
    for name in args.names or list(sources):
        output = root / "build" / "solutions" / f"{name}.ipynb"
        print(f"running {_shown(sources[name])} -> {_shown(output)}", file=sys.stderr)
        try:
            rows.append(timed_run(sources[name], output))
        except PapermillExecutionError as err:
            failure = output.with_name(f"{output.stem}.failed.ipynb")
            print(_format_failure(name, err, failure), file=sys.stderr)
            failed.append(name)
            continue
        row = rows[-1]
        print(
            f"  {row['exercises']} exercises: {row['seconds']:.0f} s wall-clock, "
            f"{row['cpu_seconds']:.0f} s CPU",
            file=sys.stderr,
        )
    if rows:
        csv = root / "results" / "workshop" / "timings.csv"
        table = record(rows, csv)
        update_markdown(root / "WORKSHOP.md", table)
        print(f"wrote {_shown(csv)} and the table of WORKSHOP.md", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
