"""--max-tokens (issue 25): a global batch dealt into micro-batches of at most N padded tokens.

Oracles: the global batch itself (every example once, on one rank, in one micro-batch); a run without the
budget (dropout off: the same update up to float summation order), on one process and on two ranks (gloo),
where each rank needs a different number of micro-batches and must still run as many as the other.
"""

import itertools
import math

import numpy as np
import pytest
import torch

import data
import model
import train
from test_train import _weights, args, run_cli, seed_dir, task  # noqa: F401  (task: the fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

rng = np.random.default_rng(0)
LENGTHS = rng.integers(3, 200, size=500)


def padded(lengths, micro, multiple):
    return len(micro) * math.ceil(max(lengths[micro]) / multiple) * multiple if len(micro) else 0


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("max_tokens,multiple", [(256, 1), (600, 8), (1000, 1), (10 ** 9, 1)])
def test_budget_cuts_every_rank_alike_and_keeps_every_example(world_size, max_tokens, multiple):
    for batch in data.train_batches(LENGTHS, 64, seed=1, epoch=0):
        shards = [data.shard_batch(batch, r, world_size, 16, LENGTHS, max_tokens, multiple) for r in range(world_size)]
        assert len({len(s) for s in shards}) == 1, "every rank the same number of micro-batches (DDP)"
        flat = np.concatenate([m for s in shards for m in s])
        assert sorted(flat) == sorted(batch), "each example of the global batch once"
        for s in shards:
            for m in s:
                assert len(m) <= 16
                assert len(m) <= 1 or padded(LENGTHS, m, multiple) <= max_tokens, (len(m), max(LENGTHS[m]))
            for m, after in itertools.pairwise(s):  # greedy: the next example of the rank would not have fitted
                if len(after):
                    assert len(m) == 16 or (len(m) + 1) * math.ceil(max(LENGTHS[m]) / multiple) * multiple > max_tokens
        # the fullest rank needs as many micro-batches as it has: no trailing empty one on every rank
        assert any(len(s[-1]) for s in shards)
        if max_tokens == 10 ** 9:  # a budget nothing reaches: the micro-batches of no budget
            plain = [data.shard_batch(batch, r, world_size, 16) for r in range(world_size)]
            assert all(len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
                       for a, b in zip(shards, plain))


def test_no_budget_is_the_old_cutting():
    batch = data.train_batches(LENGTHS, 64, seed=1, epoch=0)[0]
    for r in range(3):
        got = data.shard_batch(batch, r, 3, 8, LENGTHS, 0)
        want = [batch[r::3][i * 8:(i + 1) * 8] for i in range(math.ceil(math.ceil(64 / 3) / 8))]
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="needs the lengths"):
        data.shard_batch(batch, 0, 1, 8, None, 100)


def test_default_budget_per_device():
    cfg = train.parse_args(["--dataset", "acl"])
    assert train.resolve(cfg, 1, torch.device("cpu")).max_tokens == data.CPU_MAX_TOKENS
    assert train.resolve(cfg, 1, torch.device("cuda", 0)).max_tokens == 0
    assert train.resolve(train.parse_args(["--dataset", "acl", "--max-tokens", "0"]), 1, torch.device("cpu")).max_tokens == 0
    with pytest.raises(train.UsageError, match="--max-tokens"):
        train.resolve(train.parse_args(["--dataset", "acl", "--max-tokens", "-1"]), 1, torch.device("cpu"))


def close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if "attention.self.key.bias" in k:  # its true gradient is 0: Adam turns round-off into steps (test_train)
            continue
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


BUDGET = "40"  # the keyword task's texts are 5-34 tokens: micro-batches of 1 to 8 of the 32 examples


def test_budget_gives_the_update_of_the_whole_batch(task, tmp_path, monkeypatch):  # noqa: F811
    """One process, dropout off: the same weights with and without the budget; the budget did cut."""
    seen, shard = [], data.shard_batch

    def recorded(batch, rank, world_size, micro_batch_size, lengths=None, max_tokens=0, multiple_of=1):
        out = shard(batch, rank, world_size, micro_batch_size, lengths, max_tokens, multiple_of)
        seen.extend(padded(lengths, m, multiple_of) for m in out)
        return out

    train.main(args(task, tmp_path / "plain", "--save", "--max-tokens", "0", epochs=2))
    monkeypatch.setattr(data, "shard_batch", recorded)
    train.main(args(task, tmp_path / "budget", "--save", "--max-tokens", BUDGET, epochs=2))
    assert max(seen) <= int(BUDGET) and len(seen) > 4 * 2 * math.ceil(301 / 32), "the budget cut the batches"
    close(_weights(seed_dir(tmp_path / "plain")), _weights(seed_dir(tmp_path / "budget")))


def test_two_ranks_with_a_budget_equal_one_process_without(task, tmp_path):  # noqa: F811
    """Two ranks whose halves of a batch need different numbers of micro-batches run as many each (else DDP's
    all-reduce would wait for a partner, or pair the wrong buckets) and give the one-process update."""
    one = run_cli(args(task, tmp_path / "one", "--save", "--max-tokens", "0", epochs=2))
    two = run_cli(args(task, tmp_path / "two", "--save", "--max-tokens", BUDGET, epochs=2), torchrun=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr
    close(_weights(seed_dir(tmp_path / "one")), _weights(seed_dir(tmp_path / "two")))
    tok = model.load_tokenizer(task["enc"])
    lengths = data.encode(data.load_split("acl", "train", task["data"]), tok, 64).lengths
    differ = False
    for epoch in range(2):
        for b in data.train_batches(lengths, 32, seed=1, epoch=epoch):
            own = [len(data._cuts(lengths[b[r::2]], 16, int(BUDGET), 1)) for r in range(2)]
            differ = differ or own[0] != own[1]
    assert differ, "no batch where the ranks' own counts differ: evening them out was not exercised"


def test_memory_predicts_the_micro_batch_of_a_budget(tmp_path, capsys):
    """memory.py --max-tokens: the activations of the micro-batch the budget makes (shard_batch's rule for one
    length), not of the whole batch."""
    import memory
    from helpers import write_tiny_encoder
    assert [memory.micro_batch(64, 256, t) for t in (0, 4096, 100, 10 ** 6)] == [64, 16, 1, 64]
    lengths = np.full(64, 256)
    assert len(data.shard_batch(np.arange(64), 0, 1, 64, lengths, 4096)[0]) == memory.micro_batch(64, 256, 4096)
    enc = write_tiny_encoder(tmp_path / "enc", dropout=0.1)
    memory.main(["--model", str(enc), "--batch-size", "64", "--max-length", "64", "--max-tokens", "1024"])
    out = capsys.readouterr().out
    assert "batch 64 (micro-batch 16 under --max-tokens 1024)" in out
    want = memory.estimate(model.load_config(enc), 16, 64).activations
    assert f"{want / 1e9:.2f}" in out.split("activations (saved)")[1].split()[0]
