"""The ablation study's variants build, and its summaries and verdicts follow their rules."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

import cocs  # noqa: F401  (registers the models)
from cocs.ablation import ABLATIONS, FINDINGS, VERDICTS, compare, findings, schedule, summarise
from cocs.paper import numbers
from cocs.train import parse_model_kwargs


def test_keys_are_unique_and_findings_refer_to_them():
    keys = [a.key for a in ABLATIONS]
    assert len(set(keys)) == len(keys) and keys[0] == "full"
    assert {f.better for f in FINDINGS} | {f.worse for f in FINDINGS} <= set(keys)
    assert set("abcdefghi") <= {a.group for a in ABLATIONS}, "every question (a)-(i) is studied"


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
        "no_regions_same_centres": lambda: (first.fold_w, first.proposal_w) == (1, 8),
        "centres_16": lambda: (first.proposal_w, first.proposal_h) == (4, 4),
        "iterative": lambda: first.center_iters == 2,
        "raw_similarity": lambda: first.similarity == "cosine",
    }
    if ablation.key in expect:
        assert expect[ablation.key](), ablation
    reducers = [m.proj for m in model.network if isinstance(m, cocs.model.PointReducer)]
    modes = {r.padding_mode for r in reducers}
    assert modes == ({"circular"} if ablation.key == "no_positions_wrap" else {"zeros"})
    assert all(r.kernel_size == (3, 3) and r.padding == (1, 1) for r in reducers)
    if "no_positions" in ablation.key:
        assert not model.use_positions
    else:  # the same parameters, arranged differently
        assert sum(p.numel() for p in model.parameters()) == sum(
            p.numel() for p in full.parameters()
        )


def test_circular_padding_leaves_no_border():
    """A reducer padded circularly treats a map shifted around its edges like the map itself:
    the output shifts with it (by half the shift, at stride 2), exactly; padded with zeros it
    does not."""
    x = torch.randn(1, 4, 8, 8)
    shifted = torch.roll(x, shifts=(2, 4), dims=(2, 3))
    for mode, equal in (("circular", True), ("zeros", False)):
        torch.manual_seed(0)
        r = cocs.model.PointReducer(in_chans=4, embed_dim=6, patch_size=3, stride=2, padding=1,
                                    padding_mode=mode)  # fmt: skip
        same = torch.allclose(r(shifted), torch.roll(r(x), shifts=(1, 2), dims=(2, 3)), atol=1e-6)
        assert same == equal, mode
    with pytest.raises(ValueError, match="padding_mode='wrap'.*'circular'"):
        cocs.model.PointReducer(in_chans=4, embed_dim=6, patch_size=3, stride=2, padding=1,
                                padding_mode="wrap")  # fmt: skip


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


def test_summary_rejects_bad_tables():
    with pytest.raises(ValueError, match="lacks columns"):
        summarise(pd.DataFrame({"key": ["full"], "seed": [0]}))
    with pytest.raises(ValueError, match="repeats"):
        summarise(_runs({"full": [1.0]}).pipe(lambda d: pd.concat([d, d])))


def test_schedule_runs_seed_by_seed_with_three_seeds_for_the_papers_rows():
    plan = schedule([a.key for a in ABLATIONS], max_seeds=3)
    assert plan[0] == ("full", 0) and len(plan) == len(set(plan))
    seeds = pd.DataFrame(plan, columns=["key", "seed"]).groupby("key")["seed"].nunique()
    assert set(seeds[seeds == 3].index) == {"full", "no_cluster", "one_head", "no_positions"}
    assert (seeds >= 2).all()
    table = ["full", "no_cluster", "one_head", "no_positions"]
    assert plan[:8] == [(k, s) for s in (0, 1) for k in table], "the paper's rows first"
    assert plan[8:10] == [("raw_similarity", 0), ("raw_similarity", 1)], "then pair by pair"
    assert plan[-4:] == [(k, 2) for k in table], "the third seeds last"
    assert len(schedule(["full", "centres_1"], max_seeds=2)) == 4
    with pytest.raises(ValueError, match="at least 2 seeds"):
        schedule(["full"], max_seeds=1)
    with pytest.raises(ValueError, match="unknown ablations"):
        schedule(["full", "nope"], max_seeds=2)


def _outcomes(accuracy: dict[str, list[float]], n: int = 4000, seed: int = 0) -> dict:
    """Per-image correctness per (key, seed) with the given accuracies (%), images shared."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)  # an image is solved by a model of accuracy p if d < p
    out = {}
    for key, accs in accuracy.items():
        for s, acc in enumerate(accs):
            noise = rng.random(n) < 0.1  # each run flips a random tenth of its easy/hard calls
            base = difficulty < acc / 100
            out[key, s] = np.where(noise, rng.random(n) < acc / 100, base)
    return out


def test_verdicts_follow_the_intervals():
    correct = _outcomes({
        "full": [80.0, 80.0, 80.0],
        "no_cluster": [70.0, 70.0, 70.0],  # far below: reproduces
        "one_head": [80.0, 80.0, 80.0],  # the same: no difference detected
        "no_positions": [88.0, 88.0, 88.0],  # far above: reversed
    })  # fmt: skip
    rng = np.random.default_rng(1)
    for s in range(2):  # the full model's calls with 1% flipped: within a point of it
        flip = rng.random(len(correct["full", s])) < 0.01
        correct["iterative", s] = correct["full", s] ^ flip
    diffs = compare(correct)
    by_worse = findings(diffs, numbers()).set_index("claim")
    by_worse = by_worse[by_worse["expect"] != "fails"].set_index("worse")
    assert by_worse.loc["no_cluster", "verdict"] == "reproduces"
    assert by_worse.loc["one_head", "verdict"] == "no difference detected at this scale"
    assert by_worse.loc["no_positions", "verdict"] == "reversed"
    assert by_worse.loc["raw_similarity", "verdict"] == "not run"
    it = findings(diffs, numbers()).set_index("better").loc["iterative"]
    assert it["verdict"] == "reproduces" and it["low"] > -1 and it["high"] < 1
    moved = compare(_outcomes({"full": [80.0, 80.0], "iterative": [86.0, 86.0]}))
    assert findings(moved, numbers()).set_index("better").loc["iterative", "verdict"] == "differs"
    assert set(findings(diffs, numbers())["verdict"]) <= set(VERDICTS)


def test_a_claim_that_a_variant_fails_to_train_is_read_off_the_runs_status():
    """The paper's "without positions the network failed to train" reproduces only where the
    runs fail, whatever their accuracy; the accuracy positions add is judged on its own."""
    correct = _outcomes({"full": [80.0, 80.0, 80.0], "no_positions": [70.0, 70.0, 70.0]})

    def read(failed=()):
        kept = {k: v for k, v in correct.items() if k not in failed}
        f = findings(compare(kept, failed=failed), numbers()).set_index("claim")
        return f.loc["without positions the network fails to train"], f.loc[
            "positions add accuracy"
        ]

    fails, adds = read()
    assert fails["verdict"] == "does not reproduce" and "every run of no_positions" in fails["note"]
    assert adds["verdict"] == "reproduces" and adds["low"] > 0
    fails, _ = read(failed=[("no_positions", 0)])
    assert fails["verdict"] == "reproduces in part" and "1 seed" in fails["note"]
    fails, adds = read(failed=[("no_positions", s) for s in range(3)])
    assert fails["verdict"] == "reproduces" and fails["seeds"] == 3
    assert adds["verdict"] == "reproduces"  # the strongest form: every run failed
    fails, _ = read(failed=[("no_positions", 0), ("no_positions", 1), ("no_positions", 2),
                            ("full", 2)])  # fmt: skip
    assert fails["verdict"] == "reproduces"
    fails, _ = read(failed=[(k, s) for k in ("full", "no_positions") for s in range(3)])
    assert fails["verdict"] == "not run", "no model trained: nothing to compare with"
    lone = {("full", 0): correct["full", 0], ("no_positions", 0): correct["no_positions", 0]}
    f = findings(compare(lone), numbers()).set_index("claim")
    assert f.loc["without positions the network fails to train", "verdict"] == "not run"


def test_machine_hours_count_runs_side_by_side_at_their_share_of_the_cores():
    from cocs.ablation import machine_hours

    runs = pd.DataFrame({"minutes": [60.0, 60.0, 30.0, 12.0],
                         "threads": [1, 1, 2, 4], "cores": [2, 2, 2, None]})  # fmt: skip
    # two side by side (half each), one alone (whole), one without a record of its cores
    assert machine_hours(runs) == pytest.approx((30 + 30 + 30 + 12) / 60)


def test_a_comparison_needs_two_shared_seeds():
    correct = _outcomes({"full": [80.0, 80.0], "one_head": [79.0]})
    row = compare(correct).set_index("b").loc["one_head"]
    assert row["seeds"] == 1 and np.isnan(row["mean"])


def test_the_paper_evidence_is_read_from_the_data_file():
    f = findings(compare({}), numbers()).set_index("worse")
    assert (
        f.loc["no_cluster", "paper"] == "ImageNet top-1 of CoC-Small, full 77.5 vs no_cluster 74.2"
    )
    assert set(f.loc["no_positions", "paper"]) == {"in its text: failed to train"}


def test_a_run_that_fails_to_train_is_reported_and_the_study_goes_on(tmp_path, monkeypatch):
    from cocs import train as T
    from cocs.ablation import finished_run, run_config, run_study
    from cocs.fingerprint import model_fingerprint

    params = {"epochs": 1, "max_per_class": 2, "max_test_per_class": 1, "torch_compile": False}
    calls = []

    def engine(cfg):  # what cocs.train.train does when the loss becomes nan in epoch 1
        calls.append(cfg.seed)
        meta = {"complete": False, "diverged": {"epoch": 1, "train_loss": "nan"},
                "recipe": T.recipe(cfg), "classes": list("abcdefghij"), "final": None,
                "fingerprint": model_fingerprint(T.create_model(cfg, 10)), "epoch_minutes": 0.5,
                "params": 1, "epochs_done": 0, "train_images": 20, "test_images": 10, "autocast": "off",
                "environment": {"git_commit": "x", "git_dirty": False,
                                "hardware": {"cpu": "cpu", "torch_threads": 1}}}  # fmt: skip
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out_dir) / "metrics.json").write_text(json.dumps(meta))
        raise T.TrainingDiverged("the training loss became nan in epoch 1", meta["diverged"])

    monkeypatch.setattr(T, "train", engine)
    plan = [("raw_similarity", 0), ("raw_similarity", 1)]
    runs, correct = run_study(plan, params, tmp_path)
    assert calls == [0, 1] and correct == {}, "both seeds ran, neither has predictions"
    assert list(runs["status"]) == ["failed to train (loss nan in epoch 1)"] * 2
    assert runs["test_acc"].isna().all()
    assert finished_run(run_config("raw_similarity", 0, params, tmp_path))["diverged"]
    runs, _ = run_study(plan, params, tmp_path)
    assert calls == [0, 1] and runs["reused"].all(), "a recorded failure is not trained again"
    stale = params | {"lr": 1e-4}  # another recipe: the record does not count
    assert finished_run(run_config("raw_similarity", 0, stale, tmp_path)) is None
    summary = summarise(runs.assign(minutes=1.0)).set_index("key")
    assert summary.loc["raw_similarity", "failed"] == 2
    assert np.isnan(summary.loc["raw_similarity", "acc_mean"])


def test_a_variant_that_fails_to_train_in_every_seed_loses_its_claim():
    correct = _outcomes({"full": [80.0, 80.0], "one_head": [79.0, 79.0]})
    diffs = compare(correct, failed=[("raw_similarity", 0), ("raw_similarity", 1)])
    row = diffs.set_index("b").loc["raw_similarity"]
    assert row["seeds"] == 0 and row["failed_b"] == 2 and row["failed_a"] == 0
    f = findings(diffs, numbers()).set_index("worse")
    assert f.loc["raw_similarity", "verdict"] == "reproduces"
    assert f.loc["raw_similarity", "note"] == "raw_similarity failed to train in 2 seeds"
    assert f.loc["one_head", "note"] == "" and f.loc["no_cluster", "verdict"] == "not run"
    one = compare(correct, failed=[("raw_similarity", 0)])
    f = findings(one, numbers()).set_index("worse")
    assert f.loc["raw_similarity", "verdict"] == "not run", "one failed seed decides nothing"
    mixed = correct | _outcomes({"full": [80.0, 80.0, 80.0], "raw_similarity": [0, 0, 70.0]})
    del mixed["raw_similarity", 0], mixed["raw_similarity", 1]  # they failed; seed 2 trained
    f = findings(compare(mixed, failed=[("raw_similarity", 0), ("raw_similarity", 1)]), numbers())
    row = f.set_index("worse").loc["raw_similarity"]
    assert row["verdict"] == "not run", "one seed trained: no longer every run failed"
    assert row["note"] == "raw_similarity failed to train in 2 seeds"


def test_a_divergence_trace_follows_the_run_until_its_loss_is_nan(tmp_path, monkeypatch):
    from cocs import data as D
    from cocs import train as T
    from cocs.ablation import divergence_trace

    monkeypatch.setenv("COCS_DATA", str(tmp_path / "cache"))
    tree = D.write_synthetic_folder(tmp_path / "tree", per_class={"train": 8, "val": 4})
    real, calls = T.create_model, {"n": 0}

    def poisoned(cfg, num_classes):  # the 5th training forward returns nan
        model = real(cfg, num_classes)

        def hook(module, args, output):
            calls["n"] += module.training
            return output * float("nan") if calls["n"] == 5 and module.training else output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(T, "create_model", poisoned)
    cfg = T.TrainConfig(model="coc_micro", dataset="folder", data_path=str(tree), download=False,
                        img_size=16, epochs=3, batch_size=8, warmup_epochs=1, num_threads=1,
                        out_dir=str(tmp_path / "results" / "run"), progress=False)  # fmt: skip
    images = torch.randn(4, 3, 16, 16)
    trace = divergence_trace(cfg, images, steps=100, every=2)
    assert sorted(set(trace["step"])) == [1, 2, 4, 5], "step 1, every 2nd, and the nan one"
    assert np.isnan(trace.set_index("step").loc[5, "loss"]).all()
    assert np.isfinite(trace.set_index("step").loc[4, ["loss", "den_min"]].to_numpy()).all()
    assert set(trace["stage"]) == {1, 2, 3, 4}
    assert list(trace.columns[:3]) == ["step", "loss", "stage"]
    assert not (tmp_path / "results").exists(), "nothing of the replay is kept"
    calls["n"] = -100  # never poisoned: the trace ends at its step limit
    assert trace_steps(divergence_trace(cfg, images, steps=3, every=10)) == [1, 3]


def trace_steps(trace):
    return sorted(set(trace["step"]))


def test_the_committed_trace_shows_the_raw_similarity_diverging_where_the_full_model_does_not():
    """The chapter's diagnosis stands on `trace.csv`: the replayed raw-similarity run ends in a
    non-finite loss, the full model stays finite for as many steps, and before the raw run
    fails some cluster's denominator |1 + sum s| comes far closer to zero than any of the full
    model's."""
    path = Path(__file__).resolve().parents[1] / "results" / "06_ablations" / "trace.csv"
    trace = pd.read_csv(path)
    raw, full = (trace[trace["key"] == k] for k in ("raw_similarity", "full"))
    last = raw["step"].max()
    assert full["step"].max() == last, "the control replays as many steps"
    assert not np.isfinite(raw[raw["step"] == last]["loss"]).any()
    assert np.isfinite(full["loss"]).all() and np.isfinite(raw[raw["step"] < last]["loss"]).all()
    assert raw[raw["step"] < last]["den_min"].min() < full["den_min"].min() / 10


def test_runs_trained_side_by_side_compute_what_one_process_computes(tmp_path):
    """Two runs in two worker processes of one thread each: every file as one process of one
    thread writes it, the test predictions included."""
    from cocs.ablation import run_study

    params = {"epochs": 1, "max_per_class": 2, "max_test_per_class": 1, "batch_size": 8,
              "torch_compile": False, "amp": "off", "warmup_epochs": 0}  # fmt: skip
    plan = [("full", 0), ("no_cluster", 0)]
    threads = torch.get_num_threads()
    try:
        side, correct = run_study(plan, params, tmp_path / "side", parallel=2)
        torch.set_num_threads(max(1, threads // 2))
        alone, correct_alone = run_study(plan, params | {"num_threads": 0}, tmp_path / "alone")
    finally:
        torch.set_num_threads(threads)
    assert not side["reused"].any() and list(side["key"]) == ["full", "no_cluster"]
    assert (side["threads"] == max(1, threads // 2)).all(), "each worker its share of threads"
    for ks in plan:
        np.testing.assert_array_equal(correct[ks], correct_alone[ks])
    assert list(side["train_loss"]) == list(alone["train_loss"])
    again, _ = run_study(plan, params, tmp_path / "side", parallel=2)
    assert again["reused"].all(), "finished runs are read, not trained again"


def test_the_parallel_gain_times_the_engines_own_steps_side_by_side(tmp_path):
    from cocs.ablation import _time_steps, parallel_gain, run_config

    params = {"max_per_class": 4, "max_test_per_class": 1, "batch_size": 8, "epochs": 2,
              "torch_compile": False, "amp": "off"}  # fmt: skip
    cfg = run_config("full", 0, params, tmp_path / "study")
    threads = torch.get_num_threads()
    g = parallel_gain(cfg, 2, steps=2)
    assert g["threads_each"] == max(1, threads // 2) and not g["compiled"]
    assert g["step_s_alone"] > 0 and g["step_s_side_by_side"] > 0
    assert g["start_s_side_by_side"] > 0 and g["eval_batch_s_side_by_side"] > 0
    assert g["gain"] == pytest.approx(2 * g["step_s_alone"] / g["step_s_side_by_side"])
    assert torch.get_num_threads() == threads
    assert not (tmp_path / "study").exists(), "the timing trains in a scratch folder"
    with pytest.raises(ValueError, match="end before 12 steps"):  # 2 epochs of 5 steps
        _time_steps(cfg, 1, steps=10)


def _workers_of(pid: int) -> list[int]:
    """The multiprocessing workers (spawned) whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            spawned = b"spawn_main" in (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # it ended meanwhile
        if ppid == pid and spawned:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses Linux's PR_SET_PDEATHSIG")
def test_training_workers_stop_when_the_study_is_killed(tmp_path):
    """A study killed outright (SIGKILL: no handler runs) leaves no worker training on."""
    script = tmp_path / "study.py"
    script.write_text(
        "from cocs.ablation import run_config, train_runs\n"
        "if __name__ == '__main__':\n"
        "    params = {'epochs': 500, 'max_per_class': 2, 'max_test_per_class': 1,\n"
        "              'batch_size': 8, 'torch_compile': False, 'amp': 'off'}\n"
        f"    train_runs([run_config('full', s, params, {str(tmp_path)!r}) for s in (0, 1)],\n"
        "               parallel=2)\n"
    )
    study = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).parents[1])
    try:
        started = [tmp_path / "full" / f"seed{s}" / "metrics.csv" for s in (0, 1)]
        deadline = time.monotonic() + 300
        while not all(p.is_file() for p in started):  # both workers train
            assert study.poll() is None, "the study ended before its workers trained"
            assert time.monotonic() < deadline, "the workers did not start training"
            time.sleep(0.5)
        workers = _workers_of(study.pid)
        assert len(workers) == 2
    finally:
        study.kill()
        study.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}/stat").exists()
             and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]  # fmt: skip
    assert not alive, f"workers {alive} trained on after the study was killed"


def test_relative_costs_are_ratios_round_by_round_with_their_spread():
    from cocs.ablation import relative_costs

    costs = relative_costs(["no_cluster", "one_head"], batch=4, repeats=3, amp=False)
    assert costs["key"].tolist() == ["full", "no_cluster", "one_head"]
    full = costs.set_index("key").loc["full"]
    for what in ("train", "infer"):  # the full model against itself, round by round
        assert full[f"{what}_ratio"] == full[f"{what}_ratio_q1"] == full[f"{what}_ratio_q3"] == 1
        assert (costs[f"{what}_ratio_q1"] <= costs[f"{what}_ratio"]).all()
        assert (costs[f"{what}_ratio"] <= costs[f"{what}_ratio_q3"]).all()
    assert (costs[["train_step_ms", "infer_ms"]] > 0).all().all()


def test_an_error_in_a_worker_stops_the_runs_and_is_raised(tmp_path):
    from cocs.ablation import train_runs
    from cocs.train import TrainConfig

    bad = [TrainConfig(model="no_such_model", epochs=1, out_dir=str(tmp_path / f"r{i}"),
                       progress=False) for i in range(2)]  # fmt: skip
    with pytest.raises(Exception, match="no_such_model"):
        train_runs(bad, parallel=2)
