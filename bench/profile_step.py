"""Where one training step of OUR classifier spends its time: torch.profiler over a few steps.

The same step as model_step.py (forward in train mode, cross-entropy, backward, clip, fused AdamW,
scheduler), on random batches of B x L, fp32 or under CPU bf16 autocast. Prints the operators that
take the most self CPU time and their share of the total, plus a few groups that explain the
numbers in bench/RESULTS.md: matrix multiplies, dropout's random masks, dtype casts, the optimizer.

    python bench/profile_step.py --length 32 --batch-size 64 --precision bf16
    python bench/profile_step.py --length 32 --batch-size 64 --precision bf16 --casts   # + every cast by origin

Dropout masks as train.py draws them (`--dropout-masks auto`: fast on a CPU); `torch` gives the
masks transformers draws (bernoulli_). `--casts` lists every dtype cast and copy of one step, as
the dispatcher sees them (below autocast, so autocast's own casts count), by phase (forward, loss,
backward, optimizer) and by what is cast: the profiler's `aten::copy_` count is larger, because
`_to_copy` and `clone` each call `copy_` inside.
"""
from __future__ import annotations

import argparse
import collections

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

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


class CastCounter(TorchDispatchMode):
    """Counts _to_copy / copy_ / clone calls by (phase, op, from dtype, to dtype, shape)."""

    def __init__(self):
        super().__init__()
        self.counts, self.phase = collections.Counter(), "?"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name in ("_to_copy", "copy_", "clone"):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0] if name == "copy_" else out
            self.counts[(self.phase, name, str(src.dtype)[6:], str(dst.dtype)[6:], tuple(src.shape))] += 1
        return out


def origin(key: tuple, param_shapes: set) -> str:
    """A best guess of why a cast happens, from its phase, dtypes and shape."""
    phase, name, src, dst, shape = key
    if name == "clone":
        return "contiguous copy (a permuted q/k/v or attention output)"
    if shape in param_shapes and len(shape) <= 2 and phase == "fwd" and dst == "bfloat16":
        return "autocast: fp32 weight -> bf16 (once per forward; cached within the autocast region)"
    if shape in param_shapes and phase == "bwd" and dst == "float32":
        return "backward of that cast: bf16 weight gradient -> fp32 .grad"
    if phase == "fwd" and dst == "bfloat16":
        return "autocast: fp32 activation (LayerNorm output) -> bf16 for the next matmul"
    if phase == "bwd" and src == "bfloat16" and dst == "float32":
        return "backward of an activation cast: its gradient back to fp32"
    if phase == "bwd" and dst == "bfloat16":
        return "backward of a mixed add (bf16 branch + fp32 residual): gradient to bf16"
    if phase == "loss":
        return "logits.float() for the loss"
    return "other"


def count_casts(trainee, batch: dict) -> None:
    """One step under CastCounter; prints the casts by origin and every distinct one."""
    net, counter = trainee.net, CastCounter()
    params = {tuple(p.shape) for p in net.parameters()}
    with counter:
        net.train()
        counter.phase = "fwd"
        with trainee.autocast():
            logits = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        counter.phase = "loss"
        loss = F.cross_entropy(logits.float(), batch["labels"])
        counter.phase = "bwd"
        loss.backward()
        counter.phase = "opt"
        torch.nn.utils.clip_grad_norm_(trainee.params, 1.0)
        trainee.optimizer.step()
        trainee.optimizer.zero_grad(set_to_none=True)
    by = collections.Counter()
    for k, n in counter.counts.items():
        by[(k[0], origin(k, params))] += n
    print(table(["phase", "origin", "calls/step"], [[ph, o, n] for (ph, o), n in sorted(by.items())]
                + [["all", "", sum(by.values())]]))
    print()
    rows = [[*k[:4], "x".join(map(str, k[4])), n] for k, n in sorted(counter.counts.items(), key=lambda kv: -kv[1])]
    print(table(["phase", "op", "from", "to", "shape", "calls/step"], rows))
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="profiled steps, after 2 untimed ones")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--dropout-masks", choices=model.DROPOUT_MASKS, default="auto",
                   help="as train.py's flag (auto: fast on a CPU); torch: bernoulli_, as transformers")
    p.add_argument("--casts", action="store_true", help="also list every cast of one step by origin")
    args = p.parse_args()

    torch.manual_seed(0)
    net = model.from_pretrained(args.model or minilm_dir(), num_labels=3)
    masks = model.dropout_masks(args.dropout_masks, torch.device("cpu"))
    model.set_dropout_masks(net, masks)
    autocast = common.autocast(torch.bfloat16 if args.precision == "bf16" else None, torch.device("cpu"))
    trainee = Trainee(net, "fused", 1e-4, autocast)
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(args.batch_size, args.length, net.config.vocab_size, gen) for _ in range(args.steps + 2)]
    for b in batches[:2]:
        trainee.train_step(b)
    if args.casts:
        count_casts(trainee, batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[2:]:
            trainee.train_step(b)

    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    per_step_ms = total / 1e3 / args.steps
    print(f"our train step, batch {args.batch_size} x {args.length}, {args.precision}, "
          f"{masks} dropout masks, {torch.get_num_threads()} threads: {per_step_ms:.0f} ms of operator self time per step\n")
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
