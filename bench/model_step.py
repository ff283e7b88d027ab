"""One training step of our classifier vs transformers' BertForSequenceClassification, same weights.

Both models are built from the same all-MiniLM-L6-v2 checkpoint, and transformers' copy then gets
OUR state dict (new classification head and all, through `model.ours_to_hub`), so the two hold
identical weights; a check in eval mode asserts their hidden states and logits agree before
anything is timed.

A "step" is what train.py does per batch: forward (train mode, dropout on), cross-entropy on the
logits, backward, clip the gradient norm to 1.0, AdamW step, zero the gradients, scheduler step.
The loss is computed the same way, outside both models, so only the models differ. Both use the
same optimizer: by default train.py's own `build_optimizer` (torch AdamW, fused=True, decay on
weight matrices only), which is also what transformers' Trainer picks on torch >= 2.8
(`optim="adamw_torch_fused"`); `--optimizer foreach` switches BOTH to the foreach AdamW.

Inputs: random token ids, batch B x L, each row's length drawn uniformly from [L/2, L] (one row
has length L, so the batch is L wide, as dynamic padding would make it) with its attention mask.
Each repeat draws a new batch and feeds it to both models, alternating which goes first, after
warm-up steps. We report the median time per step of each and ratio = theirs / ours (above 1:
ours is faster), plus the median of the per-batch ratios, which is robust to load drifting over
the run. The eval rows time a forward pass in eval mode under inference_mode.

    python bench/model_step.py --lengths 32 64 128 --batch-size 32 --repeats 20
    python bench/model_step.py --lengths 32 --batch-size 32 --precision bf16 --peak   # + share of the matmul peak

Our model draws its dropout masks as train.py does (`--dropout-masks auto`: fast on a CPU, see
model.dropout); transformers' draws them with bernoulli_. `--peak` measures this machine's matmul
throughput in the step's dtype (benchlib.matmul_peak_gflops: a 2048^3 product) and prints each
step's model FLOPs per second (benchlib.train_flops, pads included) as a share of it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from benchlib import (  # first: it puts the project on sys.path
    machine,
    matmul_peak_gflops,
    minilm_dir,
    table,
    train_flops,
)

# isort: split
import common
import model
import train


def random_batch(batch_size: int, length: int, vocab_size: int, gen: torch.Generator) -> dict:
    """Token ids with lengths uniform in [length/2, length]; the first row is full length."""
    lengths = torch.randint(max(length // 2, 2), length + 1, (batch_size,), generator=gen)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(1000, vocab_size, (batch_size, length), generator=gen) * mask  # pad id 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 3, (batch_size,), generator=gen)}


def logits_of(net, batch: dict) -> torch.Tensor:
    """Our model returns logits; transformers' returns an output object holding them."""
    out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              token_type_ids=batch["token_type_ids"])
    return out if isinstance(out, torch.Tensor) else out.logits


def make_optimizer(net: torch.nn.Module, kind: str, lr: float):
    """fused: train.py's build_optimizer itself. foreach: the same groups and schedule, foreach kernel."""
    cfg = train.TrainConfig(dataset="restaurant", lr=lr, weight_decay=0.01, warmup_ratio=0.0)
    optimizer, scheduler = train.build_optimizer(net, cfg, total_steps=10**6)
    if kind == "foreach":
        optimizer = torch.optim.AdamW(optimizer.param_groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scheduler.lr_lambdas[0])
    return optimizer, scheduler


class Trainee:
    """A model with its optimizer: one training step, or one eval forward, timed."""

    def __init__(self, net, optimizer_kind: str, lr: float, autocast):
        self.net, self.autocast = net, autocast
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(net, optimizer_kind, lr)

    def train_step(self, batch: dict) -> float:
        t = time.perf_counter()
        self.net.train()
        with self.autocast():
            logits = logits_of(self.net, batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return time.perf_counter() - t

    @torch.inference_mode()
    def eval_forward(self, batch: dict) -> float:
        t = time.perf_counter()
        self.net.eval()
        with self.autocast():
            logits_of(self.net, batch).argmax(-1)
        return time.perf_counter() - t


def build_models(path: str, num_labels: int):
    """Ours, and transformers' BertForSequenceClassification holding exactly our weights."""
    import transformers
    from transformers import BertForSequenceClassification
    transformers.logging.set_verbosity_error()  # its load report lists the new head as "MISSING": we know
    torch.manual_seed(0)
    ours = model.from_pretrained(path, num_labels=num_labels)
    theirs = BertForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    # the checkpoint has no classification head: each side initialised its own. Copy ours over.
    theirs.load_state_dict(model.ours_to_hub(ours.state_dict(), ours.config), strict=True)
    return ours, theirs


@torch.inference_mode()
def check_same_outputs(ours, theirs, vocab_size: int) -> float:
    """Eval mode, a padded batch: the two models must agree, or the timing compares different things.

    The new head's logits are tiny (init std 0.02), so they alone would hide a wrong encoder: compare
    the last hidden states (order 1) on the real tokens too.
    """
    ours.eval(), theirs.eval()
    batch = random_batch(8, 64, vocab_size, torch.Generator().manual_seed(123))
    real = batch["attention_mask"].bool()
    h_ours = ours.hidden_states(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    h_theirs = theirs.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"]).last_hidden_state
    torch.testing.assert_close(h_ours[real], h_theirs[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits_of(ours, batch), logits_of(theirs, batch), atol=1e-5, rtol=1e-4)
    return float((h_ours[real] - h_theirs[real]).abs().max())


def alternate(ours_fn, theirs_fn, batches: list[dict], warmup: int) -> tuple[list[float], list[float]]:
    """Warm up both, then time them in turn on the same batches; the first to run alternates."""
    for b in batches[:warmup]:
        ours_fn(b), theirs_fn(b)
    t_ours, t_theirs = [], []
    for i, b in enumerate(batches[warmup:]):
        if i % 2 == 0:
            t_ours.append(ours_fn(b))
            t_theirs.append(theirs_fn(b))
        else:
            t_theirs.append(theirs_fn(b))
            t_ours.append(ours_fn(b))
    return t_ours, t_theirs


def summary(t_ours: list[float], t_theirs: list[float]) -> dict:
    ours, theirs = statistics.median(t_ours), statistics.median(t_theirs)
    return {"ours_ms": 1e3 * ours, "theirs_ms": 1e3 * theirs, "ratio": theirs / ours,
            "paired_ratio": statistics.median(b / a for a, b in zip(t_ours, t_theirs))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20, help="timed steps per model and length")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model and length")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--optimizer", choices=("fused", "foreach"), default="fused",
                   help="fused: train.py's build_optimizer (= Trainer's adamw_torch_fused); both models get it")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: CPU autocast for both")
    p.add_argument("--dropout-masks", choices=model.DROPOUT_MASKS, default="auto",
                   help="our model's masks, as train.py's flag (auto: fast on a CPU); transformers' are torch's")
    p.add_argument("--peak", action="store_true", help="also the train step's share of the measured matmul peak")
    p.add_argument("--json", default=None, help="also append the rows as JSON lines to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model or minilm_dir()

    ours, theirs = build_models(path, num_labels=3)
    vocab = ours.config.vocab_size
    max_diff = check_same_outputs(ours, theirs, vocab)
    masks = model.dropout_masks(args.dropout_masks, torch.device("cpu"))
    model.set_dropout_masks(ours, masks)
    autocast = common.autocast(torch.bfloat16 if args.precision == "bf16" else None, torch.device("cpu"))
    a = Trainee(ours, args.optimizer, args.lr, autocast)
    b = Trainee(theirs, args.optimizer, args.lr, autocast)

    info = machine()
    print(f"# model step: {path}\n")
    print(f"- machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, "
          f"versions {info['versions']}")
    print(f"- transformers attention: {theirs.config._attn_implementation}; ours: F.scaled_dot_product_attention")
    print(f"- eval mode, same inputs: last hidden states agree to {max_diff:.2e} (asserted <= 1e-4), logits too")
    print(f"- optimizer for both: torch AdamW ({args.optimizer}); precision {args.precision}; "
          f"batch {args.batch_size}, lengths uniform in [L/2, L], {args.warmup} warm-up + {args.repeats} timed "
          f"steps each, alternating; our dropout masks: {masks}\n")

    rows, records = [], []
    gen = torch.Generator().manual_seed(0)
    for L in args.lengths:
        batches = [random_batch(args.batch_size, L, vocab, gen) for _ in range(args.warmup + args.repeats)]
        real = statistics.fmean(float(x["attention_mask"].sum()) for x in batches) / args.batch_size
        step = summary(*alternate(a.train_step, b.train_step, batches, args.warmup))
        fwd = summary(*alternate(a.eval_forward, b.eval_forward, batches, args.warmup))
        records.append({"length": L, "batch_size": args.batch_size, "mean_real_tokens": real, "dropout_masks": masks,
                        "optimizer": args.optimizer, "precision": args.precision,
                        "threads": info["torch_threads"], "train_step": step, "eval_forward": fwd})
        rows.append([L, f"{real:.1f}", f"{step['ours_ms']:.1f}", f"{step['theirs_ms']:.1f}",
                     f"**{step['ratio']:.2f}**", f"{step['paired_ratio']:.2f}",
                     f"{fwd['ours_ms']:.1f}", f"{fwd['theirs_ms']:.1f}", f"**{fwd['ratio']:.2f}**"])
        print(f"L={L}: step ours {step['ours_ms']:.1f} ms, theirs {step['theirs_ms']:.1f} ms, "
              f"ratio {step['ratio']:.2f}", flush=True)
    print()
    print(table(["L", "mean tokens/row", "train step ours (ms)", "train step transformers (ms)",
                 "ratio (theirs/ours)", "paired ratio", "eval fwd ours (ms)", "eval fwd transformers (ms)",
                 "eval ratio"], rows))
    if args.peak:
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        peak = matmul_peak_gflops(dtype)
        cfg = ours.config
        n_nonembed = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith("embeddings."))
        print(f"\nmeasured {args.precision} matmul peak (2048^3, best of 10): {peak:.0f} GFLOP/s")
        for r in records:
            flops = train_flops(args.batch_size, r["length"], n_nonembed, cfg.num_hidden_layers, cfg.hidden_size)
            r["peak_gflops"], r["model_gflops_per_s"] = peak, flops / r["train_step"]["ours_ms"] / 1e6
            r["share_of_peak"] = r["model_gflops_per_s"] / peak
            print(f"L={r['length']}: our step {r['model_gflops_per_s']:.0f} GFLOP/s = {100 * r['share_of_peak']:.0f}% "
                  f"of the peak (transformers' {flops / r['train_step']['theirs_ms'] / 1e6 / peak:.0%})")
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps({**r, "machine": info}) + "\n" for r in records)


if __name__ == "__main__":
    main()
