"""GPU training throughput: our classifier vs transformers' RobertaForSequenceClassification, bf16.

Needs no Hub and no data: both models are roberta-base SHAPED (12 layers, hidden 768, vocab 50265)
with random weights, and transformers' copy gets exactly our weights (`model.ours_to_hub`, strict),
checked by comparing eval-mode hidden states and logits first. Inputs are synthetic token ids
whose lengths are drawn like AG News under the RoBERTa tokenizer (log-normal, mean about 55
tokens, sd about 15), grouped into batches by `data.train_batches` and padded to the batch's
longest rounded up to 8, as train.py does; both models get the very same batches.

A step is train.py's: bf16 autocast forward, cross-entropy, backward, clip to 1.0, AdamW
(train.build_optimizer: fused, decay on matrices only), zero the gradients. Each variant
(ours / transformers, eager / torch.compile) runs --warmup untimed steps (compilation happens
there), then --steps timed ones. Reported:

  tokens/s  real (non-pad) tokens per second
  MFU       model FLOPs per second over the measured bf16 peak of this card (a large bf16 matmul,
            timed here), with model FLOPs per token = 6 x non-embedding parameters + 12 x layers x
            hidden x T (attention scores and weighted sum, forward and backward; T = the padded
            width of the batch), counted on every position the model computes, pads included.

    python bench/gpu.py                                  # the H200 run: ~3-5 minutes
    python bench/gpu.py --device cpu --tiny --steps 2    # CPU dry run of the code path
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchlib import table  # first: it puts the project on sys.path

# isort: split
import data
import model
import train

ROBERTA_BASE = dict(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                    type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
TINY = {**ROBERTA_BASE, "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 256}
NUM_LABELS = 4  # AG News


def agnews_like_lengths(n: int, rng: np.random.Generator, mean: float = 55.0, sd: float = 15.0,
                        max_length: int = 256) -> np.ndarray:
    """Log-normal lengths with the given mean and sd (AG News under RoBERTa: mean about 55 tokens)."""
    sigma2 = math.log(1 + (sd / mean) ** 2)
    mu = math.log(mean) - sigma2 / 2
    return np.clip(np.rint(rng.lognormal(mu, math.sqrt(sigma2), n)), 8, max_length).astype(np.int64)


def make_batches(n_batches: int, batch_size: int, vocab_size: int, pad_id: int, seed: int = 0) -> list[dict]:
    """Length-grouped, padded batches of random ids (ids >= 3 keep clear of RoBERTa's <s> <pad> </s>)."""
    rng = np.random.default_rng(seed)
    lengths = agnews_like_lengths(n_batches * batch_size, rng)
    batches = []
    for idx in data.train_batches(lengths, batch_size, seed=seed, epoch=0):
        lens = torch.from_numpy(lengths[idx])
        width = math.ceil(int(lens.max()) / 8) * 8
        mask = torch.arange(width)[None, :] < lens[:, None]  # (B, T)
        ids = torch.from_numpy(rng.integers(3, vocab_size, (len(idx), width)))
        ids[:, 0] = 0  # <s>
        batches.append({"input_ids": ids.masked_fill(~mask, pad_id), "attention_mask": mask.long(),
                        "labels": torch.from_numpy(rng.integers(0, NUM_LABELS, len(idx)))})
    return batches


def build(cfg_dict: dict, state: dict | None, which: str, device: torch.device):
    """Our Classifier or transformers' RobertaForSequenceClassification, holding `state` (our keys)."""
    cfg = model.Config(**cfg_dict)
    if which == "ours":
        net = model.Classifier(cfg, NUM_LABELS)
        if state is not None:
            net.load_state_dict(state, strict=True)
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


def measured_peak_tflops(device: torch.device, n: int, reps: int) -> float:
    """bf16 matmul throughput of this device: the 'peak' MFU is measured against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def flops_per_batch(batch: dict, n_nonembed: int, cfg: dict) -> float:
    """Training FLOPs of one batch: (6N + 12 L d T) per position, B x T positions (pads included)."""
    B, T = batch["input_ids"].shape
    return B * T * (6 * n_nonembed + 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * T)


def run_variant(net, batches: list[dict], warmup: int, device: torch.device, compile: bool) -> dict:
    """Warm up (and compile), then time the remaining batches; tokens/s and seconds."""
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer, _ = train.build_optimizer(net, train.TrainConfig(dataset="agnews", lr=1e-5, weight_decay=0.01),
                                         total_steps=len(batches))
    fn = torch.compile(net) if compile else net
    net.train()

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = logits_of(fn, batch)
        F.cross_entropy(logits.float(), batch["labels"]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
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
            "real_tokens": sum(int(b["attention_mask"].sum()) for b in timed),
            "padded_tokens": sum(b["input_ids"].numel() for b in timed),
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=100, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps per variant (includes compilation)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, hidden-64 model: a quick dry run of the code")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak to use instead of measuring it")
    p.add_argument("--json", default=None, help="also write the rows to this file (JSON)")
    args = p.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device visible to torch (torch "
                 f"{torch.__version__}); this benchmark is for a GPU. To check the code path on CPU: "
                 "python bench/gpu.py --device cpu --tiny --steps 2")
    device = torch.device(args.device)
    cfg = TINY if args.tiny else ROBERTA_BASE
    torch.manual_seed(0)

    # one set of random weights for every variant
    state = build(cfg, None, "ours", torch.device("cpu")).state_dict()
    n_nonembed = sum(t.numel() for k, t in state.items() if not k.startswith("embeddings."))
    batches = make_batches(args.warmup + args.steps, args.batch_size, cfg["vocab_size"], cfg["pad_token_id"])

    # apples to apples: the same hidden states (fp32, eval mode, real tokens) and logits on a padded batch;
    # the random head's logits are tiny, so the hidden states are what would show a wrong encoder
    with torch.inference_mode():
        ours, theirs = build(cfg, state, "ours", device).eval(), build(cfg, state, "theirs", device).eval()
        b = {k: v[:8].to(device) for k, v in batches[0].items()}
        real = b["attention_mask"].bool()
        h_ours = ours.hidden_states(b["input_ids"], b["attention_mask"])[real]
        h_theirs = theirs.roberta(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state[real]
        tol = 1e-4 if device.type == "cpu" else 2e-3  # GPU SDPA kernels differ with bool vs float masks
        torch.testing.assert_close(h_ours, h_theirs, atol=tol, rtol=tol)
        torch.testing.assert_close(logits_of(ours, b), logits_of(theirs, b), atol=tol, rtol=tol)
        max_diff = float((h_ours - h_theirs).abs().max())
        attn = theirs.config._attn_implementation
    del ours, theirs

    peak = args.peak_tflops or measured_peak_tflops(device, 8192 if device.type == "cuda" else 1024,
                                                    50 if device.type == "cuda" else 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# GPU step benchmark: {name}, torch {torch.__version__}\n")
    print(f"- model: {'tiny test model' if args.tiny else 'roberta-base shape'}, random weights, "
          f"{n_nonembed / 1e6:.1f}M non-embedding parameters; transformers attention: {attn}")
    print(f"- eval mode, same inputs: last hidden states agree to {max_diff:.2e}, logits too")
    print(f"- bf16 peak: {peak:.1f} TFLOP/s ({'given' if args.peak_tflops else 'measured, bf16 matmul'})")
    print(f"- batch {args.batch_size}, AG News-like lengths (mean "
          f"{statistics.fmean(float(x['attention_mask'].sum()) / len(x['labels']) for x in batches):.1f} real "
          f"tokens/row), bf16 autocast, fused AdamW; {args.warmup} warm-up + {args.steps} timed steps per variant\n")

    rows, records = [], []
    for compile in ([False] if args.no_compile else [False, True]):
        for which in ("ours", "theirs"):
            if compile:
                torch._dynamo.reset()
            net = build(cfg, state, which, device)
            r = run_variant(net, batches, args.warmup, device, compile)
            flops = sum(flops_per_batch(b, n_nonembed, cfg) for b in batches[args.warmup:])
            r.update(model=which, compile=compile, tokens_per_s=r["real_tokens"] / r["seconds"],
                     mfu=flops / r["seconds"] / (peak * 1e12), ms_per_step=1e3 * r["seconds"] / r["steps"])
            records.append(r)
            label = ("ours" if which == "ours" else "transformers") + (" + compile" if compile else "")
            rows.append([label, f"{r['ms_per_step']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%",
                         f"{r['warmup_s']:.1f}", "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}"])
            print(f"{label}: {r['ms_per_step']:.1f} ms/step, {r['tokens_per_s']:,.0f} tokens/s", flush=True)
            del net
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(table(["variant", "ms/step", "real tokens/s", "MFU", "warm-up (s)", "peak mem (GiB)"], rows))
    by = {(r["model"], r["compile"]): r for r in records}
    for c in sorted({r["compile"] for r in records}):
        ratio = by[("ours", c)]["tokens_per_s"] / by[("theirs", c)]["tokens_per_s"]
        print(f"\nours / transformers{' (compiled)' if c else ''}: {ratio:.2f}x tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "peak_tflops": peak, "torch": torch.__version__, "rows": records}, f, indent=1)


if __name__ == "__main__":
    main()
