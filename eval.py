"""Evaluation: metrics, exact (distributed) evaluation, and reports on a runs folder.

    python eval.py evaluate --model runs/acl/roberta-base/seed1/model --dataset acl
    python eval.py summarize runs/        # markdown table: mean ± std over seeds
    python eval.py plot runs/ --out figures/
    python eval.py compare runs/ roberta-base bert-base-uncased   # is A better than B? (stats.py)
    python eval.py claims runs/ experiments/report_claims.json

Every rank scores its own shard of the split (no padding duplicates, no gaps), then one
reduction sums the confusion matrix, the loss and the count, so the numbers are the same
whatever the world size. The reduction is a callback (common.all_reduce_sum in both CLIs), so this
file never touches torch.distributed itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import adapter
import data
import hub
import model
import own_data
from common import (
    MAX_LENGTH,
    PRECISIONS,
    Renamed,
    UsageError,
    all_reduce_sum,
    autocast,
    autocast_dtype,
    distributed,
    print0,
)


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
    hold the totals over the whole split. Rank 0 shows a tqdm bar over its batches, as training does
    (none when stderr is not a terminal).
    """
    was_training = net.training
    net.eval()
    totals = torch.zeros(num_classes * num_classes + 2, dtype=torch.float64, device=device)  # [cm..., loss, n]
    batches = data.eval_batches(enc.lengths, batch_size, rank, world_size)
    for idx in tqdm(batches, desc=f"evaluate ({len(enc)} examples)", disable=None if rank == 0 else True,
                    dynamic_ncols=True, leave=False):
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


# ----------------------------------------------------------------------------- evaluate a saved model


def load_model(directory: str | Path, base: str | None = None):
    """(model, tokenizer) for a folder written by `train.py --save`, by transformers, or by
    adapter.save_adapters (the base encoder named in adapter_config.json, or `base`, plus the adapters)."""
    run = Path(directory)
    if (run / "metrics.jsonl").is_file() and not (run / "model.safetensors").is_file():  # train.py's run folder
        if (run / "model").is_dir():
            raise FileNotFoundError(f"{directory} is a run folder, not a saved model: its saved model is "
                                    f"{run / 'model'}; pass --model {run / 'model'}")
        raise FileNotFoundError(f"{directory} is a run folder without a saved model: train it with --save, "
                                f"then pass --model {run / 'model'}")
    if adapter.is_adapter_dir(directory):
        net = adapter.from_pretrained(directory, base=base)
        return net, model.load_tokenizer(base or adapter.read_config(directory)["base"])
    return model.from_pretrained(directory), model.load_tokenizer(base or directory)


def check_labels(net: model.Classifier, labels: list[str], dataset: str, directory) -> None:
    """A saved model for another label set would give silently wrong numbers: refuse it.
    `labels`: the dataset's class names, index = class id (own_data.Dataset.labels)."""
    labels = list(labels)
    if net.num_labels != len(labels):
        raise UsageError(f"{directory} has a {net.num_labels}-label head but {dataset} has {len(labels)} classes "
                         f"({', '.join(labels)}): it was trained for another dataset")
    names = [net.config.id2label[i] for i in range(net.num_labels)] if net.config.id2label else None
    if names and names != labels and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        raise UsageError(f"{directory} labels its classes {names}, {dataset} has {labels} (index = class id)")


def evaluate_command(args) -> dict:
    with distributed(args.device) as world:
        # one quick probe when the data (or an adapter's base) may come from the Hub: offline, the cache only
        hub.cache_only_if_offline(own_data.from_hub(args.dataset, args.data_dir) or hub.hub_repo(
            args.base or args.model) is not None or adapter.is_adapter_dir(args.model))
        net, tok = load_model(args.model, args.base)
        if args.dataset in data.DATASETS:  # refuse a saved model for other labels before reading or downloading
            check_labels(net, data.DATASETS[args.dataset].labels, args.dataset, args.model)
        dataset = own_data.open_from_flags(args, splits=(args.split,))  # a registered dataset reads only this split
        check_labels(net, dataset.labels, dataset.name, args.model)  # your own data: labels from its files
        max_length = min(args.max_length, net.config.max_length)
        enc = data.encode(dataset.examples[args.split], tok, max_length)
        result = evaluate(net.to(world.device), enc, net.num_labels, pad_id=net.config.pad_token_id,
                          device=world.device, batch_size=args.eval_batch_size, max_length=max_length,
                          autocast=autocast(autocast_dtype(args.precision, world.device), world.device),
                          rank=world.rank, world_size=world.world_size, reduce=all_reduce_sum)
        print0(f"{args.model} on {dataset.name} {args.split} ({result['n']} examples): "
               f"accuracy {result['accuracy']:.4f} | f1_macro {result['f1_macro']:.4f} | "
               f"f1_micro {result['f1_micro']:.4f} | loss {result['loss']:.4f}")
        if args.json:
            print0(json.dumps(result))
        return result



# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="Score a saved model on a dataset split.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("evaluate", help="score a saved model on a dataset split (torchrun works too)")
    p.add_argument("--checkpoint", action=Renamed, new="--model (a saved model folder, e.g. <run>/model)")
    p.add_argument("--batch-size", action=Renamed, new="--eval-batch-size (per rank)")
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="a saved model: train.py --save's <run>/model (not the run "
                   "folder itself), a transformers folder, or an adapter folder")
    g.add_argument("--base", help="for adapter folders: the base encoder, if not the one recorded in them; "
                   "also where the tokenizer comes from")
    g = p.add_argument_group("data")
    g.add_argument("--split", default="test", help="the split to score (default: %(default)s)")
    g.add_argument("--max-length", type=int, default=MAX_LENGTH,
                   help="truncate to this many tokens; use the run's own (default: %(default)s, as train.py's)")
    own = p.add_argument_group("your own data (as train.py's flags)")
    for name, (default, help_text, kwargs) in own_data.FLAGS.items():  # train.py's dataset flags, spelled alike
        (g if name in ("dataset", "data_dir") else own).add_argument(
            "--" + name.replace("_", "-"), default=default, help=help_text, **kwargs)
    g = p.add_argument_group("precision and devices")
    g.add_argument("--eval-batch-size", type=int, default=128, help="per-rank batch size (default: %(default)s)")
    g.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="as train.py's --precision (default: %(default)s)")
    g.add_argument("--device", choices=("cpu", "cuda"))
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)

    if args.command == "evaluate":
        return evaluate_command(args)


def cli(argv: list[str] | None = None) -> int:
    """main() as a command: a UsageError or a missing file is one line on stderr and exit code 2; any other
    error (a ValueError of ours or torch's included) is a bug and keeps its traceback."""
    try:
        main(argv)
    except (UsageError, FileNotFoundError) as e:
        print(f"eval.py: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `eval.py summarize runs/ | head`: the reader left, which is not an error
        sys.stdout = None  # nothing more to flush at exit (that would raise again)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(cli())
