"""A run that learned nothing says so in one line at its end, with the likely causes, and records it in
result.json's "warnings"; a run that learns says nothing. Both triggers on a tiny model: every prediction in
one class (a 90/10 task at a learning rate that only learns the prior), and a training loss that barely
moves (a learning rate of 1e-7)."""

import json
import random
from types import SimpleNamespace

import pytest

import runs
import train
from helpers import FILLER, KEYWORDS, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("nothing")
    rng = random.Random(0)
    (root / "skew").mkdir()
    for split, n in (("train", 200), ("test", 60)):  # 90% "yes"
        with open(root / "skew" / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                k = 0 if rng.random() < 0.9 else 1
                words = [*rng.choices(FILLER, k=5), KEYWORDS[k]]
                f.write(json.dumps({"text": " ".join(words), "label": ["yes", "no"][k]}) + "\n")
    return {"enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data", sizes=(160, 40, 60)),
            "skew": root / "skew"}


def warning_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("warning: ")]


def keyword_run(task, out, lr, epochs):
    return train.main(["--dataset", "acl", "--model", str(task["enc"]), "--data-dir", str(task["data"]), "--out",
                       str(out), "--epochs", str(epochs), "--lr", lr, "--batch-size", "16", "--max-length", "64"])[0]


def test_a_loss_that_barely_moves(task, tmp_path, capsys):
    result = keyword_run(task, tmp_path, "1e-7", 2)
    (line,) = warning_lines(capsys.readouterr().out)
    assert "the training loss barely moved" in line and "every" not in line  # the model predicts several classes
    assert sum(1 for c in zip(*result["test"]["confusion_matrix"]) if sum(c)) > 1
    assert "--lr 1e-07; MiniLM needs about 1e-4 for full fine-tuning and 1e-3 with adapters or LoRA" in line
    assert "too few steps (20 optimizer steps)" in line and "warm-up" in line
    assert result["warnings"] == [line.removeprefix("warning: ")]
    saved = json.loads((tmp_path / "acl" / "enc" / "seed1" / "result.json").read_text())
    assert saved["warnings"] == result["warnings"]


def test_every_prediction_in_one_class(task, tmp_path, capsys):
    (result,) = train.main(["--dataset", str(task["skew"]), "--model", str(task["enc"]), "--out", str(tmp_path),
                            "--epochs", "1", "--lr", "1e-3", "--batch-size", "16", "--max-length", "64"])
    (line,) = warning_lines(capsys.readouterr().out)
    assert "every test prediction is 'yes'" in line and "barely moved" not in line  # the loss fell to the prior's
    assert "(--lr 0.001; MiniLM needs about 1e-4 for full" in line  # full fine-tuning at 1e-3: the hint applies
    assert [sum(c) for c in zip(*result["test"]["confusion_matrix"])] == [0, 60]  # labels sorted: no, yes
    assert result["warnings"] == [line.removeprefix("warning: ")]


def test_a_run_that_learns_says_nothing(task, tmp_path, capsys):
    result = keyword_run(task, tmp_path, "1e-2", 5)
    assert result["test"]["accuracy"] > 0.9
    assert warning_lines(capsys.readouterr().out) == [] and result["warnings"] == []


@pytest.mark.parametrize("method,lr,hinted", [("full", 1e-4, False), ("full", 1e-3, True), ("lora", 1e-3, False),
                                              ("adapter", 1e-3, False), ("adapter", 5e-5, True)])
def test_the_lr_hint_is_named_only_when_the_run_does_not_follow_it(tmp_path, method, lr, hinted):
    cfg = SimpleNamespace(lr=lr, adapter=method == "adapter", lora=method == "lora", warmup_ratio=0.1)
    run = SimpleNamespace(cfg=cfg, dir=tmp_path, labels=["a", "b"], step=27, total_steps=27)
    line = runs.learned_nothing(run, {"test": {"confusion_matrix": [[0, 5], [0, 7]]}})
    assert line.startswith("this run looks like it learned nothing: every test prediction is 'b'")
    assert ("MiniLM needs" in line) == hinted and f"(--lr {lr:g}" in line and "too few steps (27" in line
