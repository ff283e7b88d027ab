"""train.py --select-on dev: result.json reports (and --save saves) the epoch with the best dev score, never
one picked on test; a resumed run selects exactly as an uninterrupted one; report.py names each row's rule
and refuses to compare across rules.

Oracles: metrics.jsonl's per-epoch evaluation records (the selected epoch is the first with the best dev
score, its test numbers are that epoch's); predict on the saved model (its test predictions give that
epoch's test accuracy); an uninterrupted run (for resume).
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import eval as evaluation
import report
import train
from helpers import write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    return {"enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data", sizes=(160, 40, 60))}


def args(task, out, *extra, epochs=3):
    return ["--dataset", "acl", "--model", str(task["enc"]), "--data-dir", str(task["data"]), "--out", str(out),
            "--epochs", str(epochs), "--lr", "1e-2", "--batch-size", "16", "--max-length", "64", *extra]


def seed_dir(out, method=""):
    return out / "acl" / f"enc{method}" / "seed1"


def evals(out, split, method=""):
    lines = (seed_dir(out, method) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.mark.parametrize("method,flags", [("", ()), ("-lora", ("--lora", "--lora-dropout", "0", "--lr", "3e-2"))])
def test_selects_the_best_dev_epoch_and_saves_its_weights(task, tmp_path, method, flags):
    """Full fine-tuning, and LoRA (whose --save writes PEFT's layout after the selected weights are back)."""
    (result,) = train.main(args(task, tmp_path, "--select-on", "dev", "--save", *flags, epochs=6))
    dev, test = evals(tmp_path, "dev", method), evals(tmp_path, "test", method)
    scores = [r["f1_macro"] for r in dev]
    best = int(np.argmax(scores)) + 1  # the first epoch with the best score
    assert result["selection"] == {"rule": "dev", "metric": "f1_macro", "epoch": best}
    for k in ("accuracy", "f1_macro", "f1_micro", "loss"):
        assert result["test"][k] == test[best - 1][k] and result["dev"][k] == dev[best - 1][k]
        assert result["last_epoch"]["test"][k] == test[-1][k]
    # the saved model is that epoch's: its test predictions give that epoch's test accuracy and loss
    rows = [json.loads(line) for line in (task["data"] / "acl" / "test.jsonl").read_text().splitlines()]
    net, tok = evaluation.load_model(seed_dir(tmp_path, method) / "model")
    probs = evaluation.predict(net, tok, [r["text"] for r in rows], max_length=64)
    truth = torch.tensor([result["labels"].index(r["label"]) for r in rows])
    assert (probs.argmax(-1) == truth).double().mean().item() == pytest.approx(test[best - 1]["accuracy"])
    loss = -probs[torch.arange(len(rows)), truth].log().mean().item()
    assert loss == pytest.approx(test[best - 1]["loss"], abs=1e-5)
    assert best < 6 and abs(test[best - 1]["loss"] - test[-1]["loss"]) > 1e-3, "the last epoch won: proves little"


def test_last_is_the_default_and_never_looks_at_a_score(task, tmp_path):
    (result,) = train.main(args(task, tmp_path, epochs=2))
    assert result["selection"] == {"rule": "last", "epoch": 2} and "last_epoch" not in result
    assert result["test"]["accuracy"] == evals(tmp_path, "test")[-1]["accuracy"]


REAL_EVALUATE = train.Run.evaluate


def forced_dev_scores(monkeypatch, scores: dict, crash_at: int | None = None):
    """Run.evaluate with the dev macro-F1 of epoch e replaced by scores[e] (after it is logged), so that the
    selected epoch is known; with `crash_at`, a crash in that epoch's evaluation (after the previous epoch's
    checkpoint), as a killed job."""
    def evaluate(self, epoch):
        if epoch == crash_at:
            raise KeyboardInterrupt
        results = REAL_EVALUATE(self, epoch)
        results["dev"]["f1_macro"] = scores[epoch]
        return results

    monkeypatch.setattr(train.Run, "evaluate", evaluate)


def test_resume_keeps_the_best_so_far(task, tmp_path, monkeypatch):
    """Epoch 2 is the best on dev; the run is interrupted in epoch 3 and resumed: it must still report and save
    epoch 2 (the best-so-far state travels in the checkpoint), exactly as the uninterrupted run does."""
    scores = {1: 0.5, 2: 0.9, 3: 0.7}
    extra = ("--select-on", "dev", "--save")
    forced_dev_scores(monkeypatch, scores)
    (ref,) = train.main(args(task, tmp_path / "ref", *extra))
    forced_dev_scores(monkeypatch, scores, crash_at=3)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(task, tmp_path / "cut", *extra))
    assert (seed_dir(tmp_path / "cut") / "checkpoint.pt").exists()
    forced_dev_scores(monkeypatch, scores)
    (resumed,) = train.main(args(task, tmp_path / "cut", *extra, "--resume"))
    assert ref["selection"]["epoch"] == resumed["selection"]["epoch"] == 2
    volatile = {"wall_time_s", "peak_memory_bytes", "peak_memory_kind"}
    assert {k: v for k, v in ref.items() if k not in volatile} == {k: v for k, v in resumed.items() if k not in volatile}
    a = load_file(seed_dir(tmp_path / "ref") / "model" / "model.safetensors")
    b = load_file(seed_dir(tmp_path / "cut") / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and those are epoch 2's weights, not the last epoch's (a --select-on last run trains identically)
    monkeypatch.undo()
    train.main(args(task, tmp_path / "last", "--save"))
    c = load_file(seed_dir(tmp_path / "last") / "model" / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert ref["last_epoch"]["test"] == json.loads((seed_dir(tmp_path / "last") / "result.json").read_text())["test"]


def test_refusals(task, tmp_path, capsys):
    own = tmp_path / "own"
    own.mkdir()
    rows = [json.loads(line) for line in (task["data"] / "acl" / "train.jsonl").read_text().splitlines()]
    for split, part in (("train", rows[:100]), ("test", rows[100:])):
        (own / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    cases = [
        (["--dataset", str(own), "--model", str(task["enc"]), "--max-length", "64", "--select-on", "dev"],
         "needs a dev split, and own has only train, test"),
        (["--dataset", "restaurant", "--data-dir", "/nowhere", "--select-on", "dev"], "restaurant has only train, test"),
        (args(task, tmp_path, "--select-metric", "accuracy"), "--select-metric needs --select-on dev"),
    ]
    for argv, message in cases:
        assert train.cli([*argv, "--out", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # a finished seed of the same rule is skipped
    train.main(args(task, tmp_path / "dev", "--select-on", "dev", epochs=1))
    assert train.main(args(task, tmp_path / "dev", "--select-on", "dev", epochs=1)) == []
    assert "result.json exists, skipping" in capsys.readouterr().out
    # a finished seed of the other rule is not skipped silently
    train.main(args(task, tmp_path / "done", epochs=1))
    assert train.cli(args(task, tmp_path / "done", "--select-on", "dev", epochs=1)) == 2
    assert "with --select-on last (now dev), --select-metric unset (now f1_macro)" in capsys.readouterr().err
    # ... nor one whose config.json predates --select-on (no select_on: its rule was the last epoch)
    config = next((tmp_path / "done").rglob("config.json"))
    saved = json.loads(config.read_text())
    del saved["select_on"], saved["select_metric"]
    config.write_text(json.dumps(saved))
    assert train.cli(args(task, tmp_path / "done", "--select-on", "dev", epochs=1)) == 2
    assert "--select-on last (now dev)" in capsys.readouterr().err
    assert train.cli(args(task, tmp_path / "done", epochs=1)) == 0  # the same rule: skipped


def _seed(root, model_name, seed, f1, rule=None):
    path = root / "acl" / model_name / f"seed{seed}"
    path.mkdir(parents=True)
    result = {"test": {"accuracy": f1 + 0.1, "f1_macro": f1, "f1_micro": f1 + 0.1}}
    if rule:
        result["selection"] = {"rule": rule, "epoch": 2, **({"metric": "f1_macro"} if rule == "dev" else {})}
    (path / "result.json").write_text(json.dumps(result))


def test_reports_name_the_rule_and_refuse_to_mix(tmp_path, capsys):
    for seed, (a, b) in enumerate([(0.60, 0.50), (0.62, 0.52), (0.61, 0.55)], 1):
        _seed(tmp_path, "picked", seed, a, "dev")
        _seed(tmp_path, "old", seed, b)  # written before --select-on: the last epoch
        _seed(tmp_path, "last", seed, b, "last")
    rows = {r["model"]: r for r in report.summarize(tmp_path)}
    assert (rows["picked"]["rule"], rows["old"]["rule"], rows["last"]["rule"]) == ("best dev f1_macro", "last", "last")
    table = report.format_table(list(rows.values()), ("accuracy", "f1_macro"))
    assert table.splitlines()[0].endswith("| epoch rule |") and "| best dev f1_macro |" in table
    assert report.cli(["compare", str(tmp_path), "picked", "last"]) == 2
    err = capsys.readouterr().err
    assert "picked reports the epoch rule 'best dev f1_macro' and last 'last'" in err and len(err.splitlines()) == 1
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps([{"a": "picked", "b": "old", "dataset": "acl", "claim": "a > b"}]))
    assert report.cli(["claims", str(tmp_path), str(claims)]) == 2
    assert "epoch rule" in capsys.readouterr().err
    assert report.cli(["compare", str(tmp_path), "old", "last", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["rule"] == "last"
    for seed in (1, 2, 3):
        _seed(tmp_path, "picked-too", seed, 0.5 + seed / 100, "dev")
    assert report.cli(["compare", str(tmp_path), "picked", "picked-too"]) == 0
    assert "acl f1_macro (test, epoch rule best dev f1_macro): A = picked" in capsys.readouterr().out
    _seed(tmp_path, "picked", 4, 0.6, "last")  # one seed of another rule in a group
    assert report.cli(["summarize", str(tmp_path)]) == 2
    assert "mixes epoch rules" in capsys.readouterr().err
