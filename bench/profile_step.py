"""Where one training step of OUR classifier spends its time: torch.profiler over a few steps.

The same step as model_step.py (forward in train mode, cross-entropy, backward, clip, fused AdamW,
scheduler), on random batches of B x L, fp32 or under CPU bf16 autocast. Prints the operators that
take the most self CPU time and their share of the total, plus a few groups that explain the
numbers in bench/RESULTS.md: matrix multiplies, dropout's random masks, dtype casts, the optimizer.

    python bench/profile_step.py --length 32 --precision bf16
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchlib import minilm_dir, table  # first: it puts the project on sys.path

# isort: split
import common
import model
from model_step import Trainee, random_batch

GROUPS = {  # operator name prefixes -> what they are
    "matrix multiplies": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
    "dropout masks (bernoulli_)": ("aten::bernoulli_",),
    "dtype casts (copy_, to)": ("aten::copy_", "aten::_to_copy"),
    "AdamW (fused)": ("aten::_fused_adamw_",),
    "softmax + its backward": ("aten::_softmax", "aten::_softmax_backward_data"),
    "GELU + its backward": ("aten::gelu", "aten::gelu_backward"),
    "LayerNorm + its backward": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "embedding backward": ("aten::embedding_dense_backward", "aten::embedding_backward", "aten::index_put_",
                           "aten::_index_put_impl_"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="profiled steps, after 2 untimed ones")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()

    torch.manual_seed(0)
    net = model.from_pretrained(args.model or minilm_dir(), num_labels=3)
    autocast = common.autocast(torch.bfloat16 if args.precision == "bf16" else None, torch.device("cpu"))
    trainee = Trainee(net, "fused", 1e-4, autocast)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(args.batch_size, args.length, net.config.vocab_size, gen) for _ in range(args.steps + 2)]
    for b in batches[:2]:
        trainee.train_step(b)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[2:]:
            trainee.train_step(b)

    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    per_step_ms = total / 1e3 / args.steps
    print(f"our train step, batch {args.batch_size} x {args.length}, {args.precision}, "
          f"{torch.get_num_threads()} threads: {per_step_ms:.0f} ms of operator self time per step\n")
    events.sort(key=lambda e: -e.self_cpu_time_total)
    rows = [[f"`{e.key}`", e.count // args.steps, f"{e.self_cpu_time_total / 1e3 / args.steps:.1f}",
             f"{100 * e.self_cpu_time_total / total:.1f}"] for e in events[:args.top]]
    print(table(["operator", "calls/step", "ms/step", "% of step"], rows))
    print()
    rows = []
    for name, prefixes in GROUPS.items():
        t = sum(e.self_cpu_time_total for e in events if e.key in prefixes)
        rows.append([name, f"{t / 1e3 / args.steps:.1f}", f"{100 * t / total:.1f}"])
    print(table(["group", "ms/step", "% of step"], rows))


if __name__ == "__main__":
    main()
