"""Interrupted runs on clusters: stop signals, elastic restarts, other world sizes, write failures, one owner.

Oracle: an uninterrupted run with the same arguments (one per kind, run once for the module). Every run here
is a real process (one, or two ranks on gloo under torchrun) that gets real signals.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import common
import runs
import train
from helpers import ROOT, without_timings, write_keyword_task, write_tiny_encoder

EPOCHS = 4  # 40 steps of 32 examples: long enough to be signalled mid-run, short enough to run often
STEPS = 10 * EPOCHS
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def args(task, out, *extra, model="enc", epochs=EPOCHS):
    return ["--dataset", "acl", "--model", str(task[model]), "--data-dir", str(task["data"]), "--out", str(out),
            "--epochs", str(epochs), "--lr", "3e-3", "--batch-size", "32", "--max-length", "64", "--log-every", "1",
            *extra]


def start(argv, torchrun: int = 0, *launcher_args):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
                *launcher_args] if torchrun else [sys.executable]
    return subprocess.Popen([*launcher, str(ROOT / "train.py"), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # a hung run must not outlive the test: torchrun passes SIGTERM on, then SIGKILLs its workers after 30 s
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        finally:
            proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli(argv, torchrun: int = 0, *launcher_args):
    return finish(start(argv, torchrun, *launcher_args))


def wait_for_step(proc, step: int) -> list[str]:
    """Read stdout until rank 0 logs `step`; the lines read so far."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.match(rf"step +{step}/", line):
            return lines
    raise AssertionError(f"the run ended before step {step}: {''.join(lines)[-2000:]}{proc.stderr.read()[-2000:]}")


def worker_pid(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with this RANK."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == launcher_pid and f"RANK={rank}".encode() in (stat.parent / "environ").read_bytes().split(b"\0"):
                return int(stat.parent.name)
        except (OSError, IndexError, ValueError):
            continue
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher_pid}")


def seed_dir(out, name):
    return Path(out) / "acl" / name / "seed1"


def result(out, name):
    return json.loads((seed_dir(out, name) / "result.json").read_text())


def metrics(out, name):  # timings differ from run to run, everything else must not
    return without_timings([json.loads(line) for line in open(seed_dir(out, name) / "metrics.jsonl")])


def checkpoint_step(out, name) -> int:
    return torch.load(seed_dir(out, name) / "checkpoint.pt", weights_only=False)["step"]


def assert_same_numbers(out, ref, name):
    """Bit-equal to the uninterrupted run: every metric of every epoch, and the log."""
    a, b = result(out, name), result(ref, name)
    assert a["test"] == b["test"] and a["dev"] == b["dev"] and a["steps"] == b["steps"]
    assert metrics(out, name) == metrics(ref, name)


def assert_close_numbers(out, ref, name):
    """Another world size: the same data order and updates, up to float summation order (no dropout here)."""
    a, b = result(out, name), result(ref, name)
    for split in ("dev", "test"):
        for m in ("accuracy", "f1_macro", "f1_micro", "n"):
            assert a[split][m] == b[split][m], (split, m)
        assert a[split]["loss"] == pytest.approx(b[split]["loss"], abs=1e-4)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    return {"enc": write_tiny_encoder(root / "enc"), "enc_dropout": write_tiny_encoder(root / "enc_dropout", dropout=0.1),
            "data": write_keyword_task(root / "data"), "root": root}


@pytest.fixture(scope="module")
def ref(task):
    """The uninterrupted runs, started together: one process with and without dropout, two ranks with dropout."""
    out = task["root"] / "ref"
    runs = {"one": start(args(task, out / "one", model="enc_dropout")),
            "one_nodrop": start(args(task, out / "one_nodrop")),
            "two": start(args(task, out / "two", model="enc_dropout"), 2)}
    for name, proc in runs.items():
        done = finish(proc)
        assert done.returncode == 0, (name, done.stderr[-3000:])
    return {name: out / name for name in runs}


def stop_with(sig: signal.Signals, argv) -> re.Match:
    """Start a one-process run, send `sig` once step 1 is logged; the run must end with 128 + sig and one line
    (no traceback): where it stopped, the checkpoint written, the command to continue. Its match: (step, path)."""
    proc = start(argv)
    wait_for_step(proc, 1)
    proc.send_signal(sig)
    done = finish(proc)
    assert done.returncode == 128 + sig
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    m = re.fullmatch(rf"train\.py: stopped by {sig.name} at step (\d+)/{STEPS} \(epoch \d, batch \d+ of 10\); "
                     r"checkpoint written: (\S+); to continue: python train.py (.*) --resume", lines[0])
    assert m, lines[0]
    return m


def test_sigterm_stops_at_a_step_and_resume_ends_on_the_uninterrupted_numbers(task, ref, tmp_path):
    argv = args(task, tmp_path, model="enc_dropout")
    m = stop_with(signal.SIGTERM, argv)
    assert Path(m[2]) == seed_dir(tmp_path, "enc_dropout") / "checkpoint.pt"
    assert checkpoint_step(tmp_path, "enc_dropout") == int(m[1])
    assert not (seed_dir(tmp_path, "enc_dropout") / "result.json").exists()

    resumed = run_cli(argv + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {m[1]} " in resumed.stdout
    assert_same_numbers(tmp_path, ref["one"], "enc_dropout")


def test_sigint_stops_and_resumes_on_one_process_or_two_ranks(task, ref, tmp_path):
    """Ctrl-C; then the same checkpoint resumed by one process (bit-equal) and by two ranks (1 -> 2 ranks)."""
    argv = args(task, tmp_path / "one")
    m = stop_with(signal.SIGINT, argv)
    assert checkpoint_step(tmp_path / "one", "enc") == int(m[1])
    shutil.copytree(tmp_path / "one", tmp_path / "two")

    one = start(argv + ["--resume"])
    two = start(args(task, tmp_path / "two", "--resume"), 2)
    one, two = finish(one), finish(two)
    assert one.returncode == 0, one.stderr[-3000:]
    assert_same_numbers(tmp_path / "one", ref["one_nodrop"], "enc")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "resumed on 2 rank(s), checkpoint has 1: the data order is the same, dropout randomness is not" in two.stdout
    assert_close_numbers(tmp_path / "two", ref["one_nodrop"], "enc")


def test_sigterm_to_one_rank_stops_both_at_one_step(task, ref, tmp_path):
    """Only rank 1 gets SIGTERM: rank 0 stops at the same step (it reports a signal it never got), writes the
    checkpoint, and one process then resumes it (2 -> 1 ranks). --checkpoint-minutes runs on rank 0's clock:
    had rank 1 taken another branch, the all_gather of a checkpoint would find no partner."""
    proc = start(args(task, tmp_path, "--checkpoint-minutes", "0.0002", "--checkpoint-every", "0"), 2)
    wait_for_step(proc, 1)
    os.kill(worker_pid(proc.pid, rank=1), signal.SIGTERM)
    done = finish(proc, timeout=120)
    assert done.returncode != 0  # torchrun's own: a worker ended with 143
    lines = [line for line in done.stderr.splitlines() if line.startswith("train.py")]
    assert len(lines) == 1, done.stderr[-3000:]  # rank 0 speaks; the other ranks stop silently
    m = re.match(rf"train\.py: stopped by SIGTERM at step (\d+)/{STEPS} .*; to continue: torchrun <the same torchrun "
                 r"options> train.py .* --resume$", lines[0])
    assert m, lines[0]
    assert 'train.py", line' not in done.stderr  # no traceback from our ranks
    assert checkpoint_step(tmp_path, "enc") == int(m[1])

    resumed = run_cli(args(task, tmp_path, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed on 1 rank(s), checkpoint has 2" in resumed.stdout
    assert_close_numbers(tmp_path, ref["one_nodrop"], "enc")


@pytest.mark.parametrize("resume_flag,killed_rank", [(False, 0), (True, 1)], ids=["no-resume-flag", "with-resume"])
def test_elastic_restart_resumes_by_itself(task, ref, tmp_path, resume_flag, killed_rank):
    """torchrun --max-restarts=1; one rank dies by SIGKILL mid-epoch (rank 0 is the run folder's lock holder):
    the restarted ranks take the lock at once, resume from the checkpoint and end on the uninterrupted numbers,
    whether the command line had --resume (as experiments/report.sh passes it) or not."""
    extra = ["--resume"] if resume_flag else []
    proc = start(args(task, tmp_path, "--checkpoint-every", "2", *extra, model="enc_dropout"), 2, "--max-restarts=1")
    wait_for_step(proc, 3)  # the step-2 checkpoint is written
    os.kill(worker_pid(proc.pid, rank=killed_rank), signal.SIGKILL)
    done = finish(proc)
    assert done.returncode == 0, done.stderr[-3000:]
    said = "torchrun restarted the workers (restart 1): continuing from the last checkpoints" in done.stdout
    assert said != resume_flag  # the one line appears only where train.py turned --resume on by itself
    resumed_at = re.search(r"resumed .* at step (\d+) ", done.stdout)
    assert resumed_at and int(resumed_at[1]) >= 2, done.stdout[-3000:]
    assert result(tmp_path, "enc_dropout")["test"] == result(ref["two"], "enc_dropout")["test"]
    assert result(tmp_path, "enc_dropout")["dev"] == result(ref["two"], "enc_dropout")["dev"]


def test_a_second_job_on_a_run_folder_stops_at_once(task, ref, tmp_path):
    argv = args(task, tmp_path, "--checkpoint-every", "2", model="enc_dropout")
    first = start(argv)
    wait_for_step(first, 3)
    first.send_signal(signal.SIGSTOP)  # frozen while it holds the folder, with a checkpoint written
    try:
        second = run_cli(argv + ["--resume"])
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert re.match(rf"train\.py: error: \S+seed1 is in use by another job \(host \S+, pid {first.pid}, since ",
                    second.stderr), second.stderr
    done = finish(first)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_numbers(tmp_path, ref["one"], "enc_dropout")  # the log too: no line from the second job


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   PermissionError(errno.EACCES, "Permission denied")], ids=["disk-full", "no-permission"])
def test_a_failed_checkpoint_write_stops_and_keeps_the_previous_one(task, tmp_path, monkeypatch, error):
    real_save, calls = torch.save, []

    def fail_second(obj, f, *a, **kw):
        calls.append(obj["step"])
        if len(calls) == 2:
            with open(f, "wb") as half:  # as a full disk would: part of the file, then the error
                half.write(b"PK\x03\x04")
            raise error
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", fail_second)
    with pytest.raises(runs.CheckpointWriteError) as e:
        train.main(args(task, tmp_path / "run", "--checkpoint-every", "3", epochs=2))
    monkeypatch.undo()
    ckpt = seed_dir(tmp_path / "run", "enc") / "checkpoint.pt"
    assert str(e.value) == (f"cannot write {ckpt} at step 6: {error.strerror}; the previous checkpoint (step 3) is "
                            "intact; free disk space or fix the permissions, then continue with --resume")
    assert checkpoint_step(tmp_path / "run", "enc") == 3
    (resumed,) = train.main(args(task, tmp_path / "run", "--checkpoint-every", "3", "--resume", epochs=2))
    (uninterrupted,) = train.main(args(task, tmp_path / "ref", epochs=2))
    assert resumed["test"] == uninterrupted["test"] and resumed["dev"] == uninterrupted["dev"]


@pytest.mark.parametrize("minutes,saved", [(1e-9, list(range(1, 20))), (60, [10])], ids=["every-step", "an-hour"])
def test_checkpoint_minutes(task, tmp_path, monkeypatch, minutes, saved):
    """Two epochs of 10 steps, --checkpoint-every 0: a checkpoint whenever M minutes have passed, besides the end
    of epoch 1 (step 10); never after the last step of an epoch (its own checkpoint follows) nor of the run."""
    steps, real = [], runs.save_checkpoint

    def recorded(self):
        steps.append(self.step)
        real(self)

    monkeypatch.setattr(runs, "save_checkpoint", recorded)
    train.main(args(task, tmp_path, "--checkpoint-every", "0", "--checkpoint-minutes", str(minutes), epochs=2))
    assert steps == saved


def test_checkpoint_minutes_run_out_in_the_middle_and_count_again_from_each_checkpoint(task, tmp_path, monkeypatch):
    """A fake clock on which every optimizer step takes 15 s, --checkpoint-minutes 1.5 (6 steps): due at step 6,
    then counted again from there, and from the epoch-end checkpoint at step 10: step 16. A timer that is not
    reset after a checkpoint would write one at every step after step 6."""
    clock, steps = [0.0], []
    real_step, real_save = train.Run.train_step, runs.save_checkpoint

    def timed_step(self, indices):
        real_step(self, indices)
        clock[0] += 15.0

    def recorded(self):
        steps.append(self.step)
        real_save(self)

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # train.py and runs.py read time.monotonic()
    monkeypatch.setattr(train.Run, "train_step", timed_step)
    monkeypatch.setattr(runs, "save_checkpoint", recorded)
    train.main(args(task, tmp_path, "--checkpoint-every", "0", "--checkpoint-minutes", "1.5", epochs=2))
    assert steps == [6, 10, 16]


def test_stop_signal_handler_only_sets_a_flag_and_a_second_ctrl_c_quits():
    before = signal.getsignal(signal.SIGINT)
    with runs.stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # during setup a signal still ends the process
        runs.catch_stop_signals()  # as training starts
        assert runs.agreed_stop_signal(common.Dist(0, 1, torch.device("cpu")), True) == [0, 1]
        os.kill(os.getpid(), signal.SIGUSR1)
        assert runs._stop_signal == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGINT)  # the same interrupt again (a job's signal, and torchrun's copy)
        assert signal.getsignal(signal.SIGINT) is runs._on_stop_signal  # ... is only the stop asked for once more
        os.kill(os.getpid(), signal.SIGTERM)
        assert runs.agreed_stop_signal(common.Dist(0, 1, torch.device("cpu")))[0] == signal.SIGUSR1  # the first
        time.sleep(runs.SAME_INTERRUPT_S + 0.3)  # the alarm's handler runs inside the sleep
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # now the kernel ends the process at once
    assert signal.getsignal(signal.SIGINT) is before and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
