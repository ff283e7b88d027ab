"""eval.py reports: evaluate a saved checkpoint, summarize a runs folder, plot it."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import eval as evaluation
import report
import train
from conftest import ROOT, write_keyword_task, write_tiny_encoder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A short real sweep: full fine-tuning (2 seeds, saved) and adapters (1 seed, saved) on the keyword task."""
    root = tmp_path_factory.mktemp("reports")
    enc, task = write_tiny_encoder(root / "enc"), write_keyword_task(root / "data")
    common = ["--dataset", "acl", "--model", str(enc), "--model-name", "tiny", "--data-dir", str(task),
              "--out", str(root / "runs"), "--epochs", "3", "--lr", "3e-3", "--batch-size", "32",
              "--max-length", "64", "--save"]
    full = train.main(common + ["--seeds", "1", "2"])
    adapted = train.main(common + ["--seeds", "1", "--adapter", "--bottleneck", "8"])
    return {"root": root, "runs": root / "runs", "enc": enc, "data": task, "full": full, "adapter": adapted}


def cli(*argv):
    script = "eval.py" if argv[0] == "evaluate" else "report.py"
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("kind", ["full", "adapter"])
def test_evaluate_reproduces_the_runs_final_metrics(runs, kind):
    name = "tiny" if kind == "full" else "tiny-adapter"
    checkpoint = runs["runs"] / "acl" / name / "seed1" / "model"
    out = cli("evaluate", "--model", str(checkpoint), "--dataset", "acl", "--data-dir", str(runs["data"]),
              "--max-length", "64", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = runs[kind][0]["test"]
    assert got == want  # the same weights, batches and reduction: exactly the same numbers


def test_evaluate_under_torchrun_gives_the_same_numbers(runs):
    checkpoint = runs["runs"] / "acl" / "tiny" / "seed1" / "model"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "eval.py"), "evaluate", "--model", str(checkpoint), "--dataset", "acl",
                          "--data-dir", str(runs["data"]), "--max-length", "64", "--json"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])  # printed once, by rank 0
    want = runs["full"][0]["test"]
    assert got["n"] == want["n"] == 101  # two shards of an odd-sized split, every example once
    assert {k: got[k] for k in ("accuracy", "f1_macro", "f1_micro")} == \
        {k: want[k] for k in ("accuracy", "f1_macro", "f1_micro")}
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)


def test_evaluate_a_transformers_checkpoint(runs, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    hf = BertForSequenceClassification(BertConfig(vocab_size=71, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=64, num_labels=6,
                                                  initializer_range=0.5)).eval()
    hf.save_pretrained(tmp_path)
    shutil.copy(runs["enc"] / "vocab.txt", tmp_path / "vocab.txt")
    result = evaluation.main(["evaluate", "--model", str(tmp_path), "--dataset", "acl",
                              "--data-dir", str(runs["data"]), "--device", "cpu"])
    # the oracle: transformers' own model, one example at a time
    import model
    tok = model.load_tokenizer(tmp_path)
    examples = data.load_split("acl", "test", runs["data"])
    with torch.no_grad():
        preds = [hf(input_ids=torch.tensor([tok.encode(e.text).ids])).logits.argmax().item() for e in examples]
    want = evaluation.compute_metrics(preds, [e.label for e in examples], 6)
    assert result["accuracy"] == pytest.approx(want["accuracy"])
    assert result["f1_macro"] == pytest.approx(want["f1_macro"])
    assert len(set(preds)) > 1, "a constant oracle would prove little"


def test_evaluate_refuses_a_checkpoint_for_other_labels(runs):
    checkpoint = runs["runs"] / "acl" / "tiny" / "seed1" / "model"
    out = cli("evaluate", "--model", str(checkpoint), "--dataset", "restaurant", "--data-dir",
              str(runs["data"]))
    assert out.returncode == 2
    assert "6-label head but restaurant has 3 classes" in out.stderr and "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- summarize


def test_summarize_a_real_sweep(runs):
    rows = report.summarize(runs["runs"])
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"tiny", "tiny-adapter"}
    values = [r["test"]["accuracy"] for r in runs["full"]]
    assert by_model["tiny"]["n"] == 2
    assert by_model["tiny"]["accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert by_model["tiny"]["accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert by_model["tiny-adapter"]["n"] == 1 and by_model["tiny-adapter"]["accuracy"]["std"] is None
    out = cli("summarize", str(runs["runs"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "| model | acl acc | acl macro-F1 | epoch rule |"


def _hand_made(root, model_name, dataset, seed, accuracy=None, f1=None, records=()):
    path = root / dataset / model_name / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if accuracy is not None:
        metrics = {"accuracy": accuracy, "f1_macro": f1, "f1_micro": accuracy, "loss": 0.5, "n": 100}
        (path / "result.json").write_text(json.dumps({"test": metrics}))
    return path


def test_summarize_known_numbers_and_a_missing_seed(tmp_path):
    for seed, acc, f1 in [(1, 0.80, 0.70), (2, 0.84, 0.74), (3, 0.82, 0.75)]:
        _hand_made(tmp_path, "bert", "acl", seed, acc, f1)
    _hand_made(tmp_path, "bert", "acl", 4, records=[{"step": 5, "epoch": 0.5, "split": "train", "loss": 1.0}])
    _hand_made(tmp_path, "bert", "restaurant", 1, 0.9, 0.8)
    (row_restaurant, row_acl) = report.summarize(tmp_path)  # the report's dataset order
    assert row_acl["dataset"] == "acl" and row_restaurant["dataset"] == "restaurant"
    # by hand: mean 0.82; deviations -0.02, 0.02, 0 -> sample variance 0.0008/2 -> std 0.02
    assert row_acl["accuracy"]["mean"] == pytest.approx(0.82) and row_acl["accuracy"]["std"] == pytest.approx(0.02)
    # macro-F1: mean 0.73; deviations -0.03, 0.01, 0.02 -> 0.0014 / 2 = 0.0007 -> std 0.0264575
    assert row_acl["f1_macro"]["mean"] == pytest.approx(0.73)
    assert row_acl["f1_macro"]["std"] == pytest.approx(0.0264575, abs=1e-6)
    assert row_acl["n"] == 3 and row_acl["unfinished"] == [4]  # seed 4 is shown, not averaged
    table = report.format_table([row_acl, row_restaurant], ("accuracy", "f1_macro"))
    assert "82.00 ± 2.00 (3) +1 unfinished" in table and "73.00 ± 2.65 (3) +1 unfinished" in table
    assert "| bert | 90.00 (1) | 80.00 (1) | 82.00" in table  # restaurant before acl, as in the report
    assert table.splitlines()[2].endswith(" | last |")  # a result.json without "selection": the last epoch
    csv_out = report.format_table([row_acl], ("accuracy",), "csv").splitlines()
    assert csv_out[0] == "model,acl acc,epoch rule" and csv_out[1].startswith("bert,82.00 ± 2.00 (3)")
    assert json.loads(report.format_table([row_acl], ("accuracy",), "json"))[0]["n"] == 3


def test_summarize_bad_input(tmp_path, capsys):
    out = cli("summarize", str(tmp_path))
    assert out.returncode == 2 and "holds no run folders" in out.stderr
    path = _hand_made(tmp_path, "bert", "acl", 1, 0.8, 0.7, records=[{"step": 1, "split": "train", "loss": 1.0}])
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "split": "tr\n')  # a line cut short, as a crash would leave it
    _hand_made(tmp_path, "bert", "acl", 2, 0.9, 0.8)
    out = cli("summarize", str(tmp_path))
    assert out.returncode == 0
    assert f"{path / 'metrics.jsonl'}:2: not valid JSON" in out.stderr
    assert "85.00 ± 7.07 (2)" in out.stdout


# ----------------------------------------------------------------------------- plot


def test_plot_writes_readable_figures(runs, tmp_path):
    import matplotlib.image
    out = cli("plot", str(runs["runs"]), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl.png", "adapter_vs_full_tiny.png"]
    for path in tmp_path.iterdir():
        image = matplotlib.image.imread(path)
        height, width = image.shape[:2]
        assert 500 <= height <= 2000 and 500 <= width <= 3000
        assert image.std() > 0.05  # not a blank canvas
