"""Every Config field the encoder reads changes the numbers, and ours change exactly as transformers' do.

Each case saves a tiny transformers checkpoint whose config.json sets one field away from the value
the other parity tests use, loads it through `model.from_pretrained` (so the field travels
config.json -> Config -> modules), and compares logits with transformers'. Each case also checks its
own power: transformers given the usual value (or ignoring the input the field governs) computes
other numbers, so a model that ignored the field could not pass.

Dropout probabilities are compared in training mode under one torch seed. With a single dropout
probability above zero, both models draw the same masks in the same order (p = 0 draws nothing,
in nn.Dropout and in SDPA), so train-mode logits are equal; measured: difference 0.0.
"""

import json

import pytest
import torch

import model
import train
from helpers import FILLER, KEYWORDS, random_batch, tiny_hf_model

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5  # fp32, the same ops in the same order: the parity tests' tolerance


def _pair(kind, tmp_path, seed=0, edit=None, **overrides):
    """(ours, transformers) from one tiny random checkpoint with `overrides` in its config."""
    hf = tiny_hf_model(kind, seed=seed, **overrides)
    if edit:
        edit(hf)
    hf.save_pretrained(tmp_path)
    return model.from_pretrained(tmp_path), hf


def _logits(net, ids, mask, types, train_seed=None):
    """Eval-mode logits, or train-mode ones drawn under `train_seed`."""
    net.train(train_seed is not None)
    if train_seed is not None:
        torch.manual_seed(train_seed)
    with torch.no_grad():
        if isinstance(net, model.Classifier):
            return net(ids, mask, types)
        return net(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


def _shrink_embeddings(hf):
    """Embedding rows 100x smaller: the embedding LayerNorm then sees a variance of about 1e-5, where
    its eps matters (with the usual init, eps 1e-5 and 1e-12 give logits closer than ATOL)."""
    with torch.no_grad():
        for emb in (hf.base_model.embeddings.word_embeddings, hf.base_model.embeddings.position_embeddings,
                    hf.base_model.embeddings.token_type_embeddings):
            emb.weight.mul_(0.01)


def _rebuilt(hf, **overrides):
    """transformers' model with the same weights and other config values."""
    cfg = hf.config.to_dict()
    cfg.update(overrides)
    other = type(hf)(type(hf.config).from_dict(cfg))
    other.load_state_dict(hf.state_dict())
    return other


# ----------------------------------------------------------------------------- layer_norm_eps


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("eps", [1e-5, 1e-1])  # roberta-base's real value, and one no default is near
def test_layer_norm_eps(tmp_path, kind, eps):
    ours, hf = _pair(kind, tmp_path, layer_norm_eps=eps, edit=_shrink_embeddings)
    assert all(m.eps == eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm))
    ids, mask, types = random_batch(99, hf.config.pad_token_id, [11, 6, 9], seed=1,
                                    pair_at=None if kind == "roberta" else 4)
    types = None if kind == "roberta" else types
    want = _logits(hf, ids, mask, types)
    torch.testing.assert_close(_logits(ours, ids, mask, types), want, atol=ATOL, rtol=0)
    usual = _logits(_rebuilt(hf, layer_norm_eps=1e-12), ids, mask, types)
    assert (usual - want).abs().max() > 100 * ATOL, "eps does not change transformers' logits: no power"


# ----------------------------------------------------------------------------- token types


@pytest.mark.parametrize("type_vocab_size", [1, 3])
def test_bert_type_vocab_size(tmp_path, type_vocab_size):
    ours, hf = _pair("bert", tmp_path, type_vocab_size=type_vocab_size)
    assert ours.embeddings.token_type_embeddings.weight.shape == (type_vocab_size, 32)
    ids, mask, _ = random_batch(99, 0, [12, 8, 10], seed=2)
    types = (torch.arange(12) * type_vocab_size // 12).expand(3, 12).clone()  # every type id occurs
    types[mask == 0] = 0
    want = _logits(hf, ids, mask, types)
    torch.testing.assert_close(_logits(ours, ids, mask, types), want, atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(ours, ids, mask, None), _logits(hf, ids, mask, None), atol=ATOL, rtol=0)
    if type_vocab_size > 1:  # the types reach the numbers
        assert (_logits(hf, ids, mask, None) - want).abs().max() > 100 * ATOL


def test_roberta_with_two_token_types(tmp_path):
    """Some RoBERTa-layout checkpoints have type_vocab_size 2; their type ids must be used too."""
    ours, hf = _pair("roberta", tmp_path, type_vocab_size=2)
    ids, mask, types = random_batch(99, 1, [12, 8], seed=3, pair_at=5)
    want = _logits(hf, ids, mask, types)
    torch.testing.assert_close(_logits(ours, ids, mask, types), want, atol=ATOL, rtol=0)
    assert (_logits(hf, ids, mask, None) - want).abs().max() > 100 * ATOL


# ----------------------------------------------------------------------------- pad_token_id


def test_roberta_pad_token_id(tmp_path):
    """RoBERTa's positions start at pad + 1 and skip pads: with pad id 4, not the usual 1."""
    ours, hf = _pair("roberta", tmp_path, pad_token_id=4)
    assert ours.config.max_length == 66 - 5
    ids, mask, _ = random_batch(99, 4, [13, 6, 9], seed=4)
    assert (ids == 4).any() and not (ids == 1).any()
    want = _logits(hf, ids, mask, None)
    torch.testing.assert_close(_logits(ours, ids, mask, None), want, atol=ATOL, rtol=0)
    # a model that counted positions from the usual pad id 1 computes other numbers
    assert (_logits(_rebuilt(hf, pad_token_id=1), ids, mask, None) - want).abs().max() > 100 * ATOL


@pytest.mark.parametrize("kind,pad", [("bert", 5), ("roberta", 4)])
def test_pad_token_id_row_gets_no_gradient_like_transformers(tmp_path, kind, pad):
    """The embedding's padding_idx comes from pad_token_id: its row gets no gradient, even where the
    pad token is attended to (no attention mask, as here; a masked pad never reaches the loss).
    Dropout off, so the gradients of every parameter can be compared with transformers'."""
    ours, hf = _pair(kind, tmp_path, pad_token_id=pad, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, _, _ = random_batch(99, pad, [10, 4, 7], seed=5)
    assert (ids == pad).sum() > 5
    labels = torch.tensor([0, 2, 1])
    ours.train()
    hf.train()
    torch.nn.functional.cross_entropy(ours(ids), labels).backward()
    hf(input_ids=ids, labels=labels).loss.backward()
    hf_grads = model.hub_to_ours({k: p.grad for k, p in hf.named_parameters()}, ours.config)
    for name, p in ours.named_parameters():
        if "token_type" in name and kind == "roberta":
            continue
        torch.testing.assert_close(p.grad, hf_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    word = ours.embeddings.word_embeddings.weight.grad
    assert word[pad].abs().sum() == 0 and word[ids[0, 0]].abs().sum() > 0


# ----------------------------------------------------------------------------- dropout probabilities


DROPOUTS = {  # one probability at a time; the other two are 0
    "hidden_dropout_prob": dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.0, classifier_dropout=0.0),
    "attention_probs_dropout_prob": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3,
                                         classifier_dropout=0.0),
    "classifier_dropout": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.3),
    "classifier_dropout=None": dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.0,
                                    classifier_dropout=None),  # the head then uses hidden_dropout_prob
}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("case", list(DROPOUTS))
def test_each_dropout_probability_is_read_from_its_own_field(tmp_path, kind, case):
    ours, hf = _pair(kind, tmp_path, **DROPOUTS[case])
    ids, mask, _ = random_batch(99, hf.config.pad_token_id, [12, 7, 9], seed=6)
    want = _logits(hf, ids, mask, None, train_seed=7)
    assert (want - _logits(hf, ids, mask, None)).abs().max() > 0.01, "no dropout happened: no power"
    torch.testing.assert_close(_logits(ours, ids, mask, None, train_seed=7), want, atol=ATOL, rtol=0)


def test_classifier_dropout_one_drops_the_whole_head_input(tmp_path):
    """A site check that needs no RNG agreement: classifier_dropout=1 zeroes what the last Linear
    reads, so train-mode logits are its bias, whatever the input; the encoder's dropouts stay off."""
    for kind in ("bert", "roberta"):
        ours, _ = _pair(kind, tmp_path / kind, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        classifier_dropout=1.0)
        last = ours.classifier.out_proj if kind == "roberta" else ours.classifier
        with torch.no_grad():
            last.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        ids, mask, _ = random_batch(99, ours.config.pad_token_id, [9, 5], seed=8)
        got = _logits(ours, ids, mask, None, train_seed=0)
        torch.testing.assert_close(got, last.bias.expand(2, 3), atol=0, rtol=0)
        assert (_logits(ours, ids, mask, None) - got).abs().max() > 0.05  # eval mode: no dropout


# ----------------------------------------------------------------------------- the position table


def test_small_position_table_roberta(tmp_path):
    """66 positions with pad id 1: positions 2..65 hold 64 tokens, the longest input there is."""
    ours, hf = _pair("roberta", tmp_path)
    assert (hf.config.max_position_embeddings, hf.config.pad_token_id) == (66, 1)
    assert ours.config.max_length == 64
    ids, mask, _ = random_batch(99, 1, [64, 30], seed=9)
    want = _logits(hf, ids, mask, None)
    torch.testing.assert_close(_logits(ours, ids, mask, None), want, atol=ATOL, rtol=0)
    with pytest.raises(IndexError):  # what the model alone does with a 65th token; train.py must stop it first
        ours(torch.full((1, 65), 5), torch.ones(1, 65, dtype=torch.long))


def test_small_position_table_bert(tmp_path):
    ours, hf = _pair("bert", tmp_path, max_position_embeddings=20)
    assert ours.config.max_length == 20
    ids, mask, types = random_batch(99, 0, [20, 11], seed=10, pair_at=7)
    torch.testing.assert_close(_logits(ours, ids, mask, types), _logits(hf, ids, mask, types), atol=ATOL, rtol=0)


def _roberta_encoder_dir(directory):
    """A tiny RoBERTa-layout encoder (66 positions, pad id 1) with a WordPiece vocab whose special ids
    are RoBERTa's (<s> 0, <pad> 1, </s> 2), so train.py pads with the model's pad id."""
    hf = tiny_hf_model("roberta")
    hf.roberta.save_pretrained(directory)
    vocab = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"] + KEYWORDS + FILLER
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return directory


def _long_texts_task(directory):
    """acl-format files whose texts are 70+ tokens long, so every input is cut at --max-length."""
    labels = ["Uses", "Future", "CompareOrContrast", "Motivation", "Extends", "Background"]
    (directory / "acl").mkdir(parents=True)
    for split, n in (("train", 12), ("dev", 6), ("test", 6)):
        with open(directory / "acl" / f"{split}.jsonl", "w") as f:
            for i in range(n):
                words = [FILLER[(i * 7 + j) % len(FILLER)] for j in range(70)] + [KEYWORDS[i % 6]]
                f.write(json.dumps({"text": " ".join(words), "label": labels[i % 6]}) + "\n")
    return directory


def test_train_py_max_length_is_the_position_table(tmp_path):
    """--max-length 65 on that model is train.py's one-line error (not an IndexError mid-training);
    --max-length 64 trains, on inputs cut at 64 tokens."""
    enc, task = _roberta_encoder_dir(tmp_path / "enc"), _long_texts_task(tmp_path / "data")
    common = ["--dataset", "acl", "--model", str(enc), "--data-dir", str(task), "--out", str(tmp_path / "runs"),
              "--epochs", "1", "--batch-size", "6", "--lr", "1e-3"]
    with pytest.raises(ValueError, match=r"--max-length 65 is above what .* can encode \(64 positions\); "
                                         r"use --max-length 64 or less"):
        train.main(common + ["--max-length", "65"])
    (result,) = train.main(common + ["--max-length", "64"])
    assert result["steps"] == 2 and result["test"]["n"] == 6
    tok = model.load_tokenizer(enc)
    assert len(tok.encode(json.loads((task / "acl" / "test.jsonl").read_text().splitlines()[0])["text"]).ids) > 65
