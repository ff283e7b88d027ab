"""Predicted vs measured GPU memory per method: full fine-tuning, Houlsby, Pfeiffer, LoRA, each without and
with activation checkpointing.

For each: memory.estimate (the derivation) beside memory.measure on the device (one real training step of
our model under train.py's autocast, counting what autograd saves) and torch.cuda.max_memory_allocated over
that step, all in GB (1e9 bytes). roberta-base SHAPED with random weights (no Hub needed); --tiny for a
quick CPU dry run of the code path (no CUDA peak there).

    python bench/memory_methods.py                                    # on a GPU: roberta-base, batch 64 x 128
    python bench/memory_methods.py --batch-size 32 --max-length 256 --precision bf16
    python bench/memory_methods.py --device cpu --tiny                # dry run
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchlib import table  # first: it puts the project on sys.path

# isort: split
import adapter
import memory
import model

ROBERTA_BASE = model.Config(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                            type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
TINY = model.Config(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                    max_position_embeddings=70)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", default="bf16", choices=list(memory.PRECISIONS))
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--tiny", action="store_true", help="a 2-layer, hidden-64 model: a quick dry run of the code")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/memory_methods.py: no CUDA device visible to torch; for a dry run of the code path: "
                 "python bench/memory_methods.py --device cpu --tiny")
    cfg = TINY if args.tiny else ROBERTA_BASE
    batch, length = (3, 17) if args.tiny else (args.batch_size, args.max_length)
    methods = {"full": {}, f"houlsby-{args.bottleneck}": {"bottleneck": args.bottleneck},
               f"pfeiffer-{args.bottleneck}": {"bottleneck": args.bottleneck, "placement": "pfeiffer"},
               f"lora r{args.lora_r}": {"lora": adapter.LoRAConfig(r=args.lora_r)}}
    rows = []
    for ckpt in (False, True):
        for name, kw in methods.items():
            est = memory.estimate(cfg, batch, length, precision=args.precision, checkpointing=ckpt,
                                  device=args.device, **kw)
            real = memory.measure(cfg, batch, length, precision=args.precision, checkpointing=ckpt,
                                  device=args.device, **kw)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            gb = lambda v: "-" if v is None else f"{v / 1e9:.3f}"
            rows.append([name + (" + checkpointing" if ckpt else ""), gb(est.activations), gb(real.activations),
                         gb(est.total), gb(real.peak_allocated)])
    print(f"\n{'tiny' if args.tiny else 'roberta-base'} shape, batch {batch} x {length} tokens, {args.precision}, "
          f"{args.device} (GB = 1e9 bytes; the peak includes the model, gradients and optimizer states)\n")
    print(table(["method", "activations predicted", "activations measured", "total predicted", "CUDA peak"], rows))


if __name__ == "__main__":
    main()
