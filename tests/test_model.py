"""model.py against transformers (the numerical oracle): logits, key layouts, export, tokenizers, Hub cache."""

import csv
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

import model
from helpers import ROOT, hub_cache, random_batch, tiny_hf_config, tiny_hf_model

# ----------------------------------------------------------------------------- logits parity


def _compare(ours, hf, kind, lengths, pair_at=None, atol=1e-5):
    cfg = hf.config
    ids, mask, types = random_batch(cfg.vocab_size, cfg.pad_token_id, lengths, seed=len(lengths), pair_at=pair_at)
    if kind == "roberta":
        types = None  # RoBERTa has one token type
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours.eval()(ids, mask, types)
    assert want.abs().max() > 0.05, "oracle logits are ~0: the comparison would prove nothing"
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("lengths,pair_at", [([7], None), ([13, 5, 9], None), ([16, 3, 11, 16], 6), ([1, 20], 4)])
def test_logits_equal_transformers(tiny_checkpoint, lengths, pair_at):
    kind, path, hf = tiny_checkpoint
    ours = model.from_pretrained(path)
    assert ours.num_labels == 3 and ours.config.roberta == (kind == "roberta")
    _compare(ours, hf, kind, lengths, pair_at)


def test_roberta_positions_skip_padding(tmp_path):
    """Left padding shifts every token; RoBERTa's positions count real tokens only, so their states must not move."""
    hf = tiny_hf_model("roberta")
    hf.save_pretrained(tmp_path)
    ours = model.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    left = torch.tensor([[1, 1, 0, 5, 6, 7, 2]])
    with torch.no_grad():
        a = ours.hidden_states(ids, torch.ones_like(ids))
        b = ours.hidden_states(left, (left != 1).long())
        c = hf.roberta(input_ids=left, attention_mask=(left != 1).long()).last_hidden_state
    torch.testing.assert_close(a, b[:, 2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(b[:, 2:], c[:, 2:], atol=1e-5, rtol=0)


def test_training_mode_dropout_and_gradients(tiny_checkpoint):
    _, path, _ = tiny_checkpoint
    ours = model.from_pretrained(path).train()
    ids, mask, _ = random_batch(99, ours.config.pad_token_id, [10, 6])
    a, b = ours(ids, mask), ours(ids, mask)
    assert not torch.equal(a, b), "dropout should make two training-mode passes differ"
    a.sum().backward()
    grads = {n: p.grad for n, p in ours.named_parameters()}
    assert all(g is not None for n, g in grads.items() if "token_type" not in n), "every weight gets a gradient"
    pad = ours.config.pad_token_id
    assert grads["embeddings.word_embeddings.weight"][pad].abs().sum() == 0, "padding row is never updated"


# ----------------------------------------------------------------------------- checkpoint key layouts


def _save_state(tmp_path, hf, state, filename="model.safetensors"):
    hf.config.to_json_file(tmp_path / "config.json")
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / filename, metadata={"format": "pt"})
    else:
        torch.save(state, tmp_path / filename)


def test_legacy_gamma_beta_names(tmp_path):
    hf = tiny_hf_model("bert")
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in hf.state_dict().items()}
    assert any(k.endswith("gamma") for k in state)
    _save_state(tmp_path, hf, state)
    _compare(model.from_pretrained(tmp_path), hf, "bert", [9, 4])


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_pytorch_model_bin_only(tmp_path, kind):
    hf = tiny_hf_model(kind)
    _save_state(tmp_path, hf, hf.state_dict(), "pytorch_model.bin")
    assert not (tmp_path / "model.safetensors").exists()
    _compare(model.from_pretrained(tmp_path), hf, kind, [9, 4])


def test_unprefixed_bare_encoder_gets_new_head(tmp_path):
    """A bare BertModel checkpoint (keys without `bert.`, like all-MiniLM-L6-v2) with pre-training heads beside it."""
    hf = tiny_hf_model("bert")
    state = dict(hf.bert.state_dict())
    state["cls.predictions.bias"] = torch.zeros(99)  # a pre-training head: dropped by the table
    state["embeddings.position_ids"] = torch.arange(64)[None]
    _save_state(tmp_path, hf, state)
    ours = model.from_pretrained(tmp_path, num_labels=5)
    assert ours.classifier.weight.shape == (5, 32)
    ids, mask, types = random_batch(99, 0, [12, 7], pair_at=3)
    with torch.no_grad():
        want = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        torch.testing.assert_close(ours.eval().hidden_states(ids, mask, types), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.pooler(want), hf.bert.pooler(want), atol=1e-6, rtol=0)  # pooler loaded


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_new_head_is_initialised_like_the_reference(tmp_path, kind):
    """normal(0, initializer_range), zero biases. The range is a value no code would hard-code (the tiny
    configs' own 0.2 or the Hub's 0.02 would let a hard-coded std pass)."""
    init_range = 0.037
    hf = tiny_hf_model(kind, initializer_range=init_range)
    torch.save({k: v for k, v in hf.state_dict().items() if not k.startswith("classifier.")},
               tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    torch.manual_seed(0)
    ours = model.from_pretrained(tmp_path, num_labels=4)
    head = ours.classifier
    new = [head.dense, head.out_proj] if kind == "roberta" else [head]
    for layer in new:
        w = layer.weight
        assert not w.is_meta
        # 128 or 1024 draws: the sample std lies within 25% of the true one with near certainty
        assert 0.75 * init_range < w.std().item() < 1.25 * init_range, (layer, w.std().item())
        assert abs(w.mean().item()) < 0.3 * init_range
        assert layer.bias.abs().sum() == 0
    assert new[-1].weight.shape == (4, 32)
    torch.manual_seed(0)
    again = model.from_pretrained(tmp_path, num_labels=4)
    assert torch.equal(again.classifier.weight if kind == "bert" else again.classifier.out_proj.weight,
                       new[-1].weight), "the head's init follows torch's seed"


def test_sharded_safetensors(tmp_path):
    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _compare(model.from_pretrained(tmp_path), hf, "bert", [11, 3])


# ----------------------------------------------------------------------------- export round trip


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_export_loads_in_transformers(tmp_path, kind):
    from transformers import AutoModelForSequenceClassification
    hf = tiny_hf_model(kind, seed=3)
    hf.save_pretrained(tmp_path / "hf")
    ours = model.from_pretrained(tmp_path / "hf")
    with torch.no_grad():  # make the weights ours, not a copy of the oracle's
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(ours, tmp_path / "ours", labels=["a", "b", "c"])
    back, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert back.config.id2label == {0: "a", 1: "b", 2: "c"}
    _compare(ours, back.eval(), kind, [10, 4, 7], pair_at=None if kind == "roberta" else 3)
    again = model.from_pretrained(tmp_path / "ours")  # and ours reads its own export
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


# ----------------------------------------------------------------------------- the real MiniLM checkpoint


def _real_sentences(data_dir, n):
    with open(data_dir / "acl" / "test.jsonl") as f:
        texts = [json.loads(line)["text"] for line in f][:n]
    return texts


def test_real_minilm_matches_transformers(minilm_dir, data_dir):
    from transformers import BertForSequenceClassification, BertModel
    texts = _real_sentences(data_dir, 6)
    tok = model.load_tokenizer(minilm_dir)
    encs = tok.encode_batch(texts)
    T = max(len(e.ids) for e in encs)
    ids = torch.tensor([e.ids + [0] * (T - len(e.ids)) for e in encs])
    mask = (torch.arange(T)[None] < torch.tensor([len(e.ids) for e in encs])[:, None]).long()

    torch.manual_seed(0)
    ours = model.from_pretrained(minilm_dir, num_labels=6).eval()
    bare = BertModel.from_pretrained(minilm_dir).eval()
    hf = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=6).eval()
    hf.classifier.load_state_dict(ours.classifier.state_dict())
    with torch.no_grad():
        want_h = bare(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours.hidden_states(ids, mask), want_h, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours(ids, mask), hf(input_ids=ids, attention_mask=mask).logits, atol=1e-4, rtol=0)
    assert want_h.abs().max() > 1


# ----------------------------------------------------------------------------- tokenizers


def _texts_and_pairs(data_dir):
    with open(data_dir / "acl" / "train.jsonl") as f:
        texts = [json.loads(line)["text"] for line in f][:250]
    with open(data_dir / "agnews" / "test.csv", newline="") as f:
        texts += [f"{title} {desc}" for _, title, desc in list(csv.reader(f))[:150]]
    pairs = []
    root = ET.parse(data_dir / "restaurant" / "Restaurants_Test_Gold.xml").getroot()
    for sentence in root.iter("sentence"):
        for term in sentence.iter("aspectTerm"):
            pairs.append((term.get("term"), sentence.findtext("text")))
    return texts, pairs[:200]


@pytest.mark.parametrize("name,fast", [("bert-base-uncased", "BertTokenizerFast"),
                                       ("allenai/scibert_scivocab_uncased", "BertTokenizerFast"),
                                       ("roberta-base", "RobertaTokenizerFast")])
def test_tokenizer_matches_transformers(shared_dir, name, fast):
    import transformers
    directory = shared_dir / "tokenizers" / name
    oracle = getattr(transformers, fast).from_pretrained(str(directory))
    assert oracle.unk_token_id not in oracle("The restaurant served great food.")["input_ids"], "oracle is broken"
    ours = model.load_tokenizer(directory)
    texts, pairs = _texts_and_pairs(shared_dir / "data")
    assert len(texts) + len(pairs) >= 500
    want = oracle(texts)
    got = ours.encode_batch(texts)
    assert [e.ids for e in got] == want["input_ids"]
    want = oracle([a for a, _ in pairs], [b for _, b in pairs])
    got = ours.encode_batch(pairs)
    assert [e.ids for e in got] == want["input_ids"]
    if "token_type_ids" in want:
        assert [e.type_ids for e in got] == want["token_type_ids"]
        assert any(1 in t for t in want["token_type_ids"])
    else:  # RoBERTa: one token type; ours must give zeros too
        assert all(set(e.type_ids) == {0} for e in got)


def test_tokenizer_json_settings_are_cleared(minilm_dir):
    """MiniLM's tokenizer.json pads and truncates to 128; data.py must be the one deciding that."""
    tok = model.load_tokenizer(minilm_dir)
    assert len(tok.encode("short").ids) == 3
    assert len(tok.encode("word " * 300).ids) == 302


def test_scibert_lowercases_without_config(shared_dir):
    tok = model.load_tokenizer(shared_dir / "tokenizers" / "allenai/scibert_scivocab_uncased")
    assert tok.encode("The PROTEIN").ids == tok.encode("the protein").ids


# ----------------------------------------------------------------------------- the Hub path, offline


def _run_offline(cache, code):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_hub_alias_from_offline_cache(tmp_path, shared_dir):
    hf = tiny_hf_model("roberta", vocab_size=50265)
    hf.save_pretrained(tmp_path / "src")
    tokdir = shared_dir / "tokenizers" / "roberta-base"
    hub_cache(tmp_path / "cache", "model", "FacebookAI/roberta-base", {
        "config.json": tmp_path / "src" / "config.json", "model.safetensors": tmp_path / "src" / "model.safetensors",
        "vocab.json": tokdir / "vocab.json", "merges.txt": tokdir / "merges.txt"})
    code = ("import model, torch; m = model.from_pretrained('roberta-base').eval();"
            "t = model.load_tokenizer('roberta-base');"
            "ids = torch.tensor([t.encode('good food').ids]); print(t.encode('good food').ids);"
            "print(m(ids, torch.ones_like(ids)).tolist())")
    out = _run_offline(tmp_path / "cache", code)
    assert out.returncode == 0, out.stderr
    ids_line, logits_line = out.stdout.strip().splitlines()
    ids = torch.tensor([json.loads(ids_line)])
    assert ids[0, 0] == 0 and ids[0, -1] == 2
    with torch.no_grad():
        want = hf(input_ids=ids).logits
    torch.testing.assert_close(torch.tensor(json.loads(logits_line)), want, atol=1e-5, rtol=0)


def test_hub_offline_with_empty_cache_is_a_clear_error(tmp_path):
    out = _run_offline(tmp_path, "import model; model.from_pretrained('scibert', num_labels=6)")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError") and "allenai/scibert_scivocab_uncased" in last
    assert "local directory" in last and "config.json" in last


# ----------------------------------------------------------------------------- bad input


def test_truncated_weights_file(tmp_path):
    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        model.from_pretrained(tmp_path)


def test_corrupt_bin_file(tmp_path):
    hf = tiny_hf_model("bert")
    hf.config.to_json_file(tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(ValueError, match="pytorch_model.bin.*truncated or corrupt"):
        model.from_pretrained(tmp_path)


def test_missing_config(tmp_path):
    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model.from_pretrained(tmp_path)


def test_not_a_directory_nor_repo(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hub model repo"):
        model.from_pretrained(str(tmp_path / "does" / "not" / "exist"))


def test_unknown_model_type(tmp_path):
    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        model.from_pretrained(tmp_path)


def test_config_without_model_type_is_bert(tmp_path):
    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _compare(model.from_pretrained(tmp_path), hf, "bert", [5, 8])


def test_num_labels_errors(tmp_path):
    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="at least 2"):
        model.from_pretrained(tmp_path, num_labels=1)
    with pytest.raises(ValueError, match="head with 3 labels but num_labels=4"):
        model.from_pretrained(tmp_path, num_labels=4)
    torch.save(hf.bert.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no classification head \(a pretrained encoder, not a fine-tuned model\): give a saved model.*or pass num_labels"):
        model.from_pretrained(tmp_path)


def test_wrong_shapes_and_unknown_keys(tmp_path):
    hf = tiny_hf_model("bert")
    state = hf.state_dict()
    _save_state(tmp_path, hf, {**state, "bert.encoder.layer.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="unexpected key 'encoder.layer.0.extra.weight'"):
        model.from_pretrained(tmp_path)
    cfg = tiny_hf_config("bert", intermediate_size=40)
    cfg.to_json_file(tmp_path / "config.json")
    _save_state(tmp_path, hf, state)
    hf.config = cfg
    cfg.to_json_file(tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"intermediate\.dense\.(weight|bias)' has shape \(37"):
        model.from_pretrained(tmp_path)
    del state["bert.encoder.layer.1.output.dense.bias"]
    _save_state(tmp_path, tiny_hf_model("bert"), state)
    with pytest.raises(ValueError, match="missing key 'encoder.layer.1.output.dense.bias'"):
        model.from_pretrained(tmp_path)
