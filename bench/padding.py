"""Padding fraction (pad tokens / all tokens) of three batching schemes, per dataset's train split.

- grouped: `data.train_batches` (length-grouped), each batch padded to its longest, rounded up to
           --multiple-of (8, as train.py does on GPUs; 1 is what it does on CPUs)
- random:  `data.train_batches(group_by_length=False)`, what `train.py --random-batches` trains on:
           plain shuffled batches, each padded to its longest, rounded up the same way
- fixed:   every sequence padded to max_length (what `padding="max_length"` does)

Padding is counted from the attention masks `data.collate` really builds, averaged over epochs.

    python bench/padding.py --data-dir ../shared/data --tokenizer ../shared/tokenizers/bert-base-uncased
    python bench/padding.py --data-dir ../shared/data --tokenizer minilm --batch-size 32 --multiple-of 1
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data
import model


def padding_fraction(enc: data.Encoded, batches, max_length: int, multiple_of: int) -> float:
    real = total = 0
    for b in batches:
        mask = data.collate(enc, b, pad_id=0, multiple_of=multiple_of, max_length=max_length)["attention_mask"]
        real, total = real + int(mask.sum()), total + mask.numel()
    return 1 - real / total


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--data-dir", default=str(here.parent / "shared" / "data"))
    p.add_argument("--tokenizer", default=str(here.parent / "shared" / "tokenizers" / "bert-base-uncased"),
                   help="a tokenizer folder, or a model alias (minilm: the installed MiniLM package)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5, help="average over this many epochs (seed 0)")
    p.add_argument("--multiple-of", type=int, default=8, help="round padded lengths up to this (train.py: 8 on "
                   "GPUs, 1 on CPUs)")
    args = p.parse_args()

    tok = model.load_tokenizer(args.tokenizer)
    print(f"train splits, {Path(args.tokenizer).name} tokenizer, max_length {args.max_length}, "
          f"batch {args.batch_size}, rounded up to a multiple of {args.multiple_of}, mean of {args.epochs} epochs\n")
    print(f"| dataset | examples | mean tokens | grouped by length | random batches | pad to {args.max_length} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in ("restaurant", "acl", "agnews"):
        enc = data.encode(data.load_split(name, "train", args.data_dir), tok, args.max_length)
        n, B = len(enc), args.batch_size
        grouped, random = [], []
        for epoch in range(args.epochs):
            for shares, by_length in ((grouped, True), (random, False)):
                batches = data.train_batches(enc.lengths, B, 0, epoch, group_by_length=by_length)
                shares.append(padding_fraction(enc, batches, args.max_length, args.multiple_of))
        fixed = 1 - enc.lengths.sum() / (n * args.max_length)
        print(f"| {name} | {n} | {enc.lengths.mean():.1f} "
              f"| {np.mean(grouped):.1%} | {np.mean(random):.1%} | {fixed:.1%} |")


if __name__ == "__main__":
    main()
