"""No host sync per step (issue 25): between log steps the training loop never reads a tensor on the host.

On a GPU every host read (.item(), .tolist(), bool(t), .cpu()) waits for all queued kernels, so the CPU cannot
queue the next step while the GPU runs this one. Oracles: a TorchDispatchMode that sees every
_local_scalar_dense (item, bool, float, int of a tensor) plus counting wrappers on Tensor.tolist / .cpu /
.numpy, which on a CPU tensor read memory without dispatching; on a GPU (needs_cuda) torch's own
set_sync_debug_mode("error"). Several ranks agree on stop signals at log steps: a 2-rank run (gloo) signalled
on rank 1 stops both at one log step.
"""

import os
import re
import signal

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import runs
import train
from test_cluster import args, checkpoint_step, finish, start, wait_for_step, worker_pid
from test_train import task  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


class HostReads(TorchDispatchMode):
    """Counts host reads of tensors while `active`."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.active, self.reads = False, []
        for name in ("tolist", "cpu", "numpy"):
            real = getattr(torch.Tensor, name)

            def counted(t, *a, _real=real, _name=name, **kw):
                if self.active:
                    self.reads.append(_name)
                return _real(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active and func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append("item")
        return func(*args, **(kwargs or {}))


def test_no_host_read_between_log_steps(task, tmp_path, monkeypatch):  # noqa: F811
    """One process, --log-every 5, 3 epochs of 10 steps: train_step and the stop-signal agreement read
    nothing; only log_train (at log steps) and evaluation do."""
    counter = HostReads(monkeypatch)
    step, agree, per_step = train.Run.train_step, runs.agreed_stop_signal, []

    def counted_step(run, batch):
        counter.active = True
        counter.reads = []
        step(run, batch)
        counter.active = False
        per_step.append(("step", list(counter.reads)))

    def counted_agree(world, *flags):
        counter.active = True
        counter.reads = []
        out = agree(world, *flags)
        counter.active = False
        per_step.append(("agree", list(counter.reads)))
        return out

    monkeypatch.setattr(train.Run, "train_step", counted_step)
    monkeypatch.setattr(runs, "agreed_stop_signal", counted_agree)
    with counter:
        train.main(args(task, tmp_path, "--log-every", "5", "--checkpoint-every", "0", epochs=3))
        counter.active, counter.reads = True, []  # the counter itself sees reads
        torch.zeros(2).tolist()
        bool(torch.ones(()))
        counter.active = False
    assert counter.reads == ["tolist", "item"]
    assert sum(kind == "step" for kind, _ in per_step) == 30
    assert sum(kind == "agree" for kind, _ in per_step) >= 30, "one process checks its flag at every step"
    assert all(not reads for _, reads in per_step), [r for r in per_step if r[1]][:3]


def test_two_ranks_agree_at_log_steps(task, tmp_path):  # noqa: F811
    """--log-every 4 on 2 ranks: SIGTERM to rank 1 after step 4 stops both at the next agreement, a log step
    (8) or the epoch's end (10), with one checkpoint of both ranks at that step."""
    proc = start(args(task, tmp_path, "--log-every", "4", "--checkpoint-every", "0"), 2)
    wait_for_step(proc, 4)
    os.kill(worker_pid(proc.pid, rank=1), signal.SIGTERM)
    done = finish(proc, timeout=180)
    lines = [line for line in done.stderr.splitlines() if line.startswith("train.py")]
    assert len(lines) == 1, done.stderr[-3000:]
    m = re.match(r"train\.py: stopped by SIGTERM at step (\d+)/", lines[0])
    assert m, lines[0]
    stopped = int(m[1])
    assert stopped > 4 and (stopped % 4 == 0 or stopped % 10 == 0), stopped
    assert checkpoint_step(tmp_path, "enc") == stopped


@pytest.mark.needs_cuda
def test_no_sync_between_log_steps_on_a_gpu(task, tmp_path, monkeypatch):  # noqa: F811
    """torch raises on any synchronizing CUDA call inside train_step (and the one-process agreement)."""
    step = train.Run.train_step

    def strict(run, batch):
        torch.cuda.set_sync_debug_mode("error")
        try:
            step(run, batch)
            runs.agreed_stop_signal(run.world)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(train.Run, "train_step", strict)
    train.main(args(task, tmp_path, "--device", "cuda", "--log-every", "5", epochs=1))
