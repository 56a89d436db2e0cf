"""Where and how a run was made, and how its files are written.

:func:`environment_info` (git commit and state, library versions, hardware) goes into every
``metrics.json`` and checkpoint; every results file is written atomically (a temporary file,
then a rename), so an interrupted run never leaves half a file behind.
"""

import csv
import functools
import io
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .allocator import keeps_freed_memory
from .config import REPO_ROOT


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def speed_probe(seconds: float = 0.25) -> dict[str, float]:
    """How fast this processor runs right now, in the two things a CPU training step spends its
    time on: float32 matrix products (GFLOP/s of 512 x 512 products) and memory traffic (GB/s
    of copying 64 MB), each for ``seconds``, on the process's torch threads. Measured once per
    process. Two machines of one name can differ here (another generation, clock or neighbours
    on a shared host); runs compared at equal wall-clock budgets need equal speeds, not only
    equal names (:func:`cocs.runs.budget_caveat`)."""
    # its own generator: probing must not move the global random state that seeds a run
    # (the first run of a process probes, the next ones reuse the result)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512, generator=g)
    src, dst = torch.randn(16 * 2**20, generator=g), torch.empty(16 * 2**20)  # 64 MB each
    rates = {}
    for key, work, step in (
        ("matmul_gflops", 2 * 512**3 / 1e9, lambda: torch.mm(a, a)),
        ("copy_gbps", 2 * src.numel() * 4 / 1e9, lambda: dst.copy_(src)),
    ):
        step()  # first touch and warm-up
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            step()
            n += 1
        rates[key] = round(n * work / elapsed, 1)
    return rates


def environment_info(device: torch.device | str | None = None) -> dict:
    """Git commit, library versions and hardware, for every metrics file and checkpoint."""
    import timm
    import torchvision

    # git_dirty: whether tracked code differs from the commit. Files under results/ are what
    # the chapters write (a chapter may rewrite one while its study trains), not code.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    info = {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
            "timm": str(timm.__version__),
            "numpy": str(np.__version__),
        },
        "hardware": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512, ...
            "cpu_bf16": cpu_has_native_bf16(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "device": str(device) if device is not None else None,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "keeps_freed_memory": keeps_freed_memory(),  # cocs.allocator
        },
    }
    if not str(device or "cpu").startswith("cuda"):  # a run on this CPU: how fast it is now
        info["hardware"]["speed"] = speed_probe()
    return info


# Files, written atomically ------------------------------------------------------------------


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_metrics_csv(path: Path, rows: Sequence[Mapping]) -> None:
    """Rewrite ``metrics.csv`` atomically: one row per epoch."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(path, buf.getvalue())


def _save(obj, path: Path) -> None:
    _write_atomic(path, lambda tmp: torch.save(obj, tmp))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX). Elsewhere bfloat16
    autocast is emulated, and a coc_cifar training step takes several times as long as in
    float32, eager and compiled alike."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
