"""The handbook as a static web site, built offline from the executed notebooks.

`make book` (`python -m cocs.book`) gathers, for every chapter, the executed notebook of the
most complete run this checkout holds (`build/notebooks/default/`, else `book/`, else
`smoke/`), states on
the page which run it shows (profile, date, commit, machine), and renders the chapters, the
README (as the home page), the glossary, the bibliography and the exercise solutions with
Sphinx and MyST-NB. Building executes nothing: a page shows what its run computed.
`--prepare` executes, for the chapters that train and have no default run, their `book`
profile (`notebooks/profiles.yaml`): the chapter as documented, on a copy of the committed
results, reusing every finished run that matches today's code (`cocs.runs`) and training none.
A chapter whose runs are not all committed fails there, says why, and shows its smoke run.
MathJax is served from the site, so pages need no network.

    python -m cocs.book --prepare             # the `book` profile, where no default run exists
    python -m cocs.book                       # build/book/index.html
    python -m cocs.book --profile smoke       # only the smoke runs
    python -m cocs.book --check build/book    # the pure-Python checks of a built site

`check_site` checks a built site without a browser: every internal link, anchor, image,
script and style sheet resolves, and nothing is loaded from another host.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .handbook import notebook_names, notebook_source, repo_root

# The runs a page may show, most complete first.
PROFILES = ("default", "book", "smoke")
PROFILE_NOTES = {
    "default": "the chapter's documented configuration (its `parameters` cell)",
    "book": "the chapter's documented configuration, standing on the committed finished runs "
    "of its default profile (results/ and the weights shipped in cocs/weights, where their "
    "model fingerprint and recipe match the code) instead of training them again; each run's "
    "origin is printed where it is loaded",
    "smoke": "the small test configuration of `make test`: its numbers show that the code "
    "runs, not what the chapter finds; `make reproduce` produces the real ones",
}
SOLUTIONS_DIR = "solutions"  # notebooks/solutions/NN_slug.py, one per chapter with exercises


def book_dir() -> Path:
    """The committed part of the site: its Sphinx configuration and the bibliography."""
    return repo_root() / "book"


def executed_notebooks(
    profiles: tuple[str, ...] = PROFILES, build: Path | None = None
) -> dict[str, tuple[str, Path]]:
    """For each chapter, the profile and path of its executed notebook, the first of `profiles`
    that exists under `build/notebooks/<profile>/`. Raises when a chapter has none."""
    build = build if build is not None else repo_root() / "build" / "notebooks"
    found, missing = {}, []
    for name in notebook_names():
        for profile in profiles:
            path = build / profile / f"{name}.ipynb"
            if path.is_file():
                found[name] = (profile, path)
                break
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(
            f"no executed notebook of {', '.join(missing)} in {build}/{{{','.join(profiles)}}}/; "
            "run `make smoke` (minutes) or `make reproduce` (hours) first"
        )
    return found


def _newest(paths) -> float:
    return max((p.stat().st_mtime for p in paths if p.is_file()), default=0.0)


def prepare(build: Path | None = None) -> dict[str, str]:
    """Execute the `book` profile of every chapter it lists that has no default run and whose
    book run is missing or older than its inputs: the chapter, the profiles, the library, the
    shipped weights and the committed results. The runs use `build/book-results/`, a fresh copy
    of `results/`, so the committed files stay as they are. Returns what happened to each
    listed chapter."""
    from papermill.exceptions import PapermillExecutionError

    from .handbook import _load_profiles, run_notebook

    root = repo_root()
    build = build if build is not None else root / "build" / "notebooks"
    chapters = list(_load_profiles().get("book", {}))
    staged = root / "build" / "book-results"
    library = [*root.glob("cocs/*.py"), *root.glob("cocs/*.yaml"), *root.glob("cocs/weights/*")]
    outcomes, copied = {}, False
    for name in chapters:
        out = build / "book" / f"{name}.ipynb"
        inputs = [notebook_source(name), root / "notebooks" / "profiles.yaml", *library,
                  *(root / "results").rglob("*")]  # fmt: skip
        if (build / "default" / f"{name}.ipynb").is_file():
            outcomes[name] = "has a default run"
            continue
        if out.is_file() and out.stat().st_mtime >= _newest(inputs):
            outcomes[name] = "book run up to date"
            continue
        if not copied:  # once per call: later chapters may read what earlier ones wrote
            if staged.exists():
                shutil.rmtree(staged)
            shutil.copytree(root / "results", staged)
            copied = True
        try:
            run_notebook(name, profile="book", results_dir=staged, output=out)
            outcomes[name] = "book run executed"
        except PapermillExecutionError as err:
            out.unlink(missing_ok=True)
            outcomes[name] = f"no book run ({err.ename}: {err.evalue.splitlines()[0]})"
        print(f"{name}: {outcomes[name]}", file=sys.stderr, flush=True)
    return outcomes


def provenance_note(profile: str, metadata: dict, source: str) -> str:
    """The markdown that heads a chapter's page: which run it shows, and where to get it."""
    meta = metadata.get("cocs", {})
    when = meta.get("executed") or metadata.get("papermill", {}).get("end_time") or "unknown"
    commit = (meta.get("git_commit") or "unknown")[:10]
    if meta.get("git_dirty"):
        commit += " with uncommitted changes"
    machine = meta.get("cpu") or "an unrecorded machine"
    if meta.get("cpu_count"):
        machine += f", {meta['cpu_count']} cores"
    if meta.get("gpus"):
        machine += ", " + ", ".join(meta["gpus"])
    return (
        f":::{{note}}\nThis page shows the **{profile}** run of the chapter: "
        f"{PROFILE_NOTES.get(profile, profile)}. Executed {when[:19].replace('T', ' ')} UTC "
        f"at commit {commit}, on {machine}. Download the notebook: "
        f"{{download}}`{source}<{source}>`.\n:::"
    )


def _with_note(nb_json: dict, note: str) -> dict:
    """The notebook with `note` right under its title (the first line of its first cell)."""
    first = nb_json["cells"][0]
    title, _, rest = _text(first).partition("\n")
    first["source"] = f"{title}\n\n{note}\n{rest}"
    return nb_json


def _text(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _solution_notebook(source: Path) -> dict:
    """A solutions script as a notebook whose answers sit behind toggles: each exercise's
    heading and statement stay visible, its worked answer (prose and code) is folded."""
    import jupytext
    import nbformat

    nb = jupytext.read(source)
    for cell in nb.cells:
        text = cell.source.strip()
        if cell.cell_type == "code":
            cell.metadata.setdefault("tags", []).append("hide-input")
        elif not text.startswith("#") and "parameters" not in cell.metadata.get("tags", []):
            cell.source = f":::{{admonition}} Solution\n:class: dropdown\n{text}\n:::"
    return json.loads(nbformat.writes(nb))


_LINK = re.compile(r"\]\(([^)#\s]+\.py)(#[^)]*)?\)")


def _chapter_links(markdown: str) -> str:
    """Links to a chapter's source (`04_cifar10.py`) point to its page in the site."""

    def page(m: re.Match) -> str:
        target = Path(m.group(1))
        if re.fullmatch(r"\d\d_[a-z0-9_]+", target.stem):
            return f"]({target.with_suffix('.ipynb').as_posix()}{m.group(2) or ''})"
        return m.group(0)

    return _LINK.sub(page, markdown)


def stage(source_dir: Path, notebooks: dict[str, tuple[str, Path]]) -> Path:
    """Lay out the Sphinx source folder: configuration, home page, chapters, solutions."""
    root = repo_root()
    if source_dir.exists():
        shutil.rmtree(source_dir)
    shutil.copytree(book_dir(), source_dir)
    for name in ("GLOSSARY.md", "WORKSHOP.md", "LICENSE", "CITATION.cff"):
        shutil.copy2(root / name, source_dir / name)
    chapters = source_dir / "notebooks"
    chapters.mkdir()
    for name, (profile, path) in notebooks.items():
        nb_json = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb_json["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = _chapter_links(_text(cell))
        source = notebook_source(name)
        shutil.copy2(source, chapters / source.name)
        note = provenance_note(profile, nb_json.get("metadata", {}), source.name)
        (chapters / f"{name}.ipynb").write_text(json.dumps(_with_note(nb_json, note)))
    solutions = sorted((root / "notebooks" / SOLUTIONS_DIR).glob("[0-9][0-9]_*.py"))
    if solutions:
        (source_dir / SOLUTIONS_DIR).mkdir()
        for path in solutions:
            target = source_dir / SOLUTIONS_DIR / f"{path.stem}.ipynb"
            target.write_text(json.dumps(_solution_notebook(path)))
    index = _chapter_links((root / "README.md").read_text(encoding="utf-8"))
    for caption, pages in (
        ("Chapters", [f"notebooks/{n}" for n in notebooks]),
        ("Solutions to the exercises", [f"{SOLUTIONS_DIR}/{p.stem}" for p in solutions]),
        ("Reference", ["WORKSHOP", "GLOSSARY", "bibliography"]),
    ):
        if pages:
            index += f"\n\n```{{toctree}}\n:maxdepth: 1\n:caption: {caption}\n:hidden:\n\n"
            index += "\n".join(pages) + "\n```\n"
    (source_dir / "index.md").write_text(index, encoding="utf-8")
    return source_dir


def build(
    out: Path | None = None,
    *,
    profiles: tuple[str, ...] = PROFILES,
    notebooks_dir: Path | None = None,
    quiet: bool = True,
) -> Path:
    """Build the site into `out` (default `build/book/`) and return its index.html. Sphinx's
    warnings fail the build: a broken reference is an error, not a line in a log."""
    root = repo_root()
    out = out if out is not None else root / "build" / "book"
    notebooks = executed_notebooks(profiles, notebooks_dir)
    source_dir = stage(out.parent / f"{out.name}-source", notebooks)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-E"]
    cmd += ["-q"] if quiet else []
    cmd += [str(source_dir), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sphinx failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    return out / "index.html"


# --------------------------------------------------------------------------------------------
# Checking a built site without a browser
# --------------------------------------------------------------------------------------------


class _Page(html.parser.HTMLParser):
    """The ids, links and loaded resources of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.resources: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag in ("img", "script", "source") and a.get("src"):
            self.resources.append(a["src"])
        elif tag == "link" and a.get("href") and a.get("rel") != "canonical":
            self.resources.append(a["href"])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def check_site(site: Path) -> list[str]:
    """Every problem found in the built site `site`: an internal link, anchor or resource
    that does not resolve, or a resource (script, style sheet, image) from another host."""
    site = Path(site)
    problems, pages = [], {}
    for path in sorted(site.rglob("*.html")):
        if not path.relative_to(site).parts[0].startswith("_"):  # not the theme's templates
            pages[path.resolve()] = _parse(path)
    if not pages:
        return [f"{site} holds no HTML pages; build it with `make book`"]
    for path, page in pages.items():
        shown = path.relative_to(site.resolve())
        for url in page.resources:
            parts = urlsplit(url)
            if parts.scheme == "data" or not (parts.scheme or parts.netloc or parts.path):
                continue  # inline data, or the page itself (`href="#"`)
            if parts.scheme or parts.netloc:
                problems.append(f"{shown}: loads {url} from the network")
            elif not (path.parent / unquote(parts.path)).resolve().is_file():
                problems.append(f"{shown}: missing resource {url}")
        for url in page.links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                continue  # links out of the site are for the reader to follow
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{shown}: broken link {url}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{shown}: no anchor #{parts.fragment} in {target.name}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cocs.book", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--profile",
        action="append",
        choices=PROFILES,
        help=f"the runs a page may show, in order of preference (default: {' '.join(PROFILES)})",
    )
    parser.add_argument("--out", type=Path, help="the site folder (default: build/book)")
    parser.add_argument("--check", type=Path, metavar="SITE", help="only check a built site")
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only execute the book profile where a chapter has no default run (see above)",
    )
    args = parser.parse_args(argv)
    if args.prepare:
        prepare()  # prints what happens to each chapter it executes
        return 0
    try:
        if args.check is None:
            index = build(args.out, profiles=tuple(args.profile or PROFILES), quiet=False)
            site = index.parent
        else:
            site = args.check
        problems = check_site(site)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"site: {site / 'index.html'} (open it in a browser)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
