"""How much GPU memory fine-tuning takes, and how much adapters save: derived, then measured.

The experiment report this project reproduces says fine-tuning a 3B model needs 30 GB (6 GB fp16
weights + 6 GB gradients + 12 GB Adam + 6 GB assumed activations) and that PEFT saves most of it,
assuming activations do not change. Mixed-precision training does not work that way: torch.autocast
keeps fp32 weights (the master copy), fp32 gradients and two fp32 Adam moments, 16 bytes per
parameter before activations, and frozen weights DO shrink the activations autograd keeps.

- `estimate(cfg, batch_size, seq_len, ...)`: a `Breakdown` in bytes. The activation term is what
  OUR encoder (model.py, adapter.py) saves for backward, derived tensor by tensor in
  `_encoder_saved`; the comments there say which op keeps which tensor and why.
- `measure(cfg, batch_size, seq_len, ...)`: one real forward + backward + optimizer step that counts
  what autograd saves (`saved_tensors_hooks`, each storage once) and the bytes of parameters,
  gradients and optimizer state afterwards. On the meta device a bert-large (or 3B) shaped model
  costs no memory; on CUDA it also reports `torch.cuda.max_memory_allocated`.
- `report_numbers(params)`: the report's two answers under its own assumptions.

Precision modes (`PRECISIONS`), train.py's names with train.py's meaning: "fp32"; "bf16" / "fp16" =
torch.autocast: fp32 parameters are the master weights, autocast casts each Linear weight to 16 bits on
use and autograd keeps that copy for backward (the `weights` line); and one more, "pure-bf16" = the whole
model in bf16, no master copy (train.py has no such mode). GB means 1e9 bytes throughout, as in the
report.

Checked (tests/test_memory.py): on meta and CPU the derived activations equal what autograd saves,
byte for byte, for BERT and RoBERTa, full and adapters, fp32 / pure-bf16 / AMP, with and without
checkpointing. Those devices run the math attention path and dropout as a multiply by a mask in
the activation dtype; the CUDA kernels (flash / memory-efficient SDPA, bool dropout masks) are
derived from the same reading of PyTorch but not measured here: `measure(device="cuda")` does that.

CLI:  python memory.py --params 3e9            # the report's numbers next to the standard accounting
      python memory.py --model DIR_OR_HUB_ID --batch-size 64 --max-length 128 [--bottleneck 64]
The flags are train.py's: --max-length (every example padded to it), --precision, --bottleneck N,
--adapter-placement {houlsby,pfeiffer}, --freeze-layernorm, --gradient-checkpointing; --adapter is
accepted (the adapters column is always shown). Old spellings are one-line errors naming the new flag.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import adapter
import hub
import model
from common import Renamed, UsageError, autocast

GB = 1e9  # the report's unit: 3e9 fp16 weights = 6 GB


@dataclass(frozen=True)
class Precision:
    param_bytes: int  # parameters (and so gradients and optimizer moments) as stored
    compute_bytes: int  # matmul inputs and outputs
    residual_bytes: int  # residual stream and LayerNorm inputs: autocast promotes `half + fp32` to fp32
    autocast: torch.dtype | None


PRECISIONS = {
    "fp32": Precision(4, 4, 4, None),
    "bf16": Precision(4, 2, 4, torch.bfloat16),
    "fp16": Precision(4, 2, 4, torch.float16),
    "pure-bf16": Precision(2, 2, 2, None),
}
OPTIMIZERS = ("adamw", "sgd")  # sgd means SGD with momentum (plain SGD keeps no state)
ATTENTION = ("flash", "math")  # "flash": flash or memory-efficient SDPA kernels, which save the same tensors
DEVICES = ("cuda", "cpu", "meta")


@dataclass
class Breakdown:
    """Bytes per kind of memory. `weights` are the weights the matmuls use (the fp32 parameters,
    the bf16 parameters, or under AMP the 16-bit copies autograd keeps); `master_weights` are fp32
    parameters kept beside those copies (AMP only)."""

    weights: int
    master_weights: int
    gradients: int
    optimizer: int
    activations: int  # saved for backward, held from the forward until backward frees them
    transient: int = 0  # the largest buffer that lives only inside one op or its backward
    transient_what: str = ""
    params: int = 0
    trainable: int = 0
    terms: dict = field(default_factory=dict)  # activations by kind (estimate only), for the curious
    peak_allocated: int | None = None  # torch.cuda.max_memory_allocated (measure on CUDA only)

    @property
    def total(self) -> int:
        """An upper bound on the steady-state peak, without device overheads (see `OVERHEAD_NOTE`)."""
        return self.weights + self.master_weights + self.gradients + self.optimizer + self.activations + self.transient


OVERHEAD_NOTE = ("not included: CUDA context (~0.3-1 GB, depends on the GPU and the kernels loaded) and "
                 "allocator fragmentation (reserved minus allocated, workload-dependent)")


# --------------------------------------------------------------------------- checking inputs


def _positive(**sizes) -> None:
    for name, value in sizes.items():
        if value is not None and (not isinstance(value, (int, float)) or value <= 0 or value != int(value)):
            raise UsageError(f"{name} must be a positive integer, got {value!r}")


def _choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _check(cfg, batch_size, seq_len, num_labels, precision, optimizer, bottleneck, placement, lora=None) -> None:
    _positive(batch_size=batch_size, seq_len=seq_len, **{"adapter (the bottleneck size)": bottleneck})
    if bottleneck is not None and lora is not None:
        raise UsageError("adapters and LoRA are two methods: give adapter= or lora=, not both")
    if lora is not None:
        _positive(**{"LoRA rank r": lora.r})
    if num_labels < 2:
        raise UsageError(f"num_labels must be at least 2, got {num_labels}")
    _choice("precision", precision, PRECISIONS)
    _choice("optimizer", optimizer, OPTIMIZERS)
    _choice("placement", placement, adapter.PLACEMENTS)
    if seq_len > cfg.max_length:
        raise UsageError(f"seq_len {seq_len} is longer than the model's position table allows ({cfg.max_length})")


# --------------------------------------------------------------------------- configs


def load_config(name_or_path: str) -> model.Config:
    """config.json of a local directory, a Hub id or an alias, read the way model.from_pretrained reads it."""
    try:
        return model.load_config(name_or_path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}\n(memory.py needs only config.json: pass a directory holding it, "
                                "or use --params N for a generic shape)") from None


def generic_config(params: float, hidden: int = 2560, layers: int | None = None, heads: int | None = None,
                   vocab: int = 50265, ffn: int | None = None, max_positions: int = 512) -> model.Config:
    """A BERT-style encoder of about `params` parameters, for `--params N` (the report names no model).

    Defaults: hidden 2560, FFN 4x hidden, 128-wide heads, roberta's vocabulary; the number of layers
    is solved from N (36 for 3e9, i.e. 2.97e9 parameters; `estimate(params=N)` bills exactly N).
    """
    _positive(params=round(params), hidden=hidden, layers=layers, heads=heads, vocab=vocab, ffn=ffn)
    heads = heads or max(1, hidden // 128)
    if hidden % heads:
        raise UsageError(f"hidden {hidden} is not a multiple of heads {heads}")
    cfg = model.Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=0, num_attention_heads=heads,
                          intermediate_size=ffn or 4 * hidden, max_position_embeddings=max_positions)
    if layers is None:
        fixed = count_parameters(cfg).total
        per_layer = count_parameters(replace(cfg, num_hidden_layers=1)).total - fixed
        layers = max(1, round((params - fixed) / per_layer))
    return replace(cfg, num_hidden_layers=layers)


# --------------------------------------------------------------------------- parameters


@dataclass
class ParamCount:
    total: int
    trainable: int
    trainable_tensors: int  # AdamW keeps one 4-byte step counter per tensor


def count_parameters(cfg: model.Config, num_labels: int = 3, bottleneck: int | None = None,
                     placement: str = "houlsby", freeze_layernorm: bool = False,
                     lora: adapter.LoRAConfig | None = None) -> ParamCount:
    """Closed form of `Classifier(cfg, num_labels)` (+ `adapter.add_adapters` or `adapter.add_lora`);
    tests check it exactly."""
    C, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    ln = 2 * C  # weight + bias
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * C
    layer = (3 * C * C + 3 * C) + (C * C + C) + (C * F + F) + (F * C + C)  # qkv, attn out, FFN in, FFN out
    head = (C * C + C) + (C * num_labels + num_labels)  # BERT pooler + classifier, or RoBERTa dense + out_proj
    n_ln = 1 + 2 * L
    total = embeddings + L * layer + n_ln * ln + head
    if lora is not None:  # A (r x C) and B (C x r) per target and layer; the head; LayerNorms frozen
        n_lora = L * len(lora.targets)
        return ParamCount(total + n_lora * 2 * C * lora.r, n_lora * 2 * C * lora.r + head, 2 * n_lora + 4)
    if bottleneck is None:
        return ParamCount(total, total, 3 + 8 * L + 2 * n_ln + 4)  # embeddings, Linears, LayerNorms, head
    n_adapters = L * (2 if placement == "houlsby" else 1)
    adapters = n_adapters * (2 * C * bottleneck + bottleneck + C)  # down, up with biases
    trainable = adapters + head + (0 if freeze_layernorm else n_ln * ln)
    tensors = 4 * n_adapters + 4 + (0 if freeze_layernorm else 2 * n_ln)
    return ParamCount(total + adapters, trainable, tensors)


# --------------------------------------------------------------------------- what autograd saves: the derivation


@dataclass
class _Shape:
    """Sizes and byte widths one training forward needs; N = B * T tokens."""

    cfg: model.Config
    B: int
    T: int
    num_labels: int
    prec: Precision
    bottleneck: int | None
    placement: str
    attention: str
    device: str
    lora: adapter.LoRAConfig | None = None

    @property
    def N(self) -> int:
        return self.B * self.T

    @property
    def stat_bytes(self) -> int:
        """LayerNorm's saved mean and rstd: fp32 on CUDA and meta; CPU keeps them in a bf16 input's dtype."""
        return 2 if self.device == "cpu" and self.prec.residual_bytes == 2 else 4

    def mask(self, elt: int) -> int:
        """Bytes per element of a dropout mask. CUDA's fused dropout keeps a bool mask; elsewhere
        (CPU, meta) dropout is `input * (bernoulli / (1 - p))` and keeps that scaled mask in the input's dtype."""
        return 1 if self.device == "cuda" else elt


def _attention_saved(x: _Shape) -> int:
    """What scaled_dot_product_attention keeps for backward in training."""
    c, N, BHTT = x.cfg, x.N, x.B * x.cfg.num_attention_heads * x.T * x.T
    if x.attention == "flash":
        # flash / memory-efficient kernels: q, k, v (views of the one qkv output), the output, the
        # padding mask as an additive (B, 1, 1, T) bias and the fp32 logsumexp (B, H, T); dropout is
        # replayed from the RNG seed, so there is no mask and no T x T tensor
        s = x.prec.compute_bytes
        return 4 * N * c.hidden_size * s + x.B * x.T * s + x.B * c.num_attention_heads * x.T * 4
    # math path (meta always, CPU with dropout): it upcasts q, k, v to fp32, scales q and k (new tensors),
    # copies v to (B*H, T, hs), and keeps the softmax output; with dropout also the mask and the dropped probs
    saved = 3 * N * c.hidden_size * 4 + BHTT * 4
    if c.attention_probs_dropout_prob > 0:
        saved += BHTT * (x.mask(4) + 4)
    return saved


def _adapter_saved(x: _Shape, saved: Counter, live: bool) -> int:
    """One Houlsby adapter, x + up(gelu(down(x))); returns the Linear weight elements kept."""
    C, b, s = x.cfg.hidden_size, x.bottleneck, x.prec.compute_bytes
    saved["adapters"] += x.N * C * s + 2 * x.N * b * s  # down's input, GELU's input, up's input
    return 2 * C * b if live else C * b  # down's weight is needed only if its input wants a gradient


def _lora_saved(x: _Shape, saved: Counter, live: bool) -> int:
    """The LoRAs of one layer's qkv, (alpha / r) B A dropout(x) each; returns the Linear weight elements kept."""
    C, N, n, r = x.cfg.hidden_size, x.N, len(x.lora.targets), x.lora.r
    s, res = x.prec.compute_bytes, x.prec.residual_bytes
    if x.lora.dropout > 0:  # each LoRA drops its own copy of x: A's input (under AMP a 16-bit cast), and
        saved["dropout masks"] += n * N * C * x.mask(res) if live else 0  # a mask, if x wants a gradient
        saved["lora"] += n * N * C * s
    else:  # dropout(p=0) returns x itself: A keeps the layer input, once for all targets unless AMP casts it
        saved["lora"] += N * C * s if s == res else n * N * C * s
    saved["lora"] += n * N * r * s  # B's input
    return n * (C * r + (r * C if live else 0))  # B's weight always; A's only if its input wants a gradient


def _layer_saved(x: _Shape, live: bool) -> tuple[Counter, int]:
    """One encoder layer: (bytes by kind, Linear weight elements autograd keeps).

    `live`: whether the layer's input requires grad. It always does, except in layer 0 when the
    embeddings and their LayerNorm are frozen (adapters with freeze_layernorm): autograd records
    nothing until the first adapter.
    """
    c, N, s, r = x.cfg, x.N, x.prec.compute_bytes, x.prec.residual_bytes
    C, F = c.hidden_size, c.intermediate_size
    full, dropout = x.bottleneck is None and x.lora is None, c.hidden_dropout_prob > 0
    saved, w = Counter(), 0
    layernorm = N * C * r + 2 * N * x.stat_bytes  # input, mean and rstd (B, T, 1)
    if x.lora is not None:  # the LoRA's A and B want gradients: from here on autograd records the layer
        w += _lora_saved(x, saved, live) + (0 if live else -3 * C * C)  # frozen qkv: its weight only if x is live
        live = True
    if live:
        # a Linear keeps its input only to compute its weight's gradient: frozen Linears keep none
        # (autograd saves mm's inputs only for the gradients it will compute; test_frozen_linear_keeps_no_input),
        # but always keep the weight (under AMP: its 16-bit copy) for the input's gradient
        if full:
            saved["linear inputs"] += N * C * s  # qkv reads x (under AMP a 16-bit copy of the fp32 stream)
        saved["attention"] += _attention_saved(x)
        if full and x.attention == "math":
            saved["linear inputs"] += N * C * s  # attention.output.dense reads a (B, T, C) copy of SDPA's output
        w += 3 * C * C + C * C
        saved["dropout masks"] += N * C * x.mask(s) if dropout else 0
    if x.bottleneck and x.placement == "houlsby":
        w += _adapter_saved(x, saved, live)
        live = True
    if live:
        saved["layernorm"] += layernorm  # under AMP, half + fp32 residual -> fp32
        saved["linear inputs"] += (N * C * s + N * F * s) if full else 0  # FFN in (cast copy), FFN out
        saved["gelu"] += N * F * s
        w += 2 * C * F
        saved["dropout masks"] += N * C * x.mask(s) if dropout else 0
    if x.bottleneck:
        w += _adapter_saved(x, saved, live)
    saved["layernorm"] += layernorm
    return saved, w


def _head_saved(x: _Shape) -> tuple[Counter, int]:
    """Classification head and loss (train.py: cross_entropy(logits.float()) outside autocast)."""
    c, B, s, r = x.cfg, x.B, x.prec.compute_bytes, x.prec.residual_bytes
    C, L, BC = c.hidden_size, x.num_labels, x.B * c.hidden_size
    p = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
    saved = Counter()
    # the first dense reads h[:, 0], a VIEW of the last hidden state: autograd then keeps all of h
    # alive (N x C), unless AMP made a (B, C) copy or RoBERTa's dropout came first
    first_input = BC * s if (s != r or (c.roberta and p > 0)) else x.N * C * r
    if c.roberta and p > 0:
        saved["dropout masks"] += BC * x.mask(r)  # dropout on <s>, in the residual dtype
    saved["head"] += first_input + BC * s  # dense input, tanh output
    if p > 0:
        saved["dropout masks"] += BC * x.mask(s)
        saved["head"] += BC * s  # the last Linear reads the dropped tanh output
    saved["head"] += B * L * 4 + B * 8 + 4  # log_softmax output, targets, the loss's total weight
    return saved, C * C + C * L


def _encoder_saved(x: _Shape, freeze_layernorm: bool, checkpointing: bool) -> tuple[Counter, int, dict]:
    """(activation bytes by kind, Linear weight elements kept, candidate transient buffers)."""
    c, N, s, r = x.cfg, x.N, x.prec.compute_bytes, x.prec.residual_bytes
    full = x.bottleneck is None and x.lora is None
    saved = Counter()
    if full:  # embedding backward keeps the indices: word and token-type ids (int64), RoBERTa's int32
        saved["indices"] += 2 * N * 8 + (N * 4 if c.roberta else x.T * 8)  # positions, BERT's arange(T) expanded
    live = full or (x.lora is None and not freeze_layernorm)  # LoRA freezes the LayerNorms too
    if live:
        saved["layernorm"] += N * c.hidden_size * r + 2 * N * x.stat_bytes
        saved["dropout masks"] += N * c.hidden_size * x.mask(r) if c.hidden_dropout_prob > 0 else 0
    first, w_first = _layer_saved(x, live)
    rest, w_rest = _layer_saved(x, True)
    head, w_head = _head_saved(x)
    L = c.num_hidden_layers
    if checkpointing:  # each layer keeps only its input; backward recomputes one layer at a time
        saved["layer inputs (checkpointing)"] += L * N * c.hidden_size * r + N  # + the bool attention mask, shared
        w = w_head
    else:
        saved += first + Counter({k: v * (L - 1) for k, v in rest.items()})
        w = w_first + (L - 1) * w_rest + w_head
    saved += head
    amp = x.prec.autocast is not None
    transients = {
        "FFN gradients": 2 * N * c.intermediate_size * s,  # GELU's output and input gradients
        # the math path's score gradients: dprobs and dscores, (B, H, T, T) each, in fp32
        "attention scores (math)": 2 * x.B * c.num_attention_heads * x.T * x.T * 4 if x.attention == "math" else 0,
    }
    if checkpointing:
        transients["one layer recomputed"] = sum(rest.values()) + (2 * w_rest if amp else 0)
    return saved, w, transients


# --------------------------------------------------------------------------- estimate


def estimate(cfg: model.Config | str, batch_size: int, seq_len: int, *, num_labels: int = 3,
             precision: str = "bf16", optimizer: str = "adamw", bottleneck: int | None = None,
             placement: str = "houlsby", freeze_layernorm: bool = False, checkpointing: bool = False,
             attention: str | None = None, device: str = "cuda", params: float | None = None,
             lora: adapter.LoRAConfig | None = None) -> Breakdown:
    """Memory of one training step, in bytes, by kind.

    `cfg`: a model.Config, or a local directory / Hub id / alias whose config.json to read.
    `adapter`: bottleneck size; `lora`: an adapter.LoRAConfig (neither: full fine-tuning). `device` picks the kernels: dropout masks
    are bool on "cuda" and in the activation dtype on "cpu"/"meta"; `attention` defaults to
    "flash" on CUDA and "math" elsewhere (what CPU and meta run when attention dropout is on).
    `params`: bill exactly this many parameters (for `--params N`); the difference to `cfg`'s own
    count is treated as encoder Linear weights (trainable under full fine-tuning, frozen with adapters).
    """
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    _check(cfg, batch_size, seq_len, num_labels, precision, optimizer, bottleneck, placement, lora)
    _choice("device", device, DEVICES)
    if attention is None:  # what PyTorch picks in training: CPU runs its flash kernel only without dropout
        no_dropout = cfg.attention_probs_dropout_prob == 0
        attention = "flash" if device == "cuda" or (device == "cpu" and no_dropout) else "math"
    _choice("attention", attention, ATTENTION)
    prec = PRECISIONS[precision]
    x = _Shape(cfg, batch_size, seq_len, num_labels, prec, bottleneck, placement, attention, device, lora)
    count = count_parameters(cfg, num_labels, bottleneck, placement, freeze_layernorm, lora)
    saved, linear_weights, transients = _encoder_saved(x, freeze_layernorm, checkpointing)
    if params is not None:
        _positive(params=round(params))
        extra = round(params) - count.total
        if abs(extra) > 0.1 * params:  # the activations come from cfg: it must be a model of about that size
            raise UsageError(f"the shape has {count.total:.3g} parameters, more than 10% away from "
                             f"params={params:.3g}; choose layers/hidden near it (generic_config solves the layers)")
        count = ParamCount(count.total + extra, count.trainable + (extra if bottleneck is None and lora is None else 0),
                           count.trainable_tensors)
        linear_weights += 0 if checkpointing else extra
    amp = prec.autocast is not None
    moments = 2 if optimizer == "adamw" else 1  # AdamW: exp_avg, exp_avg_sq; SGD: momentum buffer
    step_counters = 4 * count.trainable_tensors if optimizer == "adamw" else 0  # one fp32 scalar per tensor
    what = max(transients, key=transients.get)
    return Breakdown(
        weights=2 * linear_weights if amp else prec.param_bytes * count.total,
        master_weights=4 * count.total if amp else 0,
        gradients=prec.param_bytes * count.trainable,
        optimizer=moments * prec.param_bytes * count.trainable + step_counters,
        activations=sum(saved.values()),
        transient=transients[what], transient_what=what,
        params=count.total, trainable=count.trainable, terms=dict(saved),
    )


# --------------------------------------------------------------------------- measure


class _SavedTensors(contextlib.ExitStack):
    """Counts the storages autograd saves for backward, each once, split into parameters,
    16-bit copies of parameters (autocast's casts) and activations.

    Storages are told apart by the identity of their Python object: `t.untyped_storage()` returns
    the same object for every view of one storage while it is alive (we keep it alive), which works
    on meta tensors too, where there are no data pointers to compare.
    """

    def __init__(self, params: list[torch.Tensor]):
        super().__init__()
        self.params = {id(p.untyped_storage()): p.untyped_storage() for p in params}
        self.copies, self.seen = {}, {}

    def __enter__(self):
        super().__enter__()
        self.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
        self.enter_context(_CastLog(self))
        return self

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if id(st) not in self.params:
            self.seen[id(st)] = st
        return t

    def bytes(self) -> tuple[int, int]:
        """(activation bytes, weight-copy bytes)."""
        copies = sum(st.nbytes() for k, st in self.seen.items() if k in self.copies)
        return sum(st.nbytes() for st in self.seen.values()) - copies, copies


class _CastLog(TorchDispatchMode):
    """Notes every storage made by casting a parameter. Autocast casts in C++, below anything Python
    can wrap except a dispatch mode (the mechanism torch.utils.flop_counter uses too)."""

    def __init__(self, counter: _SavedTensors):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and id(args[0].untyped_storage()) in self.counter.params:
            self.counter.copies[id(out.untyped_storage())] = out.untyped_storage()
        return out


def _build(cfg, num_labels, prec, bottleneck, placement, freeze_layernorm, checkpointing, device, lora) -> nn.Module:
    with device:
        net = model.Classifier(cfg, num_labels)
    if prec.param_bytes == 2:
        net.to(torch.bfloat16)
    if bottleneck:
        adapter.add_adapters(net, bottleneck, placement, freeze_layernorm, verbose=False)
    if lora is not None:
        adapter.add_lora(net, lora.r, lora.alpha, lora.dropout, lora.targets, verbose=False)
    net.encoder.gradient_checkpointing = checkpointing  # train.py's --gradient-checkpointing, the same code
    return net.train()


def measure(cfg: model.Config | str, batch_size: int, seq_len: int, *, num_labels: int = 3,
            precision: str = "fp32", optimizer: str = "adamw", bottleneck: int | None = None,
            placement: str = "houlsby", freeze_layernorm: bool = False, checkpointing: bool = False,
            device: str = "meta", step: bool = True, lora: adapter.LoRAConfig | None = None) -> Breakdown:
    """One real training step on `device`; the same fields as `estimate`, counted from real objects.

    activations: storages saved for backward that are not parameters (each counted once).
    weights/master_weights: parameter bytes, or under AMP the saved 16-bit copies / the fp32 parameters.
    gradients, optimizer: bytes of `.grad` and of every optimizer state tensor after the step.
    On CUDA, `peak_allocated` is torch.cuda.max_memory_allocated over the step. Autocast has no meta
    backend: measure bf16/fp16 on "cpu" (small shapes) or "cuda". `step=False` stops after the forward
    (activations and weights only; gradients and optimizer are then reported as 0).
    """
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    _check(cfg, batch_size, seq_len, num_labels, precision, optimizer, bottleneck, placement, lora)
    prec, dev = PRECISIONS[precision], torch.device(device)
    if prec.autocast is not None and dev.type == "meta":
        raise UsageError(f"{precision} cannot be measured on the meta device (autocast has no meta backend); "
                         "use device='cpu' with a small config, or 'cuda'")
    net = _build(cfg, num_labels, prec, bottleneck, placement, freeze_layernorm, checkpointing, dev, lora)
    params = list(net.parameters())
    ids = torch.randint(cfg.pad_token_id + 1, cfg.vocab_size, (batch_size, seq_len), device=dev)  # no padding
    labels = torch.randint(0, num_labels, (batch_size,), device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with _SavedTensors(params) as saved:
        with autocast(prec.autocast, dev)():  # train.py's own autocast context
            logits = net(ids, torch.ones_like(ids))
        loss = F.cross_entropy(logits.float(), labels)  # as train.py: the loss in fp32, outside autocast
    activations, copies = saved.bytes()
    trainable = [p for p in params if p.requires_grad]
    opt = (torch.optim.AdamW(trainable, lr=1e-5) if optimizer == "adamw"
           else torch.optim.SGD(trainable, lr=1e-5, momentum=0.9))
    if step:
        loss.backward()
        opt.step()
    param_bytes = sum(p.nbytes for p in params)
    amp = prec.autocast is not None
    return Breakdown(
        weights=copies if amp else param_bytes,
        master_weights=param_bytes if amp else 0,
        gradients=sum(p.grad.nbytes for p in params if p.grad is not None),
        optimizer=sum(t.nbytes for state in opt.state.values() for t in state.values() if torch.is_tensor(t)),
        activations=activations,
        params=sum(p.numel() for p in params), trainable=sum(p.numel() for p in trainable),
        peak_allocated=torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
    )


# --------------------------------------------------------------------------- the report's numbers


def report_numbers(params: float = 3e9, trainable_share: float = 0.01, activations: float = 6 * GB) -> dict:
    """The report's accounting under its own assumptions, in bytes.

    Full fine-tuning: fp16 weights 2 B/param + fp16 gradients 2 + Adam states 4 (two fp16 moments)
    + activations assumed constant: 6 + 6 + 12 + 6 = 30 GB for 3e9 parameters (its 6 GB of fp16
    weights fixes GB = 1e9; with 2^30 the same sums give 28.4).

    PEFT, "12.12 GB, about 60%": 12.12 GB *saved* would be 40% of 30, not 60%. The one reading in
    which 30, 12.12 and 60% all agree is that 12.12 GB is what PEFT *needs*: weights 6 + activations 6
    (unchanged, as assumed) + the Adam states of a 1% trainable share, 12 x 1% = 0.12; it saves
    30 - 12.12 = 17.88 GB = 59.6%. That sum leaves out the trainable share's gradients (0.06 GB;
    with them it would be 12.18). Reading 12.12 as a saving needs 18 x (1 - f) = 12.12, a trainable
    share f of 32.7%, which nothing in the report suggests.
    """
    weights, grads, adam = 2 * params, 2 * params, 4 * params
    full = weights + grads + adam + activations
    peft = weights + activations + trainable_share * adam
    return {"weights": weights, "gradients": grads, "optimizer": adam, "activations": activations,
            "full": full, "peft": peft, "saved": full - peft, "saved_share": (full - peft) / full}


# --------------------------------------------------------------------------- tables


def _gb(value) -> str:
    return "-" if value is None else f"{value / GB:.2f}"


def _saving(value: float) -> str:
    """A saving in GB; one that rounds to zero shows its size and sign (adapters add a few weights)
    rather than "-0.00"."""
    return f"{value / GB:.3f}" if value and round(value / GB, 2) == 0 else _gb(value)


def _count(n: float) -> str:
    """A parameter count in words a reader compares with the report: "3 billion", "124.6 million"."""
    return f"{n / 1e9:.3g} billion" if n >= 1e9 else f"{n / 1e6:.1f} million"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%"


def _table(header: list[str], rows: list[list]) -> str:
    """Rows of (label, values...): numbers are bytes, shown in GB; strings are shown as they are."""
    cells = [header] + [[r[0]] + [v if isinstance(v, str) else _gb(v) for v in r[1:]] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


ROWS = ("weights", "master_weights", "gradients", "optimizer", "activations", "transient", "total")


def _labels(precision: str, optimizer: str) -> dict[str, str]:
    amp = PRECISIONS[precision].autocast is not None
    return {"weights": "weights (16-bit copies, autocast)" if amp else f"weights ({precision})",
            "master_weights": "master weights (fp32 params)" if amp else "master weights",
            "gradients": "gradients",
            "optimizer": "optimizer (AdamW)" if optimizer == "adamw" else "optimizer (SGD momentum)",
            "activations": "activations (saved)", "transient": "largest transient", "total": "total"}


def micro_batch(batch_size: int, seq_len: int, max_tokens: int = 0) -> int:
    """Examples per micro-batch under train.py's --max-tokens (data.shard_batch): as many of seq_len tokens as fit
    in max_tokens, at least one, at most batch_size (0: no budget). Activations are those of one micro-batch;
    gradients accumulate in place, so the step's peak is the micro-batch's."""
    return min(batch_size, max(max_tokens // seq_len, 1)) if max_tokens else batch_size


def _settings(args) -> str:
    budget = (f" (micro-batch {micro_batch(args.batch_size, args.max_length, args.max_tokens)} under --max-tokens "
              f"{args.max_tokens})") if args.max_tokens else ""
    return (f"{args.precision}, {args.optimizer}, batch {args.batch_size}{budget} x {args.max_length} tokens, "
            f"{args.attention or 'flash'} attention" + (", activation checkpointing" if args.gradient_checkpointing else ""))


def _full_and_adapters(cfg: model.Config, args, params: float | None = None) -> tuple[Breakdown, Breakdown]:
    kw = dict(num_labels=args.num_labels, precision=args.precision, optimizer=args.optimizer,
              checkpointing=args.gradient_checkpointing, attention=args.attention, params=params)
    b = micro_batch(args.batch_size, args.max_length, args.max_tokens)
    return (estimate(cfg, b, args.max_length, **kw),
            estimate(cfg, b, args.max_length, bottleneck=args.bottleneck, placement=args.adapter_placement,
                     freeze_layernorm=args.freeze_layernorm, **kw))


def _why(args, full: Breakdown, peft: Breakdown, rep: dict) -> list[str]:
    """One line per row of the side-by-side table: why the standard accounting differs from the report."""
    amp, pb = PRECISIONS[args.precision].autocast is not None, PRECISIONS[args.precision].param_bytes
    saved = full.total - peft.total
    return [
        "Why the columns differ:",
        "  weights:        " + ("autocast keeps a 16-bit copy of every Linear weight, frozen or not, for backward; "
                                "embeddings are used in fp32" if amp else f"the parameters themselves, {pb} B/param"),
        "  master weights: " + ("the fp32 parameters autocast trains are the master copy, 4 B/param; the report "
                                "has none" if amp else "none in this precision mode"),
        (f"  gradients:      {pb} B per trainable parameter (the parameters' dtype), not 2; adapters train "
         f"{_share(peft.trainable, peft.params)} of the parameters"),
        "  optimizer:      " + (f"AdamW keeps two moments in the parameters' dtype, {2 * pb} B/param (+ a 4-byte "
                                "step per tensor), not 4" if args.optimizer == "adamw"
                                else f"SGD keeps one momentum buffer, {pb} B/param"),
        (f"  activations:    derived for {micro_batch(args.batch_size, args.max_length, args.max_tokens)} x "
         f"{args.max_length} tokens, not assumed; frozen Linears keep "
         f"no input for backward, so adapters keep {_share(full.activations - peft.activations, full.activations)} "
         "fewer"),
        (f"  saving:         {_gb(saved)} GB = {_share(saved, full.total)} of {_gb(full.total)} GB, against the "
         f"report's {_gb(rep['saved'])} GB of {_gb(rep['full'])} GB")]


def compare_with_report(args) -> str:
    """`--params N`: the report's two answers under its assumptions, then the standard accounting."""
    n, rep = args.params, report_numbers(args.params)
    cfg = generic_config(n, args.hidden, args.layers, args.heads, args.vocab, args.ffn, max(512, args.max_length))
    full, peft = _full_and_adapters(cfg, args, params=n)
    report_full = {k: rep[k] for k in ("weights", "gradients", "optimizer", "activations")} | {"total": rep["full"]}
    report_peft = {"weights": rep["weights"], "optimizer": rep["peft"] - rep["weights"] - rep["activations"],
                   "activations": rep["activations"], "total": rep["peft"]}
    labels = _labels(args.precision, args.optimizer)
    labels["transient"] += f" ({full.transient_what})"
    rows = [[labels[k], report_full.get(k), getattr(full, k), report_peft.get(k), getattr(peft, k)] for k in ROWS]
    return "\n".join([
        f"The report's accounting of fine-tuning {_count(n)} parameters (GB = 1e9 bytes, as in the report):",
        _table(["", "GB"], [["fp16 weights, 2 B/param", rep["weights"]],
                           ["fp16 gradients, 2 B/param", rep["gradients"]],
                           ["Adam states, 4 B/param", rep["optimizer"]],
                           ["activations (assumed)", rep["activations"]],
                           ["full fine-tuning", rep["full"]],
                           ["PEFT = weights + activations + 1% of Adam", rep["peft"]],
                           ["saved", rep["saved"]]]),
        (f"  PEFT saves {_gb(rep['saved'])} GB = {_share(rep['saved'], rep['full'])}, the report's \"about 60%\": "
         f"its {_gb(rep['peft'])} GB is what PEFT needs, not what it saves (the only reading in which its "
         f"{_gb(rep['full'])} GB, {_gb(rep['peft'])} GB and 60% agree)"),
        "",
        (f"Standard accounting: {_settings(args)}; an encoder of {cfg.num_hidden_layers} layers x {cfg.hidden_size} "
         f"hidden, {cfg.num_attention_heads} heads, FFN {cfg.intermediate_size}, vocab {cfg.vocab_size} "
         f"({_count(count_parameters(cfg).total)} parameters; the weight, gradient and optimizer rows count "
         f"the {_count(n)} of --params):"),
        _table(["", "report full", "full", "report PEFT", f"adapters-{args.bottleneck}"], rows),
        f"  device overhead: {OVERHEAD_NOTE}",
        "", *_why(args, full, peft, rep)])


def compare_full_vs_adapters(args) -> str:
    """`--model NAME`: the breakdown for full fine-tuning and adapters, and the saving."""
    cfg = load_config(args.model)
    full, peft = _full_and_adapters(cfg, args)
    labels = _labels(args.precision, args.optimizer)
    labels["transient"] += f" ({full.transient_what})"
    rows = [[labels[k], getattr(full, k), getattr(peft, k), _saving(getattr(full, k) - getattr(peft, k))]
            for k in ROWS]
    rows.append(["trainable parameters", f"{full.trainable / 1e6:.1f}M", f"{peft.trainable / 1e6:.2f}M",
                 _share(peft.trainable, peft.params)])
    saved = full.total - peft.total
    return "\n".join([
        (f"{args.model}: {cfg.model_type}, {cfg.num_hidden_layers} layers x {cfg.hidden_size} hidden, "
         f"{full.params / 1e6:.1f}M parameters; {_settings(args)} (GB = 1e9 bytes)"),
        _table(["", "full", f"adapters-{args.bottleneck}", "saving"], rows),
        (f"  adapters save {_gb(saved)} GB = {_share(saved, full.total)} of the total; activations alone "
         f"{_share(full.activations - peft.activations, full.activations)}"),
        f"  device overhead: {OVERHEAD_NOTE}"])


def method_breakdowns(cfg: model.Config, batch_size: int, seq_len: int, bottleneck: int = 64,
                      lora: adapter.LoRAConfig | None = None, **kw) -> dict[str, Breakdown]:
    """`estimate` for full fine-tuning, Houlsby and Pfeiffer adapters and LoRA, each without and with
    activation checkpointing; keys like "lora r8" and "lora r8 + checkpointing". `kw` goes to estimate."""
    lora = lora or adapter.LoRAConfig()
    methods = {"full": {}, f"houlsby-{bottleneck}": {"bottleneck": bottleneck},
               f"pfeiffer-{bottleneck}": {"bottleneck": bottleneck, "placement": "pfeiffer"}, f"lora r{lora.r}": {"lora": lora}}
    return {name + (" + checkpointing" if ckpt else ""): estimate(cfg, batch_size, seq_len, checkpointing=ckpt, **m, **kw)
            for ckpt in (False, True) for name, m in methods.items()}


def compare_methods(args) -> str:
    """`--methods`: every method side by side, with and without activation checkpointing, and what the
    report's PEFT answer leaves out."""
    lora = adapter.LoRAConfig(r=args.lora_r)
    if args.params is not None:
        cfg = generic_config(args.params, args.hidden, args.layers, args.heads, args.vocab, args.ffn,
                             max(512, args.max_length))
        what = f"an encoder of {_count(args.params)} parameters (the report's 3B question)"
    else:
        cfg, what = load_config(args.model), args.model
    rows = method_breakdowns(cfg, args.batch_size, args.max_length, args.bottleneck, lora, num_labels=args.num_labels,
                             precision=args.precision, optimizer=args.optimizer, attention=args.attention,
                             params=args.params)
    amp = PRECISIONS[args.precision].autocast is not None
    # under autocast `weights` are the 16-bit copies backward keeps (checkpointing recomputes them instead) and
    # `master_weights` the fp32 parameters; without it, `weights` are the parameters themselves
    table = [[name, f"{b.trainable / 1e6:.2f}M", b.master_weights if amp else b.weights, b.weights if amp else 0,
              b.gradients, b.optimizer, b.activations, b.transient, b.total] for name, b in rows.items()]
    full, peft, peft_ckpt = rows["full"], rows[f"lora r{lora.r}"], rows[f"lora r{lora.r} + checkpointing"]
    state = lambda b: b.gradients + b.optimizer
    return "\n".join([
        f"{what}: {_settings(args)} (GB = 1e9 bytes)",
        _table(["method", "trainable", "weights", "16-bit copies", "gradients", "optimizer", "activations",
                "transient", "total"], table),
        "  weights: the parameters (fp32 under autocast); 16-bit copies: autocast's copies of the Linear weights that",
        "  backward keeps (checkpointing recomputes them); transient: the largest buffer alive inside one op",
        f"  device overhead: {OVERHEAD_NOTE}",
        "",
        "What the report's PEFT answer leaves out: PEFT removes the gradients and optimizer states of the frozen",
        (f"weights (LoRA: {_gb(state(full))} -> {_gb(state(peft))} GB here), but not their activations: the frozen "
         f"layers still keep what backward needs to pass gradients down to the trained ones ({_gb(full.activations)} "
         f"-> {_gb(peft.activations)} GB, {_share(full.activations - peft.activations, full.activations)} less). "),
        (f"Only activation checkpointing cuts that term ({_gb(peft_ckpt.activations)} GB with LoRA, "
         f"{_share(full.total - peft_ckpt.total, full.total)} of the full total saved), at about one more forward "
         "pass of compute.")])


def main(argv: list[str] | None = None) -> None:
    # Each default is written once, in its help: "%(default)s" where there is a value, words where None
    # means "derived" (ArgumentDefaultsHelpFormatter would print "(default: None)" beside them).
    # no abbreviations: train.py's --lora would be read as --lora-r
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--params", type=float, help="a generic encoder of this many parameters (e.g. 3e9), "
                      "beside the report's accounting")
    what.add_argument("--model", help="directory with config.json, Hub id, or alias: "
                      + ", ".join([*hub.ALIASES, *hub.PACKAGE_ALIASES]))
    p.add_argument("--batch-size", type=int, default=64, help="examples per batch (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example: every example padded to it, "
                   "the worst case of train.py's --max-length (default: %(default)s)")
    p.add_argument("--seq-len", action=Renamed, new="--max-length")
    p.add_argument("--max-tokens", type=int, default=0, metavar="N",
                   help="train.py's token budget: activations of micro-batches of at most N tokens (default: none; "
                   "train.py uses 4096 on a CPU)")
    # The adapter flags are train.py's (the adapters column is always shown, so --adapter changes nothing).
    p.add_argument("--adapter", nargs="?", type=int, metavar="", help="accepted as in train.py; the adapters "
                   "column is always shown")
    p.add_argument("--bottleneck", type=int, default=64, metavar="N",
                   help="bottleneck of the adapters to compare with (default: %(default)s)")
    p.add_argument("--adapter-placement", default="houlsby", choices=adapter.PLACEMENTS,
                   help="houlsby: after attention and FFN; pfeiffer: after FFN only (default: %(default)s)")
    p.add_argument("--placement", action=Renamed, new="--adapter-placement")
    p.add_argument("--freeze-layernorm", action="store_true", help="adapters with frozen LayerNorms")
    p.add_argument("--precision", default="bf16", choices=PRECISIONS,
                   help="as train.py's: bf16, fp16 = torch.autocast over fp32 parameters; and pure-bf16: the whole "
                   "model in bf16, no master copy (default: %(default)s)")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="sgd: SGD with momentum (default: %(default)s)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="activation checkpointing, one checkpoint per layer")
    p.add_argument("--checkpointing", action=Renamed, new="--gradient-checkpointing")
    p.add_argument("--methods", action="store_true", help="full fine-tuning, Houlsby, Pfeiffer and LoRA side by side, "
                   "each without and with activation checkpointing")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank for --methods (default: %(default)s)")
    p.add_argument("--attention", choices=ATTENTION, help="SDPA kernel (default: flash, what CUDA runs)")
    p.add_argument("--num-labels", type=int, default=3, help="classes of the head (default: %(default)s)")
    shape = p.add_argument_group("shape for --params")
    shape.add_argument("--hidden", type=int, default=2560, help="hidden size (default: %(default)s)")
    shape.add_argument("--layers", type=int, help="encoder layers (default: as many as make --params)")
    shape.add_argument("--heads", type=int, help="attention heads (default: hidden / 128)")
    shape.add_argument("--vocab", type=int, default=50265, help="vocabulary size (default: %(default)s, roberta's)")
    shape.add_argument("--ffn", type=int, help="feed-forward size (default: 4 x hidden)")
    try:
        args = p.parse_args(argv)
        if args.adapter is not None:
            raise UsageError(f"--adapter {args.adapter} is now --bottleneck {args.adapter}")
        if args.methods:
            print(compare_methods(args))
        else:
            print(compare_with_report(args) if args.params is not None else compare_full_vs_adapters(args))
    except (UsageError, FileNotFoundError) as e:  # a ValueError of ours or torch's is a bug: its traceback stays
        print(f"memory.py: error: {e}", file=sys.stderr)  # one line, as train.py and eval.py
        sys.exit(2)


if __name__ == "__main__":
    main()
