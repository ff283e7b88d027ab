"""Rebuild a runs folder of result.json files from a per-seed CSV such as docs/minilm-grid/seeds.csv.

    python experiments/runs_from_csv.py docs/minilm-grid/seeds.csv runs/minilm-grid-csv
    python report.py compare runs/minilm-grid-csv minilm-adapter minilm

The MiniLM grid's run folders were not kept, only seeds.csv (one row per seed: dataset, model,
seed, test_accuracy, test_f1_macro, test_f1_micro, test_loss, ...). This writes
<out>/<dataset>/<model>/seed<k>/result.json with {"test": {accuracy, f1_macro, f1_micro, loss}} and
nothing else, so `report.py summarize`, `compare` and `claims` can read it. The values are the CSV's:
rounded to 4 digits there, so statistics on them can differ from the original runs' in the last digits.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

METRICS = ("accuracy", "f1_macro", "f1_micro", "loss")


def runs_from_csv(csv_path: str | Path, out: str | Path) -> list[Path]:
    """The result.json files written, one per CSV row; refuses an out folder that already has runs."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: pick a new folder so rebuilt runs never mix with real ones")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    written = []
    for row in rows:
        path = out / row["dataset"] / row["model"] / f"seed{int(row['seed'])}" / "result.json"
        path.parent.mkdir(parents=True)
        test = {m: float(row[f"test_{m}"]) for m in METRICS}
        result = {"dataset": row["dataset"], "model": row["model"], "seed": int(row["seed"]), "test": test,
                  "source": f"rebuilt from {Path(csv_path).name} (4 digits)"}
        tmp = path.with_name("result.json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)  # atomic, as train.py writes result.json
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python experiments/runs_from_csv.py SEEDS.csv OUT_RUNS_FOLDER")
    try:
        print(f"{len(runs_from_csv(sys.argv[1], sys.argv[2]))} result.json files under {sys.argv[2]}")
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"runs_from_csv.py: error: {e}", file=sys.stderr)
        sys.exit(2)
