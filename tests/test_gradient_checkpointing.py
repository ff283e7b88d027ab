"""train.py --gradient-checkpointing: the same numbers with less activation memory.

Activation checkpointing keeps each encoder layer's input only and runs the layer again in backward.
With the forward's RNG state restored for that rerun (preserve_rng_state=True), dropout draws the same
masks, so a run with it must equal a run without it: per-step loss and final weights (1e-6; measured: equal
to the last bit). And memory.measure, which counts what autograd really saves, must see the saved
activations shrink by exactly what memory.estimate predicts.
"""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import adapter
import memory
import model
import train
from helpers import write_keyword_task, write_tiny_encoder
from test_memory import ROBERTA_BASE

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread
TOL = 1e-6
METHODS = {"full": [], "adapter": ["--adapter", "--bottleneck", "8"], "lora": ["--lora", "--lora-r", "4"]}
WEIGHTS = {"full": "model.safetensors", "adapter": "adapter.safetensors", "lora": "adapter_model.safetensors"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    # dropout 0.1 everywhere: checkpointing must replay the same masks
    return write_tiny_encoder(root / "enc", dropout=0.1), write_keyword_task(root / "data", sizes=(81, 10, 20))


def run(task, out, method, *extra):
    enc, data_dir = task
    train.main(["--dataset", "acl", "--model", str(enc), "--data-dir", str(data_dir), "--out", str(out),
                "--epochs", "2", "--lr", "1e-3", "--batch-size", "16", "--max-length", "64", "--log-every", "1", "--device", "cpu", "--save",
                *METHODS[method], *extra])
    folder = out / "acl" / (enc.name + ("" if method == "full" else f"-{method}")) / "seed1"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"], load_file(folder / "model" / WEIGHTS[method])


@pytest.mark.parametrize("method", list(METHODS))
def test_same_losses_and_weights_with_dropout_on(task, tmp_path, monkeypatch, method):
    calls = []
    real = model.checkpoint

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "checkpoint", counted)
    losses, weights = run(task, tmp_path / "plain", method)
    assert not calls
    losses_ckpt, weights_ckpt = run(task, tmp_path / "ckpt", method, "--gradient-checkpointing")
    assert len(calls) == 2 * 6 * 2, "one checkpoint per layer (2) and training step (2 epochs x 6 steps), none in eval"
    assert all(c == {"use_reentrant": False, "preserve_rng_state": True} for c in calls)
    assert len(losses) == 12
    assert losses_ckpt == pytest.approx(losses, abs=TOL, rel=0)
    assert weights.keys() == weights_ckpt.keys()
    for k in weights:
        torch.testing.assert_close(weights_ckpt[k], weights[k], atol=TOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    first = losses[0]
    assert max(abs(x - first) for x in losses) > 100 * TOL, "the loss did not move: agreeing proves little"


def test_without_rng_replay_the_numbers_differ(task, tmp_path, monkeypatch):
    """The test above has power: recomputing with fresh dropout masks gives other losses."""
    real = model.checkpoint
    monkeypatch.setattr(model, "checkpoint", lambda *a, **kw: real(*a, **{**kw, "preserve_rng_state": False}))
    losses, _ = run(task, tmp_path / "plain", "full")
    losses_ckpt, _ = run(task, tmp_path / "ckpt", "full", "--gradient-checkpointing")
    assert max(abs(a - b) for a, b in zip(losses, losses_ckpt)) > 1e-4


@pytest.mark.parametrize("method", [{}, {"bottleneck": 64}, {"bottleneck": 64, "placement": "pfeiffer"},
                                    {"lora": adapter.LoRAConfig()}], ids=["full", "houlsby", "pfeiffer", "lora"])
def test_measure_sees_activations_shrink_by_the_estimate(method):
    """roberta-base's layers (4 of them) on the meta device, fp32: what autograd saves with the encoder's
    checkpointing flag (memory.measure builds the model with it), without minus with, against
    memory.estimate's difference."""
    cfg = dataclasses.replace(ROBERTA_BASE, num_hidden_layers=4)
    kw = dict(step=False, device="meta", precision="fp32", **method)
    plain = memory.measure(cfg, 4, 128, **kw)
    ckpt = memory.measure(cfg, 4, 128, checkpointing=True, **kw)
    est = {c: memory.estimate(cfg, 4, 128, device="meta", precision="fp32", checkpointing=c, **method)
           for c in (False, True)}
    assert ckpt.activations < 0.2 * plain.activations
    assert plain.activations - ckpt.activations == est[False].activations - est[True].activations
    assert ckpt.activations == est[True].activations
