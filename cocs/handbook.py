"""Run the handbook's notebooks, and write their results safely.

The sources are jupytext percent scripts, `notebooks/NN_slug.py`. A run converts one to a
notebook in memory, injects the parameters of a profile and executes it with papermill in a
kernel of the running Python, with the repository root as the working directory. The executed
notebook lands in the git-ignored `build/notebooks/<profile>/NN_slug.ipynb`.

Profiles: `default` is the notebook's own `parameters` cell, unchanged (the documented run).
Every other profile, such as `smoke`, is a top-level key of `notebooks/profiles.yaml` that maps
each notebook name to the parameters it overrides.

Command line:

    python -m cocs.handbook list
    python -m cocs.handbook run NN_slug [--profile default|smoke] [--results-dir DIR] [--output PATH]
    python -m cocs.reproduce [--plan]     # every stale chapter's default run, with its plan

The worked solutions of the chapters' exercises, `notebooks/solutions/NN_slug.py`, run the same
way with `run_solution` (`python -m cocs.workshop` runs and times them all).

Notebooks import the writing helpers from here: `results_path`, `write_csv`, `save_figure`,
`atomic_write_text` and `atomic_write_bytes`. A reader of a results folder never sees a
half-written file: each is written to a temporary file beside it, then renamed over it.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTEBOOK_NAME = re.compile(r"^\d\d_[a-z0-9_]+$")
DEFAULT_PROFILE = "default"
SCALAR_TYPES = (bool, int, float, str)
KERNEL_NAME = "python3"  # in a virtual environment this is its own ipykernel, run by its python


def repo_root() -> Path:
    """The repository holding this package (the package is installed in editable mode)."""
    return Path(__file__).resolve().parent.parent


# A module attribute, not a constant in each function, so that tests can point it elsewhere.
NOTEBOOKS_DIR = repo_root() / "notebooks"


def _profiles_file() -> Path:
    return Path(NOTEBOOKS_DIR) / "profiles.yaml"


def _shown(path: Path) -> str:
    """A path relative to the repository root when it is inside it, for messages."""
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Writing results


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same folder (so the rename stays on one file
    system), which then replaces `path`. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file private to its owner; results are ordinary files.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def write_csv(df, path: str | os.PathLike, *, index: bool = False, **to_csv_kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically; the index is left out unless `index=True`."""
    return atomic_write_text(path, df.to_csv(index=index, **to_csv_kwargs))


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically, in the format named by the file's suffix.

    The figure stays open, so that the notebook still shows it.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(
            f"save_figure got {str(path)!r}, a path without a suffix: expected a file name "
            "such as 'figure.png' or 'figure.pdf', whose suffix names the format"
        )
    savefig_kwargs.setdefault("bbox_inches", "tight")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def results_path(results_dir: str | os.PathLike, name: str, *, create: bool = True) -> Path:
    """The folder `results_dir/name/` where notebook `name` writes; created unless `create=False`.

    A relative `results_dir` is resolved against the repository root, not the working
    directory, so a notebook writes to the same place however it is started.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(
            f"results_path got name={name!r}: expected a single folder name, the notebook's "
            "own name such as '01_image_as_points'; pass that name, without slashes"
        )
    base = Path(results_dir).expanduser()
    if not base.is_absolute():
        base = repo_root() / base
    folder = base / name
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------------------------------------
# Notebooks and their parameters


def notebook_names() -> list[str]:
    """Names (`NN_slug`) of the notebook sources `notebooks/NN_slug.py`, in chapter order."""
    return sorted(p.stem for p in Path(NOTEBOOKS_DIR).glob("*.py") if NOTEBOOK_NAME.match(p.stem))


def notebook_source(name: str) -> Path:
    """The source file of notebook `name`; a clear error when there is none."""
    names = notebook_names()
    if name not in names:
        raise ValueError(
            f"unknown notebook {name!r}: expected one of {', '.join(names) or '(none yet)'}, "
            f"the names of the {_shown(Path(NOTEBOOKS_DIR))}/NN_slug.py sources; "
            "run `python -m cocs.handbook list` to see them"
        )
    return Path(NOTEBOOKS_DIR) / f"{name}.py"


def read_notebook(name: str):
    """Notebook `name` as an nbformat notebook, converted from its percent-format source."""
    import jupytext

    return jupytext.read(notebook_source(name))


def parameters_of(nb, where: str = "the notebook") -> dict[str, Any]:
    """The defaults of the notebook's `parameters` cell, checking they are flat scalars.

    Args:
        nb: an nbformat notebook (e.g. from `jupytext.read`).
        where: how to name the notebook in error messages.
    """
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(
            f"{where} has {len(cells)} cells tagged 'parameters': expected exactly one; "
            'mark the cell of settings with `# %% tags=["parameters"]`'
        )
    params: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        line = ast.get_source_segment(cells[0].source, node)
        if not isinstance(target, ast.Name):
            raise ValueError(
                f"{where}: the parameters cell line {line!r} is not `name = value`: expected "
                "only assignments of one name each; move other code to a later cell"
            )
        try:
            v = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):
            v = None
        if not isinstance(v, SCALAR_TYPES):
            raise ValueError(
                f"{where}: parameter {target.id!r} is set by {line!r}: expected a flat scalar "
                "(int, float, str or bool literal); compute derived values in a later cell"
            )
        if target.id in params:
            raise ValueError(f"{where}: parameter {target.id!r} is assigned twice: keep one")
        params[target.id] = v
    return params


def _load_profiles() -> dict[str, Any]:
    import yaml

    path = _profiles_file()
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict | None) for v in data.values()):
        raise ValueError(
            f"{_shown(path)} should map profile names to {{notebook: {{parameter: value}}}}, "
            f"got {data!r}: fix its layout (see the comment at its top)"
        )
    return {k: v or {} for k, v in data.items()}


def profile_names() -> list[str]:
    """`default` and the profiles of `notebooks/profiles.yaml`."""
    return [DEFAULT_PROFILE] + [p for p in _load_profiles() if p != DEFAULT_PROFILE]


def load_profile(name: str, profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    """The parameters that `profile` overrides in notebook `name`, checked against its cell.

    `default` overrides nothing. Any other profile must list the notebook, possibly with an
    empty mapping, so that no notebook runs its full default configuration by omission.
    """
    profiles = _load_profiles()
    if profile != DEFAULT_PROFILE and profile not in profiles:
        raise ValueError(
            f"unknown profile {profile!r}: expected one of {', '.join(profile_names())} "
            f"('default' and the top-level keys of {_shown(_profiles_file())}); pass one of "
            "them, or add the profile to that file"
        )
    nb = read_notebook(name)  # also checks that the notebook exists
    if profile == DEFAULT_PROFILE:
        return {}
    entries = profiles[profile]
    if name not in entries:
        raise ValueError(
            f"notebook {name!r} has no entry under {profile!r} in {_shown(_profiles_file())}: "
            f"add `{name}: {{param: value}}` there with the parameters that make it small, "
            f"or `{name}: {{}}` if its defaults are already small"
        )
    overrides = entries[name] or {}
    if not isinstance(overrides, dict):
        raise ValueError(
            f"{_shown(_profiles_file())}: the {profile!r} entry of {name!r} is {overrides!r}: "
            f"expected a mapping of parameter names to values, such as `{name}: {{epochs: 1}}`"
        )
    overrides = dict(overrides)
    check_overrides(nb, overrides, where=f"{name} ({profile} profile)")
    return overrides


def check_overrides(nb, overrides: Mapping[str, Any], where: str) -> None:
    """Reject parameters that the notebook does not declare, or of a different type."""
    defaults = parameters_of(nb, where=where)
    for key, value in overrides.items():
        if key not in defaults:
            raise ValueError(
                f"{where}: unknown parameter {key!r}; expected one of {', '.join(defaults)}; "
                "fix the name, or add it to the notebook's parameters cell"
            )
        default = defaults[key]
        same = type(value) is type(default) or (isinstance(default, float) and type(value) is int)
        if not same:
            raise ValueError(
                f"{where}: parameter {key!r} = {value!r} has type {type(value).__name__}, but "
                f"its default {default!r} has type {type(default).__name__}; give a value of "
                f"type {type(default).__name__}"
            )


def check_profiles() -> None:
    """Check every entry of every profile: existing notebooks, known parameters and types."""
    names = notebook_names()
    for profile, entries in _load_profiles().items():
        for name in entries:
            if name not in names:
                raise ValueError(
                    f"{_shown(_profiles_file())} has an entry {name!r} under {profile!r}, but "
                    f"there is no notebook of that name (expected one of {', '.join(names)}); "
                    "rename the entry to match its notebook, or remove it"
                )
            load_profile(name, profile)


# ---------------------------------------------------------------------------------------------
# Execution


def build_path(name: str, profile: str = DEFAULT_PROFILE) -> Path:
    """Where the executed notebook of a run is written: `build/notebooks/<profile>/NN_slug.ipynb`."""
    return repo_root() / "build" / "notebooks" / profile / f"{name}.ipynb"


def provenance(profile: str) -> dict[str, Any]:
    """What an executed notebook records about its run: the profile, when, the commit and the
    machine. The book states it on every page (`cocs.book`)."""
    import datetime

    from .train import environment_info

    env = environment_info()
    hardware = env["hardware"]
    return {
        "profile": profile,
        "executed": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": env["git_commit"],
        "git_dirty": env["git_dirty"],
        "cpu": hardware["cpu"],
        "cpu_count": hardware["cpu_count"],
        "gpus": hardware["gpus"],
    }


def run_notebook(
    name: str,
    *,
    profile: str = DEFAULT_PROFILE,
    results_dir: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    progress_bar: bool = False,
    log_output: bool = False,
) -> Path:
    """Execute notebook `name` with the parameters of `profile`; returns the executed notebook.

    Args:
        name: `NN_slug`, the stem of `notebooks/NN_slug.py`.
        profile: `default` (the notebook's own parameters) or a key of `profiles.yaml`.
        results_dir: overrides the notebook's `results_dir` parameter, e.g. a temporary folder.
        output: the executed `.ipynb`; defaults to `build_path(name, profile)`.
        progress_bar: papermill's cell-by-cell progress bar (for a terminal).
        log_output: stream what the cells print into the log as they run (for a log file).

    The output appears only when every cell succeeded. When a cell fails, the partly executed
    notebook is kept as `<output stem>.failed.ipynb` and papermill's error propagates; it
    shows the failing cell's source and traceback.
    """
    parameters = load_profile(name, profile)
    nb = read_notebook(name)
    if results_dir is not None:
        parameters["results_dir"] = str(results_dir)
        check_overrides(nb, {"results_dir": str(results_dir)}, where=f"{name} (results_dir)")
    output = Path(output) if output is not None else build_path(name, profile)
    return _execute(
        nb,
        parameters,
        output,
        source=notebook_source(name),
        profile=profile,
        progress_bar=progress_bar,
        log_output=log_output,
    )


def solutions_dir() -> Path:
    """The worked solutions of the chapters' exercises: `notebooks/solutions/NN_slug.py`."""
    return Path(NOTEBOOKS_DIR) / "solutions"


def solution_sources() -> list[Path]:
    """The solution notebooks `notebooks/solutions/NN_slug.py`, in chapter order."""
    return sorted(p for p in solutions_dir().glob("*.py") if NOTEBOOK_NAME.match(p.stem))


def run_solution(
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    parameters: Mapping[str, Any] | None = None,
    progress_bar: bool = False,
    log_output: bool = False,
) -> Path:
    """Execute a worked-solutions notebook; returns the executed notebook.

    A solution runs as a chapter does (papermill, a kernel of the running Python, the
    repository root as working directory), with the defaults of its own `parameters` cell.

    Args:
        path: a jupytext percent script, such as `notebooks/solutions/01_image_as_points.py`.
        output: the executed `.ipynb`; a failed run leaves `<output stem>.failed.ipynb`.
        parameters: values that override the parameters cell (names and types checked).
        progress_bar, log_output: as in `run_notebook`.
    """
    import jupytext

    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"no solution notebook at {_shown(path)}: expected a jupytext percent script such "
            f"as {_shown(solutions_dir())}/01_image_as_points.py; check the path"
        )
    nb = jupytext.read(path)
    parameters = dict(parameters or {})
    check_overrides(nb, parameters, where=_shown(path))  # also checks the parameters cell
    return _execute(
        nb,
        parameters,
        Path(output),
        source=path,
        profile=DEFAULT_PROFILE,
        progress_bar=progress_bar,
        log_output=log_output,
    )


def _execute(
    nb,
    parameters: dict[str, Any],
    output: Path,
    *,
    source: Path,
    profile: str,
    progress_bar: bool,
    log_output: bool,
) -> Path:
    """Run the converted notebook `nb` with papermill and write it to `output` (see
    `run_notebook`); `source` is the script it came from, `profile` what the run records."""
    import nbformat
    import papermill

    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python 3",
        "language": "python",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    running = output.with_name(f"{output.stem}.running.ipynb")
    failed = output.with_name(f"{output.stem}.failed.ipynb")
    # Make compares timestamps: a stale or failed output must not look up to date.
    for stale in (output, failed):
        stale.unlink(missing_ok=True)
    # The converted notebook is written first, so that papermill records a file as its input.
    running.write_text(nbformat.writes(nb))
    try:
        executed = papermill.execute_notebook(
            str(running.resolve()),
            str(running.resolve()),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            language="python",
            cwd=str(repo_root()),
            progress_bar=progress_bar,
            log_output=log_output,
        )
    except BaseException:
        if running.exists():
            os.replace(running, failed)
        raise
    executed.metadata.papermill.update(input_path=_shown(source), output_path=_shown(output))
    executed.metadata["cocs"] = provenance(profile)
    atomic_write_text(output, nbformat.writes(executed))
    running.unlink()
    return output


def _format_failure(name: str, err, failed: Path) -> str:
    lines = [
        f"notebook {name} failed in this cell:",
        "",
        *("    " + s for s in err.source.splitlines()),
        "",
        str(err).strip(),
    ]
    if failed.exists():
        lines += ["", f"the executed notebook, with the error, is {_shown(failed)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cocs.handbook", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the notebook names, in chapter order")
    run = sub.add_parser(
        "run",
        help="execute one notebook with a profile's parameters",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("name", help="NN_slug, the stem of notebooks/NN_slug.py")
    run.add_argument(
        "--profile", default=DEFAULT_PROFILE, help="default, or a key of profiles.yaml"
    )
    run.add_argument(
        "--results-dir", help="override the notebook's results_dir parameter (default: its own)"
    )
    run.add_argument(
        "--output", help="executed notebook path (default: build/notebooks/<profile>/NN_slug.ipynb)"
    )
    run.add_argument(
        "--log-output",
        action="store_true",
        help="print what the cells print while they run (always on when stderr is no terminal)",
    )
    args = parser.parse_args(argv)

    if args.command == "list":
        for name in notebook_names():
            print(name)
        return 0

    from papermill.exceptions import PapermillExecutionError

    output = Path(args.output) if args.output else build_path(args.name, args.profile)
    log_output = args.log_output or not sys.stderr.isatty()
    if log_output:  # papermill logs each cell's output at INFO level
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("  %(message)s"))
        logging.getLogger("papermill").addHandler(handler)
        logging.getLogger("papermill").setLevel(logging.INFO)
    try:
        notebook_source(args.name)
        print(f"running {args.name} (profile {args.profile}) -> {_shown(output)}", file=sys.stderr)
        started = time.perf_counter()
        run_notebook(
            args.name,
            profile=args.profile,
            results_dir=args.results_dir,
            output=output,
            progress_bar=sys.stderr.isatty() and not log_output,
            log_output=log_output,
        )
        if args.profile == DEFAULT_PROFILE and args.results_dir is None and not args.output:
            from .reproduce import record_timing

            record_timing(args.name, (time.perf_counter() - started) / 60)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PapermillExecutionError as err:
        failed = output.with_name(f"{output.stem}.failed.ipynb")
        print(_format_failure(args.name, err, failed), file=sys.stderr)
        return 1
    print(f"wrote {_shown(output)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
