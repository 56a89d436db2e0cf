"""The ablations of chapter 6: which model each one trains, and how its seeds are summarised.

Every ablation is ``coc_cifar`` with a few keyword arguments changed (``model_kwargs`` of
:class:`cocs.train.TrainConfig`), so the whole study is one training engine run many times.
:func:`summarise` turns the per-run accuracies into mean and standard deviation over seeds, and
:func:`findings` compares them in the direction of each of the paper's findings.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

__all__ = [
    "ABLATIONS",
    "FINDINGS",
    "Ablation",
    "Finding",
    "findings",
    "paper_evidence",
    "summarise",
]


@dataclass(frozen=True)
class Ablation:
    """One row of the study: ``coc_cifar`` built with ``model_kwargs``."""

    key: str  # short name; also the results sub-folder
    label: str  # what a reader sees in tables
    group: str  # the question of the issue list it answers, (a) to (h)
    model_kwargs: str  # cocs.train.parse_model_kwargs syntax; empty: the full model


# coc_cifar: stages of 16, 8, 4, 2 points per side; heads (2, 2, 4, 4) of 32 channels; 2x2
# centres per region in stages 1-3 and one in stage 4; regions of 4x4 points in stages 1-2
# (folds 4 and 2), none after. Per-stage tuples below keep every other setting as it is.
ABLATIONS = (
    Ablation("full", "full model", "a", ""),
    Ablation("no_positions", "no position information (colour only)", "b", "use_positions=False"),
    Ablation("no_cluster", "no context cluster (position information only)", "c", "mixer='none'"),
    # the same channels in one head per layer: heads x head_dim stays (64, 64, 128, 128)
    Ablation("one_head", "one head", "d", "heads=1,head_dim=(64, 64, 128, 128)"),
    Ablation("centres_1", "1 centre per region", "e", "proposal_w=1,proposal_h=1"),
    Ablation(
        "centres_9", "9 centres per region", "e", "proposal_w=(3, 3, 3, 1),proposal_h=(3, 3, 3, 1)"
    ),
    Ablation("no_regions", "no region partition", "f", "fold_w=1,fold_h=1"),
    Ablation("iterative", "centres updated twice", "g", "center_iters=2"),
    Ablation("raw_similarity", "raw cosine similarity", "h", "similarity='cosine'"),
)


@dataclass(frozen=True)
class Finding:
    """A claim of the paper about two ablations, ``better`` and ``worse``.

    ``expect="better"``: ``better`` beats ``worse``; ``expect="similar"``: they are within noise.
    """

    claim: str
    better: str  # an ablation key
    worse: str
    paper_claim: str = ""  # key of ablation_claims in cocs/paper_numbers.yaml; "": its table
    expect: str = "better"


FINDINGS = (
    Finding("the context cluster adds accuracy to position information", "full", "no_cluster"),
    Finding("several heads beat one", "full", "one_head"),
    Finding("points need their positions", "full", "no_positions", "no_positions"),
    Finding("sigmoid(alpha * s + beta) beats the raw similarity", "full", "raw_similarity",
            "sigmoid_vs_raw"),
    Finding("iterating the centres changes accuracy little", "iterative", "full",
            "iterative_centres", expect="similar"),
)  # fmt: skip


def paper_evidence(finding: Finding, paper: dict) -> str:
    """What the paper reports for ``finding``; ``paper`` is :func:`cocs.paper.numbers`."""
    if finding.paper_claim:
        return f"in its text: {paper['ablation_claims'][finding.paper_claim]}"
    top1 = {row["key"]: row["top1"] for row in paper["ablations"]}
    return (
        f"ImageNet top-1 of CoC-Small, {finding.better} {top1[finding.better]} vs "
        f"{finding.worse} {top1[finding.worse]}"
    )


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each ablation.

    Args:
        runs: one row per run with columns ``key``, ``seed``, ``test_acc`` and ``minutes``.

    Returns:
        One row per key, in the order of :data:`ABLATIONS` (unknown keys last), with columns
        ``label``, ``group``, ``seeds``, ``acc_mean``, ``acc_std`` (sample standard deviation,
        ``ddof=1``), ``delta`` (mean minus the full model's), ``minutes_mean``.
    """
    missing = {"key", "seed", "test_acc", "minutes"} - set(runs.columns)
    if missing:
        raise ValueError(f"runs lacks columns {sorted(missing)}; pass one row per training run")
    duplicated = runs.duplicated(["key", "seed"])
    if duplicated.any():
        raise ValueError(f"runs repeats (key, seed) pairs: {runs.loc[duplicated, ['key', 'seed']]}")
    g = runs.groupby("key", sort=False)
    out = pd.DataFrame(
        {
            "seeds": g["seed"].count(),
            "acc_mean": g["test_acc"].mean(),
            "acc_std": g["test_acc"].std(ddof=1),
            "minutes_mean": g["minutes"].mean(),
        }
    )
    known = {a.key: a for a in ABLATIONS}
    order = [a.key for a in ABLATIONS if a.key in out.index] + [
        k for k in out.index if k not in known
    ]
    out = out.loc[order]
    out.insert(0, "label", [known[k].label if k in known else k for k in out.index])
    out.insert(1, "group", [known[k].group if k in known else "" for k in out.index])
    out["delta"] = out["acc_mean"] - out.loc["full", "acc_mean"] if "full" in out.index else None
    return out.rename_axis("key").reset_index()


def findings(summary: pd.DataFrame, paper: dict, *, min_gap: float = 0.5) -> pd.DataFrame:
    """Whether each of the paper's findings shows in ``summary`` (from :func:`summarise`).

    A difference counts only when it exceeds both ``min_gap`` points and the seeds' noise,
    sqrt(std_better^2 + std_worse^2). Verdicts: "reproduces" (the paper's direction, or no
    difference where the paper expects none), "reversed", "no clear difference", "differs"
    (a difference where the paper expects none), or "not run" when either side is missing.
    ``paper`` (:func:`cocs.paper.numbers`) gives the ``paper`` column, the paper's evidence.
    """
    s = summary.set_index("key")
    rows = []
    for f in FINDINGS:
        row = {"claim": f.claim, "better": f.better, "worse": f.worse, "expect": f.expect,
               "paper": paper_evidence(f, paper)}  # fmt: skip
        if f.better not in s.index or f.worse not in s.index:
            rows.append(row | {"gap": float("nan"), "noise": float("nan"), "verdict": "not run"})
            continue
        gap = s.loc[f.better, "acc_mean"] - s.loc[f.worse, "acc_mean"]
        noise = float((s.loc[f.better, "acc_std"] ** 2 + s.loc[f.worse, "acc_std"] ** 2) ** 0.5)
        threshold = max(min_gap, noise)
        if f.expect == "similar":
            verdict = "reproduces" if abs(gap) <= threshold else "differs"
        elif gap > threshold:
            verdict = "reproduces"
        elif gap < -threshold:
            verdict = "reversed"
        else:
            verdict = "no clear difference"
        rows.append(row | {"gap": gap, "noise": noise, "verdict": verdict})
    return pd.DataFrame(rows)
