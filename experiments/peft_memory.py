"""Full fine-tuning vs adapters vs LoRA from a runs folder: scores, memory beside each row, paired comparisons.

    python experiments/peft_memory.py runs-peft [--split test] [--metric f1_macro]

One row per (dataset, run folder): finished seeds, mean ± sample std of the metric (report.summarize),
trainable parameters, memory.py's prediction for the run's own settings (micro-batch x --max-length
tokens, the micro-batch cut to what --max-tokens allows at that length, its precision, its device's kernels:
an upper bound, as batches are padded only to their longest example) and the measured peak from result.json
(CUDA: max_memory_allocated; CPU: the process's max RSS, which includes the data, the Python heap and earlier
seeds, so only CUDA peaks compare with the prediction).
Then report.compare for each pair of methods on each dataset (permutation p-value, Welch t interval).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adapter
import memory
import report
from common import UsageError

PRECISION = {"none (fp32)": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # config.json's autocast_dtype
ANCHOR = ("Published anchor, not run here: LoRA r=8 on roberta-base trains 0.3M parameters and scores GLUE average "
          "87.2 vs 86.4 for full fine-tuning (125M) (Hu et al. 2021, Table 2).")


def predicted(config: dict) -> memory.Breakdown:
    """memory.estimate for the settings a run recorded in its config.json."""
    lora = (adapter.LoRAConfig(config["lora_r"], config["lora_alpha"], config["lora_dropout"],
                               tuple(config["lora_targets"])) if config.get("lora") else None)
    device = "cpu" if str(config["device"]).startswith("cpu") else "cuda"
    batch = memory.micro_batch(config["micro_batch_size"], config["max_length"], config.get("max_tokens") or 0)
    return memory.estimate(config["model"], batch, config["max_length"],
                           num_labels=len(config["labels"]), precision=PRECISION[config["autocast_dtype"]],
                           bottleneck=config["bottleneck"] if config["adapter"] else None,
                           placement=config.get("adapter_placement") or "houlsby",
                           freeze_layernorm=config["freeze_layernorm"], lora=lora,
                           checkpointing=config.get("gradient_checkpointing", False), device=device)


def table(root: Path, split: str, metric: str) -> list[str]:
    rows = report.summarize(root, split, metrics=(metric,))
    header = (f"| dataset | run folder | seeds | {split} {metric} (mean ± std) | trainable | predicted total "
              "(activations) GB | measured peak GB |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in rows:
        folder = root / row["dataset"] / row["model"]
        results = [json.loads((folder / f"seed{s}" / "result.json").read_text()) for s in row["seeds"]]
        config = json.loads((folder / f"seed{row['seeds'][0]}" / "config.json").read_text())
        est = predicted(config)
        peaks = [r["peak_memory_bytes"] for r in results]
        kind = {r["peak_memory_kind"] for r in results}
        stat = row[metric]
        score = f"{100 * stat['mean']:.2f}" + (f" ± {100 * stat['std']:.2f}" if stat["std"] is not None else "")
        lines.append(f"| {row['dataset']} | {row['model']} | {row['n']} | {score} | "
                     f"{results[0]['trainable_params'] / 1e6:.2f}M | {est.total / 1e9:.2f} ({est.activations / 1e9:.2f}) | "
                     f"{max(peaks) / 1e9:.2f} ({', '.join(sorted(kind))}) |")
    return lines


def comparisons(root: Path, split: str, metric: str) -> list[str]:
    models = {m for _, m in report.seed_groups(report.read_runs(root), split)}
    out = []
    for a_suffix, b_suffix in (("-lora", ""), ("-adapter", ""), ("-lora", "-adapter")):
        for base in sorted({m.removesuffix("-lora").removesuffix("-adapter") for m in models}):
            a, b = base + a_suffix, base + b_suffix
            if a in models and b in models:
                try:
                    out += [report.format_comparison(r) for r in report.compare(root, a, b, metric=metric, split=split)]
                except UsageError as e:  # fewer than 2 finished seeds on every dataset
                    out.append(f"{a} vs {b}: {e}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", help="the runs folder experiments/peft_comparison.sh wrote (its --out)")
    p.add_argument("--split", default="test", help="default: test")
    p.add_argument("--metric", default="f1_macro", help="default: f1_macro")
    args = p.parse_args(argv)
    root = Path(args.runs)
    print("\n".join([*table(root, args.split, args.metric), "", ANCHOR, "", "```",
                     *comparisons(root, args.split, args.metric), "```"]))


if __name__ == "__main__":
    main()
