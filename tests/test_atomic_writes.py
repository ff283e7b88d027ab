"""Result files are written atomically: a crash in the middle of a write leaves the old file, whole.

The crash is injected where a real one would hit: inside the write, after half of the new bytes
are on disk (an exception in-process, and a SIGKILL of a real process). Then the writers that
results go through (model.save_pretrained, adapter.save_adapters, runs.write_json) get the
same crash in the library call that writes the bytes.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import adapter
import hub
import model
import runs
from helpers import ROOT

OLD, NEW = b"old contents, complete\n" * 50, b"NEW CONTENTS " * 400


class Crash(RuntimeError):
    pass


def _half_then_crash(data: bytes):
    """A write callback that puts half of `data` into the path it is given, flushed, then dies."""
    def write(target):
        with open(target, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        raise Crash("killed mid-write")
    return write


def test_crash_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(OLD)
    with pytest.raises(Crash):
        hub.atomic_write(path, _half_then_crash(NEW))
    assert path.read_bytes() == OLD
    hub.atomic_write(path, lambda tmp: Path(tmp).write_bytes(NEW))  # and a write that finishes replaces it
    assert path.read_bytes() == NEW


def test_crash_mid_first_write_leaves_no_file(tmp_path):
    path = tmp_path / "result.json"
    with pytest.raises(Crash):
        hub.atomic_write(path, _half_then_crash(NEW))
    assert not path.exists()


def test_sigkill_mid_write_keeps_the_old_file(tmp_path):
    """A real process killed (SIGKILL: no cleanup runs) after half of the new bytes hit the disk."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(OLD)
    code = (f"import os, signal, hub\n"
            f"def write(tmp):\n"
            f"    with open(tmp, 'wb') as f:\n"
            f"        f.write({NEW!r}[:{len(NEW) // 2}]); f.flush(); os.fsync(f.fileno())\n"
            f"    os.kill(os.getpid(), signal.SIGKILL)\n"
            f"hub.atomic_write(__import__('pathlib').Path({str(path)!r}), write)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert path.read_bytes() == OLD


# ----------------------------------------------------------------------------- the writers results go through


def _tiny() -> model.Classifier:
    torch.manual_seed(0)
    return model.Classifier(model.Config(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=24, max_position_embeddings=32), num_labels=3)


def _crash_in(monkeypatch, owner, name):
    """Make `owner.name(obj, path, ...)` write half of its real output to `path`, then crash."""
    real = getattr(owner, name)

    def crashing(*args, **kwargs):
        target = Path(args[1] if owner is safetensors.torch else args[0])
        real(*args, **kwargs)
        _half_then_crash(target.read_bytes())(target)
    monkeypatch.setattr(owner, name, crashing)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.endswith(".tmp")}


def test_save_pretrained_crash_keeps_the_old_model(tmp_path, monkeypatch):
    model.save_pretrained(_tiny(), tmp_path, labels=["a", "b", "c"])
    before = _snapshot(tmp_path)
    other = _tiny()
    with torch.no_grad():
        other.classifier.weight.add_(1.0)
    _crash_in(monkeypatch, safetensors.torch, "save_file")
    with pytest.raises(Crash):
        model.save_pretrained(other, tmp_path, labels=["a", "b", "c"])
    assert _snapshot(tmp_path) == before
    loaded = model.from_pretrained(tmp_path)  # still a complete, loadable checkpoint
    assert torch.equal(loaded.classifier.weight, _tiny().classifier.weight)


def test_save_adapters_crash_keeps_the_old_adapters(tmp_path, monkeypatch):
    m = adapter.add_adapters(_tiny(), bottleneck=4, verbose=False)
    adapter.save_adapters(m, tmp_path, base="tiny")
    before = _snapshot(tmp_path)
    with torch.no_grad():
        m.encoder.layer[0].output.adapter.up.weight.add_(1.0)
    _crash_in(monkeypatch, safetensors.torch, "save_file")
    with pytest.raises(Crash):
        adapter.save_adapters(m, tmp_path, base="tiny")
    assert _snapshot(tmp_path) == before


def test_write_json_crash_keeps_the_old_result(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    runs.write_json(path, {"test": {"accuracy": 0.5}})
    before = path.read_bytes()
    _crash_in(monkeypatch, Path, "write_text")
    with pytest.raises(Crash):
        runs.write_json(path, {"test": {"accuracy": 0.75}, "padding": "x" * 1000})
    assert path.read_bytes() == before and json.loads(before) == {"test": {"accuracy": 0.5}}
