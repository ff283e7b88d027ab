"""experiments/peft_comparison.sh (full vs adapters vs LoRA over seeds, one resumable command) and
experiments/peft_memory.py (memory beside each row), run whole on a tiny encoder and a keyword task.

Oracles: the run folders it must make (one per method, named as train.py names them), report.summarize's own
table, memory.estimate for the micro-batch that --max-tokens allows, and a second run of the same command,
which must train nothing."""

import json
import os
import subprocess
import sys

import pytest

import adapter
import memory
from helpers import ROOT, write_keyword_task, write_tiny_encoder

sys.path.insert(0, str(ROOT / "experiments"))
import peft_memory  # (experiments/ is a folder of scripts, not a package)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_command_runs_every_method_then_resumes(tmp_path):
    enc = write_tiny_encoder(tmp_path / "enc")
    data_dir = write_keyword_task(tmp_path / "data", sizes=(48, 16, 24))
    out = tmp_path / "runs"
    command = ["bash", str(ROOT / "experiments" / "peft_comparison.sh"), "--model", str(enc), "--datasets", "acl",
               "--seeds", "1 2", "--data-dir", str(data_dir), "--lr", "1e-3", "--peft-lr", "1e-2", "--out", str(out),
               "--", "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--max-tokens", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    folders = sorted(p.name for p in (out / "acl").iterdir())
    assert folders == ["enc", "enc-adapter", "enc-lora"]
    for folder in folders:
        assert sorted(p.name for p in (out / "acl" / folder).iterdir()) == ["seed1", "seed2"]
        config = json.loads((out / "acl" / folder / "seed1" / "config.json").read_text())
        assert (config["adapter"], config["lora"]) == {"enc": (False, False), "enc-adapter": (True, False),
                                                       "enc-lora": (False, True)}[folder]
        assert config["lr"] == (1e-3 if folder == "enc" else 1e-2)  # --lr for full, --peft-lr for the others
        assert config["resume"], "the script resumes interrupted seeds"
        # memory beside each row: memory.estimate for this method's own settings (bytes, not the rounded GB)
        lora = adapter.LoRAConfig(r=config["lora_r"], alpha=config["lora_alpha"], dropout=config["lora_dropout"],
                                  targets=tuple(config["lora_targets"])) if config["lora"] else None
        assert peft_memory.predicted(config) == memory.estimate(
            str(enc), 2, 32, num_labels=6, precision="fp32", device="cpu", lora=lora,
            bottleneck=config["bottleneck"], placement=config["adapter_placement"] or "houlsby")

    summary = (out / "summary.md").read_text()
    assert [line.split("|")[1].strip() for line in summary.splitlines()[2:]] == folders

    comparison = (out / "comparison.md").read_text()
    rows = {line.split("|")[2].strip(): line.split("|") for line in comparison.splitlines()
            if line.startswith("| acl |")}
    assert sorted(rows) == folders
    # the prediction is for the micro-batch --max-tokens allows at --max-length: 64 // 32 = 2 examples, not 16
    est = memory.estimate(str(enc), 2, 32, num_labels=6, precision="fp32", device="cpu")
    assert rows["enc"][6].strip() == f"{est.total / 1e9:.2f} ({est.activations / 1e9:.2f})"
    config = json.loads((out / "acl" / "enc" / "seed1" / "config.json").read_text())
    assert peft_memory.predicted(config) == est  # the table's GB round a tiny model's bytes to 0.00
    assert memory.estimate(str(enc), 16, 32, num_labels=6, precision="fp32", device="cpu").activations > est.activations
    for a, b in (("enc-lora", "enc"), ("enc-adapter", "enc"), ("enc-lora", "enc-adapter")):
        assert f"A = {a} (2 seeds), B = {b} (2 seeds)" in comparison, comparison
    assert sorted(p.name for p in (out / "figures").iterdir())  # report.py plot wrote its PNGs

    # the same command again: every seed is skipped, the tables are written again
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("result.json exists, skipping") == 6
    assert (out / "summary.md").read_text() == summary
