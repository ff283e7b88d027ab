"""Fine-tune with transformers' Trainer on exactly the examples train.py sees: the baseline of end_to_end.py.

Data: our `data.load_split` (so the examples are the same), tokenized by transformers' own
`AutoTokenizer` from the checkpoint folder with truncation to --max-length; pairs go in as
(term, sentence), like data.py. Before training we check that these token ids equal what
data.py produces, so the two sides train on identical inputs (padding aside). `tokenized_len_*`: mean
length the tokenizer hands the collator (the real length for dynamic, --max-length when padded).

Padding (--padding):
  dynamic     DataCollatorWithPadding: each batch padded to its own longest sequence.
  max_length  every sequence padded to --max-length at tokenization, then default_data_collator:
              what transformers' run_glue.py example does by default (pad_to_max_length=True).
--sampling group_by_length gives the Trainer length-grouped batches like train.py's (transformers
5 spells it `train_sampling_strategy`); the default "random" is the Trainer's default.

Hyper-parameters mirror train.py's: AdamW (the Trainer's default optim; which one it picked is
reported), linear warm-up for ceil(warmup_ratio x total steps) steps (transformers 5 has no
warmup_ratio), then linear decay, weight decay, gradient clipping at 1.0, the seed. No evaluation
during training, no checkpoints, no reporting integrations, default dataloader settings.

Timing: `train_s` is trainer.train() (the epoch(s), including the Trainer's own set-up of
dataloader, optimizer and schedule); `eval_s` is trainer.predict() on the test split. Imports,
reading and tokenizing the data and loading the model are outside both (the parent process
measures the whole process separately). Prints one line `BENCH_RESULT {json}`.

    python bench/hf_trainer.py --dataset restaurant --data-dir ../shared/data --seed 1
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import numpy as np
import torch

from benchlib import minilm_dir  # first: it puts the project on sys.path

# isort: split
import data
import eval as evaluation
import model


class ListDataset(torch.utils.data.Dataset):
    """A list of feature dicts; the Trainer only needs __len__ and __getitem__."""

    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


def tokenize(examples: list[data.Example], tokenizer, max_length: int, pad_to_max: bool) -> list[dict]:
    """transformers' tokenizer, called the way run_glue.py calls it: truncation, padding chosen explicitly.

    The MiniLM tokenizer.json stores padding to a fixed 128; `padding=` is always passed here, so
    that stored setting never decides anything.
    """
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length,
                    padding="max_length" if pad_to_max else False)
    return [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
             "attention_mask": enc["attention_mask"][i], "labels": e.label} for i, e in enumerate(examples)]


def check_same_tokens(features: list[dict], examples: list[data.Example], model_dir: str, max_length: int,
                      pad_to_max: bool) -> float:
    """The unpadded ids must equal data.py's, and the padding must be what was asked; returns mean width."""
    ours = data.encode(examples, model.load_tokenizer(model_dir), max_length)
    widths = np.array([len(f["input_ids"]) for f in features])
    if pad_to_max:
        assert (widths == max_length).all(), "padding='max_length' did not pad every example to max_length"
    else:
        assert widths.max() <= max_length and widths.min() < max_length, "dynamic padding padded at tokenization"
    for i, f in enumerate(features):
        real = [t for t, m in zip(f["input_ids"], f["attention_mask"]) if m]
        mine = ours.input_ids[ours.offsets[i]:ours.offsets[i + 1]].tolist()
        assert real == mine, f"example {i}: transformers' and data.py's token ids differ"
    return float(widths.mean())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(data.DATASETS))
    p.add_argument("--model", default=None, help="checkpoint dir (default: all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--padding", choices=("dynamic", "max_length"), default="dynamic")
    p.add_argument("--sampling", choices=("random", "group_by_length"), default="random",
                   help="TrainingArguments.train_sampling_strategy")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: TrainingArguments(bf16=True)")
    args = p.parse_args()

    import transformers
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )
    transformers.logging.set_verbosity_error()
    model_dir = args.model or minilm_dir()
    labels = data.DATASETS[args.dataset].labels
    pad_to_max = args.padding == "max_length"

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    splits = {}
    for split in ("train", "test"):
        examples = data.load_split(args.dataset, split, args.data_dir)
        features = tokenize(examples, tokenizer, args.max_length, pad_to_max)
        width = check_same_tokens(features, examples, model_dir, args.max_length, pad_to_max)
        splits[split] = (ListDataset(features), width)

    transformers.set_seed(args.seed)  # the new head's init follows the seed, as in train.py
    net = BertForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    total_steps = args.epochs * math.ceil(len(splits["train"][0]) / args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, use_cpu=True, seed=args.seed, bf16=args.precision == "bf16",
            learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size, num_train_epochs=args.epochs,
            warmup_steps=math.ceil(args.warmup_ratio * total_steps),  # an int: a step count, not a ratio
            weight_decay=args.weight_decay, lr_scheduler_type="linear", max_grad_norm=1.0,
            train_sampling_strategy=args.sampling,
            eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True)
        collator = default_data_collator if pad_to_max else DataCollatorWithPadding(tokenizer)
        trainer = Trainer(model=net, args=targs, train_dataset=splits["train"][0], data_collator=collator)

        t = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        out = trainer.predict(splits["test"][0])
        eval_s = time.perf_counter() - t

    preds = np.asarray(out.predictions).argmax(-1)
    metrics = evaluation.compute_metrics(preds, out.label_ids, len(labels))
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    result = {
        "train_s": train_s, "eval_s": eval_s, "steps": trainer.state.global_step, "total_steps": total_steps,
        "warmup_steps": targs.warmup_steps, "train_examples": args.epochs * len(splits["train"][0]),
        "test_examples": len(splits["test"][0]), "tokenized_len_train": splits["train"][1],
        "tokenized_len_test": splits["test"][1], **metrics,
        "optimizer": f"{getattr(targs.optim, 'value', targs.optim)} ({type(opt).__name__}, "
                     f"fused={opt.defaults.get('fused')}, foreach={opt.defaults.get('foreach')})",
        "attn_implementation": net.config._attn_implementation, "torch_threads": torch.get_num_threads(),
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
