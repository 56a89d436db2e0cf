"""`make reproduce`: which chapters are stale, what they will cost, and where the run stands.

    python -m cocs.reproduce            # run every stale chapter's default profile, in order
    python -m cocs.reproduce --plan     # only print the plan

A chapter is stale when its executed notebook (``build/notebooks/default/NN_slug.ipynb``) is
missing or older than its source, the library, or a chapter it reads (:data:`READS`). The plan
lists the stale chapters with the time each took when it last ran on record
(``results/timings.csv``, written after every default run, with the hardware it ran on), and
the total. While running, each chapter gets a line when it starts and when it ends, with the
elapsed and the estimated remaining time; the notebook's own printed lines follow in the log,
also when the output is a file rather than a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from .handbook import build_path, notebook_names, notebook_source, repo_root, write_csv
from .provenance import cpu_has_native_bf16

__all__ = ["READS", "estimates", "plan", "record_timing", "stale", "timings_file"]

# Chapters that read what other chapters wrote ("*": every other chapter).
READS = {"07_cluster_maps": ("04_cifar10", "05_imagenette"), "10_results": ("*",)}


def _reads(name: str, names: list[str]) -> list[str]:
    deps = READS.get(name, ())
    return [n for n in names if n != name] if "*" in deps else [n for n in deps if n in names]


def stale(names: list[str] | None = None) -> list[str]:
    """The chapters whose default run is missing or older than what it depends on, in order."""
    names = names or notebook_names()
    library = [*(repo_root() / "cocs").glob("*.py"), *(repo_root() / "cocs").glob("*.yaml")]
    newest_library = max(p.stat().st_mtime for p in library)
    out: list[str] = []
    for name in names:  # chapter order: a chapter's inputs come before it
        built = build_path(name)
        inputs = [notebook_source(name).stat().st_mtime, newest_library]
        deps = _reads(name, names)
        inputs += [build_path(d).stat().st_mtime for d in deps if build_path(d).is_file()]
        if not built.is_file() or built.stat().st_mtime < max(inputs) or set(deps) & set(out):
            out.append(name)
    return out


def timings_file() -> Path:
    return repo_root() / "results" / "timings.csv"


def record_timing(name: str, minutes: float) -> None:
    """Add a finished default run of ``name`` to ``results/timings.csv``."""
    from .bench import hardware_name

    path = timings_file()
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    row = pd.DataFrame(
        [
            {
                "name": name,
                "minutes": round(minutes, 2),
                "hardware": hardware_name(),
                "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            }
        ]  # fmt: skip
    )
    write_csv(pd.concat([old, row], ignore_index=True), path)


def _training_minutes(name: str) -> tuple[float, str] | None:
    """The training time recorded in a chapter's committed ``metrics.csv`` files, and where."""
    total, cpus = 0.0, set()
    for metrics in (repo_root() / "results" / name).rglob("metrics.csv"):
        meta = metrics.with_name("metrics.json")
        if not meta.is_file():
            continue
        total += pd.read_csv(metrics)["epoch_seconds"].sum() / 60
        hw = json.loads(meta.read_text())["environment"]["hardware"]
        cpus.add(f"{hw['cpu']}, {hw['torch_threads']} threads")
    return (total, "; ".join(sorted(cpus)) + ", training only") if total else None


def estimates(names: list[str]) -> dict[str, tuple[float, str] | None]:
    """Each chapter's minutes and hardware from its last recorded default run; without one, the
    training time its committed results record; else None."""
    path = timings_file()
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["name"])
    out = {}
    for name in names:
        rows = table[table["name"] == name]
        if rows.empty:
            out[name] = _training_minutes(name)
        else:
            out[name] = (rows.iloc[-1]["minutes"], f"its last run, on {rows.iloc[-1]['hardware']}")
    return out


def _clock(minutes: float) -> str:
    return (
        f"{int(minutes // 60)} h {int(minutes % 60):02d} min"
        if minutes >= 60
        else f"{minutes:.0f} min"
    )


def trains_in_bf16(name: str) -> bool:
    """Whether chapter ``name``'s default parameters ask for bfloat16 autocast."""
    from .handbook import parameters_of, read_notebook

    return parameters_of(read_notebook(name)).get("amp") == "bf16"


def plan(names: list[str]) -> str:
    """The plan of a run of ``names``: one line per chapter and the total, as text."""
    if not names:
        return "every chapter's default run is up to date: nothing to run"
    est = estimates(names)
    lines = [f"{len(names)} chapter(s) to run, in this order:"]
    again = 0.0  # training minutes of committed runs that the estimates count as reused
    for name in names:
        e, trained = est[name], _training_minutes(name)
        when = f"about {_clock(e[0])} ({e[1]})" if e else "no time on record"
        if trained and e != trained:  # its last run reused committed runs
            again += trained[0]
            when += f"; its committed runs trained for {_clock(trained[0])} ({trained[1]})"
        lines.append(f"  {name:<24} {when}")
    known = [e[0] for e in est.values() if e]
    unknown = len(names) - len(known)
    total = f"about {_clock(sum(known))}" + (
        f", plus {unknown} chapter(s) not timed" if unknown else ""
    )
    lines.append(f"total: {total}")
    if again:
        lines.append(
            f"(finished runs under results/ are reused, not trained again; without them, "
            f"training takes about {_clock(again)} more)"
        )
    bf16 = [n for n in names if trains_in_bf16(n)]
    if bf16 and not cpu_has_native_bf16():
        lines.append(
            f"warning: {', '.join(bf16)} train in bfloat16 autocast, which this CPU "
            f"({torch.backends.cpu.get_cpu_capability()}) emulates: several times slower than "
            'the estimates above. Set amp = "off" in their parameters cells for float32 (another '
            "recipe: committed bfloat16 runs are then trained again)."
        )
    return "\n".join(lines)


def run(names: list[str]) -> int:
    """Run ``names`` in order with progress lines; returns 0, or 1 at the first failure."""
    from . import handbook

    est = {n: (e[0] if e else None) for n, e in estimates(names).items()}
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        left = [est[n] for n in names[i - 1 :]]
        remaining = _clock(sum(x for x in left if x)) + (" +" if None in left else "")
        elapsed = (time.perf_counter() - start) / 60
        print(f"[{i}/{len(names)}] {name}: starting; {_clock(elapsed)} elapsed, about "
              f"{remaining} left", flush=True)  # fmt: skip
        code = handbook.main(["run", name, "--profile", "default", "--log-output"])
        if code:
            print(f"[{i}/{len(names)}] {name}: FAILED (see above); stopping", flush=True)
            return code
        took = (time.perf_counter() - start) / 60 - elapsed
        print(f"[{i}/{len(names)}] {name}: done in {_clock(took)}", flush=True)
    print(f"all {len(names)} chapter(s) done in {_clock((time.perf_counter() - start) / 60)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cocs.reproduce",
        description="Run every stale chapter's default profile, after printing the plan.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--plan", action="store_true", help="print the plan and stop")
    parser.add_argument(
        "names", nargs="*", help="chapters to consider (default: all); stale ones run"
    )
    args = parser.parse_args(argv)
    names = stale(args.names or None)
    print(plan(names), flush=True)
    return 0 if args.plan or not names else run(names)


if __name__ == "__main__":
    sys.exit(main())
