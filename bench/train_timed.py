"""`python bench/train_timed.py ARGS` runs exactly `python train.py ARGS`; it reports training and evaluation apart.

train.py's result.json has `wall_time_s`: the whole seed after the model is loaded, i.e. the
training epochs AND the evaluation train.py runs after every epoch (dev and test for acl, test for
restaurant). To compare with the Trainer, whose train() and predict() we time apart, we need the
evaluation time on its own. train.py writes it: every dev/test record of metrics.jsonl carries
`eval_time_s`, the seconds of that one evaluation of that split. This wrapper calls
`train.main(ARGS)` (the training code that runs is train.py's, nothing replaced) and reads those
records back.

Printed as one line `BENCH_RESULT {json}` per seed:
  train_s   wall_time_s minus every evaluation: the training loop (batching, forward,
            backward, optimizer, logging), excluding imports, tokenization and model loading
  eval_s    the last epoch's evaluation of the test split (eval.evaluate, batch --eval-batch-size)
  dev_eval_s  the same for dev where the dataset has one (not part of train_s or eval_s)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import benchlib  # noqa: F401  (puts the project root on sys.path)
import runs

# isort: split
import train


def evaluations(metrics: Path) -> list[dict]:
    """The dev/test records of a run's metrics.jsonl, in the order train.py wrote them."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals = [r for r in records if r["split"] != "train"]
    if not evals or any("eval_time_s" not in r for r in evals):
        raise SystemExit(f"{metrics}: no eval_time_s on its evaluation records; this train.py does not time "
                         "its evaluations (Run.evaluate writes it)")
    return evals


def main(argv: list[str]) -> None:
    cfg = train.parse_args(argv)
    for result in train.main(argv):
        run_dir = Path(cfg.out) / cfg.dataset / runs.model_slug(cfg) / f"seed{result['seed']}"
        evals = evaluations(run_dir / "metrics.jsonl")
        last_epoch = {r["split"]: r for r in evals if r["epoch"] == evals[-1]["epoch"]}
        sizes = json.loads((run_dir / "config.json").read_text())["split_sizes"]
        print("BENCH_RESULT " + json.dumps({
            "seed": result["seed"], "train_s": result["wall_time_s"] - sum(r["eval_time_s"] for r in evals),
            "eval_s": last_epoch["test"]["eval_time_s"],
            "dev_eval_s": last_epoch["dev"]["eval_time_s"] if "dev" in last_epoch else None,
            "wall_time_s": result["wall_time_s"], "steps": result["steps"],
            "train_examples": result["epochs"] * sizes["train"],
            "test_examples": result["test"]["n"],
            **{k: result["test"][k] for k in ("accuracy", "f1_macro", "f1_micro")},
            "optimizer": "AdamW (fused=True), train.build_optimizer",
            "peak_rss_self_bytes": result["peak_memory_bytes"],
            "torch_threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
