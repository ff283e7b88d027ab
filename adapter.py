"""Bottleneck adapters added to an already-built `model.Classifier`, trained alone, saved alone.

Follows Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (and their code,
google-research/adapter-bert): an adapter is a down-projection, a GELU, an up-projection and a
residual, initialised near the identity so that training starts from the pretrained model. One
adapter sits after the attention-output projection and one after the feed-forward output, each
after that sub-layer's dropout and before its residual add and LayerNorm. The base is frozen;
the adapters, every LayerNorm and the classification head are trained. For BERT the head
includes the pooler, which is our choice (`freeze_base` says why): Houlsby's code trains the
adapters, the LayerNorms and the classifier only.

The "pfeiffer" placement keeps only the feed-forward adapter, the configuration Pfeiffer et al.
2021 ("AdapterFusion: Non-Destructive Task Composition for Transfer Learning") found to work as
well with half the adapters. (AdapterHub's Pfeiffer preset also moves the adapter around the
LayerNorm; we keep Houlsby's position inside the sub-layer so the two options differ in one thing.)

`model.py` knows nothing of this: `add_adapters` swaps each targeted `model.AddNorm` for an
`AdapterAddNorm` that holds the same `dense`, `dropout` and `LayerNorm` modules under the same
names, plus `adapter`. The base's state-dict keys are therefore unchanged, and the adapter keys
read `encoder.layer.0.output.adapter.down.weight`.

Saving writes only what was trained (`adapter.safetensors`) plus `adapter_config.json`: the
settings, the base it belongs to, and a SHA-256 over the frozen base weights, which loading
checks, so adapters are never silently put on a base they were not trained with.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): `add_lora` adds
W x + (alpha / r) B A dropout(x) to the attention's query / key / value projections, which model.py
fuses into one Linear (`attention.self.qkv`): `LoRAQKV` adopts that Linear's weight and bias (same
keys) and adds each LoRA to its third of the output. The base, LayerNorms included, is frozen; the
LoRA matrices and the head are trained. Init, names, scaling and the saved files follow PEFT
(huggingface/peft, `LoraConfig(task_type="SEQ_CLS")`), so that a LoRA saved here loads with
`peft.PeftModel.from_pretrained` onto transformers' model of the same base, and one saved by PEFT
loads here (`save_lora`, `load_lora`; both write and read `adapter_config.json`, told apart by
PEFT's `peft_type` field). `merge_lora` folds the update into the weights: a plain model again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hub
import model
from common import UsageError

PLACEMENTS = ("houlsby", "pfeiffer")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
_CONFIG_KEYS = ("base", "model_type", "hidden_size", "num_hidden_layers", "num_labels", "adapter", "base_sha256")


@dataclass
class AdapterConfig:
    """What `add_adapters` was called with; recorded on the model as `model.adapter_config`."""

    bottleneck: int = 64
    placement: str = "houlsby"
    freeze_layernorm: bool = False
    init_scale: float = 1e-3


class Adapter(nn.Module):
    """x + up(gelu(down(x))): a bottleneck MLP around a residual (Houlsby et al. 2019, Fig. 2)."""

    def __init__(self, hidden_size: int, bottleneck: int, init_scale: float = 1e-3, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, hidden_size, device=device, dtype=dtype)
        self.reset_parameters(init_scale)

    def reset_parameters(self, init_scale: float) -> None:
        # Houlsby's near-identity init: tiny weights (normal truncated at 2 std), zero biases, so
        # up(gelu(down(x))) ~ 0 and the model starts as the pretrained one.
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=init_scale, a=-2 * init_scale, b=2 * init_scale)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))  # (B, T, C) -> (B, T, b) -> (B, T, C)


class AdapterAddNorm(nn.Module):
    """`model.AddNorm` with an adapter before the residual: LayerNorm(adapter(dropout(dense(h))) + residual).

    It adopts the wrapped module's children (not copies), so the pretrained weights and their
    state-dict keys stay exactly where they were.
    """

    def __init__(self, add_norm: model.AddNorm, adapter: Adapter):
        super().__init__()
        self.dense = add_norm.dense
        self.dropout = add_norm.dropout
        self.LayerNorm = add_norm.LayerNorm
        self.adapter = adapter

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.adapter(self.dropout(self.dense(h))) + residual)


# --------------------------------------------------------------------------- adding and freezing


def add_adapters(net: model.Classifier, bottleneck: int = 64, placement: str = "houlsby",
                 freeze_layernorm: bool = False, init_scale: float = 1e-3,
                 verbose: bool = True) -> model.Classifier:
    """Insert adapters into `model` in place, freeze the rest, and return `model`.

    Trained afterwards: the adapters, every LayerNorm (unless `freeze_layernorm`, AdapterHub's
    recipe) and the classification head. Works on meta-device models too (memory estimates).
    """
    if placement not in PLACEMENTS:
        raise UsageError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if bottleneck < 1:
        raise UsageError(f"bottleneck must be a positive integer, got {bottleneck}")
    if has_adapters(net) or has_lora(net):
        raise ValueError("this model already has adapters or LoRA; "
                         "load a fresh base model to add others")
    for layer in net.encoder.layer:
        if placement == "houlsby":
            layer.attention.output = _wrap(layer.attention.output, bottleneck, init_scale)
        layer.output = _wrap(layer.output, bottleneck, init_scale)
    net.adapter_config = AdapterConfig(bottleneck, placement, freeze_layernorm, init_scale)
    freeze_base(net, freeze_layernorm)
    if verbose:
        trainable, total = trainable_parameters(net)
        print(f"adapters: {placement}, bottleneck {bottleneck}: trainable {trainable:,} of {total:,} "
              f"parameters ({100 * trainable / total:.2f}%)")
    return net


def _wrap(add_norm: nn.Module, bottleneck: int, init_scale: float) -> AdapterAddNorm:
    if type(add_norm) is not model.AddNorm:
        raise TypeError(f"expected a model.AddNorm to put an adapter in, found {type(add_norm).__name__}")
    w = add_norm.dense.weight  # the adapter lives where the layer it extends lives: same device and dtype
    adapter = Adapter(add_norm.dense.out_features, bottleneck, init_scale, device=w.device, dtype=w.dtype)
    return AdapterAddNorm(add_norm, adapter)


def freeze_base(net: model.Classifier, freeze_layernorm: bool = False) -> None:
    """requires_grad only for adapters, LayerNorms (unless frozen) and the classification head.

    The head includes BERT's pooler (dense + tanh on [CLS]): it is the counterpart of RoBERTa's
    `classifier.dense`, which is trained, and it is part of the task head in BERT's fine-tuning
    setup. A base checkpoint without pooler weights gets a randomly initialised pooler
    (`model.from_pretrained`), which must not stay frozen at random values.
    """
    trainable = _head(net) + [m for m in net.modules() if isinstance(m, Adapter)]
    if not freeze_layernorm:
        trainable += [m for m in net.modules() if isinstance(m, nn.LayerNorm)]
    net.requires_grad_(False)
    for module in trainable:
        module.requires_grad_(True)
    for p in net.parameters():
        if not p.requires_grad:
            p.grad = None  # a frozen weight keeps no gradient memory from earlier training


def _head(net: model.Classifier) -> list[nn.Module]:
    """The classification head: the classifier, and BERT's pooler (see freeze_base)."""
    return [net.classifier] + ([net.pooler] if net.pooler is not None else [])


def has_adapters(net: nn.Module) -> bool:
    return any(isinstance(m, Adapter) for m in net.modules())


def trainable_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(net.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------- LoRA

LORA_TARGETS = ("query", "key", "value")  # the three slices of the fused attention.self.qkv, in its order


@dataclass
class LoRAConfig:
    """What `add_lora` was called with; recorded on the model as `model.lora_config`."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "value")


class LoRA(nn.Module):
    """The low-rank update of one projection, (alpha / r) B A dropout(x) (Hu et al. 2021, eq. 3).

    A starts Kaiming-uniform (nn.Linear's own init, PEFT's default) and B at zero, so B A = 0 and
    training starts from the pretrained model. Names and the order of operations are PEFT's.
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float,
                 device=None, dtype=None):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device, dtype=dtype)
        self.scaling = alpha / r  # the update's size does not change with r, so neither need the lr
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling  # (B, T, C) -> (B, T, r) -> (B, T, C)


class LoRAQKV(nn.Module):
    """`attention.self.qkv`, one Linear for query, key and value, plus a LoRA on some of its three
    output slices. It adopts the Linear's weight and bias, so their keys stay `...qkv.weight`."""

    def __init__(self, qkv: nn.Linear, loras: dict[str, LoRA]):
        super().__init__()
        self.weight, self.bias = qkv.weight, qkv.bias
        self.lora = nn.ModuleDict(loras)  # keys ...qkv.lora.query.lora_A.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(F.linear(x, self.weight, self.bias).chunk(3, dim=-1))  # query, key, value: (B, T, C) each
        for i, name in enumerate(LORA_TARGETS):
            if name in self.lora:
                parts[i] = parts[i] + self.lora[name](x)
        return torch.cat(parts, dim=-1)  # (B, T, 3C)


def add_lora(net: model.Classifier, r: int = 8, alpha: float = 16, dropout: float = 0.1,
             targets=("query", "value"), verbose: bool = True) -> model.Classifier:
    """Add a LoRA to the `targets` projections of every layer in place, freeze the rest, return `model`.

    Trained afterwards: the LoRA matrices and the classification head (for BERT with the pooler, see
    `freeze_base`); LayerNorms stay frozen, as in PEFT. Works on meta-device models too.
    """
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets:
        raise UsageError(f"LoRA targets must be some of {', '.join(LORA_TARGETS)} (the attention projections "
                         f"this encoder fuses into one matmul), got {' '.join(targets) or 'none'}")
    if r < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise UsageError(f"LoRA needs r >= 1, alpha > 0 and dropout in [0, 1), got r={r}, alpha={alpha}, "
                         f"dropout={dropout}")
    if has_adapters(net) or has_lora(net):
        raise ValueError("this model already has adapters or LoRA; load a fresh base model to add others")
    targets = tuple(t for t in LORA_TARGETS if t in targets)  # PEFT's order: a layer's query LoRA before its value
    for layer in net.encoder.layer:
        qkv = layer.attention.self.qkv
        C, w = qkv.in_features, qkv.weight  # each LoRA lives where its projection lives: same device and dtype
        layer.attention.self.qkv = LoRAQKV(qkv, {t: LoRA(C, C, r, alpha, dropout, w.device, w.dtype) for t in targets})
    net.lora_config = LoRAConfig(r, alpha, dropout, targets)
    net.requires_grad_(False)
    for module in _head(net) + [m for m in net.modules() if isinstance(m, LoRA)]:
        module.requires_grad_(True)
    if verbose:
        trainable, total = trainable_parameters(net)
        print(f"LoRA: r {r}, alpha {alpha:g} on {' '.join(targets)}: trainable {trainable:,} of {total:,} "
              f"parameters ({100 * trainable / total:.2f}%)")
    return net


def has_lora(net: nn.Module) -> bool:
    return any(isinstance(m, LoRA) for m in net.modules())


def merge_lora(net: model.Classifier) -> model.Classifier:
    """Fold every LoRA into its projection, W + (alpha / r) B A, in place: a plain Classifier again,
    which `model.save_pretrained` writes for transformers alone. (The LoRA's dropout is gone: eval mode.)"""
    for layer in net.encoder.layer:
        qkv = layer.attention.self.qkv
        if not isinstance(qkv, LoRAQKV):
            continue
        C = qkv.weight.shape[1]
        with torch.device("meta"):
            plain = nn.Linear(C, 3 * C)
        plain.weight, plain.bias = qkv.weight, qkv.bias
        with torch.no_grad():
            for i, name in enumerate(LORA_TARGETS):
                if name in qkv.lora:
                    lora = qkv.lora[name]
                    plain.weight[i * C:(i + 1) * C] += lora.scaling * (lora.lora_B.weight @ lora.lora_A.weight)
        layer.attention.self.qkv = plain
    net.__dict__.pop("lora_config", None)
    return net


# --------------------------------------------------------------------------- saving and loading


def save_adapters(net: model.Classifier, directory: str | os.PathLike, base: str,
                  labels: list[str] | None = None) -> None:
    """Write the trained tensors to `adapter.safetensors` and the settings to `adapter_config.json`
    (with `labels`, the class names in class-id order, which `from_pretrained` gives back as id2label).

    `base` is the name or path the base encoder was loaded from. What is recorded is what loads it on
    another machine or after the virtual environment moved: a Hub id or alias as given, and for the
    folder of a package alias (`hub.PACKAGE_ALIASES`) the alias, which `from_pretrained` resolves again.
    """
    from safetensors.torch import save_file
    cfg = _adapter_config(net)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: p.detach().cpu().contiguous() for name, p in net.named_parameters() if p.requires_grad}
    meta = {
        "base": hub.portable_name(base),
        **_base_description(net),
        "adapter": asdict(cfg),
        "base_sha256": base_fingerprint(net),
        **({"labels": list(labels)} if labels else {}),
    }
    if labels and len(labels) != net.num_labels:
        raise ValueError(f"{len(labels)} label names for a {net.num_labels}-label model")
    # weights first, config last: a directory with adapter_config.json is always complete
    hub.atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    hub.atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))


def load_adapters(net: model.Classifier, directory: str | os.PathLike) -> model.Classifier:
    """Put the adapters saved in `directory` onto `model`, a freshly loaded base Classifier.

    Adds adapters with the saved settings (or checks the ones already added match), checks the
    base is the one they were trained on, then loads every saved tensor: no more, no fewer.
    """
    directory = Path(directory)
    meta = read_config(directory)
    if "peft_type" in meta:
        return load_lora(net, directory)
    _check_base(net, meta, directory)
    saved = AdapterConfig(**meta["adapter"])
    if not has_adapters(net):
        add_adapters(net, **asdict(saved), verbose=False)
    else:
        _check_settings(net.adapter_config, saved, directory)
    if base_fingerprint(net) != meta["base_sha256"]:
        raise UsageError(f"{directory} was trained on other base weights than this model's (SHA-256 of the "
                         f"frozen weights differs); it belongs to base {meta['base']!r}")
    state = hub.read_weights(directory / WEIGHTS_FILE)  # safetensors: tensors only, nothing can run
    expected = {name: p for name, p in net.named_parameters() if p.requires_grad}
    _check_keys(state, expected, directory / WEIGHTS_FILE)
    with torch.no_grad():
        for name, p in expected.items():
            p.copy_(state[name])  # copy_ keeps the model's device and dtype
    return net


def from_pretrained(directory: str | os.PathLike, base: str | None = None) -> model.Classifier:
    """Load the base named in `directory/adapter_config.json` (or `base`, e.g. a local copy) and
    the adapters or the LoRA (PEFT's layout) on top of it: what eval.py calls for an adapter run."""
    meta = read_config(directory)
    base = base or meta["base"]
    if base is None:
        raise UsageError(f"{directory}/{CONFIG_FILE} names no base model (base_model_name_or_path): pass the "
                         "base it was trained on (eval.py --base NAME_OR_DIR)")
    num_labels = meta["num_labels"] if "peft_type" not in meta else _peft_num_labels(directory)
    try:
        base_model = model.from_pretrained(base, num_labels=num_labels)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}\n(this is the base of the adapters in {directory}; pass base=... "
                                "to load the same weights from elsewhere)") from None
    labels = meta.get("labels") if "peft_type" not in meta else _peft_labels(directory)  # optional in the file
    base_model.config.id2label = dict(enumerate(labels)) if labels else None  # not the base's
    return load_adapters(base_model, directory)


def is_adapter_dir(directory: str | os.PathLike) -> bool:
    """Adapters (`save_adapters`) or a LoRA in PEFT's layout: both have an adapter_config.json."""
    return (Path(directory) / CONFIG_FILE).is_file()


def _peft_num_labels(directory: str | os.PathLike) -> int:
    """The head's size, from the classifier's last weight in a PEFT folder (BERT: classifier.weight,
    RoBERTa: classifier.out_proj.weight)."""
    path = Path(directory) / PEFT_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has {CONFIG_FILE} but no {PEFT_WEIGHTS_FILE}")
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        names = f.keys()  # a safe_open handle, not a dict
        keys = [k for k in names if re.fullmatch(r"base_model\.model\.classifier\.(out_proj\.)?weight", k)]
        if not keys:
            raise UsageError(f"{path} has no classifier weights: PEFT saves them with task_type SEQ_CLS "
                             "(modules_to_save), which a classifier needs")
        return f.get_slice(keys[0]).get_shape()[0]


def _peft_labels(directory: str | os.PathLike) -> list[str] | None:
    """The class names `save_lora` recorded in the safetensors metadata (None in a folder PEFT wrote)."""
    from safetensors import safe_open
    with safe_open(Path(directory) / PEFT_WEIGHTS_FILE, "pt") as f:
        labels = (f.metadata() or {}).get("labels")
    return json.loads(labels) if labels else None


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_FILE}: it is not an adapter checkpoint "
                                "(save one with adapter.save_adapters / train.py --adapter --save)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if "peft_type" in meta:  # a LoRA in PEFT's layout (save_lora, or PEFT itself)
        return _read_peft_config(meta, path)
    missing = [k for k in _CONFIG_KEYS if k not in meta]
    if missing:
        raise UsageError(f"{path}: no {missing[0]!r} field; it was not written by adapter.save_adapters")
    return meta


def base_fingerprint(net: nn.Module) -> str:
    """SHA-256 over the names, shapes and float32 bytes of every frozen parameter.

    Exact, and portable across devices (unlike a floating-point checksum computed on the GPU);
    about a second for roberta-base.
    """
    h = hashlib.sha256()
    for name, p in net.named_parameters():
        if p.requires_grad:
            continue
        if p.is_meta:
            raise ValueError(f"parameter {name} is on the meta device: there are no weights to fingerprint")
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy())
    return h.hexdigest()


def _adapter_config(net: nn.Module) -> AdapterConfig:
    if not has_adapters(net):
        raise ValueError("this model has no adapters: call add_adapters first (or model.save_pretrained "
                         "to save a fully fine-tuned model)")
    return net.adapter_config


def _base_description(net: model.Classifier) -> dict:
    c = net.config
    return {"model_type": c.model_type, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_labels": net.num_labels}


def _check_base(net: model.Classifier, meta: dict, directory: Path) -> None:
    ours = _base_description(net)
    for key, value in ours.items():
        if meta[key] != value:
            raise UsageError(f"{directory} holds adapters for a {meta['model_type']} base ({meta['base']!r}) "
                             f"with {key}={meta[key]}, but this model has {key}={value}")


def _check_settings(ours: AdapterConfig, saved: AdapterConfig, directory: Path) -> None:
    for key in ("bottleneck", "placement", "freeze_layernorm"):  # init_scale no longer matters once trained
        if getattr(ours, key) != getattr(saved, key):
            raise UsageError(f"{directory} was saved with {key}={getattr(saved, key)!r}, but this model's "
                             f"adapters have {key}={getattr(ours, key)!r}; load onto a fresh base model")


def _check_keys(state: dict, expected: dict, path: Path) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        key, what = (missing[0], "missing") if missing else (unexpected[0], "unexpected")
        raise UsageError(f"{path}: {what} key {key!r} ({len(missing)} missing, {len(unexpected)} unexpected)")
    for k, t in state.items():
        if t.shape != expected[k].shape:
            raise UsageError(f"{path}: key {k!r} has shape {tuple(t.shape)}, the model expects "
                             f"{tuple(expected[k].shape)}")


# --------------------------------------------------------------------------- LoRA files: PEFT's layout

PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
# our LoRA key <-> PEFT's key after "base_model.model.<bert|roberta>."
_LORA_KEY = re.compile(r"^(encoder\.layer\.\d+\.attention\.self)\.qkv\.lora\.(query|key|value)\.(lora_[AB]\.weight)$")
_PEFT_LORA_KEY = re.compile(r"^(encoder\.layer\.\d+\.attention\.self)\.(query|key|value)\.(lora_[AB]\.weight)$")
# PEFT settings this implementation does not have; a folder that sets one is refused, not misread
_PEFT_UNSUPPORTED = {"bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
                     "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}}


def _peft_prefixes(net: model.Classifier) -> tuple[str, str]:
    """(prefix of the head's keys, prefix of the encoder's and pooler's): PEFT names the keys of
    transformers' XForSequenceClassification inside `base_model.model.`."""
    return "base_model.model.", "base_model.model." + ("roberta." if net.config.roberta else "bert.")


def save_lora(net: model.Classifier, directory: str | os.PathLike, base: str,
              labels: list[str] | None = None) -> None:
    """Write the LoRA matrices and the head in PEFT's layout: `adapter_model.safetensors` (keys like
    base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight; the head as PEFT saves
    modules_to_save) and `adapter_config.json` (a LoraConfig with task_type SEQ_CLS). The SHA-256 of
    the frozen base, and `labels` (class names in class-id order) as JSON, go in the safetensors metadata,
    which PEFT ignores; `load_lora` checks the first and `from_pretrained` gives the second back as id2label."""
    from safetensors.torch import save_file
    if not has_lora(net):
        raise ValueError("this model has no LoRA: call add_lora first")
    cfg, (head, encoder) = net.lora_config, _peft_prefixes(net)
    state = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        m = _LORA_KEY.match(name)
        key = f"{encoder}{m[1]}.{m[2]}.{m[3]}" if m else (head if name.startswith("classifier.") else encoder) + name
        state[key] = p.detach().cpu().contiguous()
    meta = {"peft_type": "LORA", "task_type": "SEQ_CLS", "base_model_name_or_path": hub.portable_name(base),
            "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "target_modules": list(cfg.targets),
            "modules_to_save": [m for m in ("classifier", "pooler") if getattr(net, m) is not None],
            "init_lora_weights": True, "inference_mode": True, **_PEFT_UNSUPPORTED}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if labels and len(labels) != net.num_labels:
        raise ValueError(f"{len(labels)} label names for a {net.num_labels}-label model")
    metadata = {"format": "pt", "base_sha256": base_fingerprint(net), **({"labels": json.dumps(list(labels))}
                                                                           if labels else {})}
    hub.atomic_write(directory / PEFT_WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata=metadata))
    hub.atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))


def is_peft_dir(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a LoRA in PEFT's layout (written by PEFT or by `save_lora`)."""
    path = Path(directory) / CONFIG_FILE
    try:
        return path.is_file() and "peft_type" in json.loads(path.read_text())
    except json.JSONDecodeError:
        return False


def _read_peft_config(meta: dict, path: Path) -> dict:
    """Check a PEFT adapter_config.json is a LoRA this encoder can run; returns it with "base" added."""
    if meta["peft_type"] != "LORA" or meta.get("task_type") != "SEQ_CLS":
        raise UsageError(f"{path}: a PEFT {meta['peft_type']} adapter for task {meta.get('task_type')}; only LoRA "
                         "for sequence classification (task_type SEQ_CLS) loads here")
    targets = meta.get("target_modules")
    if not isinstance(targets, list) or not targets or any(t not in LORA_TARGETS for t in targets):
        raise UsageError(f"{path}: target_modules {targets!r}; this encoder runs LoRA on a list of "
                         f"{', '.join(LORA_TARGETS)} only")
    for key, ours in _PEFT_UNSUPPORTED.items():
        if meta.get(key) not in (ours, None):  # None: PEFT's default, which is ours
            raise UsageError(f"{path}: {key} = {meta[key]!r} is not supported here (only {ours!r})")
    return {**meta, "base": meta.get("base_model_name_or_path")}


def load_lora(net: model.Classifier, directory: str | os.PathLike) -> model.Classifier:
    """Put the LoRA saved in `directory` (PEFT's layout, by PEFT or `save_lora`) onto `model`, a fresh base.

    Every LoRA matrix and the classifier must be in the file; the pooler is loaded if it is there (PEFT
    trains BERT's classifier only, leaving the base's pooler). Anything else in the file is an error."""
    directory = Path(directory)
    meta = read_config(directory)
    add_lora(net, meta["r"], meta["lora_alpha"], meta["lora_dropout"], meta["target_modules"], verbose=False)
    path = directory / PEFT_WEIGHTS_FILE
    saved = hub.read_weights(path)
    head, encoder = _peft_prefixes(net)
    state = {}
    for key, tensor in saved.items():
        name = key.removeprefix(encoder) if key.startswith(encoder) else key.removeprefix(head)
        m = _PEFT_LORA_KEY.match(name)
        state[f"{m[1]}.qkv.lora.{m[2]}.{m[3]}" if m else name] = tensor
    params = dict(net.named_parameters())
    required = {n: p for n, p in params.items() if p.requires_grad and not n.startswith("pooler.")}
    optional = {n: params[n] for n in state if n.startswith("pooler.") and n in params}
    _check_keys(state, {**required, **optional}, path)
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        sha = (f.metadata() or {}).get("base_sha256")
    if sha is not None and sha != base_fingerprint(net):
        raise UsageError(f"{directory} was trained on other base weights than this model's (SHA-256 of the "
                         f"frozen weights differs); it belongs to base {meta['base']!r}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    return net
