"""memory.py per method: full fine-tuning, Houlsby, Pfeiffer and LoRA, with and without activation
checkpointing, each `estimate` confirmed by `measure` (a real step, counting what autograd saves) on the
meta device at roberta-base's shape; LoRA's AMP weight copies on CPU; the parameter count of a real model;
and the --methods table.
"""

import dataclasses

import pytest
import torch

import adapter
import memory
import model
from test_memory import ROBERTA_BASE, TINY

STATE = ("weights", "master_weights", "gradients", "optimizer")
# roberta-base's layer, three of them: the first layer (whose input may want no gradient) and two after it
SHORT = dataclasses.replace(ROBERTA_BASE, num_hidden_layers=3)
METHODS = {"full": {}, "houlsby": {"bottleneck": 64}, "pfeiffer": {"bottleneck": 64, "placement": "pfeiffer"},
           "lora": {"lora": adapter.LoRAConfig()}, "lora-qkv-no-dropout": {"lora": adapter.LoRAConfig(
               r=4, dropout=0.0, targets=("query", "key", "value"))}}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("lora", [adapter.LoRAConfig(r=4), adapter.LoRAConfig(r=2, targets=("key",))])
def test_count_parameters_is_the_real_lora_model(kind, lora):
    with torch.device("meta"):
        net = model.Classifier(TINY[kind], 3)
    adapter.add_lora(net, lora.r, lora.alpha, lora.dropout, lora.targets, verbose=False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    count = memory.count_parameters(TINY[kind], 3, lora=lora)
    assert (count.total, count.trainable, count.trainable_tensors) == (
        sum(p.numel() for p in net.parameters()), sum(p.numel() for p in trainable), len(trainable))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_measured_on_meta(method, checkpointing):
    """Every term, to the byte: roberta-base's layers (3 of them), batch 2 x 64 tokens, fp32, one AdamW step."""
    kw = dict(precision="fp32", checkpointing=checkpointing, **METHODS[method])
    est = memory.estimate(SHORT, 2, 64, device="meta", **kw)
    real = memory.measure(SHORT, 2, 64, device="meta", **kw)
    assert real.gradients > 0 and real.optimizer > 0
    for name in (*STATE, "activations", "params", "trainable"):
        assert getattr(est, name) == getattr(real, name), name


@pytest.mark.parametrize("lora", [adapter.LoRAConfig(r=4), adapter.LoRAConfig(r=4, dropout=0.0)])
def test_lora_under_amp_on_cpu(lora):
    """bf16 autocast: the 16-bit copies of the LoRA matrices (and of the frozen weights autograd keeps), the
    casts of each LoRA's input, the fp32 masters, to the byte."""
    est = memory.estimate(TINY["bert"], 3, 17, device="cpu", precision="bf16", lora=lora)
    real = memory.measure(TINY["bert"], 3, 17, device="cpu", precision="bf16", lora=lora)
    for name in (*STATE, "activations"):
        assert getattr(est, name) == getattr(real, name), name


def test_adapter_and_lora_together_is_refused():
    with pytest.raises(memory.UsageError, match="two methods"):
        memory.estimate(ROBERTA_BASE, 2, 64, bottleneck=64, lora=adapter.LoRAConfig())


def test_methods_table_and_what_peft_leaves_out(capsys):
    """The 3B question: PEFT cuts gradients and optimizer states to almost nothing but keeps most activations;
    only checkpointing cuts those."""
    rows = memory.method_breakdowns(memory.generic_config(3e9), 8, 512, params=3e9)
    assert list(rows) == ["full", "houlsby-64", "pfeiffer-64", "lora r8", "full + checkpointing",
                          "houlsby-64 + checkpointing", "pfeiffer-64 + checkpointing", "lora r8 + checkpointing"]
    full, lora, lora_ckpt = rows["full"], rows["lora r8"], rows["lora r8 + checkpointing"]
    assert lora.gradients + lora.optimizer < 0.01 * (full.gradients + full.optimizer)
    assert lora.activations > 0.7 * full.activations
    assert lora_ckpt.activations < 0.2 * lora.activations
    memory.main(["--params", "3e9", "--methods", "--batch-size", "8", "--max-length", "512"])
    out = capsys.readouterr().out
    assert "lora r8 + checkpointing" in out and "leaves out" in out
    # every row adds up to its total (the table once left out the transient buffer), in GB as printed
    header = next(line.split() for line in out.splitlines() if line.strip().startswith("method"))
    assert header[-3:] == ["activations", "transient", "total"]
    for name, b in rows.items():
        line = next(line for line in out.splitlines() if line.strip().startswith(name + "  "))
        gb = [float(v) for v in line.split()[-7:]]  # weights, 16-bit copies, ..., transient, total
        assert gb == [round(v / 1e9, 2) for v in (b.master_weights, b.weights, b.gradients, b.optimizer,
                                                   b.activations, b.transient, b.total)], line
        assert abs(sum(gb[:-1]) - gb[-1]) <= 0.03, line
