"""The web site of `make book` and the notebook view of `make lab`.

The site is built from the smoke runs (the notebooks `tests/test_notebooks.py` executed; run
alone, the fixture executes them) into `build/test-book/site/`, checked in pure Python (links,
anchors, images, nothing from the network), then opened page by page in headless Chromium,
which writes a screenshot of each page to `build/test-book/screenshots/`. `make lab` is
started on a free port and must show a chapter's `.py` source as a notebook.

Chromium is Debian's `chromium` package (`.ci/run` installs it); without it the browser tests
say how to install it and are skipped, except in CI, where they fail.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cocs import book, handbook

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "test-book"
CHAPTERS = handbook.notebook_names()


# --- the pure-Python checks, on small hand-made sites ------------------------------------------


def _site(tmp_path: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"<html><body>{body}</body></html>")
    return tmp_path


def test_check_site_accepts_a_sound_site(tmp_path):
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "a.js").write_text("")
    site = _site(
        tmp_path,
        {
            "index.html": '<a href="ch/one.html#top">one</a><script src="_static/a.js"></script>'
            '<a href="https://example.org/">out</a><img src="data:image/png;base64,AA">',
            "ch/one.html": '<h1 id="top">One</h1><a href="../index.html">home</a><a href="#top">',
        },
    )
    assert book.check_site(site) == []


def test_check_site_names_every_problem(tmp_path):
    site = _site(
        tmp_path,
        {
            "index.html": '<a href="missing.html">x</a><a href="two.html#nowhere">y</a>'
            '<img src="fig.png"><script src="https://cdn.example.org/mathjax.js"></script>',
            "two.html": '<h1 id="here">Two</h1>',
        },
    )
    problems = "\n".join(book.check_site(site))
    assert "broken link missing.html" in problems
    assert "no anchor #nowhere in two.html" in problems
    assert "missing resource fig.png" in problems
    assert "loads https://cdn.example.org/mathjax.js from the network" in problems


def test_check_site_of_an_empty_folder_says_how_to_build(tmp_path):
    assert "make book" in book.check_site(tmp_path)[0]


def test_chapter_links_point_to_pages():
    text = "see [chapter 6](06_ablations.py#design) and [a script](tools/plot.py)"
    assert book._chapter_links(text) == (
        "see [chapter 6](06_ablations.ipynb#design) and [a script](tools/plot.py)"
    )


def test_provenance_note_names_the_run():
    meta = {
        "cocs": {
            "profile": "smoke",
            "executed": "2026-12-02T10:11:12+00:00",
            "git_commit": "0123456789abcdef",
            "git_dirty": True,
            "cpu": "Some CPU",
            "cpu_count": 2,
            "gpus": [],
        }
    }
    note = book.provenance_note("smoke", meta, "04_cifar10.py")
    assert "**smoke** run" in note and "not what the chapter finds" in note
    assert "2026-12-02 10:11:12 UTC" in note and "0123456789 with uncommitted changes" in note
    assert "Some CPU, 2 cores" in note and "{download}`04_cifar10.py<04_cifar10.py>`" in note


def test_missing_runs_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="make smoke"):
        book.executed_notebooks(("smoke",), tmp_path)


def test_prepare_runs_the_book_profile_only_where_it_is_needed(tmp_path, monkeypatch):
    from papermill.exceptions import PapermillExecutionError

    root, build = tmp_path / "repo", tmp_path / "notebooks"
    (root / "results" / "06_ablations").mkdir(parents=True)
    (root / "results" / "06_ablations" / "runs.csv").write_text("key\nfull\n")
    (build / "default").mkdir(parents=True)
    (build / "default" / "04_cifar10.ipynb").write_text("{}")
    monkeypatch.setattr(book, "repo_root", lambda: root)
    calls = []

    def run_notebook(name, *, profile, results_dir, output):
        calls.append(name)
        assert profile == "book" and Path(results_dir) == root / "build" / "book-results"
        assert (Path(results_dir) / "06_ablations" / "runs.csv").is_file(), "a copy of results/"
        if name != "06_ablations":
            raise PapermillExecutionError(1, 1, "", "MissingRun", f"results/{name}: none\n.", [])
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text("{}")
        return Path(output)

    monkeypatch.setattr(handbook, "run_notebook", run_notebook)
    listed = set(handbook._load_profiles()["book"])
    first = book.prepare(build)
    assert set(first) == listed and first["04_cifar10"] == "has a default run"
    assert first["06_ablations"] == "book run executed"
    assert first["08_point_clouds"] == "no book run (MissingRun: results/08_point_clouds: none)"
    assert "04_cifar10" not in calls and not (build / "book" / "08_point_clouds.ipynb").exists()
    calls.clear()
    second = book.prepare(build)
    assert second["06_ablations"] == "book run up to date" and "06_ablations" not in calls
    (root / "results" / "06_ablations" / "runs.csv").write_text("key\nfull\none_head\n")
    assert book.prepare(build)["06_ablations"] == "book run executed", "new results: again"
    assert (root / "results" / "06_ablations" / "runs.csv").read_text().count("\n") == 3


# --- the site built from the smoke runs ----------------------------------------------------------


@pytest.fixture(scope="session")
def smoke_site(smoke_notebooks, smoke_results) -> Path:
    for name in CHAPTERS:  # in chapter order, so that later chapters find what they read
        if not (smoke_notebooks / f"{name}.ipynb").is_file():
            handbook.run_notebook(
                name,
                profile="smoke",
                results_dir=smoke_results,
                output=smoke_notebooks / f"{name}.ipynb",
            )
    started = time.perf_counter()
    index = book.build(OUT / "site", profiles=("smoke",), notebooks_dir=smoke_notebooks.parent)
    print(f"book built in {time.perf_counter() - started:.0f} s")
    return index.parent


@pytest.mark.notebook
def test_site_has_every_page_and_no_broken_reference(smoke_site):
    assert book.check_site(smoke_site) == []
    for name in CHAPTERS:
        page = (smoke_site / "notebooks" / f"{name}.html").read_text()
        assert "<strong>smoke</strong> run of the chapter" in page, name
        assert re.search(rf'href="[^"]*_downloads/[0-9a-f]+/{name}\.py"', page), name
    for page in ("index", "WORKSHOP", "GLOSSARY", "bibliography"):
        assert (smoke_site / f"{page}.html").is_file(), page
    assert (smoke_site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    index = (smoke_site / "index.html").read_text()
    assert all(f"notebooks/{name}.html" in index for name in CHAPTERS), "the contents list"
    for name in CHAPTERS[:-1]:  # chapters 1-9 have exercises, their solutions a folded page
        solution = (smoke_site / "solutions" / f"{name}.html").read_text()
        assert "Exercise 1" in solution and "<details" in solution and "dropdown" in solution, name


@pytest.fixture(scope="session")
def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = (
            "Chromium is not installed: on Debian or Ubuntu `sudo apt-get install chromium`, "
            "elsewhere install Chromium and put it on PATH; the pure-Python site checks ran"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


@contextlib.contextmanager
def _served(folder: Path):
    """An HTTP server for `folder` on a free local port; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _watch(page) -> list[str]:
    """Collect the page's console errors, script errors and failed requests."""
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    return problems


@pytest.mark.notebook
@pytest.mark.browser
def test_every_page_renders_in_chromium(smoke_site, chromium):
    shots = OUT / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    pages = sorted(p.relative_to(smoke_site).as_posix() for p in smoke_site.rglob("*.html"))
    pages = [p for p in pages if not p.startswith("_")]  # Sphinx's own pages (modules) if any
    math_pages = []
    with _served(smoke_site) as base:
        for rel in pages:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            problems = _watch(page)
            page.goto(f"{base}/{rel}", wait_until="load")
            if page.locator(".math").count():
                page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                    timeout=60_000,
                )
                typeset = page.evaluate(
                    "async () => { await MathJax.startup.promise;"
                    " return document.querySelectorAll('mjx-container').length; }"
                )
                assert typeset >= page.locator(".math").count(), f"{rel}: math not typeset"
                math_pages.append(rel)
            broken = page.evaluate(
                "() => Array.from(document.images)"
                ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
            )
            assert not broken, f"{rel}: images that did not load: {broken}"
            page.screenshot(path=shots / (rel.replace("/", "__") + ".png"))
            page.close()
            assert not problems, f"{rel}: " + "; ".join(problems)
    assert "notebooks/01_image_as_points.html" in math_pages
    assert "notebooks/02_context_clustering.html" in math_pages
    assert len(list(shots.glob("*.png"))) == len(pages)


# --- make lab ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.notebook
@pytest.mark.browser
def test_make_lab_opens_a_chapter_as_a_notebook(chromium, tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    # The reader's own settings and workspaces stay untouched, and nothing is saved back to the
    # chapter's source while the browser has it open.
    settings = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    args = (
        f"--no-browser --port={port} --IdentityProvider.token={token} "
        f"--LabApp.user_settings_dir={tmp_path / 'settings'} "
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"
    )
    source = ROOT / "notebooks" / "01_image_as_points.py"
    before = source.read_bytes()
    log = (tmp_path / "lab.log").open("w")
    lab = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_ARGS={args}"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: make, jupyter and the kernels
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert lab.poll() is None, f"make lab exited: {(tmp_path / 'lab.log').read_text()}"
            try:
                url = f"http://127.0.0.1:{port}/api/status?token={token}"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"JupyterLab did not answer within 2 minutes: {(tmp_path / 'lab.log').read_text()}"
            )
            time.sleep(1)
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/lab/tree/notebooks/01_image_as_points.py?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        title = page.locator(".jp-Notebook .jp-MarkdownCell .jp-RenderedMarkdown h1").first
        title.wait_for(timeout=60_000)  # the markdown is rendered, not shown as source
        assert "An image as a set of points" in title.inner_text()
        assert page.locator(".jp-FileEditor").count() == 0, "opened as text, not as a notebook"
        OUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=OUT / "lab.png")
        page.close()
        assert source.read_bytes() == before, "opening the chapter changed its source"
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait()
        log.close()
