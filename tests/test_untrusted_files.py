"""No file this project reads can run code: every load site is fed a planted pickle.

A pickle can call any function it names (`__reduce__`), so a planted `checkpoint.pt` or
`pytorch_model.bin` read with `weights_only=False` runs its payload before anything is checked.
Each payload here creates a marker file; the oracle is that marker (first checked to appear when
the same file IS unpickled), and the message: refused files and corrupt files get different ones.
"""

import contextlib
import os
import pickle
import subprocess
import sys

import pytest
import torch

import adapter
import model
import runs
import train
from helpers import ROOT, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Payload:
    """Unpickled, it creates `marker`: what a malicious file would do with os.system instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(path, marker, how="torch.save"):
    """Write a file at `path` that runs Payload(marker) when unpickled, in one of the pickle layouts."""
    obj = {"model": {"w": torch.zeros(2)}, "ranks": [{"rng": Payload(marker)}]}  # a pickled "RNG state"
    if how == "torch.save":  # a zip with data.pkl, as torch.save writes since 1.6
        torch.save(obj, path)
    elif how == "legacy":  # torch's pre-1.6 format: several pickles in a row
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, protocol 0 (text) or 4 (framed)
        path.write_bytes(pickle.dumps({"w": Payload(marker)}, protocol=int(how.removeprefix("pickle"))))
    return path


LAYOUTS = ["torch.save", "legacy", "pickle0", "pickle4"]


@pytest.mark.parametrize("how", LAYOUTS)
def test_the_payloads_are_real(tmp_path, how):
    """The oracle itself: unpickled without weights_only, each planted file does create its marker."""
    path = plant(tmp_path / "file.pt", tmp_path / "ran", how)
    with contextlib.suppress(RuntimeError):  # a bare pickle runs, then torch finds no magic number after it
        torch.load(path, weights_only=False)
    assert (tmp_path / "ran").exists()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    return {"enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data", sizes=(40, 10, 10))}


def run(script, *argv):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], capture_output=True, text=True,
                          env=ENV, timeout=300)


def one_line_error(out, script="train.py"):
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), out.stderr
    return lines[0]


def train_argv(task, out, model_dir=None):
    return ["--dataset", "acl", "--model", model_dir or task["enc"], "--data-dir", task["data"], "--out", out,
            "--epochs", "1", "--batch-size", "8", "--max-length", "32"]


def test_resume_refuses_a_planted_checkpoint(task, tmp_path):
    """The --resume site (the class of transformers' CVE-2026-1839: a pickled RNG state read on resume)."""
    run_dir = tmp_path / "runs" / "acl" / "enc" / "seed1"
    run_dir.mkdir(parents=True)
    plant(run_dir / "checkpoint.pt", tmp_path / "ran")
    line = one_line_error(run("train.py", *train_argv(task, tmp_path / "runs"), "--resume"))
    assert not (tmp_path / "ran").exists(), "the planted checkpoint ran its payload"
    assert "refused checkpoint" in line and "checkpoint.pt" in line and "posix.mkdir" in line
    assert "never loads (it may be malicious)" in line and "truncated" not in line
    assert "Delete it to start seed 1 over" in line and f"delete {run_dir} to start the seed over" in line


@pytest.mark.parametrize("damage", ["truncated", "junk"])
def test_resume_on_a_corrupt_checkpoint(task, tmp_path, damage):
    """One line naming the file and the two ways on (delete it, or start the seed over)."""
    run_dir = tmp_path / "runs" / "acl" / "enc" / "seed1"
    run_dir.mkdir(parents=True)
    ckpt = run_dir / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "step": 3}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:1500] if damage == "truncated" else b"not a checkpoint" * 50)
    with pytest.raises(ValueError) as e:  # in-process: the CLI's one-line form is tested above
        train.main([*map(str, train_argv(task, tmp_path / "runs")), "--resume"])
    line = str(e.value)
    assert "\n" not in line
    assert f"could not read checkpoint {ckpt}: it is truncated or corrupt" in line and "refused" not in line
    assert "Delete it to start seed 1 over" in line and f"delete {run_dir} to start the seed over" in line


def _bin_model(task, directory, marker, how):
    """The tiny encoder, with its weights as a planted pytorch_model.bin instead of model.safetensors."""
    directory.mkdir()
    (directory / "config.json").write_bytes((task["enc"] / "config.json").read_bytes())
    (directory / "vocab.txt").write_bytes((task["enc"] / "vocab.txt").read_bytes())
    return plant(directory / "pytorch_model.bin", marker, how)


@pytest.mark.parametrize("how", LAYOUTS)
def test_from_pretrained_refuses_a_planted_bin(task, tmp_path, how):
    path = _bin_model(task, tmp_path / "m", tmp_path / "ran", how)
    with pytest.raises(ValueError) as e:
        model.from_pretrained(tmp_path / "m", num_labels=2)
    assert not (tmp_path / "ran").exists(), "the planted pytorch_model.bin ran its payload"
    message = str(e.value)
    assert message.startswith(f"refused weights file {path}: it contains pickled code or objects (posix.mkdir)")
    assert "Use a safetensors copy" in message and "\n" not in message


def test_train_cli_refuses_a_planted_bin(task, tmp_path):
    _bin_model(task, tmp_path / "m", tmp_path / "ran", "torch.save")
    line = one_line_error(run("train.py", *train_argv(task, tmp_path / "runs", tmp_path / "m")))
    assert not (tmp_path / "ran").exists()
    assert "refused weights file" in line and "pytorch_model.bin" in line and "truncated" not in line


def test_eval_cli_refuses_a_planted_bin(task, tmp_path):
    _bin_model(task, tmp_path / "m", tmp_path / "ran", "pickle4")
    line = one_line_error(run("eval.py", "evaluate", "--model", tmp_path / "m", "--dataset", "acl",
                              "--data-dir", task["data"]), "eval.py")
    assert not (tmp_path / "ran").exists()
    assert "refused weights file" in line and "posix.mkdir" in line


@pytest.mark.parametrize("name", ["model.safetensors", "adapter.safetensors"])
def test_a_pickle_named_safetensors_is_corrupt_not_run(task, tmp_path, name):
    """safetensors holds tensors and nothing else: a planted pickle there is merely an unreadable file
    (for adapters through eval.py's CLI: one line, not safetensors' traceback)."""
    net = model.from_pretrained(task["enc"], num_labels=6)
    folder = tmp_path / "saved"
    if name == "adapter.safetensors":
        adapter.add_adapters(net, bottleneck=4, verbose=False)
        adapter.save_adapters(net, folder, base=str(task["enc"]))
    else:
        model.save_pretrained(net, folder)
        (folder / "vocab.txt").write_bytes((task["enc"] / "vocab.txt").read_bytes())
    plant(folder / name, tmp_path / "ran", "pickle4")
    line = one_line_error(run("eval.py", "evaluate", "--model", folder, "--dataset", "acl",
                              "--data-dir", task["data"]), "eval.py")
    assert not (tmp_path / "ran").exists()
    assert f"could not read weights file {folder / name}: it is truncated or corrupt" in line


def test_own_checkpoints_hold_nothing_but_allowed_types(task, tmp_path, monkeypatch):
    """What train.py writes loads with weights_only=True: no numpy scalars or other objects in it, with
    fp16's GradScaler state and adapters too."""
    saved = []
    real_save = runs.save_checkpoint

    def save_and_stop(self):
        real_save(self)
        saved.append(self.checkpoint_path)
        raise KeyboardInterrupt  # stop after the first checkpoint, as a killed run would

    monkeypatch.setattr(runs, "save_checkpoint", save_and_stop)
    argv = [*map(str, train_argv(task, tmp_path)), "--epochs", "2", "--checkpoint-every", "2", "--precision", "fp16",
            "--adapter", "--bottleneck", "4"]
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    (path,) = saved
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    state = torch.load(path, weights_only=True)
    assert state["scaler"]["scale"] > 0 and state["ranks"][0]["rng"].dtype == torch.uint8
    monkeypatch.undo()
    (result,) = train.main(argv + ["--resume"])
    assert result["steps"] == 10 and not path.exists()
