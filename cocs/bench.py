"""Speed and memory of a training step: the paper's formulation as written versus ``cocs``.

The baseline computes aggregation and dispatch by broadcasting over (B * heads, M, N, D), as
the paper's equations and the authors' release do, in the NCHW layout with separate 1x1
convolutions. It shares weights with the ``cocs`` model it is made from, so both compute the
same function (tests/test_bench.py checks it) and the ratio measures the implementation alone.

    python -m cocs.bench            # writes results/bench/<hardware>.csv
    python -m cocs.bench --cases coc_tiny:224:16:compiled   # one case, also under torch.compile
    python -m cocs.bench --cases coc_cifar:32:128:bf16      # also under bfloat16 autocast

Each case runs in a fresh Python process of its own, so that a row does not depend on the
cases timed before it: in a process that has run the 224 px models, the baseline's step of a
later case gets faster (its large temporary tensors are probably served faster by the
allocator). ``--in_process`` times every
case in this process instead. A run replaces the rows of the cases it measured and keeps the
file's other rows, so that one case can be measured again (or with ``--compiled``) without
timing all of them. Each row records how busy the rest of the machine was while it was timed
(``busy_percent``); timings taken on a busy machine never replace a quiet machine's: they are
written beside them, to ``<hardware>.busy.csv``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .allocator import keep_freed_memory, keeps_freed_memory
from .cluster import Cluster
from .provenance import speed_probe


def paper_cluster(x: Tensor, value: Tensor, mixer: Cluster) -> Tensor:
    """The context-cluster step as written in the paper, one-hot mask and broadcasts.

    x, value: (B * heads, D, H, W) after the 1x1 projections; returns (B * heads, D, H, W).
    """
    fw, fh = mixer.fold_w, mixer.fold_h
    if fw > 1 or fh > 1:
        x = rearrange(x, "b c (f1 w) (f2 h) -> (b f1 f2) c w h", f1=fw, f2=fh)
        value = rearrange(value, "b c (f1 w) (f2 h) -> (b f1 f2) c w h", f1=fw, f2=fh)
    b, c, w, h = x.shape
    pool = (mixer.proposal_w, mixer.proposal_h)
    centers = F.adaptive_avg_pool2d(x, pool)  # (b, c, pw, ph)
    value_centers = rearrange(F.adaptive_avg_pool2d(value, pool), "b c w h -> b (w h) c")
    cos = F.normalize(centers.reshape(b, c, -1).permute(0, 2, 1), dim=-1) @ F.normalize(
        x.reshape(b, c, -1).permute(0, 2, 1), dim=-1
    ).transpose(-2, -1)  # (b, M, N)
    if mixer.similarity == "sigmoid":
        sim = torch.sigmoid(mixer.sim_beta + mixer.sim_alpha * cos)
    else:
        sim = cos
    _, idx = sim.max(dim=1, keepdim=True)
    mask = torch.zeros_like(sim).scatter_(1, idx, 1.0)  # (b, M, N) one-hot over centres
    sim = sim * mask
    v = rearrange(value, "b c w h -> b (w h) c")  # (b, N, D)
    # aggregation: (b, 1, N, D) * (b, M, N, 1) summed over N -> (b, M, D)
    agg = ((v.unsqueeze(1) * sim.unsqueeze(-1)).sum(dim=2) + value_centers) / (
        sim.sum(dim=-1, keepdim=True) + 1.0
    )
    # dispatch: (b, M, 1, D) * (b, M, N, 1) summed over M -> (b, N, D)
    out = (agg.unsqueeze(2) * sim.unsqueeze(-1)).sum(dim=1)
    out = rearrange(out, "b (w h) c -> b c w h", w=w)
    if fw > 1 or fh > 1:
        out = rearrange(out, "(b f1 f2) c w h -> b c (f1 w) (f2 h)", f1=fw, f2=fh)
    return out


class PaperCluster(nn.Module):
    """A token mixer that runs :func:`paper_cluster` on the weights of a :class:`Cluster`."""

    def __init__(self, mixer: Cluster):
        super().__init__()
        if mixer.center_iters:
            raise ValueError("the paper's formulation keeps centres fixed (center_iters=0)")
        self.mixer = mixer

    def forward(self, x: Tensor) -> Tensor:
        m = self.mixer
        value = rearrange(m.v(x), "b (e c) w h -> (b e) c w h", e=m.heads)
        x = rearrange(m.f(x), "b (e c) w h -> (b e) c w h", e=m.heads)
        out = rearrange(paper_cluster(x, value, m), "(b e) c w h -> b (e c) w h", e=m.heads)
        return m.proj(out)


def paper_model(model: nn.Module) -> nn.Module:
    """A copy of a ``cocs`` model that computes the paper's formulation, NCHW, same weights
    (for a PointMLP: the release's Conv1d layout, :class:`ReleasePointMLP`)."""
    from .pointmlp import PointMLP

    if isinstance(model, PointMLP):
        return ReleasePointMLP(copy.deepcopy(model))
    paper = copy.deepcopy(model)
    paper.channels_last = False
    for module in paper.modules():
        if hasattr(module, "lean"):  # autograd stores every intermediate, as in the release
            module.lean = False
    for block in paper.modules():
        if isinstance(getattr(block, "token_mixer", None), Cluster):
            block.token_mixer = PaperCluster(block.token_mixer)
    return paper


def _release_layer(layer, x: Tensor) -> Tensor:
    """PointMLP's Conv1d(kernel 1, no bias) + BatchNorm1d (+ ReLU) on (B', C, L), with the
    weights of a channels-last ``cocs.pointmlp.LinearBN``."""
    y = layer.bn(F.conv1d(x, layer.linear.weight.unsqueeze(-1)))
    return layer.act(y)


def _release_res(block, x: Tensor) -> Tensor:
    return (_release_layer(block.net2, _release_layer(block.net1, x)) + x).relu()


def release_fps(xyz: Tensor, m: int) -> Tensor:
    """Farthest point sampling as PointMLP's release loops it: each step takes the squared
    distances of all (B, N, 3) points to the last chosen one and keeps the minimum (from the
    first point, where the release starts at a random one). The same samples as
    :func:`cocs.pointsets.farthest_point_sample`. (B, N, 3) -> (B, m)."""
    B, N, _ = xyz.shape
    idx = torch.zeros(B, m, dtype=torch.long, device=xyz.device)
    distance = torch.full((B, N), 1e10, device=xyz.device)
    far = torch.zeros(B, dtype=torch.long, device=xyz.device)
    rows = torch.arange(B, device=xyz.device)
    for i in range(m):
        idx[:, i] = far
        dist = torch.sum((xyz - xyz[rows, far, :].view(B, 1, 3)) ** 2, -1)
        distance = torch.min(distance, dist)
        far = torch.max(distance, -1)[1]
    return idx


def release_pointmlp(model: nn.Module, xyz: Tensor) -> Tensor:
    """PointMLP's forward pass as its release writes it, on the weights of a
    ``cocs.pointmlp.PointMLP``: features (B, C, N), groups (B * S, C, k), Conv1d layers, and a
    kNN by the expanded square distance. (B, N, 3) -> (B, classes)."""
    from .pointmlp import ResBlock

    x = _release_layer(model.embedding, xyz.transpose(1, 2))  # (B, C, N)
    for stage in model.stages:
        g = stage.grouper
        B = x.shape[0]
        pts = x.transpose(1, 2)  # (B, N, C)
        idx = release_fps(xyz, g.anchors)  # (B, S)
        rows = torch.arange(B, device=xyz.device).unsqueeze(1)
        new_xyz, anchor = xyz[rows, idx], pts[rows, idx]  # (B, S, 3), (B, S, C)
        sq = (-2 * new_xyz @ xyz.transpose(1, 2) + new_xyz.square().sum(-1, keepdim=True)
              + xyz.square().sum(-1).unsqueeze(1))  # (B, S, N)  # fmt: skip
        near = sq.topk(g.k, dim=-1, largest=False).indices  # (B, S, k)
        grouped = pts[rows.unsqueeze(-1), near]  # (B, S, k, C)
        centred = grouped - anchor.unsqueeze(2)
        std = torch.std(centred.reshape(B, -1), dim=-1).view(B, 1, 1, 1)
        grouped = g.affine_alpha * centred / (std + 1e-5) + g.affine_beta
        grouped = torch.cat([grouped, anchor.unsqueeze(2).expand_as(grouped)], dim=-1)
        S, k = grouped.shape[1:3]
        y = _release_layer(stage.transfer, grouped.reshape(B * S, k, -1).transpose(1, 2))
        for block in stage.pre:  # (B * S, C, k)
            is_res = isinstance(block, ResBlock)
            y = _release_res(block, y) if is_res else block(y.transpose(1, 2)).transpose(1, 2)
        y = F.adaptive_max_pool1d(y, 1).view(B, S, -1).transpose(1, 2)  # (B, C, S)
        for block in stage.pos:
            y = _release_res(block, y)
        x, xyz = y, new_xyz
    return model.classifier(F.adaptive_max_pool1d(x, 1).flatten(1))


class ReleasePointMLP(nn.Module):
    """:func:`release_pointmlp` as a module sharing the weights of ``model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes

    def forward(self, xyz: Tensor) -> Tensor:
        return release_pointmlp(self.model, xyz)


def hardware_name() -> str:
    """A file-name-safe description of this machine's processor (or GPU) and thread count.

    A processor's name is followed by the vector capability torch uses on it (AVX2, AVX512):
    one model name can cover both kinds, and their timings (and bfloat16 support) differ.
    Names recorded before it was added lack it (e.g. "amd-epyc-2threads")."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
            name = re.search(r"model name\s*:\s*(.+)", cpuinfo).group(1)
        except (OSError, AttributeError):
            pass
        name = f"{name}-{torch.backends.cpu.get_cpu_capability()}-{torch.get_num_threads()}threads"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


# A machine whose other processes use more than this share of its CPUs is busy: timings taken
# there say more about the neighbours than about the code.
BUSY_PERCENT = 25.0


def busy_percent(seconds: float = 2.0) -> float:
    """The share of all CPUs (percent) that processes other than this one used over
    ``seconds``, measured while this process waits."""
    import psutil

    me = psutil.Process()
    me.cpu_percent(None)
    total = psutil.cpu_percent(interval=seconds)
    own = me.cpu_percent(None) / (psutil.cpu_count() or 1)
    return max(0.0, total - own)


def keep_quiet_timings(
    new: pd.DataFrame,
    path: str | os.PathLike,
    *,
    key: str,
    columns: list[str],
    old: pd.DataFrame | None = None,
    context: tuple[str, ...] = ("hardware", "threads"),
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Timings of a busy machine never replace those of a quiet one.

    ``new`` holds a ``busy_percent`` column (:func:`busy_percent` while it was measured). If
    the file at ``path`` holds timings taken on a quiet machine and ``new`` was measured on a
    busy one, the old ``columns`` (and their ``busy_percent`` and ``context``: the columns
    that say where they were measured) are kept in the returned table, matched on ``key``
    (rows the file lacks keep their new values), and the busy measurement is returned
    separately, to be written beside it, labelled. Otherwise ``(new, None)``. ``old``: the
    file's table when the caller has already read it (with ``key`` added).
    """
    path = Path(path)
    if not path.is_file() or new["busy_percent"].max() <= BUSY_PERCENT:
        return new, None
    old = pd.read_csv(path) if old is None else old
    if "busy_percent" not in old or old["busy_percent"].max() > BUSY_PERCENT:
        return new, None
    kept = [c for c in dict.fromkeys((*columns, "busy_percent", *context)) if c in old]
    merged = new.drop(columns=kept).merge(old[[key, *kept]], on=key, how="left")
    fresh = ~new[key].isin(old[key]).to_numpy()  # rows the file has no quiet timing for
    shared = [c for c in kept if c in new]
    if fresh.any():
        merged.loc[fresh, shared] = new.loc[fresh, shared].to_numpy()
    # a column the quiet file lacks (measured only since): unknown for its rows, rather than
    # a busy value beside quiet ones
    lacking = [c for c in columns if c in new and c not in old]
    merged.loc[~fresh, lacking] = np.nan
    return merged[new.columns], new


@dataclass
class StepStats:
    seconds: float  # median time of one training step
    peak_mib: float  # peak memory allocated during one step


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def peak_memory_mib(model: nn.Module, opt, x: Tensor, y: Tensor) -> float:
    """Peak memory of one training step: CUDA's allocator, or on the CPU the largest set of
    tensors alive at once (tracked through a dispatch mode)."""
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(model, opt, x, y)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return cpu_peak_mib(lambda: _step(model, opt, x, y))


class _PeakTensorMemory(TorchDispatchMode):
    """Tracks the bytes of CPU tensor storage alive while it is active, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self.seen:
                continue
            self.seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def cpu_peak_mib(fn) -> float:
    """Peak bytes of the tensors that ``fn`` creates and holds at once (weights excluded)."""
    with _PeakTensorMemory() as mode:
        fn()
    return mode.peak / 2**20


def compare(
    name: str,
    *,
    img_size: int,
    batch: int,
    steps: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    num_classes: int | None = None,
    seed: int = 0,
    compiled: bool = False,
    bf16: bool = False,
) -> dict:
    """Time ``steps`` training steps of the paper's formulation and of ``cocs``, interleaved
    (A B A B ...) so that both see the same machine load; same weights, same batch. On a CPU
    both run as the training engine runs them, with freed memory kept for the next tensors
    (:mod:`cocs.allocator`; the row records it as ``keeps_freed_memory``).

    ``compiled=True`` adds a third contender, ``cocs`` under ``torch.compile`` (its own copy of
    the weights), and reports its speed-up, the seconds its first step took to compile, and how
    far that step's gradients are from eager ``cocs``'s on the same weights and batch
    (``compiled_grad_diff``, the largest absolute difference: compiling may reorder floating-point
    operations, so it is rounding-sized, not zero). Dropout is off in every contender, since
    compiled and eager code draw its masks differently; everything else trains as in training.

    ``bf16=True`` adds ``cocs`` under bfloat16 autocast (its own copy of the weights) and reports
    ``bf16_ratio``, its speed relative to eager float32 ``cocs`` (above 1: faster), and whether
    the processor executes bfloat16 natively (``native_bf16``; where it does not, autocast is
    emulated in software). It also times the paper's formulation under the same autocast (its
    own copy too), so that ``bf16_speedup`` compares the two formulations at one precision, as
    ``speedup`` does in float32.
    """
    if device == "cpu":  # both formulations, as the training engine runs them
        keep_freed_memory()
    torch.manual_seed(seed)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    fast = timm.create_model(name, **kwargs).to(device).train()
    slow = paper_model(fast)
    # dropout off in every contender (PointMLP's classifier has it): compiled code draws its
    # masks from another random stream, so with it on the compiled gradients could not be
    # compared with eager ones; batch norm stays in training mode
    for m in (*fast.modules(), *slow.modules()):
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    n_cls = fast.num_classes
    points = hasattr(fast, "stages") and not hasattr(fast, "network")  # a point-cloud model
    shape = (batch, img_size, 3) if points else (batch, 3, img_size, img_size)  # img_size: N
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, n_cls, (batch,), device=device)
    opts = {
        k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in (("paper", slow), ("cocs", fast))
    }
    models = {"paper": slow, "cocs": fast}
    compile_s = float("nan")
    if compiled:
        eager = copy.deepcopy(fast)
        models["compiled"] = torch.compile(eager)
        opts["compiled"] = torch.optim.AdamW(eager.parameters(), lr=1e-4)
        t0 = time.perf_counter()
        _step(models["compiled"], opts["compiled"], x, y)  # compiles forward and backward
        compile_s = time.perf_counter() - t0
        # its gradients (still held after the step) against eager ones from the same weights
        fast.zero_grad(set_to_none=True)
        F.cross_entropy(fast(x), y).backward()
        grad_diff = max(
            (a.grad - b.grad).abs().max().item()
            for a, b in zip(fast.parameters(), eager.parameters(), strict=True)
        )
    if bf16:  # the paper's formulation and cocs, each on its own copy, under autocast
        models["paper_bf16"] = paper_model(fast)  # a copy of its own
        models["bf16"] = copy.deepcopy(fast)
        for k in ("paper_bf16", "bf16"):
            opts[k] = torch.optim.AdamW(models[k].parameters(), lr=1e-4)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(warmup + steps):
        for k in models:
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            amp = k in ("paper_bf16", "bf16")
            with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=amp):
                _step(models[k], opts[k], x, y)
            if device != "cpu":
                torch.cuda.synchronize()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    mem = {k: peak_memory_mib(models[k], opts[k], x, y) for k in ("paper", "cocs")}
    extra = {}
    if compiled:
        extra = {
            "compiled_step_s": round(med["compiled"], 4),
            "compiled_speedup": round(med["paper"] / med["compiled"], 3),
            "compile_s": round(compile_s, 1),
            "compiled_grad_diff": float(f"{grad_diff:.2e}"),
        }
    if bf16:
        from .train import cpu_has_native_bf16

        native = device != "cpu" or cpu_has_native_bf16()
        extra |= {
            "bf16_step_s": round(med["bf16"], 4),
            "bf16_ratio": round(med["cocs"] / med["bf16"], 3),
            "paper_bf16_step_s": round(med["paper_bf16"], 4),
            "bf16_speedup": round(med["paper_bf16"] / med["bf16"], 3),
            "native_bf16": native,
        }
    return {
        "model": name,
        "img_size": img_size,
        "batch": batch,
        "paper_step_s": round(med["paper"], 4),
        "cocs_step_s": round(med["cocs"], 4),
        "speedup": round(med["paper"] / med["cocs"], 3),
        "paper_peak_mib": round(mem["paper"], 1),
        "cocs_peak_mib": round(mem["cocs"], 1),
        "memory_ratio": round(mem["cocs"] / mem["paper"], 3),
        **extra,
        "keeps_freed_memory": keeps_freed_memory(),
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # how fast this machine is: one processor name can hide several speeds
        "gflops": speed_probe()["matmul_gflops"] if device == "cpu" else None,
    }


CASES = (  # (model, image size, batch, extra contenders: torch.compile, bfloat16 autocast)
    ("coc_tiny_plain", 224, 16, ()),
    ("coc_tiny", 224, 16, ("compiled",)),  # compiling takes minutes here
    # a small model, where fusing element-wise operations pays; and what autocast buys here
    ("coc_cifar", 32, 128, ("compiled", "bf16")),
    ("pointmlp_elite", 1024, 32, ("bf16",)),  # size: points per shape; against the release's layout
)
FLAGS = ("compiled", "bf16")


_ROW = "cocs.bench row: "


def _case_in_fresh_process(case: str, args: argparse.Namespace) -> dict:
    """Runs one case with ``python -m cocs.bench --print_row`` and returns its row."""
    cmd = [sys.executable, "-m", "cocs.bench", "--print_row", "--cases", case]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
    cmd += ["--compiled"] if args.compiled else []
    # from the folder that holds the package, so that the child imports this same cocs
    here = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=here)
    rows = [ln[len(_ROW) :] for ln in proc.stdout.splitlines() if ln.startswith(_ROW)]
    if proc.returncode != 0 or len(rows) != 1:
        raise RuntimeError(
            f"benchmark case {case!r} failed in its own process (exit {proc.returncode}); "
            f"run `python -m cocs.bench --in_process --cases {case}` to see why. "
            f"Its last output:\n{proc.stderr[-2000:]}"
        )
    return json.loads(rows[0])


def main(argv: list[str] | None = None) -> Path | None:
    import pandas as pd

    from .handbook import repo_root, write_csv

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=9, help="timed steps per implementation (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first, per implementation")
    p.add_argument(
        "--compiled",
        action="store_true",
        help="also time cocs under torch.compile (compiling takes minutes on a CPU)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out_dir", default="results/bench")
    p.add_argument(
        "--cases",
        nargs="+",
        default=[":".join(map(str, (m, s, b, *f))) for m, s, b, f in CASES],
        help="model:image_size:batch[:compiled][:bf16], one or more (for point-cloud models "
        "the size is the number of points; compiled: also under torch.compile; bf16: also "
        "under bfloat16 autocast)",
    )
    p.add_argument(
        "--in_process",
        action="store_true",
        help="time every case in this process, not each in a fresh one (rows then depend on "
        "the cases timed before them)",
    )
    p.add_argument("--print_row", action="store_true", help=argparse.SUPPRESS)  # child's mode
    args = p.parse_args(argv)
    rows = []
    for case in args.cases:
        try:
            name, size, batch, *flags = case.split(":")
            size, batch = int(size), int(batch)
            if not set(flags) <= set(FLAGS) or len(set(flags)) < len(flags):
                raise ValueError
        except ValueError:
            p.error(
                f"--cases {case!r}: expected model:image_size:batch[:compiled][:bf16], "
                "e.g. coc_tiny:224:16 or coc_cifar:32:128:compiled:bf16"
            )
        if args.in_process or args.print_row:
            busy = busy_percent()  # what the rest of the machine does while this case is timed
            row = compare(
                name,
                img_size=size,
                batch=batch,
                steps=args.steps,
                warmup=args.warmup,
                device=args.device,
                compiled=args.compiled or "compiled" in flags,
                bf16="bf16" in flags,
            )
            row["busy_percent"] = round(busy, 1)
        else:
            row = _case_in_fresh_process(case, args)
        if args.print_row:
            print(_ROW + json.dumps(row), flush=True)
            continue
        print(row, flush=True)
        rows.append(row)
    if args.print_row:
        return None
    out = Path(args.out_dir)
    if not out.is_absolute():
        out = repo_root() / out
    path = out / f"{hardware_name()}.csv"
    table = pd.DataFrame(rows)
    case = ["model", "img_size", "batch"]
    if path.is_file():
        old = pd.read_csv(path)
        # timings of a busy machine never replace those of a quiet one: they go beside them
        key = table[case].astype(str).agg(":".join, axis=1)
        measured = [c for c in table.columns if c not in (*case, "device", "torch")]
        table, busy = keep_quiet_timings(
            table.assign(case=key),
            path,
            key="case",
            columns=measured,
            old=old.assign(case=old[case].astype(str).agg(":".join, axis=1)),
        )
        table = table.drop(columns="case")
        if busy is not None:
            busy_path = path.with_suffix(".busy.csv")
            write_csv(busy.drop(columns="case"), busy_path)
            print(f"the machine was busy: the quiet timings of {path.name} are kept; "
                  f"these are in {busy_path.name}")  # fmt: skip
        # keep the rows of the cases not measured this time, in place
        both = pd.concat([old, table], ignore_index=True)
        first = both.groupby(case, sort=False).ngroup()  # a case keeps its old position
        table = both.assign(_pos=first).drop_duplicates(case, keep="last")
        table = table.sort_values("_pos", kind="stable").drop(columns="_pos")
    write_csv(table, path)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
