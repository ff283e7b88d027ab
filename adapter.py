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
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import hub
import model as modeling  # the functions below take an argument named `model`
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

    def __init__(self, add_norm: modeling.AddNorm, adapter: Adapter):
        super().__init__()
        self.dense = add_norm.dense
        self.dropout = add_norm.dropout
        self.LayerNorm = add_norm.LayerNorm
        self.adapter = adapter

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.adapter(self.dropout(self.dense(h))) + residual)


# --------------------------------------------------------------------------- adding and freezing


def add_adapters(model: modeling.Classifier, bottleneck: int = 64, placement: str = "houlsby",
                 freeze_layernorm: bool = False, init_scale: float = 1e-3,
                 verbose: bool = True) -> modeling.Classifier:
    """Insert adapters into `model` in place, freeze the rest, and return `model`.

    Trained afterwards: the adapters, every LayerNorm (unless `freeze_layernorm`, AdapterHub's
    recipe) and the classification head. Works on meta-device models too (memory estimates).
    """
    if placement not in PLACEMENTS:
        raise UsageError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if bottleneck < 1:
        raise UsageError(f"bottleneck must be a positive integer, got {bottleneck}")
    if has_adapters(model):
        raise ValueError(f"this model already has adapters ({model.adapter_config}); "
                         "load a fresh base model to add others")
    for layer in model.encoder.layer:
        if placement == "houlsby":
            layer.attention.output = _wrap(layer.attention.output, bottleneck, init_scale)
        layer.output = _wrap(layer.output, bottleneck, init_scale)
    model.adapter_config = AdapterConfig(bottleneck, placement, freeze_layernorm, init_scale)
    freeze_base(model, freeze_layernorm)
    if verbose:
        trainable, total = trainable_parameters(model)
        print(f"adapters: {placement}, bottleneck {bottleneck}: trainable {trainable:,} of {total:,} "
              f"parameters ({100 * trainable / total:.2f}%)")
    return model


def _wrap(add_norm: nn.Module, bottleneck: int, init_scale: float) -> AdapterAddNorm:
    if type(add_norm) is not modeling.AddNorm:
        raise TypeError(f"expected a model.AddNorm to put an adapter in, found {type(add_norm).__name__}")
    w = add_norm.dense.weight  # the adapter lives where the layer it extends lives: same device and dtype
    adapter = Adapter(add_norm.dense.out_features, bottleneck, init_scale, device=w.device, dtype=w.dtype)
    return AdapterAddNorm(add_norm, adapter)


def freeze_base(model: modeling.Classifier, freeze_layernorm: bool = False) -> None:
    """requires_grad only for adapters, LayerNorms (unless frozen) and the classification head.

    The head includes BERT's pooler (dense + tanh on [CLS]): it is the counterpart of RoBERTa's
    `classifier.dense`, which is trained, and it is part of the task head in BERT's fine-tuning
    setup. A base checkpoint without pooler weights gets a randomly initialised pooler
    (`model.from_pretrained`), which must not stay frozen at random values.
    """
    trainable = [model.classifier] + ([model.pooler] if model.pooler is not None else [])
    trainable += [m for m in model.modules() if isinstance(m, Adapter)]
    if not freeze_layernorm:
        trainable += [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    model.requires_grad_(False)
    for module in trainable:
        module.requires_grad_(True)
    for p in model.parameters():
        if not p.requires_grad:
            p.grad = None  # a frozen weight keeps no gradient memory from earlier training


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, Adapter) for m in model.modules())


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------- saving and loading


def save_adapters(model: modeling.Classifier, directory: str | os.PathLike, base: str,
                  labels: list[str] | None = None) -> None:
    """Write the trained tensors to `adapter.safetensors` and the settings to `adapter_config.json`
    (with `labels`, the class names in class-id order, which `from_pretrained` gives back as id2label).

    `base` is the name or path the base encoder was loaded from. What is recorded is what loads it on
    another machine or after the virtual environment moved: a Hub id or alias as given, and for the
    folder of a package alias (`hub.PACKAGE_ALIASES`) the alias, which `from_pretrained` resolves again.
    """
    from safetensors.torch import save_file
    cfg = _adapter_config(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    meta = {
        "base": hub.portable_name(base),
        **_base_description(model),
        "adapter": asdict(cfg),
        "base_sha256": base_fingerprint(model),
        **({"labels": list(labels)} if labels else {}),
    }
    if labels and len(labels) != model.num_labels:
        raise ValueError(f"{len(labels)} label names for a {model.num_labels}-label model")
    # weights first, config last: a directory with adapter_config.json is always complete
    hub.atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    hub.atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))


def load_adapters(model: modeling.Classifier, directory: str | os.PathLike) -> modeling.Classifier:
    """Put the adapters saved in `directory` onto `model`, a freshly loaded base Classifier.

    Adds adapters with the saved settings (or checks the ones already added match), checks the
    base is the one they were trained on, then loads every saved tensor: no more, no fewer.
    """
    directory = Path(directory)
    meta = read_config(directory)
    _check_base(model, meta, directory)
    saved = AdapterConfig(**meta["adapter"])
    if not has_adapters(model):
        add_adapters(model, **asdict(saved), verbose=False)
    else:
        _check_settings(model.adapter_config, saved, directory)
    if base_fingerprint(model) != meta["base_sha256"]:
        raise UsageError(f"{directory} was trained on other base weights than this model's (SHA-256 of the "
                         f"frozen weights differs); it belongs to base {meta['base']!r}")
    state = hub.read_weights(directory / WEIGHTS_FILE)  # safetensors: tensors only, nothing can run
    expected = {name: p for name, p in model.named_parameters() if p.requires_grad}
    _check_keys(state, expected, directory / WEIGHTS_FILE)
    with torch.no_grad():
        for name, p in expected.items():
            p.copy_(state[name])  # copy_ keeps the model's device and dtype
    return model


def from_pretrained(directory: str | os.PathLike, base: str | None = None) -> modeling.Classifier:
    """Load the base named in `directory/adapter_config.json` (or `base`, e.g. a local copy) and
    the adapters on top of it: what eval.py calls for an adapter run."""
    meta = read_config(directory)
    base = base or meta["base"]
    try:
        base_model = modeling.from_pretrained(base, num_labels=meta["num_labels"])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}\n(this is the base of the adapters in {directory}; pass base=... "
                                "to load the same weights from elsewhere)") from None
    base_model.config.id2label = dict(enumerate(meta["labels"])) if "labels" in meta else None  # not the base's
    return load_adapters(base_model, directory)


def is_adapter_dir(directory: str | os.PathLike) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_FILE}: it is not an adapter checkpoint "
                                "(save one with adapter.save_adapters / train.py --adapter --save)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    missing = [k for k in _CONFIG_KEYS if k not in meta]
    if missing:
        raise UsageError(f"{path}: no {missing[0]!r} field; it was not written by adapter.save_adapters")
    return meta


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names, shapes and float32 bytes of every frozen parameter.

    Exact, and portable across devices (unlike a floating-point checksum computed on the GPU);
    about a second for roberta-base.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            continue
        if p.is_meta:
            raise ValueError(f"parameter {name} is on the meta device: there are no weights to fingerprint")
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy())
    return h.hexdigest()


def _adapter_config(model: nn.Module) -> AdapterConfig:
    if not has_adapters(model):
        raise ValueError("this model has no adapters: call add_adapters first (or model.save_pretrained "
                         "to save a fully fine-tuned model)")
    return model.adapter_config


def _base_description(model: modeling.Classifier) -> dict:
    c = model.config
    return {"model_type": c.model_type, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_labels": model.num_labels}


def _check_base(model: modeling.Classifier, meta: dict, directory: Path) -> None:
    ours = _base_description(model)
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

