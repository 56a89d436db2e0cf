"""The ablation study's variants build, and its summaries and verdicts follow their rules."""

import pandas as pd
import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the models)
from cocs.ablation import ABLATIONS, FINDINGS, findings, summarise
from cocs.paper import numbers
from cocs.train import parse_model_kwargs


def test_keys_are_unique_and_findings_refer_to_them():
    keys = [a.key for a in ABLATIONS]
    assert len(set(keys)) == len(keys) and keys[0] == "full"
    assert {f.better for f in FINDINGS} | {f.worse for f in FINDINGS} <= set(keys)
    assert set("abcdefgh") <= {a.group for a in ABLATIONS}, "every question (a)-(h) is studied"


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: a.key)
def test_every_ablation_builds_and_changes_what_it_says(ablation):
    kwargs = parse_model_kwargs(ablation.model_kwargs)
    model = timm.create_model("coc_cifar", **kwargs)
    full = timm.create_model("coc_cifar")
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and out.isfinite().all()
    if ablation.key == "full":
        assert kwargs == {}
    mixers = [m for m in model.modules() if isinstance(m, cocs.Cluster)]
    if ablation.key == "no_cluster":
        assert not mixers
        return
    first = mixers[0]
    expect = {
        "one_head": lambda: first.heads == 1 and first.head_dim == 64,
        "centres_1": lambda: (first.proposal_w, first.proposal_h) == (1, 1),
        "centres_9": lambda: (first.proposal_w, first.proposal_h) == (3, 3),
        "no_regions": lambda: (first.fold_w, first.fold_h) == (1, 1),
        "iterative": lambda: first.center_iters == 2,
        "raw_similarity": lambda: first.similarity == "cosine",
    }
    if ablation.key in expect:
        assert expect[ablation.key](), ablation
    if ablation.key not in ("no_positions",):  # the same parameters, arranged differently
        assert sum(p.numel() for p in model.parameters()) == sum(
            p.numel() for p in full.parameters()
        )


def _runs(accs: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"key": k, "seed": s, "test_acc": a, "minutes": 1.0}
            for k, v in accs.items()
            for s, a in enumerate(v)
        ]
    )


def test_summary_is_mean_and_sample_sd_in_study_order():
    s = summarise(_runs({"one_head": [60.0, 62.0], "full": [70.0, 74.0]}))
    assert s["key"].tolist() == ["full", "one_head"]
    full = s.set_index("key").loc["full"]
    assert full["acc_mean"] == 72.0 and full["acc_std"] == pytest.approx(2**0.5 * 2)
    assert s.set_index("key").loc["one_head", "delta"] == -11.0


def test_summary_rejects_bad_tables():
    with pytest.raises(ValueError, match="lacks columns"):
        summarise(pd.DataFrame({"key": ["full"], "seed": [0]}))
    with pytest.raises(ValueError, match="repeats"):
        summarise(_runs({"full": [1.0]}).pipe(lambda d: pd.concat([d, d])))


def test_verdicts_follow_gap_and_noise():
    runs = _runs({
        "full": [80.0, 80.2],  # sd 0.14
        "no_cluster": [70.0, 70.4],  # far below: reproduces
        "one_head": [80.1, 80.3],  # within noise: no clear difference
        "no_positions": [85.0, 85.2],  # far above: reversed
        "iterative": [80.0, 80.4],  # within noise where the paper expects none: reproduces
    })  # fmt: skip
    v = findings(summarise(runs), numbers()).set_index("better")
    by_worse = findings(summarise(runs), numbers()).set_index("worse")
    assert by_worse.loc["no_cluster", "verdict"] == "reproduces"
    assert by_worse.loc["one_head", "verdict"] == "no clear difference"
    assert by_worse.loc["no_positions", "verdict"] == "reversed"
    assert by_worse.loc["raw_similarity", "verdict"] == "not run"
    assert v.loc["iterative", "verdict"] == "reproduces"
    noisy = _runs({"full": [80.0, 80.4], "iterative": [70.0, 90.0]})
    assert (
        findings(summarise(noisy), numbers()).set_index("better").loc["iterative", "verdict"]
        == "reproduces"
    )
    moved = _runs({"full": [80.0, 80.2], "iterative": [83.0, 83.2]})
    assert (
        findings(summarise(moved), numbers()).set_index("better").loc["iterative", "verdict"]
        == "differs"
    )


def test_the_paper_evidence_is_read_from_the_data_file():
    f = findings(summarise(_runs({"full": [1.0, 2.0]})), numbers()).set_index("worse")
    assert (
        f.loc["no_cluster", "paper"] == "ImageNet top-1 of CoC-Small, full 77.5 vs no_cluster 74.2"
    )
    assert f.loc["no_positions", "paper"] == "in its text: failed to train"
