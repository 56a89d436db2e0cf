"""The benchmark's baseline computes the same function as cocs, and the benchmark runs."""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F

from cocs import bench
from cocs.bench import compare, cpu_peak_mib, hardware_name, main, paper_model


def test_paper_formulation_equals_cocs_forward_and_backward():
    model = timm.create_model("coc_micro", layer_scale_init_value=0.5).train()
    paper = paper_model(model)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    for m in (model, paper):
        F.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(model(x), paper(x))
    for (name, a), b in zip(model.named_parameters(), paper.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_paper_model_is_a_copy_in_nchw():
    model = timm.create_model("coc_micro")
    paper = paper_model(model)
    assert model.channels_last and not paper.channels_last
    assert type(model.network[0][0].token_mixer).__name__ == "Cluster"
    assert type(paper.network[0][0].token_mixer).__name__ == "PaperCluster"


def test_cpu_peak_counts_what_is_alive_at_once():
    def fn():
        a = torch.ones(2**20)  # 4 MiB
        b = torch.ones(2**20)  # 8 MiB alive
        del a
        c = torch.ones(2**19)  # 4 + 2 MiB alive
        return b, c

    assert abs(cpu_peak_mib(fn) - 8.0) < 0.1


def test_compare_and_main_write_a_csv(tmp_path):
    row = compare("coc_micro", img_size=32, batch=4, steps=1, warmup=0)
    assert row["speedup"] > 0 and row["cocs_peak_mib"] > 0 and row["paper_peak_mib"] > 0
    assert row["gflops"] > 0, "the machine's speed beside its timings"
    # by default each case runs in a fresh process of its own
    cases = ["coc_micro:32:4", "coc_micro:32:2"]
    path = main(["--steps", "1", "--warmup", "0", "--out_dir", str(tmp_path), "--cases", *cases])
    table = pd.read_csv(path)
    assert path.name == f"{hardware_name()}.csv" and list(table["model"]) == ["coc_micro"] * 2
    assert list(table["batch"]) == [4, 2]
    assert {"speedup", "memory_ratio", "paper_step_s", "cocs_step_s"} <= set(table.columns)


def test_a_case_that_fails_in_its_own_process_says_how_to_rerun_it(tmp_path):
    with pytest.raises(RuntimeError, match="coc_nonexistent:32:4.*python -m cocs.bench"):
        main(
            [
                "--steps",
                "1",
                "--warmup",
                "0",
                "--out_dir",
                str(tmp_path),
                "--cases",
                "coc_nonexistent:32:4",
            ]
        )
    assert not list(tmp_path.iterdir())  # nothing written


def test_compiled_contender_is_timed_on_its_own_copy(monkeypatch):
    """torch.compile takes minutes on a CPU: an identity stand-in checks the wiring."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m: seen.append(m) or m)
    row = compare("coc_micro", img_size=32, batch=2, steps=1, warmup=0, compiled=True)
    assert len(seen) == 1
    assert row["compiled_step_s"] > 0 and row["compiled_speedup"] > 0 and row["compile_s"] >= 0
    assert row["compiled_grad_diff"] < 1e-6  # the stand-in computes what eager computes
    plain = compare("coc_micro", img_size=32, batch=2, steps=1, warmup=0)
    assert "compiled_speedup" not in plain


def test_dropout_is_off_so_that_compiled_gradients_compare(monkeypatch):
    """PointMLP's classifier has dropout: with it on, two calls draw different masks."""
    monkeypatch.setattr(torch, "compile", lambda m: m)  # a stand-in that computes what eager does
    row = compare("pointmlp_elite", img_size=1024, batch=2, steps=1, warmup=0, compiled=True)
    assert row["compiled_grad_diff"] < 1e-5


def test_bf16_contender_runs_under_autocast_on_its_own_copy(monkeypatch):
    from cocs.train import cpu_has_native_bf16

    dtypes = []  # the dtype of the stem's output in each timed step, recorded by a hook
    real = bench._step

    def step(model, opt, x, y):
        handle = model.patch_embed.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        try:
            real(model, opt, x, y)
        finally:
            handle.remove()

    monkeypatch.setattr(bench, "_step", step)
    row = compare("coc_micro", img_size=32, batch=2, steps=1, warmup=0, bf16=True)
    assert row["bf16_step_s"] > 0 and row["bf16_ratio"] > 0
    assert row["paper_bf16_step_s"] > 0 and row["bf16_speedup"] > 0
    assert row["native_bf16"] == cpu_has_native_bf16()
    # one timed step each (paper, cocs, paper in bf16, cocs in bf16), then the memory
    # measurement's (paper, cocs)
    f32, bf16 = torch.float32, torch.bfloat16
    assert dtypes == [f32, f32, bf16, bf16, f32, f32]


def test_compiled_gradients_are_checked_against_eager(monkeypatch):
    """A compiler that changed the function would show in compiled_grad_diff."""

    class Scaled(torch.nn.Module):  # a stand-in that computes something else
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return 1.5 * self.m(x)

    monkeypatch.setattr(torch, "compile", Scaled)
    row = compare("coc_micro", img_size=32, batch=2, steps=1, warmup=0, compiled=True)
    assert row["compiled_grad_diff"] > 1e-4


def test_main_replaces_the_cases_it_measured_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m: m)  # the wiring, without minutes of compiling
    monkeypatch.setattr(bench, "busy_percent", lambda: 0.0)
    quick = ["--in_process", "--steps", "1", "--warmup", "0", "--out_dir", str(tmp_path)]
    quick += ["--cases"]
    main([*quick, "coc_micro:32:4", "coc_micro:32:2"])
    before = pd.read_csv(tmp_path / f"{hardware_name()}.csv")
    path = main([*quick, "coc_micro:32:4:compiled"])
    table = pd.read_csv(path)
    assert list(table["batch"]) == [4, 2]  # the re-measured case keeps its place
    assert table.loc[0, "compiled_speedup"] > 0 and pd.isna(table.loc[1, "compiled_speedup"])
    assert table.loc[1, "cocs_step_s"] == before.loc[1, "cocs_step_s"]  # kept as it was


def test_main_on_a_busy_machine_keeps_the_quiet_timings(tmp_path, monkeypatch):
    quick = ["--in_process", "--steps", "1", "--warmup", "0", "--out_dir", str(tmp_path)]
    monkeypatch.setattr(bench, "busy_percent", lambda: 2.0)
    path = main([*quick, "--cases", "coc_micro:32:2"])
    quiet = pd.read_csv(path)
    monkeypatch.setattr(bench, "busy_percent", lambda: bench.BUSY_PERCENT + 50)
    main([*quick, "--cases", "coc_micro:32:2", "coc_micro:32:4"])
    table, aside = pd.read_csv(path), pd.read_csv(path.with_suffix(".busy.csv"))
    assert list(table["batch"]) == [2, 4] and list(aside["batch"]) == [2, 4]
    assert table.loc[0, "cocs_step_s"] == quiet.loc[0, "cocs_step_s"]  # the quiet timing stays
    assert table.loc[0, "busy_percent"] == 2.0
    # a case measured only on the busy machine has no quiet timing to keep: its own, labelled
    assert table.loc[1, "cocs_step_s"] == aside.loc[1, "cocs_step_s"] > 0
    assert table.loc[1, "busy_percent"] == bench.BUSY_PERCENT + 50


def test_a_malformed_case_names_itself(capsys):
    with pytest.raises(SystemExit):
        main(["--cases", "coc_micro:32:4:fast"])
    assert "coc_micro:32:4:fast" in capsys.readouterr().err


def test_busy_timings_never_replace_quiet_ones(tmp_path):
    import numpy as np
    import pandas as pd

    from cocs.bench import BUSY_PERCENT, busy_percent, keep_quiet_timings

    path = tmp_path / "family.csv"
    quiet = pd.DataFrame({"variant": ["a", "b"], "params": [1, 2], "img_s": [100.0, 50.0],
                          "busy_percent": 3.0, "hardware": "x", "threads": 2})  # fmt: skip
    busy = quiet.assign(params=[1, 3], img_s=[10.0, 5.0], busy_percent=BUSY_PERCENT + 40)
    # nothing committed yet, or a quiet measurement: the new table as it is
    assert keep_quiet_timings(busy, path, key="variant", columns=["img_s"])[1] is None
    quiet.to_csv(path, index=False)
    merged, aside = keep_quiet_timings(busy, path, key="variant", columns=["img_s"])
    assert merged["img_s"].tolist() == [100.0, 50.0] and merged["params"].tolist() == [1, 3]
    assert (merged["busy_percent"] == 3.0).all() and list(merged.columns) == list(busy.columns)
    assert aside["img_s"].tolist() == [10.0, 5.0], "the busy timings are kept beside, labelled"
    again = quiet.assign(img_s=[99.0, 51.0], busy_percent=1.0)
    assert keep_quiet_timings(again, path, key="variant", columns=["img_s"])[1] is None
    # where the table's hardware says where it trained, not where it was timed: only the
    # named context columns come with the kept timings
    moved = busy.assign(hardware="y", where="z")
    kept, _ = keep_quiet_timings(moved, path, key="variant", columns=["img_s"], context=("where",))
    assert kept["img_s"].tolist() == [100.0, 50.0] and (kept["hardware"] == "y").all()
    # a column measured only since the quiet file: unknown for its rows, never busy beside quiet
    grown = busy.assign(img_s_q1=[9.0, 4.0], variant=["a", "c"])
    kept, _ = keep_quiet_timings(grown, path, key="variant", columns=["img_s", "img_s_q1"])
    assert kept["img_s"].tolist() == [100.0, 5.0], "c has no quiet timing: its own"
    assert np.isnan(kept["img_s_q1"].iloc[0]) and kept["img_s_q1"].iloc[1] == 4.0
    assert 0 <= busy_percent(0.2) <= 100
