"""Tokenizers that encode exactly like transformers' AutoTokenizer, built with the `tokenizers` library alone.

`load_tokenizer` reads tokenizer.json where a checkpoint has one, and otherwise rebuilds the tokenizer from
its vocabulary files (vocab.txt for WordPiece; vocab.json + merges.txt for byte-level BPE) with the settings
transformers honours (lower-casing, special tokens, the pair template). `save_tokenizer` writes the files
transformers needs to load it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common import UsageError
from hub import _Source, atomic_write


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


def save_tokenizer(tok, directory: str | os.PathLike, cfg) -> None:
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
