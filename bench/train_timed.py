"""`python bench/train_timed.py ARGS` runs exactly `python train.py ARGS`, and also times each evaluation.

train.py's result.json has `wall_time_s`: the whole seed after the model is loaded, i.e. the
training epochs AND the evaluation train.py runs after every epoch (dev and test for acl, test for
restaurant). To compare with the Trainer, whose train() and predict() we time apart, we need the
evaluation time on its own. Rather than add a flag to train.py, this wrapper replaces
`eval.evaluate` (the one function train.py evaluates through) by a timed version of itself, then
calls `train.main(ARGS)`: the training code that runs is train.py's, unchanged.

Printed as one line `BENCH_RESULT {json}` per seed:
  train_s   wall_time_s minus every evaluation call: the training loop (batching, forward,
            backward, optimizer, logging), excluding imports, tokenization and model loading
  eval_s    the last epoch's evaluation of the test split (eval.evaluate, batch --eval-batch-size)
  dev_eval_s  the same for dev where the dataset has one (not part of train_s or eval_s)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import common  # noqa: F401  (puts the project root on sys.path)

# isort: split
import data
import eval as evaluation
import train

calls: list[tuple[int, float]] = []  # (examples scored, seconds) per evaluate() call, in call order
_evaluate = evaluation.evaluate


def timed_evaluate(*args, **kwargs):
    t = time.perf_counter()
    out = _evaluate(*args, **kwargs)
    calls.append((out["n"], time.perf_counter() - t))
    return out


def main(argv: list[str]) -> None:
    evaluation.evaluate = timed_evaluate  # train.py calls evaluation.evaluate(...) through the module
    cfg = train.parse_args(argv)
    eval_splits = [s for s in data.DATASETS[cfg.dataset].splits if s != "train"]  # train.py's order
    assert eval_splits[-1] == "test"
    for result in train.main(argv):
        mine, calls[:] = calls[:], []  # this seed's evaluation calls: epochs x eval_splits, in order
        last_epoch = dict(zip(eval_splits, mine[-len(eval_splits):]))
        n_test, eval_s = last_epoch["test"]
        assert n_test == result["test"]["n"]
        run_dir = Path(cfg.out) / cfg.dataset / train.model_slug(cfg) / f"seed{result['seed']}"
        sizes = json.loads((run_dir / "config.json").read_text())["split_sizes"]
        print("BENCH_RESULT " + json.dumps({
            "seed": result["seed"], "train_s": result["wall_time_s"] - sum(s for _, s in mine),
            "eval_s": eval_s, "dev_eval_s": last_epoch["dev"][1] if "dev" in last_epoch else None,
            "wall_time_s": result["wall_time_s"], "steps": result["steps"],
            "train_examples": result["epochs"] * sizes["train"],
            "test_examples": n_test, **{k: result["test"][k] for k in ("accuracy", "f1_macro", "f1_micro")},
            "optimizer": "AdamW (fused=True), train.build_optimizer",
            "peak_rss_self_bytes": result["peak_memory_bytes"],
            "torch_threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
