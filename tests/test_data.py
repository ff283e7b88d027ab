"""data.py against the real files in ../shared (dataset definitions of DESIGN.md), against the
tokenizer's own pair encoding and transformers' truncation, and the batching/sharding invariants."""
import csv
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import data
from helpers import hub_cache

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared folder with data/ and tokenizers/: $SHARED_DIR, default <repo>/../shared."""
    return Path(os.environ.get("SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_dir() / "data"
    if not (path / "acl" / "train.jsonl").is_file():
        pytest.skip(f"no shared data at {path} (set SHARED_DIR to the folder holding data/)")
    return path


@pytest.fixture(scope="session", params=["bert-base-uncased", "roberta-base"])
def tokenizers_pair(request):
    """(our tokenizers.Tokenizer, transformers' fast tokenizer as the oracle), both from the same files."""
    path = shared_dir() / "tokenizers" / request.param
    if not path.is_dir():
        pytest.skip(f"no tokenizer files at {path} (set SHARED_DIR)")
    transformers = pytest.importorskip("transformers")
    import model
    oracle_cls = transformers.BertTokenizerFast if "bert-" in request.param else transformers.RobertaTokenizerFast
    oracle = oracle_cls.from_pretrained(str(path))  # not vocab_file=: transformers 5 ignores it
    ids = oracle("The food was great, the staff friendly.")["input_ids"]
    assert oracle.unk_token_id not in ids and len(ids) > 8, "the oracle tokenizer itself is broken"
    return model.load_tokenizer(path), oracle


def label_counts(examples, num_labels):
    return np.bincount([e.label for e in examples], minlength=num_labels).tolist()


# ---------------------------------------------------------------------------- dataset definitions

def test_label_order_is_the_contract():
    assert data.DATASETS["restaurant"].labels == ["positive", "neutral", "negative"]
    assert data.DATASETS["acl"].labels == ["Uses", "Future", "CompareOrContrast", "Motivation", "Extends", "Background"]
    assert data.DATASETS["agnews"].labels == ["World", "Sports", "Business", "Sci/Tech"]
    assert data.DATASETS["acl"].splits == ("train", "dev", "test")


# acl counts from shared/data/README.md, by name
ACL = {"train": dict(Background=867, Uses=317, CompareOrContrast=305, Motivation=76, Extends=63, Future=60),
       "dev": dict(Background=59, Uses=21, CompareOrContrast=21, Motivation=5, Extends=4, Future=4),
       "test": dict(Background=71, Uses=26, CompareOrContrast=25, Motivation=7, Extends=5, Future=5)}


@pytest.mark.parametrize("name, split, counts", [
    ("restaurant", "train", [2164, 633, 805]),
    ("restaurant", "test", [728, 196, 196]),
    *[("acl", s, [ACL[s][label] for label in data.DATASETS["acl"].labels]) for s in ("train", "dev", "test")],
])
def test_counts_and_label_distribution(data_dir, name, split, counts):
    examples = data.load_split(name, split, data_dir)
    assert len(examples) == sum(counts)
    assert label_counts(examples, len(counts)) == counts


def test_restaurant_is_term_sentence_pair(data_dir):
    first = data.load_split("restaurant", "train", data_dir)[0]
    assert first == data.Example("staff", "But the staff was so horrible to us.", 2)
    assert all(e.text_pair is None for e in data.load_split("acl", "dev", data_dir))


def test_agnews_split_reproduces_train_test_split(data_dir):
    with open(data_dir / "agnews" / "test.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 7600
    labels = np.array([int(r[0]) - 1 for r in rows])
    assert np.bincount(labels).tolist() == [1900] * 4
    perm = np.random.default_rng(2022).permutation(7600)
    train, test = data.load_split("agnews", "train", data_dir), data.load_split("agnews", "test", data_dir)
    assert (len(train), len(test)) == (6840, 760)
    assert [e.text for e in test[:3]] == [rows[i][1] + " " + rows[i][2] for i in (2967, 2154, 2944)]
    assert label_counts(test, 4) == np.bincount(labels[perm[:760]], minlength=4).tolist()
    assert label_counts(train, 4) == np.bincount(labels[perm[760:]], minlength=4).tolist()
    assert [e.label for e in train] == labels[perm[760:]].tolist()
    # The literal backslash sequences are kept verbatim (see data.py's docstring).
    assert any("\\$" in e.text for e in train + test)


# ---------------------------------------------------------------------------- tokenization

def test_pair_encoding_matches_the_tokenizer(data_dir, tokenizers_pair):
    tok, oracle = tokenizers_pair
    examples = data.load_split("restaurant", "test", data_dir)
    enc = data.encode(examples, tok, max_length=512)
    assert enc.input_ids.dtype == np.int32 and enc.token_type_ids.dtype == np.int8
    assert enc.offsets.dtype == np.int64 and len(enc.offsets) == len(examples) + 1 == len(enc) + 1
    for i, e in enumerate(examples):
        ours = tok.encode(e.text, e.text_pair)
        assert enc.input_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist() == ours.ids
        assert enc.token_type_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist() == ours.type_ids
    # and the tokenizer's pair template is the checkpoint's: compare with transformers
    hf = oracle([e.text for e in examples[:50]], [e.text_pair for e in examples[:50]])["input_ids"]
    assert [enc.input_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist() for i in range(50)] == hf
    assert enc.labels.tolist() == [e.label for e in examples]


def test_truncation_keeps_special_tokens(data_dir, tokenizers_pair):
    tok, oracle = tokenizers_pair
    examples = data.load_split("restaurant", "train", data_dir)[:300]
    settings = (tok.truncation, tok.padding)
    enc = data.encode(examples, tok, max_length=12)
    assert (tok.truncation, tok.padding) == settings, "encode changed the caller's tokenizer"
    assert (enc.lengths <= 12).all() and (enc.lengths == 12).sum() > 200, "most of these pairs need truncating"
    hf = oracle([e.text for e in examples], [e.text_pair for e in examples],
                truncation="longest_first", max_length=12)["input_ids"]
    ours = [enc.input_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist() for i in range(len(examples))]
    assert ours == hf
    specials = {oracle.cls_token_id, oracle.sep_token_id}
    for ids in ours:  # [CLS] a [SEP] b [SEP] or <s> a </s></s> b </s>: specials survive truncation
        assert ids[0] == oracle.cls_token_id and ids[-1] == oracle.sep_token_id
        assert ids.count(oracle.sep_token_id) == tok.num_special_tokens_to_add(is_pair=True) - 1
        assert any(t not in specials for t in ids)


def test_single_texts_and_too_small_max_length(data_dir, tokenizers_pair):
    tok, oracle = tokenizers_pair
    examples = data.load_split("acl", "test", data_dir)
    enc = data.encode(examples, tok, max_length=64)
    hf = oracle([e.text for e in examples], truncation=True, max_length=64)["input_ids"]
    assert [enc.input_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist() for i in range(len(enc))] == hf
    with pytest.raises(ValueError, match="max_length"):
        data.encode(data.load_split("restaurant", "test", data_dir)[:5], tok, max_length=3)


# ---------------------------------------------------------------------------- batches

LENGTHS = np.random.default_rng(0).integers(5, 200, size=1001)


@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize("n, batch_size", [(1001, 64), (64, 64), (7, 3), (1, 8)])
def test_train_batches_are_a_permutation(n, batch_size, group_by_length):
    batches = data.train_batches(LENGTHS[:n], batch_size, seed=1, epoch=0, group_by_length=group_by_length)
    assert sorted(np.concatenate(batches).tolist()) == list(range(n))
    assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size
    assert all((np.diff(LENGTHS[b]) <= 0).all() for b in batches), "batches come longest first"


@pytest.mark.parametrize("group_by_length", [True, False])
def test_train_batches_deterministic_per_seed_and_epoch(group_by_length):
    def run(seed, epoch):
        return np.concatenate(data.train_batches(LENGTHS, 32, seed, epoch, group_by_length)).tolist()
    assert run(1, 0) == run(1, 0)
    assert run(1, 0) != run(1, 1)
    assert run(1, 0) != run(2, 0)
    np.random.seed(123)  # the global RNG must play no part
    assert run(1, 0) == run(1, 0)


def padding_fraction(lengths, batches):
    widths = [-(-int(lengths[b].max()) // 8) * 8 for b in batches]
    return 1 - lengths.sum() / sum(w * len(b) for w, b in zip(widths, batches))


def test_length_grouping_pads_less_than_random():
    grouped = data.train_batches(LENGTHS, 32, seed=0, epoch=0)
    random = np.array_split(np.random.default_rng(0).permutation(len(LENGTHS)), len(grouped))
    assert padding_fraction(LENGTHS, grouped) < padding_fraction(LENGTHS, random) / 3
    # the opt-out (--random-batches) pads like random batches do, and its batches are not length-sorted
    ungrouped = data.train_batches(LENGTHS, 32, seed=0, epoch=0, group_by_length=False)
    assert abs(padding_fraction(LENGTHS, ungrouped) - padding_fraction(LENGTHS, random)) < 0.05
    spread = [LENGTHS[b].max() - LENGTHS[b].min() for b in ungrouped[:-1]]
    assert np.median(spread) > 100  # lengths are uniform in [5, 200): a random batch of 32 spans most of it


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("micro", [4, 64])
def test_shards_reassemble_the_global_batches(world_size, micro):
    batches = data.train_batches(LENGTHS, 64, seed=3, epoch=2)  # 1001 = 15 x 64 + a short 41
    grads = np.random.default_rng(1).normal(size=(len(LENGTHS), 5))  # a stand-in per-example gradient
    for batch in batches:
        shards = [data.shard_batch(batch, r, world_size, micro) for r in range(world_size)]
        steps = math.ceil(math.ceil(len(batch) / world_size) / micro)  # micro-steps of the fullest rank
        assert all(len(s) == steps for s in shards), "every rank runs the same number of backward passes"
        pieces = np.concatenate([m for s in shards for m in s])
        assert sorted(pieces.tolist()) == sorted(batch.tolist())
        # the documented loss weighting: sum * world_size / len(batch), then DDP's mean over ranks
        per_rank = [sum(grads[m].sum(0) * world_size / len(batch) for m in s) for s in shards]
        np.testing.assert_allclose(np.mean(per_rank, axis=0), grads[batch].mean(0))


def test_short_batch_gives_empty_micro_batches():
    shards = [data.shard_batch(np.array([7]), r, 3, 8) for r in range(3)]
    assert [[m.tolist() for m in s] for s in shards] == [[[7]], [[]], [[]]]


@pytest.mark.parametrize("n", [1, 2, 139, 1001])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_eval_shards_cover_each_example_once(n, world_size):
    shards = [data.eval_batches(LENGTHS[:n], 16, r, world_size) for r in range(world_size)]
    everything = [i for s in shards for b in s for i in b.tolist()]
    assert sorted(everything) == list(range(n))
    assert all(0 < len(b) <= 16 for s in shards for b in s)


def toy_encoded(lengths):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.arange(1, offsets[-1] + 1, dtype=np.int32)  # token value = its flat position + 1, never 0
    types = (ids % 2).astype(np.int8)
    return data.Encoded(ids, types, offsets, np.arange(len(lengths), dtype=np.int64) % 3)


def test_collate_pads_to_the_batch_longest_rounded_to_8():
    enc = toy_encoded([3, 17, 9, 126, 127])
    out = data.collate(enc, np.array([2, 0, 1]), pad_id=1)
    assert out["input_ids"].shape == (3, 24)  # longest 17 -> 24, not 127
    assert out["attention_mask"].sum(1).tolist() == [9, 3, 17]
    for row, i in enumerate([2, 0, 1]):
        seq, types = (a[enc.offsets[i]:enc.offsets[i + 1]].tolist() for a in (enc.input_ids, enc.token_type_ids))
        assert out["input_ids"][row, :len(seq)].tolist() == seq
        assert out["token_type_ids"][row, :len(seq)].tolist() == types
        assert (out["input_ids"][row, len(seq):] == 1).all() and (out["token_type_ids"][row, len(seq):] == 0).all()
    assert out["labels"].tolist() == [2, 0, 1]
    assert all(t.dtype == data.torch.int64 for t in out.values())
    assert data.collate(enc, np.array([3]), 0, max_length=128)["input_ids"].shape == (1, 128)
    assert data.collate(enc, np.array([4]), 0, max_length=127)["input_ids"].shape == (1, 127)  # never above max_length


def test_collate_empty_batch():
    out = data.collate(toy_encoded([4, 5]), np.array([], dtype=np.int64), pad_id=0)
    assert out["input_ids"].shape[0] == 0 and out["labels"].shape == (0,)


# ---------------------------------------------------------------------------- bad input

def test_unknown_dataset_and_split(data_dir):
    with pytest.raises(ValueError, match="restaurant, acl, agnews"):
        data.load_split("imdb", "train", data_dir)
    with pytest.raises(ValueError, match="train, test"):
        data.load_split("restaurant", "dev", data_dir)


def test_missing_file_names_path_and_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load_split("acl", "train", tmp_path)
    assert str(tmp_path / "acl" / "train.jsonl") in str(err.value) and "--data-dir" in str(err.value)


@pytest.fixture
def acl_copy(data_dir, tmp_path):
    shutil.copytree(data_dir / "acl", tmp_path / "acl")
    return tmp_path


def test_bad_label_names_file_and_line(acl_copy):
    path = acl_copy / "acl" / "train.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[4] = json.dumps({"text": "a citation", "label": "Praise", "metadata": {}}) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:5: label 'Praise'")):
        data.load_split("acl", "train", acl_copy)


def test_empty_split(acl_copy):
    (acl_copy / "acl" / "dev.jsonl").write_text("")
    with pytest.raises(ValueError, match="no examples"):
        data.load_split("acl", "dev", acl_copy)


# ---------------------------------------------------------------------------- the Hub path, offline



@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_cache_is_read_without_data_dir(data_dir, offline_cache):
    hub_cache(offline_cache, "dataset", "zapsdcn/citation_intent",
                   {"citation_intent_train.jsonl": data_dir / "acl" / "train.jsonl"})
    xml = data_dir / "restaurant" / "Restaurants_Test_Gold.xml"
    hub_cache(offline_cache, "dataset", "alexcadillon/SemEval2014Task4",
                   {"ABSA_Gold_TestData/Restaurants_Test_Gold.xml": xml})
    # SetFit/ag_news stores text = title + " " + description and labels 0-3, as the HF ag_news loader made them
    with open(data_dir / "agnews" / "test.csv", encoding="utf-8", newline="") as f:
        jsonl = "".join(json.dumps({"text": r[1] + " " + r[2], "label": int(r[0]) - 1}) + "\n" for r in csv.reader(f))
    hub_cache(offline_cache, "dataset", "SetFit/ag_news", {"test.jsonl": jsonl.encode()})
    for name, split in [("acl", "train"), ("restaurant", "test"), ("agnews", "train")]:
        assert data.load_split(name, split) == data.load_split(name, split, data_dir)


def test_hub_empty_cache_error_names_repo_file_and_data_dir(offline_cache):
    offline_cache.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        data.load_split("acl", "dev")
    message = str(err.value)
    assert "zapsdcn/citation_intent" in message and "citation_intent_dev.jsonl" in message
    assert "--data-dir" in message and "acl/dev.jsonl" in message
