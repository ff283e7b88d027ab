"""Evaluation: metrics, exact (distributed) evaluation, and reports on a runs folder.

    python eval.py evaluate --checkpoint runs/acl/roberta-base/seed1/model --dataset acl
    python eval.py summarize runs/        # markdown table: mean ± std over seeds
    python eval.py plot runs/ --out figures/

Every rank scores its own shard of the split (no padding duplicates, no gaps), then one
reduction sums the confusion matrix, the loss and the count, so the numbers are the same
whatever the world size. The reduction is a callback: only train.py touches torch.distributed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data
import model


def confusion_matrix(preds, labels, num_classes: int) -> np.ndarray:
    """C[i, j] = number of examples with true class i predicted as j."""
    preds, labels = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape[0]} predictions for {labels.shape[0]} labels")
    for name, a in (("prediction", preds), ("label", labels)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"a {name} lies outside 0..{num_classes - 1}")
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def metrics_from_confusion(cm) -> dict[str, float]:
    """Accuracy, macro-F1 and micro-F1 (fractions) from a confusion matrix.

    Macro-F1 averages per-class F1 = 2tp / (2tp + fp + fn) over the classes that occur in the
    labels or the predictions, which is what scikit-learn's `f1_score(average="macro")` does
    without a `labels=` argument: a class absent from both is left out of the average, a class
    present in only one of them scores 0. Micro-F1 pools tp, fp and fn over classes; with one
    label per example it equals accuracy.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    total = cm.sum()
    if total == 0:
        raise ValueError("no examples to score")
    present = (2 * tp + fp + fn) > 0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return {
        "accuracy": float(tp.sum() / total),
        "f1_macro": float(f1.mean()),
        "f1_micro": float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())),
    }


def compute_metrics(preds, labels, num_classes: int) -> dict[str, float]:
    """{"accuracy", "f1_macro", "f1_micro"} as fractions in 0..1."""
    return metrics_from_confusion(confusion_matrix(preds, labels, num_classes))


@torch.inference_mode()
def evaluate(net: torch.nn.Module, enc: data.Encoded, num_classes: int, *, pad_id: int, device: torch.device,
             batch_size: int = 128, max_length: int | None = None, autocast=contextlib.nullcontext,
             rank: int = 0, world_size: int = 1, reduce: Callable[[torch.Tensor], None] | None = None) -> dict:
    """Loss and metrics of `net` on a tokenized split; exact under DDP when `reduce` sums over ranks.

    Batches are length-sorted (little padding). The confusion matrix, the loss sum and the example
    count travel in one float64 tensor, so one `reduce` call (an all-reduce SUM) makes every rank
    hold the totals over the whole split.
    """
    was_training = net.training
    net.eval()
    totals = torch.zeros(num_classes * num_classes + 2, dtype=torch.float64, device=device)  # [cm..., loss, n]
    for idx in data.eval_batches(enc.lengths, batch_size, rank, world_size):
        batch = {k: v.to(device, non_blocking=True)
                 for k, v in data.collate(enc, idx, pad_id, data.pad_multiple(device), max_length).items()}
        with autocast():
            logits = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        labels = batch["labels"]
        totals[-2] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        totals[-1] += labels.numel()
        totals[:-2] += torch.bincount(labels * num_classes + logits.argmax(-1), minlength=num_classes**2).double()
    if reduce is not None:
        reduce(totals)
    net.train(was_training)
    totals = totals.cpu().numpy()
    out = metrics_from_confusion(totals[:-2].reshape(num_classes, num_classes))
    return {"loss": float(totals[-2] / totals[-1]), **out, "n": int(totals[-1])}


# ----------------------------------------------------------------------------- evaluate a saved checkpoint


def load_checkpoint(directory: str | Path, base: str | None = None):
    """(model, tokenizer) for a folder written by `train.py --save`, by transformers, or by
    adapter.save_adapters (the base encoder named in adapter_config.json, or `base`, plus the adapters)."""
    import adapter
    if adapter.is_adapter_dir(directory):
        net = adapter.from_pretrained(directory, base=base)
        return net, model.load_tokenizer(base or adapter.read_config(directory)["base"])
    return model.from_pretrained(directory), model.load_tokenizer(base or directory)


def check_labels(net: model.Classifier, labels: list[str], dataset: str, directory) -> None:
    """A checkpoint for another label set would give silently wrong numbers: refuse it.
    `labels`: the dataset's class names, index = class id (data.Dataset.labels)."""
    labels = list(labels)
    if net.num_labels != len(labels):
        raise ValueError(f"{directory} has a {net.num_labels}-label head but {dataset} has {len(labels)} classes "
                         f"({', '.join(labels)}): it was trained for another dataset")
    names = [net.config.id2label[i] for i in range(net.num_labels)] if net.config.id2label else None
    if names and names != labels and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        raise ValueError(f"{directory} labels its classes {names}, {dataset} has {labels} (index = class id)")


def evaluate_command(args) -> dict:
    import train  # the only file that touches torch.distributed: evaluation reduces through its helper
    with train.distributed(args.device) as d:
        net, tok = load_checkpoint(args.checkpoint, args.base)
        if args.dataset in data.DATASETS:  # refuse a checkpoint for other labels before reading or downloading
            check_labels(net, data.DATASETS[args.dataset].labels, args.dataset, args.checkpoint)
        dataset = train.open_dataset(args, splits=(args.split,))  # a registered dataset reads only this split
        check_labels(net, dataset.labels, dataset.name, args.checkpoint)  # your own data: labels from its files
        max_length = min(args.max_length, net.config.max_length)
        enc = data.encode(dataset.examples[args.split], tok, max_length)
        dtype = train.autocast_dtype(args.precision, d.device)
        autocast = (lambda: torch.autocast(d.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        result = evaluate(net.to(d.device), enc, net.num_labels, pad_id=net.config.pad_token_id, device=d.device,
                          batch_size=args.batch_size, max_length=max_length, autocast=autocast, rank=d.rank,
                          world_size=d.world_size, reduce=train.all_reduce_sum)
        train.print0(f"{args.checkpoint} on {dataset.name} {args.split} ({result['n']} examples): "
                     f"accuracy {100 * result['accuracy']:.2f} | macro-F1 {100 * result['f1_macro']:.2f} | "
                     f"micro-F1 {100 * result['f1_micro']:.2f} | loss {result['loss']:.4f}")
        if args.json:
            train.print0(json.dumps(result))
        return result


# ----------------------------------------------------------------------------- read a runs folder

METRICS = ("accuracy", "f1_macro", "f1_micro", "loss")
DATASET_ORDER = ("restaurant", "acl", "agnews")


@dataclass
class Seed:
    dataset: str
    model: str
    seed: int
    path: Path
    result: dict | None  # result.json, None while unfinished
    records: list[dict]  # metrics.jsonl lines that parsed


def read_jsonl(path: Path) -> list[dict]:
    """Every line that parses; a broken line is reported with file and line, then skipped."""
    records = []
    if not path.exists():
        return records
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            print(f"warning: {path}:{i}: not valid JSON ({e.msg}); line skipped", file=sys.stderr)
    return records


def read_runs(root: str | Path) -> list[Seed]:
    """runs/<dataset>/<model>/seed<k>/ folders, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no runs folder at {root}")
    seeds = []
    for path in sorted(root.glob("*/*/seed*")):
        if not path.is_dir() or not path.name[4:].isdigit():
            continue
        result = None
        if (path / "result.json").exists():
            try:
                result = json.loads((path / "result.json").read_text())
            except json.JSONDecodeError as e:
                print(f"warning: {path / 'result.json'}: not valid JSON ({e.msg}); seed counted as unfinished",
                      file=sys.stderr)
        seeds.append(Seed(path.parent.parent.name, path.parent.name, int(path.name[4:]), path, result,
                          read_jsonl(path / "metrics.jsonl")))
    if not seeds:
        raise FileNotFoundError(f"{root} holds no run folders (expected {root}/<dataset>/<model>/seed<k>/)")
    return seeds


def _ordered(names) -> list[str]:
    return sorted(set(names), key=lambda n: (DATASET_ORDER.index(n) if n in DATASET_ORDER else len(DATASET_ORDER), n))


# ----------------------------------------------------------------------------- summarize


def summarize(root: str | Path, split: str = "test", metrics=("accuracy", "f1_macro")) -> list[dict]:
    """One row per (model, dataset): mean and sample std over FINISHED seeds, and which are not."""
    seeds = read_runs(root)
    rows = []
    for model_name in sorted({s.model for s in seeds}, key=lambda m: (m.removesuffix("-adapter"), m)):
        for dataset in _ordered(s.dataset for s in seeds):
            group = [s for s in seeds if s.model == model_name and s.dataset == dataset]
            if not group:
                continue
            done = [s for s in group if s.result and split in s.result]
            row = {"model": model_name, "dataset": dataset, "split": split, "n": len(done),
                   "seeds": [s.seed for s in done], "unfinished": [s.seed for s in group if s not in done]}
            for m in metrics:
                values = np.array([s.result[split][m] for s in done], dtype=np.float64)
                row[m] = {"mean": float(values.mean()) if len(values) else None,
                          "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                          "values": values.tolist()}
            rows.append(row)
    return rows


def _cell(row: dict, metric: str) -> str:
    stat = row[metric]
    if stat["mean"] is None:
        text = "-"
    else:
        scale, digits = (1, 4) if metric == "loss" else (100, 2)  # metrics as percentages, loss as is
        text = f"{scale * stat['mean']:.{digits}f}"
        if stat["std"] is not None:
            text += f" ± {scale * stat['std']:.{digits}f}"
        text += f" ({row['n']})"
    if row["unfinished"]:
        text += f" +{len(row['unfinished'])} unfinished"
    return text


def format_table(rows: list[dict], metrics, fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    names = {"accuracy": "acc", "f1_macro": "macro-F1", "f1_micro": "micro-F1", "loss": "loss"}
    datasets = _ordered(r["dataset"] for r in rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    header = ["model"] + [f"{d} {names[m]}" for d in datasets for m in metrics]
    lines = []
    for model_name in models:
        by_dataset = {r["dataset"]: r for r in rows if r["model"] == model_name}
        lines.append([model_name] + [_cell(by_dataset[d], m) if d in by_dataset else "" for d in datasets
                                     for m in metrics])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(lines)
        return out.getvalue()
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(line) + " |" for line in lines])


# ----------------------------------------------------------------------------- plot


def _curve(seeds: list[Seed], split: str, metric: str, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """x, mean, std over seeds of one logged quantity; only x values every seed has."""
    per_seed = [{r[x]: r[metric] for r in s.records if r.get("split") == split and metric in r} for s in seeds]
    per_seed = [c for c in per_seed if c]
    if not per_seed:
        return None
    xs = sorted(set.intersection(*(set(c) for c in per_seed)))
    values = np.array([[c[v] for v in xs] for c in per_seed], dtype=np.float64)  # (seeds, points)
    return np.array(xs), values.mean(0), values.std(0, ddof=1) if len(per_seed) > 1 else np.zeros(len(xs))


def _panel(ax, groups: dict[str, list[Seed]], split: str, metric: str, x: str, colors: dict) -> None:
    for name, seeds in groups.items():
        curve = _curve(seeds, split, metric, x)
        if curve is None:
            continue
        xs, mean, std = curve
        scale = 1 if metric == "loss" else 100
        ax.plot(xs, scale * mean, color=colors[name], label=f"{name} ({len(seeds)})",
                marker=None if split == "train" else "o", markersize=3)
        ax.fill_between(xs, scale * (mean - std), scale * (mean + std), color=colors[name], alpha=0.2, linewidth=0)
    label = {"loss": "loss", "accuracy": "accuracy (%)", "f1_macro": "macro-F1 (%)", "f1_micro": "micro-F1 (%)"}
    ax.set_title(f"{split} {label[metric].split(' ')[0]}")
    ax.set_xlabel(x)
    ax.set_ylabel(label[metric])
    if x == "epoch":
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # evaluations happen at whole epochs
    ax.grid(alpha=0.3)


def plot(root: str | Path, out: str | Path) -> list[Path]:
    """Per dataset: training loss and test accuracy / macro-F1 / micro-F1 / loss against steps, one colour
    per model, mean over seeds as a line and +-1 std as a band. Plus, for every model with an adapter run,
    adapter vs full fine-tuning against epochs (their step counts differ when their epochs do)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    seeds = read_runs(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = sorted({s.model for s in seeds})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    written = []
    for dataset in _ordered(s.dataset for s in seeds):
        groups = {m: [s for s in seeds if s.dataset == dataset and s.model == m] for m in models}
        groups = {m: g for m, g in groups.items() if g}
        fig, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
        _panel(axes[0][0], groups, "train", "loss", "step", colors)
        _panel(axes[0][1], groups, "test", "loss", "step", colors)
        for ax, metric in zip(axes[1], ("accuracy", "f1_macro", "f1_micro")):
            _panel(ax, groups, "test", metric, "step", colors)
        handles, labels = axes[0][0].get_legend_handles_labels()
        axes[0][2].axis("off")  # the legend's own panel, so it never hides a curve
        axes[0][2].legend(handles, labels, loc="center", fontsize=11, title="model (seeds)")
        fig.suptitle(f"{dataset}: mean over seeds, band = ±1 std", fontsize=13)
        written.append(out / f"{dataset}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    for base in [m for m in models if f"{m}-adapter" in models]:
        datasets = _ordered(s.dataset for s in seeds if s.model in (base, f"{base}-adapter"))
        fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 8), squeeze=False,
                                 constrained_layout=True)
        for j, dataset in enumerate(datasets):
            groups = {m: [s for s in seeds if s.dataset == dataset and s.model == m] for m in (base, f"{base}-adapter")}
            groups = {m: g for m, g in groups.items() if g}
            for i, metric in enumerate(("accuracy", "f1_macro")):
                _panel(axes[i][j], groups, "test", metric, "epoch", colors)
                axes[i][j].set_title(f"{dataset}: test {'accuracy' if i == 0 else 'macro-F1'}")
            axes[0][j].legend(fontsize=9)
        fig.suptitle(f"{base}: adapters vs full fine-tuning (mean over seeds, band = ±1 std)", fontsize=13)
        written.append(out / f"adapter_vs_full_{base}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint, or summarize and plot a runs folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("evaluate", help="score a saved checkpoint on a dataset split (torchrun works too)")
    p.add_argument("--checkpoint", required=True, help="train.py --save's <run>/model, a transformers "
                   "checkpoint, or an adapter folder")
    import train  # the dataset flags are TrainConfig's: both CLIs spell and explain them alike
    for f in dataclasses.fields(train.TrainConfig):
        if f.name in ("dataset", "data_dir", *train.OWN_DATA):
            p.add_argument("--" + f.name.replace("_", "-"), default=f.default, **f.metadata)
    p.add_argument("--split", default="test")
    p.add_argument("--base", help="for adapter folders: the base encoder, if not the one recorded in them; "
                   "also where the tokenizer comes from")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--device", choices=("cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    p = sub.add_parser("summarize", help="mean ± sample std over seeds, one row per model")
    p.add_argument("runs")
    p.add_argument("--split", default="test")
    p.add_argument("--all-metrics", action="store_true", help="add micro-F1 and loss")
    p.add_argument("--format", default="markdown", choices=("markdown", "csv", "json"))
    p = sub.add_parser("plot", help="PNG learning curves per dataset, and adapters vs full fine-tuning")
    p.add_argument("runs")
    p.add_argument("--out", default="figures")
    args = parser.parse_args(argv)

    if args.command == "evaluate":
        return evaluate_command(args)
    elif args.command == "summarize":
        metrics = METRICS if args.all_metrics else METRICS[:2]
        print(format_table(summarize(args.runs, args.split, metrics), metrics, args.format))
    else:
        for path in plot(args.runs, args.out):
            print(path)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        print(f"eval.py: error: {e}", file=sys.stderr)
        sys.exit(2)
