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
