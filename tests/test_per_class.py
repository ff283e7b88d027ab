"""Per-class precision, recall, F1, support and the confusion matrix: in eval.metrics_from_confusion, in
result.json under each split, in `eval.py evaluate` (text and --json), and in `report.py summarize --per-class`.

Oracle: scikit-learn's classification_report / precision_recall_fscore_support and confusion_matrix with
labels=range(K) and zero_division=0, including classes that never occur and classes never predicted.
"""

import json

import numpy as np
import pytest

import eval as evaluation
import report
import train
from helpers import write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", range(6))
def test_per_class_equals_scikit_learn(seed):
    from sklearn.metrics import classification_report, confusion_matrix, f1_score
    rng = np.random.default_rng(seed)
    k = 6
    labels = rng.choice([0, 1, 2, 4], size=80)  # classes 3 and 5 never occur
    preds = np.where(rng.random(80) < 0.6, labels, rng.choice([0, 2, 3], size=80))  # 3 is predicted
    preds[labels == 4] = 0  # 4 occurs but is never predicted; 5 is in neither
    m = evaluation.compute_metrics(preds, labels, k)
    want = classification_report(labels, preds, labels=range(k), zero_division=0, output_dict=True)
    for i in range(k):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert m["per_class"][ours][i] == pytest.approx(want[str(i)][theirs], abs=1e-12), (i, ours)
        assert m["per_class"]["support"][i] == want[str(i)]["support"]
    assert m["confusion_matrix"] == confusion_matrix(labels, preds, labels=range(k)).tolist()
    assert (m["per_class"]["support"][5], m["per_class"]["precision"][4], m["per_class"]["recall"][3]) == (0, 0, 0)
    # macro-F1 still averages only the classes that occur somewhere (sklearn without labels=)
    assert m["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-12)
    json.dumps(m)  # plain Python numbers: result.json can hold them


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("per_class")
    enc, data_dir = write_tiny_encoder(root / "enc"), write_keyword_task(root / "data", sizes=(120, 30, 40))
    train.main(["--dataset", "acl", "--model", str(enc), "--data-dir", str(data_dir), "--out", str(root / "runs"),
                "--epochs", "3", "--lr", "1e-2", "--batch-size", "16", "--max-length", "64", "--save", "--seeds", "1", "2"])
    return root / "runs", data_dir


def test_result_json_has_them_for_each_split_and_metrics_jsonl_does_not(run):
    runs, _ = run
    seed = runs / "acl" / "enc" / "seed1"
    result = json.loads((seed / "result.json").read_text())
    for split, n in (("dev", 30), ("test", 40)):
        pc, cm = result[split]["per_class"], np.array(result[split]["confusion_matrix"])
        assert cm.shape == (6, 6) and cm.sum() == n and sum(pc["support"]) == n
        assert cm.sum(axis=1).tolist() == pc["support"]
        assert np.trace(cm) / n == pytest.approx(result[split]["accuracy"])
    evals = [r for r in map(json.loads, (seed / "metrics.jsonl").read_text().splitlines()) if r["split"] != "train"]
    assert evals and not any("confusion_matrix" in r or "per_class" in r for r in evals)  # kept small


def test_evaluate_prints_and_returns_them(run, capsys):
    from sklearn.metrics import confusion_matrix
    runs, data_dir = run
    saved = runs / "acl" / "enc" / "seed1" / "model"
    result = evaluation.main(["evaluate", "--model", str(saved), "--dataset", "acl", "--data-dir", str(data_dir),
                              "--max-length", "64", "--json"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["confusion_matrix"] == result["confusion_matrix"]
    assert "confusion matrix (rows: true, columns: predicted; 0=Uses, 1=Future" in out
    assert "CompareOrContrast" in out and "precision  recall" in out
    # the same matrix from an independent path: predict's labels through scikit-learn
    rows = [json.loads(line) for line in (data_dir / "acl" / "test.jsonl").read_text().splitlines()]
    net, tok = evaluation.load_model(saved)
    names = evaluation.label_names(net)
    preds = evaluation.predict(net, tok, [r["text"] for r in rows], max_length=64).argmax(-1).numpy()
    assert confusion_matrix([names.index(r["label"]) for r in rows], preds, labels=range(6)).tolist() \
        == result["confusion_matrix"]
    assert len(set(preds.tolist())) >= 3, "the model predicts few classes: the comparison proves little"


def test_summarize_per_class(run, capsys):
    runs, _ = run
    results = [json.loads((runs / "acl" / "enc" / f"seed{k}" / "result.json").read_text()) for k in (1, 2)]
    (row,) = report.summarize_per_class(runs)
    assert row["labels"] == results[0]["labels"] and row["n"] == 2 and row["rule"] == "last"
    for m in ("precision", "recall", "f1"):
        values = np.array([r["test"]["per_class"][m] for r in results])
        assert row[m]["mean"] == pytest.approx(values.mean(0).tolist())
        assert row[m]["std"] == pytest.approx(values.std(0, ddof=1).tolist())
    assert row["confusion_matrix"] == (np.array(results[0]["test"]["confusion_matrix"])
                                       + results[1]["test"]["confusion_matrix"]).tolist()
    assert report.cli(["summarize", str(runs), "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "enc on acl test (epoch rule last; 2 seeds" in out and "| true \\ predicted | Uses | Future |" in out
    assert report.cli(["summarize", str(runs), "--per-class", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model,dataset,split,epoch rule,seeds,class,precision,recall,F1,support" and len([line for line in lines if line]) == 7


def test_summarize_per_class_on_an_old_result_json(tmp_path, capsys):
    seed = tmp_path / "acl" / "bert" / "seed1"
    seed.mkdir(parents=True)
    (seed / "result.json").write_text(json.dumps({"test": {"accuracy": 0.5, "f1_macro": 0.4}, "labels": ["a", "b"]}))
    assert report.cli(["summarize", str(tmp_path), "--per-class"]) == 2
    assert "has no per-class metrics" in capsys.readouterr().err
