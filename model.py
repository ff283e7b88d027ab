"""BERT and RoBERTa encoders for sequence classification, written out in plain PyTorch.

The numerics follow Hugging Face transformers' `modeling_bert.py` / `modeling_roberta.py`
(post-LayerNorm blocks, exact erf GELU, RoBERTa positions counted from padding_idx + 1),
which themselves follow Devlin et al. 2019 (BERT) and Liu et al. 2019 (RoBERTa). RoBERTa is
a flag on the same classes: it changes only the position ids and the classification head.

Module names reproduce the Hub's state-dict keys, so loading a checkpoint is a short,
visible rename table (`_RENAMES`, `_DROPPED`) plus `load_state_dict(strict=True)`-style
checks that name every missing or unexpected key. The one place we differ from the Hub
layout is the fused Q/K/V projection (`attention.self.qkv`), which the table builds from
`query`, `key` and `value` on load and splits again on export.

Public API: `Config`, `Classifier`, `load_config`, `from_pretrained`, `load_tokenizer`, `save_pretrained`,
`save_tokenizer`; file helpers the other files share: `read_weights`, `load_torch_file`, `atomic_write`.
A checkpoint is named by a local directory, a Hub id, an alias of a Hub id (`ALIASES`), or an alias of a
checkpoint shipped in a Python package (`PACKAGE_ALIASES`: `minilm`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from common import UsageError
from hub import _Source, _weight_files, atomic_write, read_weights
from tokenizer import load_tokenizer, save_tokenizer  # noqa: F401  (load_tokenizer: part of model's API)

# --------------------------------------------------------------------------- config


@dataclass
class Config:
    """The fields of a Hub `config.json` that the encoder uses, under their Hub names."""

    model_type: str = "bert"  # "bert" or "roberta"; scibert's config has no model_type: BERT
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob, as the reference does
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    id2label: dict[int, str] | None = None  # present when the checkpoint has a classification head

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> Config:
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in known})
        if cfg.id2label is not None:
            cfg.id2label = {int(k): v for k, v in cfg.id2label.items()}
        if cfg.model_type not in ("bert", "roberta"):
            raise UsageError(f"{source}: model_type {cfg.model_type!r} is not supported; this encoder "
                             "implements 'bert' and 'roberta' (a config without model_type is read as BERT)")
        if cfg.hidden_act != "gelu":
            raise UsageError(f"{source}: hidden_act {cfg.hidden_act!r} is not supported "
                             "(only 'gelu', the exact erf GELU)")
        if cfg.position_embedding_type != "absolute":
            raise UsageError(f"{source}: position_embedding_type {cfg.position_embedding_type!r} is not supported "
                             "(only 'absolute')")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise UsageError(f"{source}: hidden_size {cfg.hidden_size} is not a multiple of "
                             f"num_attention_heads {cfg.num_attention_heads}")
        return cfg

    @property
    def roberta(self) -> bool:
        return self.model_type == "roberta"

    @property
    def max_length(self) -> int:
        """Longest input the position table allows. RoBERTa's positions start at pad + 1."""
        return self.max_position_embeddings - (self.pad_token_id + 1 if self.roberta else 0)


# --------------------------------------------------------------------------- dropout

# How dropout draws its masks: "torch" as torch.nn.functional.dropout does (bernoulli_, the same random numbers as
# transformers' model, so that train-mode outputs compare exactly), or "fast": 16 random bits per element from one
# bulk draw of the same generator. On a CPU bernoulli_ draws element by element (measured 5.7 ms for a
# 64x12x32x32 mask, 26 ms for the whole F.dropout; the bulk draw 0.95 ms): it was a fifth of a bf16 step there.
DROPOUT_MASKS = ("auto", "torch", "fast")


def dropout_masks(mode: str, device: torch.device) -> str:
    """Resolve "auto": fast masks on a CPU; on GPUs torch's own (cheap there; SDPA draws attention's in-kernel)."""
    return ("torch" if device.type == "cuda" else "fast") if mode == "auto" else mode


def dropout(x: torch.Tensor, p: float, fast: bool) -> torch.Tensor:
    """Inverted dropout in training: each element zeroed independently with probability p, the rest scaled by
    1 / (1 - p). `fast`: the mask compares 16-bit uniform integers with a threshold, so the rate is p rounded to a
    multiple of 2^-16; one bulk random_ draws them (uniform over all 64 bits of each int64, four int16s each)."""
    if not fast or p == 0 or p == 1:
        return F.dropout(x, p, training=True)
    bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
    keep = bits.view(torch.int16)[:x.numel()].view(x.shape) >= round(p * 65536) - 32768  # P(drop) = p +- 2^-17
    return torch.where(keep, x, 0) * (1 / (1 - p))  # autograd keeps `keep` (1 byte per element), not x


class Dropout(nn.Dropout):
    """nn.Dropout whose masks are drawn as `fast` says (set by `set_dropout_masks`; default: torch's)."""

    fast = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.fast) if self.training else x


def set_dropout_masks(net: nn.Module, mode: str) -> None:
    """Draw every dropout mask of `net` as `mode` says ("torch" or "fast"; resolve "auto" with dropout_masks)."""
    if mode not in ("torch", "fast"):
        raise ValueError(f"dropout masks {mode!r}: expected 'torch' or 'fast'")
    for m in net.modules():
        if isinstance(m, (Dropout, SelfAttention)):
            m.fast = mode == "fast"


# --------------------------------------------------------------------------- modules


class Embeddings(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        # RoBERTa's padding positions map to padding_idx too (fairseq convention), so that row gets no gradient
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                                padding_idx=cfg.pad_token_id if cfg.roberta else None)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        B, T = input_ids.shape
        if self.cfg.roberta:
            # positions count real tokens only, starting at padding_idx + 1; pads keep padding_idx
            pad = self.cfg.pad_token_id
            not_pad = input_ids.ne(pad).int()
            position_ids = torch.cumsum(not_pad, dim=1).type_as(not_pad) * not_pad + pad
        else:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)  # (B, T, C); same addition order as the reference
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused Q/K/V matmul and PyTorch's SDPA kernel."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # Hub keys: query, key, value
        self.dropout_p = cfg.attention_probs_dropout_prob

    fast = False  # fast dropout masks (set_dropout_masks)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        if self.fast and self.training and self.dropout_p > 0:
            # SDPA's math path, written out, with a fast mask: what SDPA runs on a CPU when dropout is on
            att = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.size(-1)))  # (B, nh, T, T)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            y = dropout(att.softmax(-1), self.dropout_p, fast=True) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)


class AddNorm(nn.Module):
    """Projection, dropout, then the post-LN residual: LayerNorm(dropout(dense(h)) + residual)."""

    def __init__(self, in_features: int, cfg: Config):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.dropout = Dropout(cfg.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.self = SelfAttention(cfg)  # the Hub's key is literally "attention.self"
        self.output = AddNorm(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = AddNorm(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.gradient_checkpointing = False  # train.py --gradient-checkpointing sets it

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # activation checkpointing: keep only the layer's input and recompute the layer in backward,
                # with the RNG state of the forward, so that dropout draws the same masks (same numbers)
                x = checkpoint(layer, x, mask, use_reentrant=False, preserve_rng_state=True)
            else:
                x = layer(x, mask)
        return x


class Pooler(nn.Module):
    """BERT's pooler: dense + tanh on the [CLS] position."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))


class RobertaHead(nn.Module):
    """RoBERTa's head on <s>: dropout, dense, tanh, dropout, out_proj."""

    def __init__(self, cfg: Config, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = Dropout(dropout)
        self.out_proj = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.dropout(h[:, 0])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


class Classifier(nn.Module):
    """Encoder + classification head. BERT: pooler -> dropout -> classifier. RoBERTa: RobertaHead."""

    def __init__(self, cfg: Config, num_labels: int):
        super().__init__()
        if num_labels < 2:
            raise UsageError(f"num_labels must be at least 2, got {num_labels}")
        self.config = cfg
        self.num_labels = num_labels
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        p = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        if cfg.roberta:
            self.pooler = None
            self.dropout = None
            self.classifier = RobertaHead(cfg, num_labels, p)
        else:
            self.pooler = Pooler(cfg)
            self.dropout = Dropout(p)
            self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """The reference's init: normal(0, initializer_range) weights, zero biases and padding rows."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's last hidden states, (B, T, C)."""
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T); True = attend
        return self.encoder(self.embeddings(input_ids, token_type_ids), mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)
        if self.config.roberta:
            return self.classifier(h)  # (B, num_labels)
        return self.classifier(self.dropout(self.pooler(h)))  # (B, num_labels)


# --------------------------------------------------------------------------- Hub checkpoints <-> our keys

# Hub key -> our key, applied in order to every key of a checkpoint.
_RENAMES = [
    (r"^(bert|roberta)\.", ""),  # BertForX / RobertaForX prefix; a bare BertModel (MiniLM) has none
    (r"LayerNorm\.gamma$", "LayerNorm.weight"),  # TF-era names in bert-base-uncased
    (r"LayerNorm\.beta$", "LayerNorm.bias"),
]
# Hub keys (after renaming) that a classifier does not use.
_DROPPED = [
    r"position_ids$",  # a buffer older checkpoints saved
    r"^lm_head\.",  # RoBERTa's masked-LM head
    r"^cls\.",  # BERT's MLM / next-sentence heads
]
_DROPPED_ROBERTA = [r"^pooler\."]  # RoBERTa checkpoints carry BERT's pooler; its classifier ignores it
_QKV = re.compile(r"^(encoder\.layer\.\d+\.attention\.self)\.(query|key|value)\.(weight|bias)$")


def _head_keys(cfg: Config) -> list[str]:
    """Keys a checkpoint may lack: the new classification head (and BERT's pooler)."""
    if cfg.roberta:
        return [f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")]
    return ["classifier.weight", "classifier.bias", "pooler.dense.weight", "pooler.dense.bias"]


def hub_to_ours(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Rename a Hub state dict to our keys: strip prefixes, legacy names, drop heads, fuse Q/K/V."""
    dropped = _DROPPED + (_DROPPED_ROBERTA if cfg.roberta else [])
    out, qkv = {}, {}
    for key, tensor in state.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        if any(re.search(p, key) for p in dropped):
            continue
        if m := _QKV.match(key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = tensor
        else:
            out[key] = tensor
    for (prefix, kind), parts in qkv.items():
        missing = [p for p in ("query", "key", "value") if p not in parts]
        if missing:
            raise KeyError(f"{prefix}.{missing[0]}.{kind}")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def ours_to_hub(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """The rename table backwards: the keys of transformers' XForSequenceClassification."""
    prefix = "roberta." if cfg.roberta else "bert."
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        if key.startswith("classifier."):
            out[key] = tensor
        elif key.endswith(("qkv.weight", "qkv.bias")):
            base, kind = key.rsplit(".qkv.", 1)
            for name, part in zip(("query", "key", "value"), tensor.chunk(3)):
                out[f"{prefix}{base}.{name}.{kind}"] = part.clone()  # safetensors refuses shared storage
        else:
            out[prefix + key] = tensor
    return out


# --------------------------------------------------------------------------- files: local dir or Hub


def _read_config(src: _Source) -> tuple[Config, Path]:
    path = src.file("config.json")
    if path is None:
        raise src.missing("config.json")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    return Config.from_dict(d, source=str(path)), path


# --------------------------------------------------------------------------- public API


def load_config(name_or_path: str | os.PathLike) -> Config:
    """The checkpoint's Config alone (config.json only: no weights are read)."""
    return _read_config(_Source(name_or_path))[0]


def find_weights(name_or_path: str | os.PathLike) -> list[Path]:
    """The checkpoint's weight files (downloaded when on the Hub and not cached), not read: a check that
    they exist. FileNotFoundError says what is missing and what to do."""
    return _weight_files(_Source(name_or_path))


def from_pretrained(name_or_path: str | os.PathLike, num_labels: int | None = None) -> Classifier:
    """Build a Classifier from a local directory, a Hub repo id, or an alias (ALIASES, PACKAGE_ALIASES).

    The encoder must load completely; only the classification head (and BERT's pooler) may be
    missing, and are then initialised as the reference does. A checkpoint that already has a
    head is loaded with it; `num_labels=None` takes the head's size from the checkpoint.
    """
    src = _Source(name_or_path)
    cfg, cfg_path = _read_config(src)
    files = _weight_files(src)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(read_weights(path))
    where = files[0] if len(files) == 1 else files[0].parent
    try:
        state = hub_to_ours(state, cfg)
    except KeyError as e:
        raise UsageError(f"{where}: missing key {e.args[0]} (needed with its query/key/value siblings)") from None

    head_key = "classifier.out_proj.weight" if cfg.roberta else "classifier.weight"
    head_labels = state[head_key].shape[0] if head_key in state else None
    if num_labels is None:
        num_labels = head_labels
        if num_labels is None:
            raise UsageError(f"{src} has no classification head (a pretrained encoder, not a fine-tuned model): "
                             "give a saved model, e.g. train.py --save's <run>/model, or pass num_labels to add one")
    if num_labels < 2:
        raise UsageError(f"num_labels must be at least 2, got {num_labels}")
    if head_labels is not None and head_labels != num_labels:
        raise UsageError(f"{where} has a classification head with {head_labels} labels but num_labels="
                         f"{num_labels} was asked for; pass num_labels={head_labels} (or None) to use it, "
                         f"or load the base encoder instead of this fine-tuned checkpoint")
    if cfg.id2label is not None and len(cfg.id2label) != num_labels:
        cfg.id2label = None  # a base checkpoint's default labels say nothing about our task

    with torch.device("meta"):  # no memory yet: the checkpoint's tensors become the parameters
        model = Classifier(cfg, num_labels)
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise UsageError(f"{where}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all); "
                         f"this checkpoint does not fit a {cfg.model_type} classifier")
    for k, t in state.items():
        if t.shape != expected[k].shape:
            raise UsageError(f"{where}: key {k!r} has shape {tuple(t.shape)}, the config "
                             f"({cfg_path}) implies {tuple(expected[k].shape)}")
    missing = [k for k in expected if k not in state and k not in _head_keys(cfg)]
    if missing:
        raise UsageError(f"{where}: missing key {missing[0]!r} ({len(missing)} in all); "
                         "the weights file is incomplete or belongs to another architecture")
    state = {k: t.float() if t.is_floating_point() else t for k, t in state.items()}
    model.load_state_dict(state, strict=False, assign=True)

    # whatever the checkpoint lacked (the new head, maybe the pooler) is still on meta: create and init it
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
    return model


def save_pretrained(model: Classifier, directory: str | os.PathLike, labels: list[str] | None = None,
                    tokenizer=None) -> None:
    """Write config.json + model.safetensors under transformers' names, so that
    `AutoModelForSequenceClassification.from_pretrained(directory)` loads it with no missing keys.
    With `tokenizer` (a `tokenizers.Tokenizer`), also its files (`save_tokenizer`): then
    `pipeline("text-classification", directory)` works as on the checkpoint it came from."""
    from safetensors.torch import save_file
    cfg = model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    id2label = dict(enumerate(labels)) if labels else cfg.id2label
    id2label = id2label or {i: f"LABEL_{i}" for i in range(model.num_labels)}
    if len(id2label) != model.num_labels:
        raise ValueError(f"{len(id2label)} label names for a {model.num_labels}-label model")
    d = asdict(cfg)
    d.update(
        architectures=["RobertaForSequenceClassification" if cfg.roberta else "BertForSequenceClassification"],
        id2label={str(i): n for i, n in id2label.items()},
        label2id={n: i for i, n in id2label.items()},
    )
    if cfg.roberta:
        d.update(bos_token_id=0, eos_token_id=2)
    state = ours_to_hub(model.state_dict(), cfg)
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, cfg)
    atomic_write(directory / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(d, indent=2) + "\n"))


# --------------------------------------------------------------------------- tokenizers

