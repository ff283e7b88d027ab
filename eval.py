"""Evaluation: metrics (per class too), exact (distributed) evaluation, and predictions on new texts.

    python eval.py evaluate --model runs/acl/roberta-base/seed1/model --dataset acl
    python eval.py predict --model runs/acl/roberta-base/seed1/model --input new.csv > predictions.jsonl

(Reports on a runs folder are report.py's.)

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
    run_cli,
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


def metrics_from_confusion(cm) -> dict:
    """Accuracy, macro-F1 and micro-F1 (fractions), per-class precision, recall, F1 and support, and the
    confusion matrix itself, from a confusion matrix C (C[i, j]: true class i predicted as j).

    Macro-F1 averages per-class F1 = 2tp / (2tp + fp + fn) over the classes that occur in the
    labels or the predictions, which is what scikit-learn's `f1_score(average="macro")` does
    without a `labels=` argument: a class absent from both is left out of the average, a class
    present in only one of them scores 0. Micro-F1 pools tp, fp and fn over classes; with one
    label per example it equals accuracy.

    `per_class` holds lists in class-id order, as scikit-learn's `classification_report(...,
    labels=range(K), zero_division=0)`: a class never predicted has precision 0, a class that never
    occurs has recall 0 (and support 0), and F1 is 0 where precision and recall are both 0. Its F1
    list therefore lists every class, including the absent ones that macro-F1 leaves out.
    `confusion_matrix`: rows = true class, columns = predicted class, in class-id order (integers).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    fp, fn = predicted - tp, support - tp
    total = cm.sum()
    if total == 0:
        raise ValueError("no examples to score")
    present = (2 * tp + fp + fn) > 0
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=present)  # 0 where 0/0

    def share(num, den):  # zero_division=0
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0).tolist()

    return {
        "accuracy": float(tp.sum() / total),
        "f1_macro": float(f1[present].mean()),
        "f1_micro": float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())),
        "per_class": {"precision": share(tp, predicted), "recall": share(tp, support), "f1": f1.tolist(),
                      "support": support.astype(np.int64).tolist()},
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def compute_metrics(preds, labels, num_classes: int) -> dict:
    """{"accuracy", "f1_macro", "f1_micro"} as fractions in 0..1, with "per_class" and "confusion_matrix"
    (metrics_from_confusion)."""
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


# ----------------------------------------------------------------------------- load a saved model


def load_model(directory: str | Path, base: str | None = None):
    """(model, tokenizer) of a saved model: a folder written by `train.py --save` (a full model, or only the
    adapters), by transformers (a sequence-classification head; labels from its id2label), or an adapter
    folder, ours or PEFT's, on top of its base (the one named in adapter_config.json, or `base`; the
    tokenizer comes from the base). Every adapter folder goes through adapter.is_adapter_dir and
    adapter.from_pretrained, so a kind adapter.py learns to read loads here too.

    A run folder is refused with the path of its saved model (FileNotFoundError)."""
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


def label_names(net: model.Classifier) -> list[str]:
    """The class names of a loaded model, index = class id: its config's id2label (train.py --save and
    transformers write it), else LABEL_0, LABEL_1, ... as transformers names unnamed classes."""
    names = net.config.id2label
    if names and sorted(names) == list(range(net.num_labels)):
        return [names[i] for i in range(net.num_labels)]
    return [f"LABEL_{i}" for i in range(net.num_labels)]


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
        print0(format_per_class(result, dataset.labels))
        if args.json:
            print0(json.dumps(result))
        return result


def format_per_class(metrics: dict, labels: list[str]) -> str:
    """Per-class precision, recall, F1 (percent) and support, then the confusion matrix (rows: true class,
    columns: predicted class, label order), as text lines."""
    pc, cm = metrics["per_class"], metrics["confusion_matrix"]
    width = max(len("class"), *map(len, labels))
    lines = [f"{'class':<{width}}  precision  recall      F1  support"]
    for i, name in enumerate(labels):
        lines.append(f"{name:<{width}}  {100 * pc['precision'][i]:9.2f}  {100 * pc['recall'][i]:6.2f}  "
                     f"{100 * pc['f1'][i]:6.2f}  {pc['support'][i]:7d}")
    cell = max(len(str(max(map(max, cm)))), 4)
    lines.append(f"confusion matrix (rows: true, columns: predicted; {', '.join(f'{i}={n}' for i, n in enumerate(labels))})")
    lines.append(" " * (width + 2) + " ".join(f"{i:>{cell}}" for i in range(len(labels))))
    lines += [f"{name:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row) for name, row in zip(labels, cm)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- predict: new texts, no labels


def encode_texts(tokenizer, texts: list[str], text_pairs: list[str] | None,
                 max_length: int) -> tuple[data.Encoded, int]:
    """(tokenized texts, how many were truncated): texts (and their pairs) as data.encode tokenizes a
    split for training, at most `max_length` tokens each."""
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"{len(text_pairs)} text pairs for {len(texts)} texts")
    examples = [data.Example(t, None if text_pairs is None else text_pairs[i], 0) for i, t in enumerate(texts)]
    enc = data.encode(examples, tokenizer, max_length)
    # Only a text that fills max_length can have lost tokens: encoded with room for one more, it shows.
    full = np.flatnonzero(enc.lengths == max_length)
    longer = data.encode([examples[i] for i in full], tokenizer, max_length + 1).lengths > max_length
    return enc, int(longer.sum())


@torch.inference_mode()
def predict_encoded(net: torch.nn.Module, enc: data.Encoded, *, batch_size: int = 128,
                    device: torch.device | None = None, autocast=contextlib.nullcontext) -> torch.Tensor:
    """Class probabilities (N, num_labels), float32 on the CPU, row i for example i of `enc`.

    Batches are sorted by length (little padding) and each row is written back to its example's place,
    so the order is the input's. Softmax in float32, outside autocast. Eval mode (no dropout) for the
    call; the model's mode is restored after it. A tqdm bar for more than 10 batches (on a terminal)."""
    device = device or next(net.parameters()).device
    was_training = net.training
    net.eval()
    probs = torch.empty(len(enc), net.num_labels)
    batches = data.eval_batches(enc.lengths, batch_size)
    for idx in tqdm(batches, desc=f"predict ({len(enc)} texts)", disable=None if len(batches) > 10 else True,
                    dynamic_ncols=True, leave=False):
        batch = {k: v.to(device, non_blocking=True)
                 for k, v in data.collate(enc, idx, net.config.pad_token_id, data.pad_multiple(device)).items()}
        with autocast():
            logits = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, num_labels)
        probs[torch.from_numpy(idx)] = logits.float().softmax(-1).cpu()
    net.train(was_training)
    return probs


def predict(net: torch.nn.Module, tokenizer, texts: list[str], text_pairs: list[str] | None = None, *,
            batch_size: int = 128, max_length: int | None = None, device: torch.device | None = None,
            autocast=contextlib.nullcontext) -> torch.Tensor:
    """Class probabilities (N, num_labels) of `texts` (with `text_pairs`, pair i is (texts[i], text_pairs[i])),
    float32 on the CPU, in the order of `texts`; argmax(-1) is the predicted class id. Inputs longer than
    `max_length` tokens (default: the model's limit, net.config.max_length) are truncated, pairs the
    longer side first, as in training. Eval mode and no gradients, as transformers'
    pipeline("text-classification") scores: softmax of the logits."""
    enc, _ = encode_texts(tokenizer, list(texts), None if text_pairs is None else list(text_pairs),
                          max_length or net.config.max_length)
    return predict_encoded(net, enc, batch_size=batch_size, device=device, autocast=autocast)


def predict_command(args) -> list[dict]:
    """eval.py predict: JSONL on stdout or in --output, one object per input row, in input order."""
    if args.eval_batch_size < 1:
        raise UsageError(f"--eval-batch-size must be at least 1, got {args.eval_batch_size}")
    rows = own_data.read_texts(args.input, args.text_column, args.text_pair_column, args.id_column)
    hub.cache_only_if_offline(hub.hub_repo(args.base or args.model) is not None or adapter.is_adapter_dir(args.model))
    net, tok = load_model(args.model, args.base)
    limit = net.config.max_length
    max_length = limit if args.max_length is None else args.max_length
    if not 1 <= max_length <= limit:
        raise UsageError(f"--max-length {max_length}: {args.model} encodes 1 to {limit} tokens")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    enc, truncated = encode_texts(tok, rows.texts, rows.pairs, max_length)
    if truncated:
        print(f"eval.py predict: {truncated} of {len(rows.texts)} inputs were longer than {max_length} tokens and "
              f"were truncated{' (pairs: the longer side first)' if rows.pairs else ''}", file=sys.stderr)
    probs = predict_encoded(net.to(device), enc, batch_size=args.eval_batch_size, device=device,
                            autocast=autocast(autocast_dtype(args.precision, device), device))
    names = label_names(net)
    out = []
    for i, (p, k) in enumerate(zip(probs.tolist(), probs.argmax(-1).tolist())):
        record = {} if rows.ids is None else {args.id_column: rows.ids[i]}
        record.update(label=names[k], probs=dict(zip(names, p)))
        out.append(record)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    if args.output:
        hub.atomic_write(Path(args.output), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return out


# ----------------------------------------------------------------------------- command line


def model_flags(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help=f"a saved model: train.py --save's <run>/model {what}")
    g.add_argument("--base", help="for adapter folders: the base encoder, if not the one recorded in them; "
                   "also where the tokenizer comes from")


# own_data.FLAGS whose train.py wording is about training
EVALUATE_HELP = {"dev_file": "with --train-file: a dev file (score it with --split dev)",
                 "dataset_name": "your dataset's name in the printed result (default: its folder's name)"}


def device_flags(p: argparse.ArgumentParser, batch: str) -> None:
    g = p.add_argument_group("precision and devices")
    g.add_argument("--eval-batch-size", type=int, default=128, help=f"{batch} (default: %(default)s)")
    g.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="as train.py's --precision (default: %(default)s)")
    g.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available (torchrun: this rank's GPU)")


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="Score a saved model on a dataset split, or classify new texts.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("evaluate", help="score a saved model on a dataset split (torchrun works too)")
    p.add_argument("--checkpoint", action=Renamed, new="--model (a saved model folder, e.g. <run>/model)")
    p.add_argument("--batch-size", action=Renamed, new="--eval-batch-size (per rank)")
    model_flags(p, "(not the run folder itself), a transformers folder, or an adapter folder")
    g = p.add_argument_group("data")
    g.add_argument("--split", default="test", help="the split to score (default: %(default)s)")
    g.add_argument("--max-length", type=int, default=MAX_LENGTH,
                   help="truncate to this many tokens; use the run's own (default: %(default)s, as train.py's)")
    own = p.add_argument_group("your own data (as train.py's flags)")
    for name, (default, help_text, kwargs) in own_data.FLAGS.items():  # train.py's dataset flags, spelled alike
        help_text = EVALUATE_HELP.get(name, help_text)
        (g if name in ("dataset", "data_dir") else own).add_argument(
            "--" + name.replace("_", "-"), default=default, help=help_text, **kwargs)
    device_flags(p, "per-rank batch size")
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="also print the result as one JSON line")

    p = sub.add_parser("predict", help="classify new texts with a saved model: JSONL, one line per input row")
    model_flags(p, "(full, adapters or LoRA), or a transformers folder with a sequence-classification head")
    g = p.add_argument_group("input")
    g.add_argument("--input", required=True, help="a .csv, .tsv or .jsonl file (header row / fields), or - for "
                   "one text per line on standard input")
    g.add_argument("--text-column", default="text", help="the text column (default: %(default)s)")
    g.add_argument("--text-pair-column", help="the second text of a pair (default: text_pair, if the file has it)")
    g.add_argument("--id-column", default="id", help="copied into each output line when the file has it "
                   "(default: %(default)s)")
    g.add_argument("--max-length", type=int, help="truncate to this many tokens (default: the model's limit)")
    device_flags(p, "texts per batch")
    g = p.add_argument_group("output")
    g.add_argument("--output", help="write the JSONL here (atomically) instead of to standard output")
    args = parser.parse_args(argv)

    if args.command == "evaluate":
        return evaluate_command(args)
    return predict_command(args)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, "eval.py")


if __name__ == "__main__":
    sys.exit(cli())
