"""GPU training step: time, MFU and peak memory (measured vs memory.py's prediction), bf16.

Needs no Hub and no data: the models are roberta-base SHAPED (12 layers, hidden 768, vocab 50265)
and all-MiniLM-L6-v2 SHAPED (6 layers, hidden 384) with random weights. Inputs are synthetic token
ids whose lengths are drawn like AG News under the RoBERTa tokenizer (log-normal, mean about 55
tokens, sd about 15), grouped into batches by `data.train_batches` and padded to the batch's
longest rounded up to 8, as train.py does on a GPU; every row gets the very same batches.

A step is train.py's: bf16 autocast forward, summed cross-entropy x 1 / batch size, backward, clip
to 1.0, AdamW (train.build_optimizer: fused, decay on matrices only), zero the gradients. With a
token budget (`--max-tokens`, train.py's flag) each batch is cut by `data.shard_batch` into
micro-batches of at most that many padded tokens, each padded to its own longest, gradients summed
over them. Rows, each --warmup untimed then --steps timed steps:

  model x {no budget, --max-tokens} x {full fine-tuning, Houlsby adapters (bottleneck 64), LoRA if
  adapter.add_lora exists}, ours, eager; and for roberta-base, full, no budget: transformers'
  RobertaForSequenceClassification holding our weights (checked: same eval-mode hidden states and
  logits first), eager, and with --compile both under torch.compile.

Reported: ms/step, real (non-pad) tokens/s, MFU (model FLOPs per second over this card's measured
bf16 matmul peak, an 8192^3 product; FLOPs per position = 6 x non-embedding parameters +
12 x layers x hidden x T, pads included, frozen weights counted alike), the peak memory of the
timed steps (torch.cuda.max_memory_allocated, reset after warm-up) and memory.py's prediction for
the largest micro-batch (memory.estimate(...).total, device "cuda").

    python bench/gpu.py --json bench/out/gpu.json        # H100/H200: about 2-3 minutes
    python bench/gpu.py --device cpu --tiny --steps 2    # CPU dry run of the code path
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchlib import matmul_peak_gflops, table, train_flops  # first: it puts the project on sys.path

# isort: split
import adapter
import data
import memory
import model
import train

ROBERTA_BASE = dict(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                    type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
MINILM = dict(model_type="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
              layer_norm_eps=1e-12)
TINY = {**ROBERTA_BASE, "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 256}
NUM_LABELS = 4  # AG News
BOTTLENECK = 64


def agnews_like_lengths(n: int, rng: np.random.Generator, mean: float = 55.0, sd: float = 15.0,
                        max_length: int = 256) -> np.ndarray:
    """Log-normal lengths with the given mean and sd (AG News under RoBERTa: mean about 55 tokens)."""
    sigma2 = math.log(1 + (sd / mean) ** 2)
    mu = math.log(mean) - sigma2 / 2
    return np.clip(np.rint(rng.lognormal(mu, math.sqrt(sigma2), n)), 8, max_length).astype(np.int64)


def make_batches(n_batches: int, batch_size: int, cfg: dict, max_tokens: int, seed: int = 0) -> list[list[dict]]:
    """Length-grouped batches of random ids, each a list of micro-batches (one without a budget), each padded to
    its longest rounded up to 8. Ids >= 3 keep clear of special tokens; position 0 is <s> / [CLS]-like."""
    rng = np.random.default_rng(seed)
    lengths = agnews_like_lengths(n_batches * batch_size, rng)
    ids_all = rng.integers(3, cfg["vocab_size"], (len(lengths), int(lengths.max()) + 8))
    labels = rng.integers(0, NUM_LABELS, len(lengths))
    batches = []
    for idx in data.train_batches(lengths, batch_size, seed=seed, epoch=0)[:n_batches]:
        idx = idx[np.argsort(-lengths[idx], kind="stable")]  # longest first, as shard_batch expects
        micro = []
        for m in data.shard_batch(idx, 0, 1, len(idx), lengths=lengths, max_tokens=max_tokens, multiple_of=8):
            lens = torch.from_numpy(lengths[m])
            width = math.ceil(int(lens.max()) / 8) * 8
            mask = torch.arange(width)[None, :] < lens[:, None]  # (b, T)
            ids = torch.from_numpy(ids_all[m, :width]).masked_fill(~mask, cfg["pad_token_id"])
            ids[:, 0] = 0
            micro.append({"input_ids": ids, "attention_mask": mask.long(), "labels": torch.from_numpy(labels[m])})
        batches.append(micro)
    return batches


def build(cfg_dict: dict, state: dict | None, which: str, device: torch.device, mode: str = "full"):
    """Our Classifier (full, adapters or lora) or transformers' RobertaForSequenceClassification, holding `state`."""
    cfg = model.Config(**cfg_dict)
    if which == "ours":
        net = model.Classifier(cfg, NUM_LABELS)
        if state is not None:
            net.load_state_dict(state, strict=True)
        if mode == "adapters":
            adapter.add_adapters(net, BOTTLENECK, verbose=False)
        elif mode == "lora":
            adapter.add_lora(net)
    else:
        from transformers import RobertaConfig, RobertaForSequenceClassification
        hf_cfg = {k: v for k, v in cfg_dict.items() if k != "model_type"}  # a class attribute there
        net = RobertaForSequenceClassification(RobertaConfig(**hf_cfg, num_labels=NUM_LABELS))
        net.load_state_dict(model.ours_to_hub(state, cfg), strict=True)
    return net.to(device)


def logits_of(net, batch: dict) -> torch.Tensor:
    out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out if isinstance(out, torch.Tensor) else out.logits


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predicted_peak(cfg_dict: dict, batches: list[list[dict]], mode: str) -> int:
    """memory.py's estimate for the largest micro-batch (by rows x width; bf16 AMP, AdamW, flash attention)."""
    cfg = model.Config(**cfg_dict)
    shapes = {tuple(m["input_ids"].shape) for b in batches for m in b}
    return max(memory.estimate(cfg, rows, width, num_labels=NUM_LABELS, precision="bf16",
                               bottleneck=BOTTLENECK if mode == "adapters" else None, device="cuda").total
               for rows, width in shapes)


def run_variant(net, batches: list[list[dict]], warmup: int, device: torch.device, compile: bool) -> dict:
    """Warm up (and compile), then time the remaining batches; seconds, tokens and the timed steps' peak memory."""
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer, _ = train.build_optimizer(net, train.TrainConfig(dataset="agnews", lr=1e-5, weight_decay=0.01),
                                         total_steps=len(batches))
    fn = torch.compile(net) if compile else net
    net.train()

    def step(micro: list[dict]):
        n = sum(len(m["labels"]) for m in micro)
        for m in micro:  # gradients add up; summed loss / n keeps the step the mean over the batch
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = logits_of(fn, m)
            (F.cross_entropy(logits.float(), m["labels"], reduction="sum") / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batches = [[{k: v.to(device) for k, v in m.items()} for m in b] for b in batches]
    t = time.perf_counter()
    for b in batches[:warmup]:
        step(b)
    sync(device)
    warmup_s = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    sync(device)
    seconds = time.perf_counter() - t
    timed = batches[warmup:]
    return {"seconds": seconds, "warmup_s": warmup_s, "steps": len(timed),
            "micro_batches": sum(len(b) for b in timed),
            "real_tokens": sum(int(m["attention_mask"].sum()) for b in timed for m in b),
            "padded_tokens": sum(m["input_ids"].numel() for b in timed for m in b),
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def check_same_as_transformers(cfg: dict, state: dict, batch: dict, device: torch.device) -> tuple[float, str]:
    """Eval mode, a padded batch: ours and transformers' must agree, or the comparison compares different things.
    The random head's logits are tiny, so the hidden states are what would show a wrong encoder."""
    with torch.inference_mode():
        ours, theirs = build(cfg, state, "ours", device).eval(), build(cfg, state, "theirs", device).eval()
        b = {k: v[:8].to(device) for k, v in batch.items()}
        real = b["attention_mask"].bool()
        h_ours = ours.hidden_states(b["input_ids"], b["attention_mask"])[real]
        h_theirs = theirs.roberta(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state[real]
        tol = 1e-4 if device.type == "cpu" else 2e-3  # GPU SDPA kernels differ with bool vs float masks
        torch.testing.assert_close(h_ours, h_theirs, atol=tol, rtol=tol)
        torch.testing.assert_close(logits_of(ours, b), logits_of(theirs, b), atol=tol, rtol=tol)
        return float((h_ours - h_theirs).abs().max()), theirs.config._attn_implementation


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=2048,
                   help="the budget rows' token budget (train.py's --max-tokens); AG News-like batches of 64 are "
                        "about 64 x 80 tokens wide, so 2048 cuts most into 2-3 micro-batches")
    p.add_argument("--steps", type=int, default=30, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per row (and compilation, with --compile)")
    p.add_argument("--models", nargs="+", default=["roberta-base", "minilm"], choices=("roberta-base", "minilm"))
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (ours and transformers')")
    p.add_argument("--tiny", action="store_true", help="2-layer, hidden-64 models: a quick dry run of the code")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak to use instead of measuring it")
    p.add_argument("--json", default=None, help="also write the rows to this file (JSON)")
    args = p.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device visible to torch (torch "
                 f"{torch.__version__}); this benchmark is for a GPU. To check the code path on CPU: "
                 "python bench/gpu.py --device cpu --tiny --steps 2")
    device = torch.device(args.device)
    shapes = {"roberta-base": ROBERTA_BASE, "minilm": MINILM}
    modes = ["full", "adapters"] + (["lora"] if hasattr(adapter, "add_lora") else [])
    peak = args.peak_tflops or matmul_peak_gflops(torch.bfloat16, *((8192, 20) if device.type == "cuda" else (512, 3)),
                                                  device=args.device) / 1e3
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# GPU step benchmark: {name}, torch {torch.__version__}\n")
    print(f"- bf16 peak: {peak:.1f} TFLOP/s ({'given' if args.peak_tflops else 'measured, bf16 matmul'})")
    print(f"- batch {args.batch_size}, AG News-like lengths, bf16 autocast, fused AdamW; {args.warmup} warm-up + "
          f"{args.steps} timed steps per row; budget rows: --max-tokens {args.max_tokens}\n")

    rows, records = [], []
    for shape in args.models:
        cfg = {**(TINY if args.tiny else shapes[shape])}
        if args.tiny and shape == "minilm":
            cfg.update(model_type="bert", pad_token_id=0, type_vocab_size=2)
        torch.manual_seed(0)
        state = build(cfg, None, "ours", torch.device("cpu")).state_dict()  # one set of random weights per shape
        n_nonembed = sum(t.numel() for k, t in state.items() if not k.startswith("embeddings."))
        plain = make_batches(args.warmup + args.steps, args.batch_size, cfg, 0)
        budget = make_batches(args.warmup + args.steps, args.batch_size, cfg, args.max_tokens)
        variants = [("ours", mode, tokens, False) for tokens in (0, args.max_tokens) for mode in modes]
        if cfg["model_type"] == "roberta":
            diff, attn = check_same_as_transformers(cfg, state, plain[0][0], device)
            print(f"- {shape}: ours and transformers' ({attn} attention) agree in eval mode to {diff:.2e}")
            variants.append(("theirs", "full", 0, False))
            if args.compile:
                variants += [("ours", "full", 0, True), ("theirs", "full", 0, True)]
        for which, mode, tokens, compile in variants:
            if compile:
                torch._dynamo.reset()
            net = build(cfg, state, which, device, mode)
            batches = budget if tokens else plain
            r = run_variant(net, batches, args.warmup, device, compile)
            timed = batches[args.warmup:]
            flops = sum(train_flops(*m["input_ids"].shape, n_nonembed, cfg["num_hidden_layers"], cfg["hidden_size"])
                        for b in timed for m in b)
            pred = predicted_peak(cfg, timed, mode) / 2**30 if which == "ours" else None
            r.update(shape=shape, model=which, mode=mode, max_tokens=tokens, compile=compile,
                     tokens_per_s=r["real_tokens"] / r["seconds"], mfu=flops / r["seconds"] / (peak * 1e12),
                     ms_per_step=1e3 * r["seconds"] / r["steps"], predicted_gib=pred)
            records.append(r)
            label = (f"{shape} {'ours' if which == 'ours' else 'transformers'} {mode}"
                     f"{f' --max-tokens {tokens}' if tokens else ''}{' + compile' if compile else ''}")
            gib = lambda x: "-" if x is None else f"{x:.2f}"
            rows.append([label, f"{r['ms_per_step']:.1f}", f"{r['micro_batches'] / r['steps']:.1f}",
                         f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%", f"{r['warmup_s']:.1f}",
                         gib(r["peak_mem_gib"]), gib(pred)])
            print(f"{label}: {r['ms_per_step']:.1f} ms/step, {r['tokens_per_s']:,.0f} tokens/s, MFU "
                  f"{100 * r['mfu']:.1f}%, peak {gib(r['peak_mem_gib'])} GiB (predicted {gib(pred)})", flush=True)
            del net
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(table(["row", "ms/step", "micro-batches/step", "real tokens/s", "MFU", "warm-up (s)",
                 "peak mem (GiB)", "memory.py predicts (GiB)"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "peak_tflops": peak, "torch": torch.__version__, "rows": records}, f, indent=1)


if __name__ == "__main__":
    main()
