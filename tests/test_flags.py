"""train.resolve's defaults and runs.check_flags' refusals, as pure calls (no model, no data).

Oracles: the defaults the docs give (PEFT's LoRA settings: r 8, alpha 16, dropout 0.1 on query and value, as
in Hu et al. 2021; the report's adapter epochs and lr for LoRA, REPORT_DEFAULTS), and each range's boundary
value on both sides: the last value refused and the first one accepted."""

import pytest
import torch

import train
from common import UsageError

CPU = torch.device("cpu")


def resolve(*flags, world_size=1):
    return train.resolve(train.parse_args(["--dataset", "acl", *flags]), world_size, CPU)


def test_lora_defaults_are_pefts_and_the_reports_adapter_schedule():
    cfg = resolve("--lora")
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets) == (8, 16.0, 0.1, ["query", "value"])
    assert (cfg.epochs, cfg.lr) == train.REPORT_DEFAULTS["adapter"]["acl"] != train.REPORT_DEFAULTS["full"]["acl"]
    given = resolve("--lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--lora-targets", "key")
    assert (given.lora_r, given.lora_alpha, given.lora_dropout, given.lora_targets) == (4, 8.0, 0.0, ["key"])
    plain = resolve()
    assert (plain.lora_r, plain.lora_alpha, plain.lora_dropout, plain.lora_targets) == (None, None, None, None)
    assert (plain.epochs, plain.lr) == train.REPORT_DEFAULTS["full"]["acl"]


@pytest.mark.parametrize("refused,accepted,words", [
    (["--lora", "--lora-r", "0"], ["--lora", "--lora-r", "1"], "--lora-r must be at least 1"),
    (["--lora", "--lora-alpha", "0"], ["--lora", "--lora-alpha", "0.01"], "--lora-alpha > 0"),
    (["--lora", "--lora-dropout", "1"], ["--lora", "--lora-dropout", "0.99"], "--lora-dropout in [0, 1)"),
    (["--lora", "--lora-dropout", "-0.1"], ["--lora", "--lora-dropout", "0"], "--lora-dropout in [0, 1)"),
    (["--warmup-ratio", "1"], ["--warmup-ratio", "0.99"], "--warmup-ratio in [0, 1)"),
    (["--lr", "0"], ["--lr", "1e-9"], "--lr must be > 0"),
    (["--weight-decay", "-0.01"], ["--weight-decay", "0"], "--weight-decay"),
    (["--max-grad-norm", "-1"], ["--max-grad-norm", "0"], "--max-grad-norm >= 0"),
    (["--epochs", "0"], ["--epochs", "1"], "--epochs must be at least 1"),
    (["--adapter", "--bottleneck", "0"], ["--adapter", "--bottleneck", "1"], "--bottleneck must be at least 1"),
    (["--checkpoint-minutes", "-1"], ["--checkpoint-minutes", "0"], "must be >= 0"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_each_range_refuses_its_boundary_and_accepts_the_next_value(refused, accepted, words):
    with pytest.raises(UsageError) as e:
        resolve(*refused)
    assert words in str(e.value) and "\n" not in str(e.value)
    resolve(*accepted)


@pytest.mark.parametrize("flags", [["--lora-r", "4"], ["--lora-alpha", "8"], ["--lora-dropout", "0.2"],
                                   ["--lora-targets", "key"], ["--merge-lora", "--save"]])
def test_every_lora_flag_needs_lora(flags):
    with pytest.raises(UsageError, match="need --lora"):
        resolve(*flags)
    resolve("--lora", *flags)


def test_the_global_batch_must_split_over_ranks_and_micro_batches():
    with pytest.raises(UsageError, match=r"--batch-size 32 is not divisible by 4 rank\(s\) x --micro-batch-size 16"):
        resolve("--batch-size", "32", "--micro-batch-size", "16", world_size=4)
    assert resolve("--batch-size", "64", "--micro-batch-size", "16", world_size=4).micro_batch_size == 16
    assert resolve("--batch-size", "32", world_size=4).micro_batch_size == 8  # default: batch / ranks
