"""Evaluation: metrics from a confusion matrix, and exact evaluation on one process or many.

Every rank scores its own shard of the split (no padding duplicates, no gaps), then one
reduction sums the confusion matrix, the loss and the count, so the numbers are the same
whatever the world size. The reduction is a callback: only train.py touches torch.distributed.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import data


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
                 for k, v in data.collate(enc, idx, pad_id, max_length=max_length).items()}
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
