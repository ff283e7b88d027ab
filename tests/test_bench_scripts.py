"""bench/ is not run by the suite (benchmarks time things; tests do not), but every script must still start:
a rename in the runtime, or a bench module that shadows a project module, breaks them silently otherwise."""

import subprocess
import sys

from helpers import ROOT

SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "benchlib.py")

# Each script's argparse --help, run as `python bench/<script>` runs it: bench/ first on sys.path. One
# interpreter for all of them (torch and transformers are imported once); SystemExit(0) is --help's end.
PROBE = """
import runpy, sys
sys.path.insert(0, {bench!r})
failed = []
for name in {scripts!r}:
    sys.argv = [name, "--help"]
    try:
        runpy.run_path({bench!r} + "/" + name, run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            failed.append((name, e.code))
    except Exception as e:
        failed.append((name, repr(e)))
print("FAILED", failed)
"""


def test_every_bench_script_starts():
    assert len(SCRIPTS) >= 7, SCRIPTS
    out = subprocess.run([sys.executable, "-c", PROBE.format(bench=str(ROOT / "bench"), scripts=SCRIPTS)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "FAILED []", out.stdout[-3000:] + out.stderr[-3000:]


def test_gpu_bench_batches_keep_the_token_budget():
    """bench/gpu.py's budget rows must time what train.py runs: each batch cut by data.shard_batch into
    micro-batches of at most --max-tokens padded tokens (or one example), widths rounded up to 8, every example
    of the batch exactly once, and the same examples as the no-budget batch."""
    import importlib
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        gpu = importlib.import_module("gpu")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    cfg = gpu.TINY
    plain = gpu.make_batches(6, 16, cfg, max_tokens=0)
    budget = gpu.make_batches(6, 16, cfg, max_tokens=256)
    assert all(len(b) == 1 for b in plain)
    assert sum(len(b) for b in budget) > len(budget)  # the budget bites at these lengths (mean ~55 tokens)
    for whole, micro in zip(plain, budget):
        for m in micro:
            rows, width = m["input_ids"].shape
            assert width % 8 == 0 and (rows * width <= 256 or rows == 1), (rows, width)
            lens = m["attention_mask"].sum(1)
            assert int(lens.max()) > width - 8  # padded to its own longest, not the batch's
        key = lambda ids, mask: sorted(tuple(r[:int(n)].tolist()) for r, n in zip(ids, mask.sum(1)))
        got = [row for m in micro for row in key(m["input_ids"], m["attention_mask"])]
        assert sorted(got) == key(whole[0]["input_ids"], whole[0]["attention_mask"])
