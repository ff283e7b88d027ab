"""eval.predict and `eval.py predict`: new texts through a saved model, as JSONL in input order.

Oracle: transformers on the same folder (AutoTokenizer with truncation at the model's limit, then the
softmax of AutoModelForSequenceClassification's logits in eval mode), within 1e-5, for single texts and
pairs; for an adapter-only save (which transformers cannot load), the model itself run on one text at a
time without padding, and the test metrics train.py recorded for it (scikit-learn's confusion matrix).
"""

import io
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import adapter
import data
import eval as evaluation
import train
from helpers import FILLER, KEYWORDS, ROOT, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["neg", "neu", "pos", "other"]


def texts_of(n, seed=0, long_every=7):
    """Keyword texts of 1-40 words; every `long_every`-th one 100 words, over the 80-position model's limit."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(KEYWORDS + FILLER, k=100 if i % long_every == 3 else rng.randrange(1, 40)))
            for i in range(n)]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random transformers BertForSequenceClassification with named labels and a vocab.txt."""
    from transformers import BertConfig, BertForSequenceClassification
    root = tmp_path_factory.mktemp("hf")
    enc = write_tiny_encoder(root / "enc")
    vocab = (enc / "vocab.txt").read_text()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab.split()), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=80, initializer_range=0.3,
                     id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    BertForSequenceClassification(cfg).eval().save_pretrained(root / "hf")
    (root / "hf" / "vocab.txt").write_text(vocab)
    return root / "hf"


def oracle(folder, texts, pairs=None):
    """(probabilities (N, K), how many inputs transformers truncates): pipeline-style, in eval mode."""
    import transformers
    transformers.logging.set_verbosity_error()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    net = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    assert tok.unk_token_id not in tok("alpha w1")["input_ids"], "oracle tokenizer is broken"
    enc = tok(texts, pairs, truncation=True, max_length=80, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = net(**enc).logits.softmax(-1)
    full = tok(texts, pairs)["input_ids"]
    return probs, sum(len(ids) > 80 for ids in full)


def run_predict(*args, stdin=None):
    """`python eval.py predict ARGS` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), "predict", *map(str, args)], capture_output=True,
                          text=True, input=stdin, timeout=120)


def predict_here(capsys, monkeypatch, *args, stdin=None):
    """The same in this process (faster): (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = evaluation.cli(["predict", *map(str, args)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_api_equals_transformers_in_input_order(hf_folder):
    texts = texts_of(40)
    want, truncated = oracle(hf_folder, texts)
    assert truncated == 6  # the oracle sees the long texts
    net, tok = evaluation.load_model(hf_folder)
    net.train()  # predict must switch dropout off itself...
    got = evaluation.predict(net, tok, texts, batch_size=4)  # length-sorted batches of 4, back in input order
    assert net.training  # ... and leave the caller's mode as it was
    assert got.shape == (40, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    assert len(set(got.argmax(-1).tolist())) > 1, "one class only: the order test proves little"


def test_pairs_equal_transformers(hf_folder):
    texts, pairs = texts_of(20, seed=1, long_every=5), texts_of(20, seed=2, long_every=6)
    want, truncated = oracle(hf_folder, texts, pairs)
    assert truncated > 0
    net, tok = evaluation.load_model(hf_folder)
    torch.testing.assert_close(evaluation.predict(net, tok, texts, pairs, batch_size=3), want, atol=1e-5, rtol=0)


def test_cli_csv_with_ids_and_a_label_column(hf_folder, tmp_path):
    """The id column is kept, the label column ignored, the truncation count said once on stderr, and the
    output (atomically written with --output) lists the labels by name in input order."""
    import csv
    texts = texts_of(30, seed=3)
    want, truncated = oracle(hf_folder, texts)
    with open(tmp_path / "in.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "text"])
        writer.writerows([f"row{i}", "whatever", t] for i, t in enumerate(texts))
    out = run_predict("--model", hf_folder, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.jsonl",
                      "--eval-batch-size", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert out.stderr.count("truncated") == 1 and f" {truncated} of 30 inputs were longer than 80 tokens" in out.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"row{i}" for i in range(30)]
    assert [r["label"] for r in records] == [NAMES[k] for k in want.argmax(-1).tolist()]
    got = torch.tensor([[r["probs"][n] for n in NAMES] for r in records])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert list(records[0]) == ["id", "label", "probs"]


def test_cli_stdin_one_text_per_line(hf_folder, capsys, monkeypatch):
    texts = texts_of(5, seed=4)
    want, _ = oracle(hf_folder, texts)
    out = predict_here(capsys, monkeypatch, "--model", hf_folder, "--input", "-", "--max-length", "80",
                       stdin="\n".join(texts) + "\n")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["label"] for r in records] == [NAMES[k] for k in want.argmax(-1).tolist()]
    assert all("id" not in r for r in records)


@pytest.mark.parametrize("content,suffix,extra,message", [
    ('{"id": 1, "txt": "alpha"}\n', ".jsonl", [], "in.jsonl:1: no column 'text' (found: 'id', 'txt'); pass --text-column NAME"),
    ("text\n", ".csv", [], "in.csv: only a header row (text), no examples"),
    ("", ".csv", [], "in.csv: empty file"),
    ("", ".jsonl", [], "in.jsonl: empty file"),
    ('{"text": "alpha"}\n{"text": ""}\n', ".jsonl", [], "in.jsonl:2: the text in 'text' is empty"),
    ("text\tfirst\nalpha\tbravo\n", ".tsv", ["--text-pair-column", "second"], "no column 'second'"),
    ("text\nalpha\n", ".txt", [], "read are .jsonl, .csv, .tsv files, or - for one text per line"),
    ("text\nalpha\n", ".csv", ["--max-length", "81"], "--max-length 81:"),
    ("text\nalpha\n", ".csv", ["--eval-batch-size", "0"], "--eval-batch-size must be at least 1"),
])
def test_cli_bad_input_is_one_line(hf_folder, tmp_path, capsys, monkeypatch, content, suffix, extra, message):
    (tmp_path / f"in{suffix}").write_text(content)
    out = predict_here(capsys, monkeypatch, "--model", hf_folder, "--input", tmp_path / f"in{suffix}", *extra)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("eval.py: error: ") and len(out.stderr.strip().splitlines()) == 1
    assert message in out.stderr, out.stderr


def test_cli_stdin_blank_line_and_missing_file(hf_folder, tmp_path, capsys, monkeypatch):
    out = predict_here(capsys, monkeypatch, "--model", hf_folder, "--input", "-", stdin="alpha\n\nbravo\n")
    assert out.returncode == 2 and "<stdin>:2: empty line" in out.stderr
    out = predict_here(capsys, monkeypatch, "--model", hf_folder, "--input", tmp_path / "none.csv")
    assert out.returncode == 2 and "no such file" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter_run")
    enc, data_dir = write_tiny_encoder(root / "enc"), write_keyword_task(root / "data")
    (result,) = train.main(["--dataset", "acl", "--model", str(enc), "--data-dir", str(data_dir), "--out",
                            str(root / "runs"), "--epochs", "3", "--lr", "1e-2", "--batch-size", "32",
                            "--max-length", "64", "--adapter", "--save"])
    return root / "runs" / "acl" / "enc-adapter" / "seed1", data_dir, result


def test_adapter_only_save(adapter_run):
    """An adapter-only save predicts with its base: each text alone (no padding, no sorting) gives the same
    probabilities; on the test split the predictions give the confusion matrix train.py recorded."""
    from sklearn.metrics import confusion_matrix
    run, data_dir, result = adapter_run
    assert sorted(p.name for p in (run / "model").iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    rows = [json.loads(line) for line in (data_dir / "acl" / "test.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows]
    net, tok = evaluation.load_model(run / "model")
    assert evaluation.label_names(net) == result["labels"]  # the names recorded with the adapters
    probs = evaluation.predict(net, tok, texts, max_length=64)
    with torch.no_grad():
        for i in (0, 1, 50, 100):
            ids = torch.tensor([tok.encode(texts[i]).ids])
            alone = net.eval()(ids, torch.ones_like(ids)).softmax(-1)[0]
            torch.testing.assert_close(probs[i], alone, atol=1e-5, rtol=0)
    truth = [result["labels"].index(r["label"]) for r in rows]
    cm = confusion_matrix(truth, probs.argmax(-1).numpy(), labels=range(6))
    assert cm.tolist() == result["test"]["confusion_matrix"]
    assert np.trace(cm) / len(rows) == pytest.approx(result["test"]["accuracy"])


def test_a_run_folder_names_its_saved_model(adapter_run, capsys, monkeypatch):
    run, data_dir, _ = adapter_run
    out = predict_here(capsys, monkeypatch, "--model", run, "--input", data_dir / "acl" / "dev.jsonl")
    assert out.returncode == 2 and f"its saved model is {run / 'model'}" in out.stderr


def test_lora_save_predicts_like_peft_with_its_label_names(tmp_path, capsys, monkeypatch):
    """A LoRA run's --save (PEFT's layout, label names in its metadata): predict names the classes and gives
    the probabilities PEFT + transformers give on the same folder."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    task = write_keyword_task(tmp_path / "task", sizes=(64, 8, 16))
    enc = write_tiny_encoder(tmp_path / "enc", dropout=0.0)
    train.main(["--dataset", "acl", "--data-dir", str(task), "--model", str(enc), "--lora", "--lora-dropout", "0",
                "--epochs", "1", "--batch-size", "16", "--lr", "1e-2", "--max-length", "32", "--device", "cpu",
                "--out", str(tmp_path / "runs"), "--save"])
    saved = tmp_path / "runs" / "acl" / "enc-lora" / "seed1" / "model"
    assert adapter.is_peft_dir(saved)
    texts = texts_of(9)
    net, tok = evaluation.load_model(saved)
    probs = evaluation.predict(net, tok, texts)
    hf = AutoModelForSequenceClassification.from_pretrained(enc, num_labels=len(data.DATASETS["acl"].labels))
    peft = PeftModel.from_pretrained(hf, saved).eval()
    hf_tok = AutoTokenizer.from_pretrained(enc)
    assert hf_tok.unk_token_id not in hf_tok("alpha w1")["input_ids"], "oracle tokenizer is broken"
    with torch.no_grad():  # truncated where predict truncates: the model's position limit
        batch = hf_tok(texts, padding=True, truncation=True, max_length=net.config.max_length, return_tensors="pt")
        want = torch.softmax(peft(**batch).logits, -1)
    torch.testing.assert_close(probs, want, atol=1e-5, rtol=0)
    capsys.readouterr()  # train.py's lines
    out = predict_here(capsys, monkeypatch, "--model", saved, "--input", "-", stdin="\n".join(texts) + "\n")
    assert out.returncode == 0, out.stderr
    got = [json.loads(line)["label"] for line in out.stdout.splitlines()]
    assert got == [data.DATASETS["acl"].labels[i] for i in want.argmax(-1)]
