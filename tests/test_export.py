"""A folder exported by model.save_pretrained(..., tokenizer=) / train.py --save behaves in transformers
like the checkpoint it came from.

Oracle: transformers itself on the exported folder (AutoTokenizer, AutoConfig, pipeline), against
our tokenizer and model on real dataset texts: the same ids, the same pair template and token types,
truncation at the model's limit (model_max_length; transformers' default of 1e30 makes
`truncation=True` do nothing and a 600-word text crash the model), labels by name, and the
pipeline's scores equal to our model's softmax.
"""

import json
import shutil

import pytest
import torch

import data
import model
import train
from helpers import real_texts, tiny_hf_model, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = data.DATASETS["restaurant"].labels  # positive, neutral, negative


@pytest.fixture(scope="module")
def texts(shared_dir):
    singles, pairs = real_texts(shared_dir / "data", "test", 80, 20, "Restaurants_Train_v2.xml", 60)
    return singles + ["Hello World, CAFÉ", "UPPER lower"], pairs


LONG = " ".join(["the food was great but the service was slow"] * 60)  # 600 words, ~600 tokens


@pytest.fixture(scope="module", params=["bert", "roberta", "bert-cased"])
def exported(request, tmp_path_factory, shared_dir):
    """(kind, source folder, exported folder): a tiny random classifier with a real vocabulary, loaded
    by us and exported with its tokenizer."""
    kind = request.param.split("-")[0]
    root = tmp_path_factory.mktemp(request.param)
    tokdir = shared_dir / "tokenizers" / ("roberta-base" if kind == "roberta" else "bert-base-uncased")
    hf = tiny_hf_model(kind, vocab_size=50265 if kind == "roberta" else 30522,
                       max_position_embeddings=514 if kind == "roberta" else 512)
    hf.save_pretrained(root / "src")
    for f in tokdir.iterdir():
        shutil.copy(f, root / "src" / f.name)
    if request.param == "bert-cased":
        (root / "src" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    net = model.from_pretrained(root / "src")
    model.save_pretrained(net, root / "out", labels=LABELS, tokenizer=model.load_tokenizer(root / "src"))
    return request.param, root / "src", root / "out"


def hf_tokenizer(directory):
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def test_tokenizer_files_and_settings(exported):
    name, _, out = exported
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= {p.name for p in out.iterdir()}
    tok = hf_tokenizer(out)
    assert tok.model_max_length == 512  # RoBERTa: 514 positions - (padding_idx + 1)
    assert type(tok).__name__ == ("RobertaTokenizer" if name == "roberta" else "BertTokenizer")
    if name == "roberta":
        assert (tok.cls_token, tok.sep_token, tok.pad_token_id, tok.bos_token) == ("<s>", "</s>", 1, "<s>")
    else:
        assert (tok.cls_token, tok.sep_token, tok.pad_token_id, tok.mask_token) == ("[CLS]", "[SEP]", 0, "[MASK]")
        assert tok.do_lower_case is (name == "bert")


def test_ids_equal_ours_on_real_texts(exported, texts):
    name, src, out = exported
    singles, pairs = texts
    hf, ours = hf_tokenizer(out), model.load_tokenizer(src)
    assert hf.unk_token_id not in hf("the food was great")["input_ids"], "oracle is broken"
    assert hf(singles)["input_ids"] == [e.ids for e in ours.encode_batch(singles)]
    want, got = hf([a for a, _ in pairs], [b for _, b in pairs]), ours.encode_batch(pairs)
    assert want["input_ids"] == [e.ids for e in got]
    if name == "roberta":
        assert hf.convert_ids_to_tokens(want["input_ids"][0]).count("</s>") == 3  # <s> A </s></s> B </s>
    else:
        assert want["token_type_ids"] == [e.type_ids for e in got] and any(1 in t for t in want["token_type_ids"])
    # the export of our tokenizer reads back as the same tokenizer in our loader too (eval.py's path)
    assert [e.ids for e in model.load_tokenizer(out).encode_batch(pairs)] == [e.ids for e in got]


def test_pipeline_on_long_texts_and_pairs(exported):
    """pipeline("text-classification") truncates a 600-word text at the model's limit, labels by name,
    and scores like our model on our own encoding."""
    from transformers import pipeline
    _, src, out = exported
    tok = hf_tokenizer(out)
    assert len(tok(LONG)["input_ids"]) > 512 and len(tok(LONG, truncation=True)["input_ids"]) == 512
    pipe = pipeline("text-classification", model=str(out), device="cpu", top_k=None)
    net = model.from_pretrained(out).eval()
    ours = model.load_tokenizer(src)
    for text in (LONG, {"text": "service", "text_pair": LONG}, {"text": "food", "text_pair": "The food was great."}):
        (scores,) = pipe([text], truncation=True)  # a list in: one list of {label, score} per input
        assert {s["label"] for s in scores} == set(LABELS)
        enc = data.encode([data.Example(text if isinstance(text, str) else text["text"],
                                        None if isinstance(text, str) else text["text_pair"], 0)], ours, 512)
        ids = torch.tensor(enc.input_ids[None].astype("int64"))
        types = torch.tensor(enc.token_type_ids[None].astype("int64"))
        with torch.no_grad():
            probs = net(ids, torch.ones_like(ids), types).softmax(-1)[0]
        got = {s["label"]: s["score"] for s in scores}
        assert [got[label] for label in LABELS] == pytest.approx(probs.tolist(), abs=1e-5)


def test_config_labels(exported):
    from transformers import AutoConfig
    _, _, out = exported
    cfg = AutoConfig.from_pretrained(str(out))
    assert cfg.id2label == dict(enumerate(LABELS)) and cfg.label2id == {n: i for i, n in enumerate(LABELS)}


def test_train_save_exports_the_tokenizer(tmp_path):
    """train.py --save writes the same tokenizer files, with the tiny model's own limit (80 positions)."""
    enc, d = write_tiny_encoder(tmp_path / "enc"), write_keyword_task(tmp_path / "data", sizes=(40, 10, 10))
    train.main(["--dataset", "acl", "--model", str(enc), "--data-dir", str(d), "--out", str(tmp_path / "runs"),
                "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--save"])
    out = tmp_path / "runs" / "acl" / "enc" / "seed1" / "model"
    tok = hf_tokenizer(out)
    assert tok.model_max_length == 80 and type(tok).__name__ == "BertTokenizer"
    text = "alpha w1 w2 BRAVO w3"
    assert tok(text)["input_ids"] == model.load_tokenizer(enc).encode(text).ids
    assert tok.unk_token_id not in tok(text)["input_ids"]
