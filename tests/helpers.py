"""Shared test helpers, imported by name (`from helpers import write_tiny_encoder`): paths, tiny random
checkpoints and a tiny learnable task, a fake Hub cache. Pytest's hooks and fixtures live in conftest.py."""

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is a flat folder of modules, not a package

# the variable .ci/run sets; conftest.py's hooks turn every skip into a failure under it
REQUIRE_ALL = "REQUIRE_ALL_TESTS"


def shared_path() -> Path:
    """`../shared` beside the checkout, or wherever SHARED_DIR points."""
    return Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))


def real_texts(data_dir: Path, acl_split: str, n_acl: int, n_agnews: int, restaurant_file: str, n_pairs: int):
    """(single texts, (term, sentence) pairs) from the real datasets: acl and AG News texts, restaurant pairs."""
    import csv
    import xml.etree.ElementTree as ET
    with open(data_dir / "acl" / f"{acl_split}.jsonl") as f:
        singles = [json.loads(line)["text"] for line in f][:n_acl]
    with open(data_dir / "agnews" / "test.csv", newline="") as f:
        singles += [f"{title} {desc}" for _, title, desc in list(csv.reader(f))[:n_agnews]]
    root = ET.parse(data_dir / "restaurant" / restaurant_file).getroot()
    pairs = [(t.get("term"), s.findtext("text")) for s in root.iter("sentence") for t in s.iter("aspectTerm")]
    return singles, pairs[:n_pairs]


# metrics.jsonl keys that measure time, which differs from run to run; everything else must not
TIMINGS = ("examples_per_s", "tokens_per_s", "eval_time_s")


def without_timings(records: list[dict]) -> list[dict]:
    """metrics.jsonl records without TIMINGS: what two runs of the same training must agree on exactly."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache: Path, kind: str, repo: str, files: dict) -> Path:
    """`files` (name in the repo -> a path to copy, or bytes) as the Hub `kind` ("model" or "dataset") repo
    `repo` in huggingface_hub's cache layout under `cache`, as a download would have left them; returns
    the snapshot folder."""
    root = cache / f"{kind}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(HUB_COMMIT)
    snapshot = root / "snapshots" / HUB_COMMIT
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
    return snapshot


def tiny_hf_config(kind: str, **overrides):
    """A tiny transformers config. initializer_range is large so that logits are far from zero
    and a parity test can tell a wrong model from a right one."""
    from transformers import BertConfig, RobertaConfig
    common = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, initializer_range=0.2, num_labels=3)
    if kind == "bert":
        return BertConfig(**{**common, "max_position_embeddings": 64, **overrides})
    return RobertaConfig(**{**common, "max_position_embeddings": 66, "pad_token_id": 1, "bos_token_id": 0,
                            "eos_token_id": 2, "type_vocab_size": 1, **overrides})


def tiny_hf_model(kind: str, seed: int = 0, **overrides):
    from transformers import BertForSequenceClassification, RobertaForSequenceClassification
    torch.manual_seed(seed)
    cls = BertForSequenceClassification if kind == "bert" else RobertaForSequenceClassification
    return cls(tiny_hf_config(kind, **overrides)).eval()


def random_batch(vocab_size: int, pad_id: int, lengths, seed: int = 0, pair_at: int | None = None):
    """input_ids / attention_mask / token_type_ids for a right-padded batch with the given lengths."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(3, vocab_size, (len(lengths), T), generator=g)
    ids[ids == pad_id] = pad_id + 2
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids[mask == 0] = pad_id
    types = torch.zeros_like(ids)
    if pair_at is not None:
        types[:, pair_at:] = 1
        types[mask == 0] = 0
    return ids, mask, types


# ----------------------------------------------------------------------------- a tiny learnable task

KEYWORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]  # one per acl label, in id order
FILLER = [f"w{i}" for i in range(60)]


def write_tiny_encoder(directory, kind: str = "bert", dropout: float = 0.0, seed: int = 0):
    """A tiny random encoder without a head, in the Hub layout, with a WordPiece vocab.txt whose
    words make the keyword task below; written by model.py itself (no transformers needed)."""
    from safetensors.torch import save_file

    import model
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + KEYWORDS + FILLER
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = model.Config(model_type=kind, vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=80,
                       hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, initializer_range=0.1)
    torch.manual_seed(seed)
    net = model.Classifier(cfg, num_labels=2)
    state = {k: v for k, v in model.ours_to_hub(net.state_dict(), cfg).items() if not k.startswith("classifier.")}
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"model_type": kind, **{
        k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "intermediate_size", "max_position_embeddings", "hidden_dropout_prob",
                                     "attention_probs_dropout_prob", "initializer_range")}}))
    return directory


def write_keyword_task(directory, sizes=(301, 50, 101), seed: int = 0):
    """An acl-format data dir (acl/{train,dev,test}.jsonl) whose label is the one keyword in the text."""
    import random
    rng = random.Random(seed)
    labels = ["Uses", "Future", "CompareOrContrast", "Motivation", "Extends", "Background"]
    (directory / "acl").mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "dev", "test"), sizes):
        with open(directory / "acl" / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                k = rng.randrange(6)
                words = rng.choices(FILLER, k=rng.randrange(2, 30))
                words.insert(rng.randrange(len(words) + 1), KEYWORDS[k])
                f.write(json.dumps({"text": " ".join(words), "label": labels[k], "metadata": {}}) + "\n")
    return directory
